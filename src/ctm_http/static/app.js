// The dashboard shell: login, navigation (hash routes), live polling, toasts.
// Views live in tasks.js, environments.js and users.js; they get a context (ctx) from here.

import { api, onUnauthorized, ApiError } from './api.js';
import { h, $, clear, errorBox } from './dom.js';
import * as tasks from './tasks.js';
import * as envs from './environments.js';
import * as users from './users.js';

const IDLE_MS = 10 * 60 * 1000; // pause live updates after 10 minutes without input

const state = {
  user: null,
  gen: 0, // bumps on every navigation; a stale view's callbacks check it
  cleanups: [],
  lastActivity: Date.now(),
  paused: false,
  wakers: new Set(),
};

// --- toasts and confirmation ---------------------------------------------------------------

export function toast(text, kind = 'info', timeout = 6000) {
  const box = $('#toasts');
  const item = h('div', { class: `toast toast-${kind}` },
    h('span', null, text),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => item.remove() }, '×'));
  box.append(item);
  if (timeout) setTimeout(() => item.remove(), kind === 'error' ? timeout * 2 : timeout);
}

export function confirmAction(title, text, okLabel = 'Confirm') {
  const dialog = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    dialog.returnValue = 'cancel';
    dialog.addEventListener('close', () => {
      if (opener && opener.isConnected) opener.focus();
      resolve(dialog.returnValue === 'ok');
    }, { once: true });
    dialog.showModal();
    $('#confirm-cancel').focus();
  });
}

// --- page alert ------------------------------------------------------------------------------

function showPageAlert(err, title) {
  const box = $('#page-alert');
  clear(box);
  if (!err) {
    box.hidden = true;
    return;
  }
  box.append(...errorBox(err, title).childNodes);
  box.hidden = false;
}

// --- live updates ----------------------------------------------------------------------------

function markActivity() {
  state.lastActivity = Date.now();
  if (state.paused) {
    state.paused = false;
    $('#paused-banner').hidden = true;
    for (const wake of state.wakers) wake();
  }
}

// Call fn again and again while the view that started it is shown. fn returns the delay
// (ms) before its next call. Pauses while the tab is hidden or the user has been idle.
function every(gen, fn, firstDelay) {
  let timer = null;
  let stopped = false;
  const wake = () => {
    if (stopped || gen !== state.gen) return;
    clearTimeout(timer);
    timer = setTimeout(tick, 0);
  };
  async function tick() {
    if (stopped || gen !== state.gen) return;
    if (document.hidden) {
      timer = setTimeout(tick, 1000);
      return;
    }
    if (Date.now() - state.lastActivity > IDLE_MS) {
      if (!state.paused) {
        state.paused = true;
        $('#paused-banner').hidden = false;
      }
      return; // markActivity() wakes us
    }
    let delay = 5000;
    try {
      delay = await fn();
      if (gen === state.gen) showPageAlert(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      if (gen === state.gen) showPageAlert(err, 'Live update failed (retrying)');
      delay = 5000;
    }
    if (!stopped && gen === state.gen && delay) timer = setTimeout(tick, delay);
  }
  state.wakers.add(wake);
  timer = setTimeout(tick, firstDelay ?? 0);
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    state.wakers.delete(wake);
  };
  state.cleanups.push(stop);
  return { stop, now: wake };
}

// --- routing ---------------------------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, '');
  return raw.split('/').filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch (err) {
      return part; // a malformed %-escape: show "not found" rather than break
    }
  });
}

