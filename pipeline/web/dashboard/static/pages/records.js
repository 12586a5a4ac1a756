// One email, one webhook event: every field the API gives, the body or payload below.

import {get} from '../api.js';
import {h, badge, when, fields, card, link, pretty, num} from '../dom.js';
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

function recordPage({title, endpoint, back, backLabel}) {
  return (ctx) => {
    const id = ctx.params[0];
    const content = region('record');
    return {
      title: `${title} #${id}`,
      view: h('div', {class: 'detail'}, h('p', {class: 'crumbs'}, link(back, `← ${backLabel}`)), content.element),
      refresh: async () => {
        const record = await get(`${endpoint}/${encodeURIComponent(id)}`);
        const pairs = Object.entries(record).filter(([name]) => !BODY_FIELDS.has(name)).map(([name, raw]) => [label(name), value(name, raw)]);
        content.show(h('div', {class: 'detail-grid'}, card('Fields', fields(pairs), {wide: true}), bodies(record)));
      },
    };
  };
}

export const emailDetail = recordPage({title: 'Email', endpoint: '/emails', back: '/ops/emails', backLabel: 'Emails'});
export const webhookDetail = recordPage({title: 'Webhook event', endpoint: '/webhooks', back: '/ops/webhooks', backLabel: 'Webhook events'});
