// Replay and delete of dead letters: every action asks the API for a dry run first, shows what
// it would do in a confirmation dialog, and acts only on "confirm".

import {get, post, remove} from '../api.js';
import {h, num} from '../dom.js';
import {confirmDialog, toast, actionFailed} from '../ui.js';

/** The filters ``POST /dead-letters/replay|purge`` take as ``filter`` (the dlq list filters). */
export const SELECTION_FILTERS = ['queue', 'actor', 'since', 'unreplayed'];
/** The API takes at most this many ids in one request. */
const MAX_IDS = 1000;
const PAGE = 500;

function plural(count, word) {
  return `${num(count)} ${word}${count === 1 ? '' : 's'}`;
}

/**
 * The selection "every dead letter matching the list's filters". The API's ``filter`` has the
 * dlq filters; a search text is not one of them, so with a search the matching ids are sent.
 */
export async function matchingSelection(query) {
  const filter = Object.fromEntries(SELECTION_FILTERS.filter((name) => query.get(name)).map((name) => [name, query.get(name)]));
  if (filter.unreplayed) filter.unreplayed = true;
  if (!query.get('q')) return {filter};
  const ids = [];
  let cursor = null;
  do {
    const page = await get('/dead-letters', {...filter, q: query.get('q'), limit: PAGE, cursor});
    ids.push(...(page.items ?? []).map((item) => item.id));
    cursor = page.next_cursor;
  } while (cursor && ids.length < MAX_IDS);
  return {ids: ids.slice(0, MAX_IDS)};
}

function describe(selection) {
  if (selection.ids) return plural(selection.ids.length, 'selected dead letter');
  const parts = Object.entries(selection.filter).map(([name, value]) => `${name} ${value === true ? '' : value}`.trim());
  return parts.length ? `every dead letter with ${parts.join(', ')}` : 'every dead letter';
}

/** Replay ``selection`` ({ids} or {filter}) after a dry run and a confirmation; true when done. */
export async function replay(selection, ctx) {
  try {
    const dry = await post('/dead-letters/replay', {...selection, dry_run: true});
    const skipped = dry.matched - dry.replayed;
    const confirmed = await confirmDialog({
      title: dry.replayed ? `Replay ${plural(dry.replayed, 'dead letter')}?` : 'Nothing to replay',
      confirm: dry.replayed ? `Replay ${num(dry.replayed)}` : 'OK',
      body: [
        h('p', null, `${describe(selection)}: ${plural(dry.matched, 'match')}.`),
        dry.replayed ? h('p', null, 'Each is sent again as a new message with a fresh retry budget; its email or webhook event goes back in play. A dead letter is replayed at most once.') : null,
        skipped ? h('p', {class: 'muted'}, `${plural(skipped, 'dead letter')} would be skipped (already replayed, item not failed, or not replayable).`) : null,
      ],
    });
    if (!confirmed || !dry.replayed) return false;
    const done = await post('/dead-letters/replay', {...selection, dry_run: false});
    toast(`Replayed ${num(done.replayed)} of ${plural(done.matched, 'dead letter')}.`);
    return true;
  } catch (error) {
    actionFailed(error, ctx);
    return false;
  }
}

/** Delete ``selection`` after a dry run and a confirmation; true when done. */
export async function purge(selection, ctx) {
  try {
    const dry = await post('/dead-letters/purge', {...selection, dry_run: true});
    const confirmed = await confirmDialog({
      title: dry.matched ? `Delete ${plural(dry.matched, 'dead letter')}?` : 'Nothing to delete',
      confirm: dry.matched ? `Delete ${num(dry.matched)}` : 'OK',
      danger: dry.matched > 0,
      body: [
        h('p', null, `${describe(selection)}: ${plural(dry.matched, 'match')}.`),
        dry.matched ? h('p', null, 'They leave the archive for good; their emails and webhook events are not touched.') : null,
      ],
    });
    if (!confirmed || !dry.matched) return false;
    const done = await post('/dead-letters/purge', {...selection, dry_run: false});
    toast(`Deleted ${plural(done.deleted, 'dead letter')}.`);
    return true;
  } catch (error) {
    actionFailed(error, ctx);
    return false;
  }
}

/** Delete one dead letter after a confirmation; true when done. */
export async function deleteOne(id, ctx) {
  const confirmed = await confirmDialog({
    title: `Delete dead letter #${id}?`, confirm: 'Delete', danger: true,
    body: h('p', null, 'It leaves the archive for good; its item is not touched.'),
  });
  if (!confirmed) return false;
  try {
    await remove(`/dead-letters/${encodeURIComponent(id)}`);
    toast(`Deleted dead letter #${id}.`);
    return true;
  } catch (error) {
    actionFailed(error, ctx);
    return false;
  }
}
