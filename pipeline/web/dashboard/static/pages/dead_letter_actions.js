// Replay and delete of dead letters: every action asks the API for a dry run first, shows what
// it would do in a confirmation dialog, and acts only on "confirm".

import {get, post, remove} from '../api.js';
import {h, num} from '../dom.js';
import {confirmDialog, toast, actionFailed} from '../ui.js';

/** The filters ``POST /dead-letters/replay|purge`` take as ``filter`` (the dlq list filters). */
const SELECTION_FILTERS = ['queue', 'actor', 'since', 'unreplayed'];
/** The API takes at most this many ids in one request, and lists at most this many a page. */
const MAX_IDS = 1000;
const PAGE = 500;
/** A search reads at most this many of the newest dead letters matching the filters. */
const SEARCH_SCAN = 2000;
const EMAIL_ACTORS = new Set(['send_email', 'send_bulk_email']);

function plural(count, word) {
  return `${num(count)} ${word}${count === 1 ? '' : 's'}`;
}

/** The dlq filters of the list's query string, as the API's ``filter`` takes them. */
export function letterFilter(query) {
  const filter = Object.fromEntries(SELECTION_FILTERS.filter((name) => query.get(name)).map((name) => [name, query.get(name)]));
  if (filter.unreplayed) filter.unreplayed = true;
  return filter;
}

async function scan(path, query, limit) {
  const items = [];
  let cursor = null;
  let total = null;
  do {
    const page = await get(path, {...query, limit: PAGE, cursor});
    items.push(...(page.items ?? []));
    total = page.total ?? total;
    cursor = page.next_cursor;
  } while (cursor && items.length < limit);
  return {items: items.slice(0, limit), total: total ?? items.length};
}

/**
 * Dead letters matching ``filter`` and a search text: the text is looked for in the error, the
 * message id and the call, and as a recipient (the dead letters of the emails whose recipient
 * starts with it). The API's list has no search of its own, so this reads the newest
 * ``SEARCH_SCAN`` matching letters and the emails the recipient search finds.
 */
export async function searchLetters(filter, text) {
  const needle = text.trim().toLowerCase();
  const [letters, emails] = await Promise.all([
    scan('/dead-letters', filter, SEARCH_SCAN),
    scan('/emails', {q: text.trim()}, PAGE),
  ]);
  const emailIds = new Set(emails.items.map((email) => email.id));
  const matches = (letter) => [letter.error, letter.message_id, letter.actor, JSON.stringify(letter.args ?? [])]
    .some((field) => String(field ?? '').toLowerCase().includes(needle))
    || (EMAIL_ACTORS.has(letter.actor) && emailIds.has(letter.args?.[0]));
  return {items: letters.items.filter(matches), scanned: letters.items.length, total: letters.total};
}

/** The selection "every dead letter the list shows": its filters, or the ids a search found. */
export async function matchingSelection(query) {
  const filter = letterFilter(query);
  if (!query.get('q')) return {filter};
  const found = await searchLetters(filter, query.get('q'));
  return {ids: found.items.slice(0, MAX_IDS).map((letter) => letter.id)};
}

/** How the dialog names "every dead letter the list shows". */
export function matchingLabel(query) {
  const text = query.get('q');
  const filter = describe({filter: letterFilter(query)});
  return text ? `${filter} matching “${text}”` : filter;
}

function describe(selection) {
  if (selection.ids) return plural(selection.ids.length, 'selected dead letter');
  const parts = Object.entries(selection.filter).map(([name, value]) => `${name} ${value === true ? '' : value}`.trim());
  return parts.length ? `Every dead letter with ${parts.join(', ')}` : 'Every dead letter';
}

/**
 * Replay ``selection`` ({ids} or {filter}) after a dry run and a confirmation; true when done.
 * ``what`` names the selection in the dialog.
 */
export async function replay(selection, ctx, what = describe(selection)) {
  try {
    const dry = await post('/dead-letters/replay', {...selection, dry_run: true});
    const skipped = dry.matched - dry.replayed;
    const confirmed = await confirmDialog({
      title: dry.replayed ? `Replay ${plural(dry.replayed, 'dead letter')}?` : 'Nothing to replay',
      confirm: dry.replayed ? `Replay ${num(dry.replayed)}` : 'OK',
      body: [
        h('p', null, `${what}: ${num(dry.matched)} found.`),
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
export async function purge(selection, ctx, what = describe(selection)) {
  try {
    const dry = await post('/dead-letters/purge', {...selection, dry_run: true});
    const confirmed = await confirmDialog({
      title: dry.matched ? `Delete ${plural(dry.matched, 'dead letter')}?` : 'Nothing to delete',
      confirm: dry.matched ? `Delete ${num(dry.matched)}` : 'OK',
      danger: dry.matched > 0,
      body: [
        h('p', null, `${what}: ${num(dry.matched)} found.`),
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
