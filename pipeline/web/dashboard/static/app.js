// The dashboard's frame: sign-in, the navigation, the router of /ops/<page>, the auto-refresh and
// the "API unreachable" banner. Each page is a module whose default export mounts it (pages/*.js).

import {currentSession, signIn, signOut} from './api.js';
import {h, fill, duration} from './dom.js';
import {dialogOpen} from './ui.js';
import overview from './pages/overview.js';
import emails from './pages/emails.js';
import webhooks from './pages/webhooks.js';
import reservations from './pages/reservations.js';
import deadLetters from './pages/dead_letters.js';
import deadLetter from './pages/dead_letter.js';
import suppressions from './pages/suppressions.js';
import {emailDetail, webhookDetail} from './pages/records.js';

const BASE = '/ops';
/** Set once the first page's data is painted. */
const FIRST_DATA_MARK = 'ops:first-data';
/** Seconds between two refreshes of the page shown. */
const REFRESH_SECONDS = 5;

const NAVIGATION = [
  {path: '', label: 'Overview'},
  {path: '/emails', label: 'Emails'},
  {path: '/webhooks', label: 'Webhook events'},
  {path: '/reservations', label: 'Reservations'},
  {path: '/dead-letters', label: 'Dead letters'},
  {path: '/suppressions', label: 'Suppressions'},
];

const ROUTES = [
  [/^$/, overview],
  [/^\/emails$/, emails],
  [/^\/emails\/(\d+)$/, emailDetail],
  [/^\/webhooks$/, webhooks],
  [/^\/webhooks\/(\d+)$/, webhookDetail],
  [/^\/reservations$/, reservations],
  [/^\/dead-letters$/, deadLetters],
  [/^\/dead-letters\/([^/]+)$/, deadLetter],
  [/^\/suppressions$/, suppressions],
];

const root = document.getElementById('app');
const state = {session: null, page: null, updatedAt: null, generation: 0, failing: false};
const chrome = {};

function pagePath() {
  const path = window.location.pathname.replace(/\/+$/, '');
  return path.startsWith(BASE) ? path.slice(BASE.length) : '';
}

function navigate(href) {
  window.history.pushState(null, '', href);
  show();
}

function replaceQuery(query) {
  const search = query.toString();
  window.history.replaceState(null, '', window.location.pathname + (search ? `?${search}` : ''));
}

// --- sign-in --------------------------------------------------------------------------------

function signInPage(error, tone = 'error') {
  const token = h('input', {type: 'password', name: 'token', id: 'token', required: true, autocomplete: 'current-password'});
  const problem = h('p', {class: `form-${tone}`, role: 'alert', id: 'sign-in-error', hidden: !error}, error ?? '');
  const button = h('button', {type: 'submit', class: 'button primary block'}, 'Sign in');
  const form = h('form', {class: 'sign-in-card', onsubmit: async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      state.session = await signIn(token.value);
      token.value = '';
      layout();
      show();
    } catch (failure) {
      problem.hidden = false;
      problem.className = 'form-error';
      fill(problem, failure.status === 401 ? 'That token is not valid.' : failure.message);
      token.select();
    } finally {
      button.disabled = false;
    }
  }},
  h('div', {class: 'brand large'}, h('img', {src: document.querySelector('link[rel=icon]').href, alt: '', width: 36, height: 36}),
    h('div', null, h('strong', null, 'Minalesh'), h('span', null, 'Operations'))),
  h('label', {for: 'token'}, 'Access token'),
  token,
  h('p', {class: 'hint'}, 'The CRON_SECRET gives full access; OPS_READ_TOKEN gives a read-only view.'),
  problem,
  button);
  fill(root, h('main', {class: 'sign-in'}, form));
  root.className = 'signed-out';
  token.focus();
}

function signedOut(message = 'Your session has ended: sign in again.', tone = 'error') {
  state.session = null;
  state.page = null;
  signInPage(message, tone);
}

// --- the frame --------------------------------------------------------------------------------

function layout() {
  chrome.nav = h('nav', {class: 'nav', 'aria-label': 'Pages'}, NAVIGATION.map((item) =>
    h('a', {href: BASE + item.path, dataset: {route: '', path: item.path}}, item.label)));
  chrome.updated = h('span', {class: 'updated', 'aria-live': 'off'});
  chrome.banner = h('div', {class: 'banner', role: 'alert', hidden: true});
  chrome.title = h('h1', null);
  chrome.view = h('div', {class: 'view'});
  const role = state.session.role === 'admin' ? 'Admin' : 'Read only';
  const sidebar = h('aside', {class: 'sidebar'},
    h('a', {class: 'brand', href: BASE, dataset: {route: ''}},
      h('img', {src: document.querySelector('link[rel=icon]').href, alt: '', width: 28, height: 28}),
      h('div', null, h('strong', null, 'Minalesh'), h('span', null, 'Operations'))),
    chrome.nav,
    h('div', {class: 'sidebar-foot'},
      h('span', {class: `role role-${state.session.role}`, title: 'What this session may do'}, role),
      h('button', {type: 'button', class: 'link-button', onclick: async () => {
        await signOut().catch(() => null);
        signedOut('Signed out.', 'note');
      }}, 'Sign out')));
  const main = h('main', {class: 'main'},
    chrome.banner,
    h('header', {class: 'page-head'}, chrome.title, chrome.updated),
    chrome.view);
  fill(root, sidebar, main);
  root.className = `signed-in session-${state.session.role}`;
  root.removeAttribute('aria-busy');
}

