// Webhook events: by status and provider, searched by event id or order id.

import {h, badge, when, clip, link, num} from '../dom.js';
import {listPage} from './list.js';

const STATUSES = ['pending', 'processed', 'failed'];
const PROVIDERS = ['telebirr', 'cbe', 'awash', 'generic'];

export default listPage({
  title: 'Webhook events',
  endpoint: '/webhooks',
  filters: [
    {name: 'q', label: 'Search', placeholder: 'Event id or order id…', wide: true},
    {name: 'status', label: 'Status', options: STATUSES.map((s) => [s, s])},
    {name: 'provider', label: 'Provider', options: PROVIDERS.map((p) => [p, p])},
  ],
  columns: [
    {label: 'ID', class: 'num id', cell: (e) => link(`/ops/webhooks/${e.id}`, `#${e.id}`)},
    {label: 'Provider', cell: (e) => e.provider},
    {label: 'Event', cell: (e) => clip(e.event_id, 'clip mono')},
    {label: 'Type', cell: (e) => h('code', null, e.type ?? '')},
    {label: 'Order', cell: (e) => e.order_id ?? ''},
    {label: 'Status', cell: (e) => badge(e.archived ? 'archived' : e.status, e.archived ? `${e.status}, archived` : e.status)},
    {label: 'Retries', class: 'num', cell: (e) => num(e.retry_count)},
    {label: 'Last error', cell: (e) => clip(e.last_error, 'clip error')},
    {label: 'Received', cell: (e) => when(e.received_at)},
  ],
  empty: 'No webhook event matches these filters.',
  href: (e) => `/ops/webhooks/${e.id}`,
});
