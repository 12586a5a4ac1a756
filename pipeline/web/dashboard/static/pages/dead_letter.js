// One dead letter: why it died (error, traceback), what it was (call, options, raw body), and its
// item's state now; replay or delete for admins.

import {get} from '../api.js';
import {h, when, fields, card, link, pretty, badge, num, absolute} from '../dom.js';
import {region} from '../ui.js';
import {call, replayState} from './dead_letters.js';
import {replay, deleteOne} from './dead_letter_actions.js';

function item(letter) {
  if (!letter.item) return h('p', {class: 'muted'}, letter.item_note ?? 'No item.');
  const {kind, id, status, members, ...rest} = letter.item;
  const href = kind === 'email' ? `/ops/emails/${id}` : kind === 'webhook event' ? `/ops/webhooks/${id}` : null;
  return [
    h('p', {class: 'item-head'}, href ? link(href, `${kind} #${id}`) : `${kind} #${id}`, ' is ', badge(status)),
    fields(Object.entries(rest).map(([name, value]) => [name.replaceAll('_', ' '),
      /_at$/.test(name) && value ? [when(value), h('span', {class: 'muted small'}, ` ${absolute(value)}`)] : value === null ? null : String(value)])),
    members ? h('p', {class: 'muted'}, `${num(members.length)} members: `,
      members.filter(Boolean).map((m) => `#${m.id} ${m.status}`).join(', ')) : null,
  ];
}

export default function deadLetter(ctx) {
  const id = ctx.params[0];
  const content = region('record');
  const replayButton = h('button', {type: 'button', class: 'button primary', onclick: async () => {
    if (await replay({ids: [Number(id)]}, ctx)) ctx.refresh();
  }}, 'Replay');
  const tools = ctx.admin ? h('div', {class: 'actions'},
    replayButton,
    h('button', {type: 'button', class: 'button danger-outline', onclick: async () => {
      if (await deleteOne(id, ctx)) ctx.navigate('/ops/dead-letters');
    }}, 'Delete')) : null;
  return {
    title: `Dead letter #${id}`,
    view: h('div', {class: 'detail'},
      h('div', {class: 'detail-head'}, h('p', {class: 'crumbs'}, link('/ops/dead-letters', '← Dead letters')), tools),
      content.element),
    refresh: async () => {
      const letter = await get(`/dead-letters/${encodeURIComponent(id)}`);
      replayButton.disabled = Boolean(letter.replayed_at);  // a dead letter is replayed at most once
      replayButton.title = letter.replayed_at ? 'Replayed already' : '';
      content.show(h('div', {class: 'detail-grid'},
        card('Error', [h('p', {class: 'error-text'}, letter.error), fields([
          ['Call', call(letter)],
          ['Queue', letter.queue],
          ['Retries', num(letter.retries)],
          ['Dead', [when(letter.dead_at), h('span', {class: 'muted small'}, ` ${absolute(letter.dead_at)}`)]],
          ['Replay', replayState(letter)],
          ['Message id', h('code', null, letter.message_id)],
          letter.replay_of ? ['Replay of', h('code', null, letter.replay_of)] : null,
        ])]),
        card('Its item now', item(letter)),
        card('Traceback', letter.traceback ? h('pre', {class: 'code traceback'}, letter.traceback) : h('p', {class: 'muted'}, 'No traceback was kept.'), {wide: true}),
        card('Message', h('pre', {class: 'code'}, letter.raw_body ?? pretty({args: letter.args, kwargs: letter.kwargs, options: letter.options})), {wide: true})));
    },
  };
}
