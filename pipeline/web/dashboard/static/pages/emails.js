// Emails: search by recipient, filter by status and priority.

import {h, badge, when, clip, link, num} from '../dom.js';
import {listPage} from './list.js';

export const EMAIL_STATUSES = ['pending', 'queued', 'sending', 'retrying', 'sent', 'failed', 'suppressed'];

export default listPage({
  title: 'Emails',
  endpoint: '/emails',
  filters: [
    {name: 'q', label: 'Recipient', placeholder: 'Search by recipient…', wide: true},
    {name: 'status', label: 'Status', options: EMAIL_STATUSES.map((s) => [s, s])},
    {name: 'priority', label: 'Priority', options: [['transactional', 'transactional'], ['bulk', 'bulk']]},
  ],
  columns: [
    {label: 'ID', class: 'num id', cell: (e) => link(`/ops/emails/${e.id}`, `#${e.id}`)},
    {label: 'Recipient', cell: (e) => clip(e.to, 'clip strong')},
    {label: 'Subject', cell: (e) => clip(e.subject)},
    {label: 'Status', cell: (e) => badge(e.status)},
    {label: 'Priority', cell: (e) => h('span', {class: 'muted'}, e.priority ?? '')},
    {label: 'Attempts', class: 'num', cell: (e) => num(e.attempts)},
    {label: 'Last error', cell: (e) => clip(e.last_error, 'clip error')},
    {label: 'Created', cell: (e) => when(e.created_at)},
    {label: 'Sent', cell: (e) => when(e.sent_at)},
    {label: 'Provider', cell: (e) => h('span', {class: 'muted'}, e.provider ?? (e.maybe_sent_by ? `${e.maybe_sent_by}?` : ''))},
  ],
  empty: 'No email matches these filters.',
  href: (e) => `/ops/emails/${e.id}`,
});
