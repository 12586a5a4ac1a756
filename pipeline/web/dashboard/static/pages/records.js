// One email, one webhook event: every field the API gives, the body or payload below.

import {get} from '../api.js';
import {h, badge, when, fields, card, link, pretty, num, table} from '../dom.js';
import {region} from '../ui.js';

const TIME_FIELDS = /(_at|_for)$/;
/** Shown in the card's body, not in the field list. */
const BODY_FIELDS = new Set(['html', 'text', 'template_data', 'payload']);

function value(name, raw) {
  if (raw === null || raw === undefined) return null;
  if (name === 'status') return badge(raw);
  if (TIME_FIELDS.test(name)) return [when(raw), h('span', {class: 'muted small'}, ` ${raw}`)];
  if (typeof raw === 'number') return num(raw);
  if (typeof raw === 'object') return h('code', null, JSON.stringify(raw));
  return String(raw);
}

function label(name) {
  return name.replaceAll('_', ' ').replace(/^./, (c) => c.toUpperCase());
}

function bodies(record) {
  return [...BODY_FIELDS].filter((name) => record[name] !== null && record[name] !== undefined).map((name) =>
    card(label(name), h('pre', {class: 'code'}, typeof record[name] === 'string' ? record[name] : pretty(record[name])), {wide: true}));
}

/** An email's delivery events (Resend's webhooks), in the order they happened. */
async function deliveryEvents(id) {
  const events = await get(`/emails/${encodeURIComponent(id)}/events`);
  return card('Delivery events', table([
    {label: 'When', cell: (e) => when(e.occurred_at ?? e.received_at)},
    {label: 'Event', cell: (e) => badge(e.type.replace(/^email\./, ''))},
    {label: 'Bounce', cell: (e) => (e.bounce ? [e.bounce.type ?? '', ' ', h('span', {class: 'muted small'}, e.bounce.message ?? '')] : null)},
    {label: 'Received', cell: (e) => when(e.received_at)},
  ], events.items ?? [], {empty: 'No delivery event yet (an email sent by SMTP never has any).'}), {wide: true});
}

function recordPage({title, endpoint, back, backLabel, extra}) {
  return (ctx) => {
    const id = ctx.params[0];
    const content = region('record');
    return {
      title: `${title} #${id}`,
      view: h('div', {class: 'detail'}, h('p', {class: 'crumbs'}, link(back, `← ${backLabel}`)), content.element),
      refresh: async () => {
        const record = await get(`${endpoint}/${encodeURIComponent(id)}`);
        const pairs = Object.entries(record).filter(([name]) => !BODY_FIELDS.has(name)).map(([name, raw]) => [label(name), value(name, raw)]);
        const more = extra ? await extra(id) : null;
        content.show(h('div', {class: 'detail-grid'}, card('Fields', fields(pairs), {wide: true}), more, bodies(record)));
      },
    };
  };
}

export const emailDetail = recordPage({title: 'Email', endpoint: '/emails', back: '/ops/emails', backLabel: 'Emails', extra: deliveryEvents});
export const webhookDetail = recordPage({title: 'Webhook event', endpoint: '/webhooks', back: '/ops/webhooks', backLabel: 'Webhook events'});
