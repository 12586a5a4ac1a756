// Stock reservations: active (holding stock), expired (past their time), released.

import {h, badge, when, num} from '../dom.js';
import {listPage} from './list.js';

export default listPage({
  title: 'Reservations',
  endpoint: '/reservations',
  filters: [
    {name: 'state', label: 'State', any: 'Every state',
      options: [['active', 'active'], ['expired', 'expired, not released'], ['released', 'released'], ['committed', 'committed']]},
  ],
  columns: [
    {label: 'ID', class: 'num id', cell: (r) => `#${r.id}`},
    {label: 'Order', cell: (r) => r.order_id ?? h('span', {class: 'muted'}, '–')},
    {label: 'Product', class: 'num', cell: (r) => `#${r.product_id}`},
    {label: 'Quantity', class: 'num', cell: (r) => num(r.quantity)},
    {label: 'Status', cell: (r) => badge(r.state)},
    {label: 'Expires', cell: (r) => when(r.expires_at)},
    {label: 'Created', cell: (r) => when(r.created_at)},
    {label: 'Released', cell: (r) => when(r.released_at)},
  ],
  empty: 'No reservation in this state.',
});
