// Replay and delete of dead letters: every action asks the API for a dry run first, shows what
// it would do in a confirmation dialog, and acts only on "confirm".

import {post, remove} from '../api.js';
import {h, num} from '../dom.js';
import {confirmDialog, toast, actionFailed} from '../ui.js';

/**
 * The filters ``POST /dead-letters/replay|purge`` take as ``filter``: the dlq list filters and the
 * server-side search ``q`` (a recipient's start, an id, a message id, or text of the error).
 */
const SELECTION_FILTERS = ['q', 'queue', 'actor', 'since', 'unreplayed'];

function plural(count, word) {
  return `${num(count)} ${word}${count === 1 ? '' : 's'}`;
}

/** The dlq filters of the list's query string, as the API's list and ``filter`` take them. */
export function letterFilter(query) {
  const filter = Object.fromEntries(SELECTION_FILTERS.filter((name) => query.get(name)?.trim()).map((name) => [name, query.get(name).trim()]));
  if (filter.unreplayed) filter.unreplayed = true;
  return filter;
}

function describe(selection) {
  if (selection.ids) return plural(selection.ids.length, 'selected dead letter');
  const {q, ...filters} = selection.filter;
  const parts = Object.entries(filters).map(([name, value]) => `${name} ${value === true ? '' : value}`.trim());
  const scope = parts.length ? `Every dead letter with ${parts.join(', ')}` : 'Every dead letter';
  return q ? `${scope} matching “${q}”` : scope;
}

/**
 * Replay ``selection`` ({ids} or {filter}) after a dry run and a confirmation; true when done.
 * ``what`` names the selection in the dialog.
 */
export async function replay(selection, ctx, what = describe(selection)) {
  try {
    const dry = await post('/dead-letters/replay', {...selection, dry_run: true});
    // Those whose email may be delivered twice (their last attempt may have reached a provider that
    // no longer remembers its idempotency key): replayed only if the operator accepts that risk.
    const risky = dry.outcomes.filter((outcome) => outcome.status === 'duplicate_risk');
    const skipped = dry.matched - dry.replayed - risky.length;
    const possible = dry.replayed + risky.length;
    const confirmed = await confirmDialog({
      title: possible ? `Replay ${plural(possible, 'dead letter')}?` : 'Nothing to replay',
      confirm: possible ? 'Replay' : 'OK',
      body: [
        h('p', null, `${what}: ${num(dry.matched)} found.`),
        possible ? h('p', null, 'Each is sent again as a new message with a fresh retry budget; its email or webhook event goes back in play. A dead letter is replayed at most once.') : null,
        risky.length ? h('div', {class: 'duplicate-risk'},
          h('p', null, `Duplicate risk: ${plural(risky.length, 'dead letter')} may deliver ${risky.length === 1 ? 'its email' : 'their emails'} twice. ${risky[0].detail}`),
          h('label', null,
            h('input', {type: 'checkbox', name: 'accept_duplicate_risk', value: 'yes'}),
            ` Also replay ${risky.length === 1 ? 'it' : 'these'}, accepting that the recipient may get the email twice`)) : null,
        skipped ? h('p', {class: 'muted'}, `${plural(skipped, 'dead letter')} would be skipped (already replayed, item not failed, or not replayable).`) : null,
      ],
    });
    const accept = Boolean(confirmed && confirmed.accept_duplicate_risk === 'yes');
    if (!confirmed || !(dry.replayed || accept)) return false;
    const done = await post('/dead-letters/replay', {...selection, dry_run: false, accept_duplicate_risk: accept});
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
