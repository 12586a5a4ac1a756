// Building the page: every value from the API goes in as text (Node.append of a string makes a
// text node), never as markup, so nothing the workers store can run in the operator's browser.

const SVG_NS = 'http://www.w3.org/2000/svg';

function apply(element, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') element.setAttribute('class', value);
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (typeof value === 'boolean') element.setAttribute(key, '');
    else element.setAttribute(key, String(value));
  }
}

function appendAll(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** An HTML element: h('td', {class: 'num'}, '12'). Attributes as strings, handlers as on<event>. */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  apply(element, props);
  appendAll(element, children);
  return element;
}

/** An SVG element, the same way. */
export function svg(tag, props, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  apply(element, props);
  appendAll(element, children);
  return element;
}

/** Replace every child of ``element``. */
export function fill(element, ...children) {
  element.replaceChildren();
  appendAll(element, children);
  return element;
}

const numbers = new Intl.NumberFormat('en');

export function num(value) {
  return value === null || value === undefined ? '–' : numbers.format(value);
}

/** 42 -> "42 s", 3700 -> "1 h 1 min": how long, for people. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 && s < 600 ? ` ${s % 60} s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ''}`;
  return `${Math.floor(s / 86400)} d${Math.floor((s % 86400) / 3600) ? ` ${Math.floor((s % 86400) / 3600)} h` : ''}`;
}

function parseTime(value) {
  if (value === null || value === undefined || value === '') return null;
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function absolute(value) {
  const date = parseTime(value);
  if (!date) return '–';
  return date.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

/** Like ``duration`` but to one unit under an hour: "7 min", for "7 min ago". */
function roughly(seconds) {
  return seconds < 3600 && seconds >= 60 ? `${Math.floor(seconds / 60)} min` : duration(seconds);
}

export function relative(value) {
  const date = parseTime(value);
  if (!date) return '–';
  const seconds = (Date.now() - date.getTime()) / 1000;
  if (Math.abs(seconds) < 5) return 'just now';
  return seconds >= 0 ? `${roughly(seconds)} ago` : `in ${roughly(-seconds)}`;
}

/** A time shown as "3 min ago", its exact UTC time on hover; unix seconds or ISO. */
export function when(value) {
  const date = parseTime(value);
  if (!date) return h('span', {class: 'muted'}, '–');
  return h('time', {datetime: date.toISOString(), title: absolute(value)}, relative(value));
}

const STATUS_TONES = {
  sent: 'good', processed: 'good', committed: 'good', succeeded: 'good', replayed: 'good', ok: 'good',
  failed: 'bad', dead: 'bad', archived: 'bad', expired: 'warn', retrying: 'warn', paused: 'warn',
  pending: 'info', queued: 'info', sending: 'info', processing: 'info', active: 'info',
  released: 'neutral', cancelled: 'neutral',
  delivered: 'good', suppressed: 'warn', delivery_delayed: 'warn', bounced: 'bad', complained: 'bad',
};

function tone(status) {
  const word = String(status ?? '').split(/[ ,]/)[0].toLowerCase();
  return STATUS_TONES[word] ?? 'neutral';
}

/** A coloured status word. */
export function badge(status, label = status) {
  return h('span', {class: `badge tone-${tone(status)}`}, label ?? '–');
}

/** A table in a scrolling frame with a sticky header; ``empty`` is shown when there are no rows. */
export function table(columns, rows, {empty = 'Nothing here.', rowClass, onRowClick} = {}) {
  const head = h('thead', null, h('tr', null, columns.map((c) => h('th', {class: c.class, scope: 'col'}, c.label))));
  const body = h('tbody', null, rows.map((row) => {
    const tr = h('tr', {class: rowClass?.(row)}, columns.map((c) => h('td', {class: c.class}, c.cell(row))));
    if (onRowClick) {
      tr.classList.add('clickable');
      tr.addEventListener('click', (event) => {
        if (event.target.closest('a, button, input, label')) return;
        onRowClick(row, event);
      });
    }
    return tr;
  }));
  const frame = h('div', {class: 'table-frame'}, h('table', {class: 'data'}, head, body));
  if (!rows.length) frame.append(h('p', {class: 'empty'}, empty));
  return frame;
}

/** A definition list of label/value pairs; values may be nodes. */
export function fields(pairs) {
  return h('dl', {class: 'fields'}, pairs.filter(Boolean).map(([label, value]) => [
    h('dt', null, label),
    h('dd', null, value === null || value === undefined || value === '' ? h('span', {class: 'muted'}, '–') : value),
  ]));
}

/** A card with a title, optional tools on the right, and a body. */
export function card(title, body, {tools, wide, id} = {}) {
  return h('section', {class: `card${wide ? ' wide' : ''}`, id},
    h('header', {class: 'card-head'}, h('h2', null, title), tools ?? null),
    h('div', {class: 'card-body'}, body));
}

/** A one-line text with the whole text on hover (for long errors in tables). */
export function clip(text, className = 'clip') {
  if (text === null || text === undefined || text === '') return h('span', {class: 'muted'}, '–');
  return h('span', {class: className, title: String(text)}, String(text));
}

/** A link inside the dashboard (handled by the router, still a real link for new tabs). */
export function link(href, ...children) {
  return h('a', {href, dataset: {route: ''}}, ...children);
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
