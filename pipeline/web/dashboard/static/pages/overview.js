// The overview: what is waiting, what is failing, the provider limiter, the last hour.

import {get, post} from '../api.js';
import {activityChart, legend} from '../chart.js';
import {h, fill, num, duration, when, badge, table, card, link, fields} from '../dom.js';
import {confirmDialog, toast, actionFailed, region} from '../ui.js';
import {EMAIL_STATUSES} from './emails.js';

const WAITING = ['pending', 'queued', 'sending', 'retrying'];

function sum(counts, keys) {
  return keys.reduce((total, key) => total + (counts?.[key] ?? 0), 0);
}

function tile(label, value, {sub, tone, href} = {}) {
  const body = [h('span', {class: 'tile-label'}, label), h('strong', {class: 'tile-value'}, value), sub ? h('span', {class: 'tile-sub'}, sub) : null];
  return href
    ? h('a', {class: `tile tone-${tone ?? 'neutral'}`, href, dataset: {route: ''}}, body)
    : h('div', {class: `tile tone-${tone ?? 'neutral'}`}, body);
}

function tiles(stats) {
  const emails = stats.emails ?? {};
  const waiting = sum(emails, WAITING);
  const oldest = stats.oldest_due_email;
  const webhooks = stats.webhooks ?? {};
  const reservations = stats.reservations ?? {};
  const shortOrders = stats.orders?.stock_short ?? 0;
  return h('div', {class: 'tiles'},
    tile('Emails waiting', num(waiting), {
      sub: oldest ? `oldest due ${duration(oldest.age_seconds)} ago` : 'none due',
      tone: oldest && oldest.age_seconds > 300 ? 'warn' : 'info', href: '/ops/emails?status=queued'}),
    tile('Emails sent', num(emails.sent ?? 0), {tone: 'good', href: '/ops/emails?status=sent'}),
    tile('Emails failed', num(emails.failed ?? 0), {tone: emails.failed ? 'bad' : 'neutral', href: '/ops/emails?status=failed'}),
    tile('Dead letters', num(stats.dead_letters ?? 0), {
      sub: 'messages given up', tone: stats.dead_letters ? 'bad' : 'neutral', href: '/ops/dead-letters'}),
    tile('Webhooks awaiting retry', num(webhooks.awaiting_retry ?? 0), {
      sub: `${num(webhooks.archived ?? 0)} archived · ${num(webhooks.due_now ?? 0)} due now`,
      tone: webhooks.awaiting_retry ? 'warn' : 'neutral', href: '/ops/webhooks?status=failed'}),
    tile('Active reservations', num(reservations.active ?? 0), {
      sub: `${num(reservations.expired_not_released ?? 0)} expired, not released`,
      tone: reservations.expired_not_released ? 'warn' : 'info', href: '/ops/reservations'}),
    shortOrders ? tile('Paid orders short of stock', num(shortOrders), {
      sub: (stats.orders.stock_short_newest ?? []).join(', '), tone: 'bad'}) : null);
}

function rate(value) {
  return value === null || value === undefined ? '–' : `${num(value)} /s`;
}

async function pause(ctx) {
  const values = await confirmDialog({
    title: 'Pause sending',
    confirm: 'Pause',
    danger: true,
    body: [
      h('p', null, 'Emails wait in the broker until sending resumes; nothing is lost or retried.'),
      h('label', {class: 'field'}, 'What to pause',
        h('select', {name: 'scope'}, h('option', {value: 'bulk'}, 'Bulk email only'), h('option', {value: 'all'}, 'All email'))),
      h('label', {class: 'field'}, 'For how many minutes (empty: until resumed)', h('input', {type: 'number', name: 'minutes', min: 1, step: 1})),
      h('label', {class: 'field'}, 'Reason', h('input', {type: 'text', name: 'reason', maxlength: 200, placeholder: 'e.g. provider incident'})),
    ],
  });
  if (!values) return;
  const body = {scope: values.scope};
  if (values.minutes) body.minutes = Number(values.minutes);
  if (values.reason) body.reason = values.reason;
  try {
    await post('/sending/pause', body);
    toast(values.scope === 'all' ? 'Sending paused.' : 'Bulk sending paused.');
  } catch (error) {
    actionFailed(error, ctx);
  }
  ctx.refresh();
}

async function resume(ctx, scope) {
  try {
    await post('/sending/resume', {scope});
    toast('Sending resumed.');
  } catch (error) {
    actionFailed(error, ctx);
  }
  ctx.refresh();
}

const SCOPE_NAMES = {all: 'All sending', bulk: 'Bulk sending'};

