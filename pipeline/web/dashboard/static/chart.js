// Sends and failures per minute as stacked bars, drawn as inline SVG at the frame's own width
// (so its text keeps its size); each bar's exact figures are in its <title> (hover).

import {h, svg, num} from './dom.js';

const HEIGHT = 200;
const PAD = {top: 12, right: 8, bottom: 24, left: 40};

function niceMax(value) {
  if (value <= 4) return 4;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * magnitude * 4 >= value) * magnitude;
  return step * 4;
}

function clock(date) {
  return date.toLocaleTimeString([], {hour: '2-digit', minute: '2-digit', hourCycle: 'h23'});
}

/** The chart of ``points`` ([{at, sent, failed}], oldest first) in a frame ``width`` pixels wide. */
export function activityChart(points, width) {
  const inner = {w: Math.max(120, width - PAD.left - PAD.right), h: HEIGHT - PAD.top - PAD.bottom};
  const top = niceMax(Math.max(0, ...points.map((p) => (p.sent ?? 0) + (p.failed ?? 0))));
  const y = (value) => PAD.top + inner.h - (value / top) * inner.h;
  const slot = inner.w / Math.max(points.length, 1);
  const bar = Math.max(1, slot * 0.72);
  const grid = [0, 1, 2, 3, 4].map((i) => {
    const value = (top / 4) * i;
    return svg('g', {class: 'grid'},
      svg('line', {x1: PAD.left, x2: PAD.left + inner.w, y1: y(value), y2: y(value)}),
      svg('text', {x: PAD.left - 6, y: y(value) + 4, 'text-anchor': 'end'}, num(value)));
  });
  const bars = points.map((point, index) => {
    const x = PAD.left + index * slot + (slot - bar) / 2;
    const sent = point.sent ?? 0;
    const failed = point.failed ?? 0;
    const at = new Date(point.at);
    return svg('g', {class: 'bar'},
      svg('title', null, `${clock(at)}: ${num(sent)} sent, ${num(failed)} failed`),
      svg('rect', {class: 'hit', x: PAD.left + index * slot, y: PAD.top, width: slot, height: inner.h}),
      sent ? svg('rect', {class: 'sent', x, width: bar, y: y(sent), height: y(0) - y(sent)}) : null,
      failed ? svg('rect', {class: 'failed', x, width: bar, y: y(sent + failed), height: y(sent) - y(sent + failed)}) : null);
  });
  const labels = points.map((point, index) => {
    const at = new Date(point.at);
    if (at.getMinutes() % 10 !== 0) return null;
    const x = PAD.left + (index + 0.5) * slot;
    const anchor = x > width - 24 ? 'end' : 'middle';  // the last label stays inside the frame
    return svg('text', {class: 'axis', x: anchor === 'end' ? width - 2 : x, y: HEIGHT - 6, 'text-anchor': anchor}, clock(at));
  });
  return svg('svg', {class: 'chart', width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: 'img',
    'aria-label': 'Emails sent and failed per minute over the last hour'}, grid, bars, labels);
}

/** The chart's legend with the hour's totals. */
export function legend(points) {
  const total = (key) => points.reduce((sum, p) => sum + (p[key] ?? 0), 0);
  return h('div', {class: 'legend'},
    h('span', {class: 'key sent'}, `Sent ${num(total('sent'))}`),
    h('span', {class: 'key failed'}, `Failed ${num(total('failed'))}`),
    h('span', {class: 'muted'}, 'per minute, last 60 minutes'));
}
