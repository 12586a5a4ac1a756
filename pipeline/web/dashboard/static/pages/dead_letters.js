// Dead letters: search and the dlq filters; for admins, a selection with replay and delete, and
// the same for everything matching. A read-only session gets the list alone: no checkbox, no button.

import {get} from '../api.js';
import {h, fill, num, when, clip, link, badge, table, relative} from '../dom.js';
import {filterBar, Pager, region} from '../ui.js';
import {PAGE_SIZE} from './list.js';
import {letterFilter, replay, purge} from './dead_letter_actions.js';

const QUEUES = ['emails.XQ', 'emails_bulk.XQ', 'webhooks.XQ', 'ticks.XQ'];
const ACTORS = ['send_email', 'send_bulk_email', 'send_email_batch', 'send_bulk_email_batch', 'process_webhook_event',
  'fan_out_emails', 'retry_webhooks', 'cleanup_reservations', 'prune_dead_letters'];
const FILTERS = [
  {name: 'q', label: 'Search', placeholder: 'Recipient, id, order, error…', wide: true},
  {name: 'queue', label: 'Queue', options: QUEUES.map((q) => [q, q])},
  {name: 'actor', label: 'Actor', options: ACTORS.map((a) => [a, a])},
  {name: 'since', label: 'Dead since', any: 'Any time', options: [['1h', 'Last hour'], ['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days']]},
  {name: 'unreplayed', label: 'Not replayed', type: 'checkbox'},
];

/** ``send_email(12)``: the call that died, or what is known of a body kept raw. */
export function call(letter) {
  if (letter.raw || !letter.actor) return h('span', {class: 'muted'}, '(undecodable body)');
  const args = (letter.args ?? []).map((a) => JSON.stringify(a));
  const kwargs = Object.entries(letter.kwargs ?? {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return h('code', null, `${letter.actor}(${[...args, ...kwargs].join(', ')})`);
}

export function replayState(letter) {
  if (!letter.replayed_at) return h('span', {class: 'muted'}, 'not replayed');
  return h('span', {title: `replayed ${relative(letter.replayed_at)}`}, badge('replayed'));
}

export default function deadLetters(ctx) {
  const results = region('results');
  const actions = h('div', {class: 'bulk-bar', hidden: !ctx.admin});
  const selected = new Set();
  let items = [];
  let total = null;
  const pager = new Pager(() => ctx.refresh());

  /** Run ``action`` on ``selection`` ({ids} or {filter}), then show the list again. */
  const act = async (action, selection) => {
    if (await action(selection, ctx)) selected.clear();
    ctx.refresh();
  };
  const drawActions = () => {
    if (!ctx.admin) return;
    const count = selected.size;
    const ids = () => ({ids: [...selected]});
    const matching = () => ({filter: letterFilter(ctx.query)});
    fill(actions,
      h('span', {class: 'selection-count'}, count ? `${num(count)} selected` : 'Select dead letters to act on them'),
      h('button', {type: 'button', class: 'button small primary', disabled: !count, onclick: () => act(replay, ids())}, 'Replay selected'),
      h('button', {type: 'button', class: 'button small danger-outline', disabled: !count, onclick: () => act(purge, ids())}, 'Delete selected'),
      h('span', {class: 'spacer'}),
      h('button', {type: 'button', class: 'button small', disabled: !total,
        onclick: () => act(replay, matching())}, 'Replay all matching…'),
      h('button', {type: 'button', class: 'button small danger-outline', disabled: !total,
        onclick: () => act(purge, matching())}, 'Delete all matching…'));
  };
  const toggle = (id, on) => {
    if (on) selected.add(id); else selected.delete(id);
    drawActions();
  };
  const pick = (letter) => h('input', {type: 'checkbox', 'aria-label': `Select dead letter ${letter.id}`, checked: selected.has(letter.id),
    onchange: (event) => toggle(letter.id, event.target.checked)});
  const pickAll = () => h('input', {type: 'checkbox', 'aria-label': 'Select every dead letter shown',
    checked: items.length > 0 && items.every((l) => selected.has(l.id)),
    onchange: (event) => {
      for (const letter of items) toggle(letter.id, event.target.checked);
      results.element.querySelectorAll('tbody input[type=checkbox]').forEach((box) => { box.checked = event.target.checked; });
    }});

  const columns = [
    ctx.admin ? {label: pickAll(), class: 'pick', cell: pick} : null,
    {label: 'ID', class: 'num id', cell: (l) => link(`/ops/dead-letters/${l.id}`, `#${l.id}`)},
    {label: 'Dead', cell: (l) => when(l.dead_at)},
    {label: 'Queue', cell: (l) => l.queue},
    {label: 'Call', cell: call},
    {label: 'Error', cell: (l) => clip(l.error, 'clip error wide')},
    {label: 'Retries', class: 'num', cell: (l) => num(l.retries)},
    {label: 'Replay', cell: replayState},
  ].filter(Boolean);

  /** A page of the API's list: its filters and search are the server's, over the whole archive. */
  const load = async () => {
    const page = await get('/dead-letters', {...letterFilter(ctx.query), limit: PAGE_SIZE, cursor: pager.cursor});
    pager.seen(page);
    items = page.items ?? [];
    total = page.total ?? null;
    if (ctx.admin) columns[0].label = pickAll();
    results.show(
      h('p', {class: 'summary'}, total === null ? '' : `${num(total)} dead letter${total === 1 ? '' : 's'} match${total === 1 ? 'es' : ''}`),
      table(columns, items, {
        empty: 'No dead letter matches. Every message was delivered, is still being tried, or was cleared.',
        rowClass: (l) => (selected.has(l.id) ? 'selected' : null),
        onRowClick: (l) => ctx.navigate(`/ops/dead-letters/${l.id}`),
      }),
      pager.controls(items.length));
    drawActions();
  };

  const bar = filterBar(ctx, FILTERS, () => { pager.reset(); selected.clear(); ctx.refresh(); });
  return {
    title: 'Dead letters',
    view: h('div', {class: 'list-page'}, h('div', {class: 'toolbar'}, bar), ctx.admin ? actions : null, results.element),
    refresh: load,
  };
}