/** An operator's pause of one scope ({until, reason, paused_at, by}), with its resume button. */
function operatorPause(scope, pause, ctx) {
  return h('div', {class: 'callout tone-warn'},
    h('div', {class: 'callout-line'}, h('strong', null, `${SCOPE_NAMES[scope] ?? scope} paused`),
      ctx.admin ? h('button', {type: 'button', class: 'button small', onclick: () => resume(ctx, scope)}, 'Resume') : null),
    h('div', {class: 'small'}, pause.reason ? `“${pause.reason}” · ` : '', pause.by ? `by ${pause.by} · ` : '',
      pause.until ? ['until ', when(pause.until)] : 'until resumed'));
}

function sending(state, ctx) {
  const pauses = Object.entries(state.operator_pauses ?? {}).filter(([, pause]) => pause);
  const callouts = pauses.map(([scope, pause]) => operatorPause(scope, pause, ctx));
  const providers = Object.entries(state.providers ?? {});
  for (const [name, own] of providers) {
    if (own.outage) {
      callouts.push(h('div', {class: 'callout tone-bad outage'}, h('strong', null, `${name} is down`),
        h('div', {class: 'small'}, 'Paused for an outage', own.paused_since ? [' since ', when(own.paused_since)] : '',
          ' · probed every few seconds; emails wait without spending retries',
          providers.length > 1 ? ' or go to the next provider' : '')));
    } else if (own.paused) {
      callouts.push(h('div', {class: 'callout tone-warn'}, h('strong', null, `Held by ${name}`),
        h('div', {class: 'small'}, own.pause_reason ?? 'a 429', own.paused_until ? [' · until ', when(own.paused_until)] : '')));
    }
  }
  if (!callouts.length) callouts.push(h('div', {class: 'callout tone-good'}, h('strong', null, 'Sending'), ' at the shared provider rate'));
  const tools = ctx.admin ? h('button', {type: 'button', class: 'button small', onclick: () => pause(ctx)}, 'Pause…') : null;
  return card('Provider limiter', [callouts, fields([
    ['Rate in use', rate(state.per_second)],
    ['Configured', rate(state.configured_per_second)],
    ['Provider says', rate(state.provider_limit)],
    ['Cap', rate(state.cap_per_second)],
    ['Providers', providers.map(([name, own]) => `${name}: ${own.outage ? 'outage' : own.paused ? 'paused' : 'sending'}`).join(' · ') || '—'],
  ])], {tools, id: 'limiter'});
}

/** A status's count for one priority; the API splits only the emails still to send (sent and failed: a dash). */
function split(count) {
  return count === undefined ? h('span', {title: 'Split by priority for emails still to send only'}, '–') : num(count);
}

function emailsByStatus(stats) {
  const counts = stats.emails ?? {};
  const priorities = stats.emails_by_priority ?? {};
  const statuses = [...EMAIL_STATUSES, ...Object.keys(counts).filter((s) => !EMAIL_STATUSES.includes(s))];
  const rows = statuses.map((status) => ({status, count: counts[status] ?? 0,
    transactional: priorities.transactional?.[status], bulk: priorities.bulk?.[status]}));
  return card('Emails by status', table([
    {label: 'Status', cell: (r) => link(`/ops/emails?status=${r.status}`, badge(r.status))},
    {label: 'Emails', class: 'num', cell: (r) => num(r.count)},
    {label: 'Transactional', class: 'num muted', cell: (r) => split(r.transactional)},
    {label: 'Bulk', class: 'num muted', cell: (r) => split(r.bulk)},
  ], rows));
}

function queues(stats) {
  const rows = stats.queues ?? [];
  return card('Queues', table([
    {label: 'Queue', cell: (r) => h('code', null, r.name)},
    {label: 'Ready', class: 'num', cell: (r) => num(r.ready)},
    {label: 'Delayed', class: 'num', cell: (r) => num(r.delayed)},
    {label: 'Dead', class: 'num', cell: (r) => (r.dead ? h('strong', {class: 'text-bad'}, num(r.dead)) : num(r.dead))},
  ], rows, {empty: 'No queue figures (the broker did not answer).'}));
}

/** Dead letters by queue and actor, most first: the API's ``dead_letter_groups`` (one GROUP BY over the archive). */
function deadLetterGroups(stats) {
  const groups = [...(stats.dead_letter_groups ?? [])].sort((a, b) => b.count - a.count);
  const filter = (g) => `/ops/dead-letters?${new URLSearchParams({queue: g.queue, ...(g.actor ? {actor: g.actor} : {})})}`;
  return card('Dead letters by queue and actor', table([
    {label: 'Queue', cell: (g) => link(filter(g), g.queue)},
    {label: 'Actor', cell: (g) => (g.actor ? h('code', null, g.actor) : h('span', {class: 'muted'}, '(undecodable)'))},
    {label: 'Dead', class: 'num', cell: (g) => num(g.count)},
    {label: 'Newest', cell: (g) => when(g.newest)},
  ], groups, {empty: 'No dead letters. Every message was delivered or is still being tried.'}));
}