function route() {
  const path = pagePath();
  for (const [pattern, page] of ROUTES) {
    const match = path.match(pattern);
    if (match) return {page, params: match.slice(1).map(decodeURIComponent)};
  }
  return {page: notFound, params: []};
}

function notFound() {
  return {title: 'Not found', view: h('p', {class: 'empty'}, 'There is no such page. ', h('a', {href: BASE, dataset: {route: ''}}, 'Back to the overview')), refresh: async () => {}};
}

function show() {
  if (!state.session) return;
  const {page, params} = route();
  const generation = ++state.generation;
  const ctx = {
    params,
    get query() {
      return new URLSearchParams(window.location.search);
    },
    admin: state.session.role === 'admin',
    navigate,
    replaceQuery,
    signedOut,
    refresh: () => refresh(generation),
  };
  state.page = {...page(ctx), generation};
  state.updatedAt = null;
  document.title = `${state.page.title} · Minalesh ops`;
  fill(chrome.title, state.page.title);
  fill(chrome.view, state.page.view);
  const current = pagePath();
  for (const a of chrome.nav.querySelectorAll('a')) {
    const item = a.dataset.path;
    const active = item === '' ? current === '' : current === item || current.startsWith(`${item}/`);
    if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  refresh(generation);
}

/** Fetch and redraw the page shown; an unreachable API shows the banner and keeps the last data. */
async function refresh(generation) {
  const page = state.page;
  if (!page || page.generation !== generation) return;
  if (page.busy) {
    page.again = true;  // asked while a refresh was under way (a filter changed): once more after it
    return;
  }
  page.busy = true;
  page.again = false;
  page.triedAt = Date.now();
  try {
    await page.refresh();
    if (page.generation !== state.generation) return;
    state.updatedAt = Date.now();
    setBanner(null);
    // For the page-load figure: navigation start to the first data painted (read by the browser test).
    if (!performance.getEntriesByName(FIRST_DATA_MARK).length) performance.mark(FIRST_DATA_MARK);
  } catch (error) {
    if (error.status === 401) signedOut();
    else if (error.unreachable) setBanner(`${error.message} Showing what was last loaded; retrying every ${REFRESH_SECONDS} s.`);
    else setBanner(error.message);
  } finally {
    page.busy = false;
    tick();
  }
  if (page.again) await refresh(generation);
}

function setBanner(message) {
  if (!chrome.banner) return;
  chrome.banner.hidden = !message;
  fill(chrome.banner, message ?? '');
  root.classList.toggle('api-down', Boolean(message));
}

function tick() {
  if (!chrome.updated || !state.page) return;
  const text = state.updatedAt === null ? 'Loading…' : `Updated ${duration((Date.now() - state.updatedAt) / 1000)} ago`;
  const paused = document.hidden || dialogOpen();
  fill(chrome.updated, h('span', {class: `dot${paused ? ' paused' : ''}`, 'aria-hidden': 'true'}), text,
    paused ? ' · refresh paused' : '');
}

function autoRefresh() {
  if (!state.page || document.hidden || dialogOpen()) return;
  if (Date.now() - (state.page.triedAt ?? 0) < (REFRESH_SECONDS - 0.5) * 1000) return;
  refresh(state.page.generation);
}

// --- start ------------------------------------------------------------------------------------

document.addEventListener('click', (event) => {
  const anchor = event.target.closest('a[data-route]');
  if (!anchor || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(anchor.getAttribute('href'));
});
window.addEventListener('popstate', show);
document.addEventListener('visibilitychange', () => { tick(); autoRefresh(); });
setInterval(tick, 1000);
setInterval(autoRefresh, 1000);

async function boot() {
  try {
    state.session = await currentSession();
  } catch (error) {
    fill(root, h('main', {class: 'sign-in'}, h('div', {class: 'sign-in-card'},
      h('h1', null, 'The ops API is not answering'), h('p', null, error.message),
      h('button', {type: 'button', class: 'button primary', onclick: boot}, 'Try again'))));
    return;
  }
  if (!state.session) {
    signInPage(null);
    return;
  }
  layout();
  show();
}

boot();
