// The suppression list: addresses no email is sent to (bounced for good, complained, or added by hand).
// Either role sees it; the admin adds and removes (each change an audit line on the server).

import {get, post, remove} from '../api.js';
import {h, table, when, link, clip} from '../dom.js';
import {confirmDialog, toast, actionFailed, filterBar, Pager, region} from '../ui.js';

const PAGE_SIZE = 100;

async function add(ctx) {
  const values = await confirmDialog({
    title: 'Suppress an address',
    confirm: 'Suppress',
    danger: true,
    body: [
      h('p', null, 'No email is sent to this address until the suppression is removed.'),
      h('label', {class: 'field'}, 'Address', h('input', {type: 'email', name: 'address', required: true, maxlength: 320})),
      h('label', {class: 'field'}, 'Reason', h('input', {type: 'text', name: 'reason', maxlength: 200, placeholder: 'e.g. asked to stop'})),
    ],
  });
  if (!values || !values.address) return;
  try {
    const answer = await post('/suppressions', {address: values.address, ...(values.reason ? {reason: values.reason} : {})});
    toast(answer.changed ? `Suppressed ${answer.address}.` : `${answer.address} was suppressed already.`);
  } catch (error) {
    actionFailed(error, ctx);
  }
  ctx.refresh();
}

async function lift(ctx, address) {
  const confirmed = await confirmDialog({
    title: 'Remove the suppression',
    confirm: 'Remove',
    danger: true,
    body: [h('p', null, `The next email to ${address} is sent. If it bounces again, the address is suppressed again.`)],
  });
  if (!confirmed) return;
  try {
    await remove(`/suppressions/${encodeURIComponent(address)}`);
    toast(`Removed ${address}.`);
  } catch (error) {
    actionFailed(error, ctx);
  }
  ctx.refresh();
}

export default function suppressions(ctx) {
  const results = region('results');
  const filters = [{name: 'prefix', label: 'Address starts with', placeholder: 'Address starts with…', wide: true}];
  let pager;
  const columns = [
    {label: 'Address', cell: (s) => link(`/ops/emails?q=${encodeURIComponent(s.address)}`, s.address)},
    {label: 'Reason', cell: (s) => clip(s.reason)},
    {label: 'Email', class: 'num', cell: (s) => (s.email_id ? link(`/ops/emails/${s.email_id}`, `#${s.email_id}`) : null)},
    {label: 'By', cell: (s) => s.created_by},
    {label: 'Since', cell: (s) => when(s.created_at)},
    ...(ctx.admin ? [{label: '', cell: (s) => h('button', {type: 'button', class: 'button small', onclick: () => lift(ctx, s.address)}, 'Remove')}] : []),
  ];
  const load = async () => {
    const prefix = ctx.query.get('prefix');
    const page = await get('/suppressions', {prefix, limit: PAGE_SIZE, cursor: pager.cursor});
    pager.seen(page);
    const items = page.items ?? [];
    results.show(table(columns, items, {empty: 'No suppressed address.'}), pager.controls(items.length));
  };
  pager = new Pager(() => ctx.refresh());
  const bar = filterBar(ctx, filters, () => { pager.reset(); ctx.refresh(); });
  const tools = ctx.admin ? h('button', {type: 'button', class: 'button small primary', onclick: () => add(ctx)}, 'Suppress an address…') : null;
  return {
    title: 'Suppressions',
    view: h('div', {class: 'list-page'}, h('div', {class: 'toolbar'}, bar, tools), results.element),
    refresh: load,
  };
}