function webhookStatuses(stats) {
  const byStatus = stats.webhooks?.by_status ?? {};
  return card('Webhook events', [
    h('div', {class: 'chips'}, Object.entries(byStatus).map(([status, count]) =>
      link(`/ops/webhooks?status=${status}`, badge(status, `${status} ${num(count)}`)))),
    fields([
      ['Average retries', stats.webhooks?.average_retries === undefined ? null : Number(stats.webhooks.average_retries ?? 0).toFixed(2)],
      ['Due now', num(stats.webhooks?.due_now ?? 0)],
    ]),
  ]);
}

/** One rate against its limit: a bar scaled to twice the limit, lines at half of it and at it. */
function rateMeter(value, limit) {
  const scale = limit * 2;
  const width = Math.min(value / scale, 1) * 100;
  const tone = value >= limit ? 'bad' : value >= limit / 2 ? 'warn' : 'good';
  const percent = (ratio) => `${(ratio * 100).toFixed(ratio < 0.01 ? 3 : 2).replace(/\.?0+$/, '')}%`;
  return h('div', {class: `rate-meter tone-${tone}`, title: `limit ${percent(limit)}`},
    h('div', {class: 'rate-track'},
      h('div', {class: 'rate-fill', style: `width: ${width}%`}),
      h('div', {class: 'rate-line half', style: 'left: 25%', title: `warn at ${percent(limit / 2)}`}),
      h('div', {class: 'rate-line limit', style: 'left: 50%', title: `Resend's limit: ${percent(limit)}`})),
    h('span', {class: 'rate-value'}, percent(value), h('span', {class: 'muted small'}, ` / ${percent(limit)}`)));
}

/** Bounce and complaint rates of the last 24 hours and 7 days, against Resend's 4% and 0.08%. */
function deliveryRates(stats) {
  const delivery = stats.delivery ?? {};
  const limits = delivery.thresholds ?? {bounce_rate: 0.04, complaint_rate: 0.0008};
  const rows = Object.entries(delivery.rates ?? {}).map(([window, figures]) => ({window, ...figures}));
  return card('Bounce and complaint rates', [
    table([
      {label: 'Window', cell: (r) => r.window},
      {label: 'Sent', class: 'num', cell: (r) => num(r.sent)},
      {label: 'Bounce rate (limit 4%)', cell: (r) => rateMeter(r.bounce_rate, limits.bounce_rate)},
      {label: 'Complaint rate (limit 0.08%)', cell: (r) => rateMeter(r.complaint_rate, limits.complaint_rate)},
    ], rows, {empty: 'No figures.'}),
    fields([
      ['Suppressed addresses', link('/ops/suppressions', num(delivery.suppressed_addresses ?? 0))],
      ['Emails held back', link('/ops/emails?status=suppressed', num(delivery.suppressed_emails ?? 0))],
      ['Events for unknown emails', num(delivery.unmatched_events ?? 0)],
    ]),
  ], {wide: true, id: 'delivery-rates'});
}

export default function overview(ctx) {
  const top = region('overview-top');
  const chartFrame = h('div', {class: 'chart-frame'});
  const chartLegend = region('chart-legend');
  const limiter = region('limiter-slot');
  const bottom = region('overview-grid');
  let points = [];
  const drawChart = () => fill(chartFrame, activityChart(points, chartFrame.clientWidth || 700));
  new ResizeObserver(() => { if (points.length) drawChart(); }).observe(chartFrame);
  const view = h('div', {class: 'overview'},
    top.element,
    h('div', {class: 'overview-row'},
      card('Sends and failures per minute', [chartLegend.element, chartFrame], {wide: true}),
      limiter.element),
    bottom.element);
  return {
    title: 'Overview',
    view,
    refresh: async () => {
      const [stats, activity] = await Promise.all([get('/stats'), get('/activity', {minutes: 60})]);
      points = activity.minutes ?? [];
      top.show(tiles(stats));
      fill(chartLegend.element, legend(points));
      drawChart();
      limiter.show(sending(stats.sending ?? {}, ctx));
      bottom.show(deliveryRates(stats), emailsByStatus(stats), queues(stats), deadLetterGroups(stats), webhookStatuses(stats));
    },
  };
}