function setNav(section) {
  for (const link of document.querySelectorAll('[data-nav]')) {
    if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

function teardown() {
  state.gen += 1;
  for (const fn of state.cleanups.splice(0)) {
    try { fn(); } catch (err) { /* a view's cleanup must not break navigation */ }
  }
  showPageAlert(null);
}

async function route() {
  if (!state.user) return;
  teardown();
  const gen = state.gen;
  const view = $('#view');
  clear(view);
  const parts = parseRoute();
  const ctx = {
    gen,
    user: state.user,
    isCurrent: () => gen === state.gen && state.user !== null,
    every: (fn, firstDelay) => every(gen, fn, firstDelay),
    onCleanup: (fn) => state.cleanups.push(fn),
    toast,
    confirm: confirmAction,
    go: (hash) => { location.hash = hash; },
    // After a change to our own account: ask the server who we are now and show that (a
    // 401 goes to the login form as usual).
    refreshUser,
    title: (text) => { document.title = `${text} — ctm`; },
  };
  const [section, arg, ...rest] = parts;
  try {
    if (!section) {
      location.replace('#/tasks');
      return;
    }
    if (section === 'tasks' && !arg) {
      setNav('tasks');
      await tasks.listView(view, ctx);
    } else if (section === 'tasks' && arg === 'new' && !rest.length) {
      setNav('tasks');
      await tasks.newView(view, ctx);
    } else if (section === 'tasks' && /^\d+$/.test(arg) && !rest.length) {
      setNav('tasks');
      await tasks.detailView(view, ctx, Number(arg));
    } else if (section === 'environments' && !arg) {
      setNav('environments');
      await envs.listView(view, ctx);
    } else if (section === 'environments' && arg && !rest.length) {
      setNav('environments');
      await envs.detailView(view, ctx, arg);
    } else if (section === 'users' && !arg) {
      setNav('users');
      await users.usersView(view, ctx);
    } else if (section === 'audit' && !arg) {
      setNav('audit');
      await users.auditView(view, ctx);
    } else if (section === 'account' && !arg) {
      setNav('account');
      users.accountView(view, ctx);
    } else {
      setNav(null);
      ctx.title('Not found');
      view.append(h('h1', { tabindex: '-1' }, 'Page not found'),
        h('p', null, 'There is nothing at this address. ', h('a', { href: '#/tasks' }, 'Go to the tasks.')));
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    if (gen === state.gen) showPageAlert(err, 'Could not load this page');
  }
  if (gen === state.gen) {
    const heading = view.querySelector('h1');
    if (heading) {
      heading.setAttribute('tabindex', '-1');
      heading.focus({ preventScroll: true });
    }
  }
}

// --- login and logout ------------------------------------------------------------------------

function showLogin(notice) {
  teardown();
  state.user = null;
  clear($('#view'));
  $('#topbar').hidden = true;
  $('#app-view').hidden = true;
  $('#paused-banner').hidden = true;
  $('#containment-banner').hidden = true;
  $('#login-view').hidden = false;
  const note = $('#login-notice');
  note.textContent = notice || '';
  note.hidden = !notice;
  $('#login-error').hidden = true;
  $('#login-password').value = '';
  document.title = 'Log in — ctm';
  const dialog = $('#confirm-dialog');
  if (dialog.open) dialog.close('cancel');
  $('#login-username').focus();
}

function showApp(user) {
  state.user = user;
  $('#login-view').hidden = true;
  $('#topbar').hidden = false;
  $('#app-view').hidden = false;
  $('#whoami-name').textContent = `${user.username}${user.is_admin ? ' (admin)' : ''}`;
  $('#nav-users').hidden = !user.is_admin;
  $('#nav-audit').hidden = !user.is_admin;
  showContainment(user);
  route();
}

async function refreshUser() {
  let body;
  try {
    body = await api.me();
  } catch (err) {
    if (err.status !== 401) toast(`Could not reload your account: ${err.message}`, 'error');
    return;
  }
  if (state.user) showApp(body.user);
}

// Admins see GET /api/me's `containment`; runs that are not contained get a red banner.
async function showContainment(user) {
  const banner = $('#containment-banner');
  banner.hidden = true;
  if (!user.is_admin) return;
  let c;
  try {
    const me = await api.me();
    c = me.containment ?? (me.user && me.user.containment);
  } catch {
    return;
  }
  if (!c || c.contained !== false || state.user !== user) return;
  banner.textContent = `Runs are NOT contained: ${c.reason || 'unknown reason'}`;
  banner.hidden = false;
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const errorEl = $('#login-error');
  const username = $('#login-username').value.trim();
  const password = $('#login-password').value;
  errorEl.hidden = true;
  if (!username || !password) {
    errorEl.textContent = 'Enter your username and password.';
    errorEl.hidden = false;
    (username ? $('#login-password') : $('#login-username')).focus();
    return;
  }
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  button.textContent = 'Logging in…';
  form.setAttribute('aria-busy', 'true');
  try {
    const body = await api.login(username, password);
    $('#login-password').value = '';
    showApp(body.user);
  } catch (err) {
    let text = err.message;
    if (err.status === 429 && err.body.retry_after) {
      text = `Too many failed login attempts. Try again in ${Math.ceil(err.body.retry_after / 60)} minute(s).`;
    } else if (err.status === 401) {
      text = 'Wrong username or password.';
    } else if (err.body && err.body.error && err.status !== 0) {
      text = `${err.body.message}: ${err.body.error}`;
    } else if (err.status === 0) {
      text = `${err.body.message}. ${err.body.error}`;
    }
    errorEl.textContent = text;
    errorEl.hidden = false;
    $('#login-password').select();
    $('#login-password').focus();
  } finally {
    button.disabled = false;
    button.textContent = 'Log in';
    form.removeAttribute('aria-busy');
  }
}

async function logout() {
  const button = $('#logout-button');
  button.disabled = true;
  try {
    await api.logout();
  } catch (err) {
    // The session ends anyway when the cookie is gone; say if the server did not answer.
    if (err.status === 0) toast('The server did not answer; your session ends when it expires.', 'error');
  } finally {
    button.disabled = false;
  }
  history.replaceState(null, '', '#/tasks');
  showLogin('You have logged out.');
}

async function boot() {
  $('#login-form').addEventListener('submit', onLoginSubmit);
  $('#logout-button').addEventListener('click', logout);
  $('#resume-button').addEventListener('click', markActivity);
  // The skip link must not change the hash (the hash is the route).
  $('.skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    const target = $('#login-view').hidden ? ($('#view h1') || $('#main')) : $('#login-username');
    target.focus();
  });
  for (const type of ['keydown', 'pointerdown', 'wheel', 'touchstart']) {
    document.addEventListener(type, markActivity, { passive: true, capture: true });
  }
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) markActivity();
  });
  window.addEventListener('hashchange', route);
  onUnauthorized(() => {
    if (state.user) showLogin('Your session has ended. Log in again to continue.');
  });
  try {
    const body = await api.me();
    showApp(body.user);
  } catch (err) {
    if (err.status === 401) showLogin();
    else showLogin(`${err.message}. ${err.body && err.body.error ? err.body.error : ''}`.trim());
  }
}

document.documentElement.classList.add('js');
boot();
