// Shared pieces of the pages: confirmation dialogs, toasts, filter forms, keyset paging.

import {h, fill} from './dom.js';

/** True while a dialog is open: the auto-refresh waits, so nothing moves under the operator's hand. */
export function dialogOpen() {
  return document.querySelector('dialog[open]') !== null;
}

/**
 * A modal dialog; resolves to the submitted form's values, or null when cancelled.
 * ``body`` may hold form fields; ``danger`` paints the confirm button red.
 */
export function confirmDialog({title, body, confirm, danger = false}) {
  return new Promise((resolve) => {
    const form = h('form', {method: 'dialog', class: 'dialog-form'},
      h('h2', null, title),
      h('div', {class: 'dialog-body'}, body),
      h('footer', null,
        h('button', {type: 'button', class: 'button', value: 'cancel', onclick: () => dialog.close('cancel')}, 'Cancel'),
        h('button', {type: 'submit', class: `button ${danger ? 'danger' : 'primary'}`, value: 'confirm'}, confirm)));
    const dialog = h('dialog', {class: 'dialog', 'aria-label': title}, form);
    dialog.addEventListener('close', () => {
      const values = dialog.returnValue === 'confirm' ? Object.fromEntries(new FormData(form)) : null;
      dialog.remove();
      resolve(values);
    });
    document.body.append(dialog);
    dialog.showModal();
    form.querySelector('button[type=submit]').focus();
  });
}

/** A message at the bottom right for a few seconds (role=status: read out by screen readers). */
export function toast(message, kind = 'good') {
  let tray = document.getElementById('toasts');
  if (!tray) {
    tray = h('div', {id: 'toasts', role: 'status', 'aria-live': 'polite'});
    document.body.append(tray);
  }
  const note = h('div', {class: `toast tone-${kind}`}, message);
  tray.append(note);
  setTimeout(() => note.remove(), 6000);
}

/** An error of an action, as a toast; 401 hands over to the sign-in. */
export function actionFailed(error, ctx) {
  if (error.status === 401) {
    ctx.signedOut();
    return;
  }
  toast(error.message, 'bad');
}

/**
 * A filter bar bound to the page's query string: changing a field rewrites the URL (so a
 * reload or a shared link shows the same list) and calls ``onChange``.
 */
export function filterBar(ctx, specs, onChange) {
  const controls = specs.map((spec) => control(spec, ctx.query.get(spec.name) ?? ''));
  let timer = null;
  const changed = () => {
    const query = new URLSearchParams();
    for (const element of controls.map((c) => c.input)) {
      const value = element.type === 'checkbox' ? (element.checked ? 'true' : '') : element.value.trim();
      if (value) query.set(element.name, value);
    }
    ctx.replaceQuery(query);
    onChange();
  };
  for (const {input} of controls) {
    const typing = input.type === 'search' || input.type === 'text';
    input.addEventListener(typing ? 'input' : 'change', () => {
      clearTimeout(timer);
      timer = setTimeout(changed, typing ? 300 : 0);
    });
  }
  return h('form', {class: 'filters', role: 'search', onsubmit: (event) => { event.preventDefault(); changed(); }},
    controls.map((c) => c.wrapper));
}

function control(spec, value) {
  let input;
  if (spec.options) {
    input = h('select', {name: spec.name, 'aria-label': spec.label},
      h('option', {value: ''}, spec.any ?? `Any ${spec.label.toLowerCase()}`),
      spec.options.map(([optionValue, label]) => h('option', {value: optionValue, selected: optionValue === value}, label)));
  } else if (spec.type === 'checkbox') {
    input = h('input', {type: 'checkbox', name: spec.name, checked: value === 'true'});
    return {input, wrapper: h('label', {class: 'check'}, input, spec.label)};
  } else {
    input = h('input', {
      type: spec.type ?? 'search', name: spec.name, value, placeholder: spec.placeholder,
      'aria-label': spec.label, list: spec.list, class: spec.wide ? 'wide' : null, autocomplete: 'off',
    });
  }
  return {input, wrapper: input};
}

/** The query string's filters as an object for the API (``names`` picks which). */
export function filtersOf(query, names) {
  return Object.fromEntries(names.filter((name) => query.get(name)).map((name) => [name, query.get(name)]));
}

/**
 * Keyset paging: the cursors walked so far, so "previous" works too. ``load(cursor)`` fetches a
 * page; the pager shows where the operator is and redraws through ``render``.
 */
export class Pager {
  constructor(render) {
    this.render = render;
    this.cursors = [null];
    this.next = null;
  }

  get cursor() {
    return this.cursors[this.cursors.length - 1];
  }

  reset() {
    this.cursors = [null];
  }

  seen(page) {
    this.next = page.next_cursor ?? null;
  }

  controls(count) {
    const page = this.cursors.length;
    return h('nav', {class: 'pager', 'aria-label': 'Pages'},
      h('span', {class: 'muted'}, count ? `Page ${page} · ${count} shown` : `Page ${page}`),
      h('button', {type: 'button', class: 'button small', disabled: page === 1,
        onclick: () => { this.cursors.pop(); this.render(); }}, '← Previous'),
      h('button', {type: 'button', class: 'button small', disabled: !this.next,
        onclick: () => { this.cursors.push(this.next); this.render(); }}, 'Next page →'));
  }
}

/** A region redrawn at each refresh: keeps its node, swaps its content. */
export function region(className = 'region') {
  const element = h('div', {class: className});
  return {element, show: (...children) => fill(element, ...children)};
}
