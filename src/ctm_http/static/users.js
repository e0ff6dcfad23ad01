// Accounts: the users table and its actions (admins: GET /api/users, PATCH and DELETE
// /api/users/{name}, POST /create_user), your own password (everyone: POST /api/me/password),
// API tokens (everyone: GET/POST /api/tokens, DELETE /api/tokens/{id}; admins see every
// user's) and the audit log (admins: GET /api/audit).

import { api } from './api.js';
import { h, clear, dash, errorBox, successBox, stackable, nextId } from './dom.js';
import {
  field, clearErrors, showFieldError, focusFirstError, showApiError, showResult, busy,
  busyStatus, formResult, userForm,
} from './forms.js';
import { patch } from './live.js';

const USERS_POLL = 15000; // live sessions change as people log in and out
const AUDIT_POLL = 5000; // new events appear at the top
const AUDIT_PAGE = 50;
const TOKENS_POLL = 15000; // "last used" changes while scripts use a token
const TOKEN_DAYS = 90; // the API's default lifetime
const TOKEN_MAX_DAYS = 3650;

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

function adminsOnly(view, ctx, title, what) {
  ctx.title(title);
  view.append(h('h1', null, title),
    h('p', { class: 'notice' }, `Only admins can ${what}.`),
    h('p', null, h('a', { href: '#/account' }, 'Change your own password')));
}

// Move focus to a result box, so a screen reader reads it and the keyboard continues there.
function focusBox(box) {
  box.setAttribute('tabindex', '-1');
  box.focus();
}

// --- users (admins) ----------------------------------------------------------------------------

export async function usersView(view, ctx) {
  if (!ctx.user.is_admin) {
    adminsOnly(view, ctx, 'Users', 'see and manage users. Ask an admin if you need an account for someone');
    return;
  }
  ctx.title('Users');
  const me = ctx.user.username;
  const tableBox = h('div', { id: 'users-table' });
  const result = h('div', { class: 'form-result', id: 'users-result', 'aria-live': 'polite' });
  view.append(
    h('div', { class: 'page-head' },
      h('h1', null, 'Users'),
      h('div', { class: 'actions' },
        h('a', { class: 'button secondary', href: '#/audit' }, 'Audit log'),
        h('a', { class: 'button secondary', href: '#/account' }, 'Change my password'))),
    h('section', { class: 'card', 'aria-labelledby': 'users-all-title' },
      h('h2', { id: 'users-all-title' }, 'All users'),
      h('p', { class: 'muted' },
        'Disabling a user or setting their password ends their sessions at once. A user who still owns tasks '
        + 'cannot be deleted: delete the tasks first, or disable the user, which keeps their history. '
        + 'There is always at least one enabled admin.'),
      result, tableBox),
    userForm(ctx, () => reload()));

  let users = [];
  let pending = null; // the user a row action is working on (one at a time)

  const render = () => patch(tableBox, users, (list) => renderUsers(list, me, pending !== null));

  async function refresh() {
    const body = await api.users();
    if (!ctx.isCurrent()) return 0;
    users = body.users;
    render();
    return USERS_POLL;
  }

  async function reload() {
    try {
      await refresh();
    } catch (err) {
      if (err.status === 401 || !ctx.isCurrent()) return;
      result.append(errorBox(err, 'Could not reload the users'));
    }
  }

  function setPending(name) {
    pending = name;
    tableBox.setAttribute('aria-busy', name ? 'true' : 'false');
    for (const b of tableBox.querySelectorAll('button')) b.disabled = !!name;
  }

  // Run one change; say what happened (or the API's message and error) above the table.
  async function change(user, failure, work, success, focusKey) {
    setPending(user.username);
    clear(result);
    let ok = false;
    try {
      const body = await work();
      ok = true;
      const text = success(body);
      ctx.toast(text, 'success');
      if (ctx.isCurrent()) result.append(successBox(text));
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`${failure}: ${err.message}`, 'error');
        return;
      }
      result.append(errorBox(err, failure));
      focusBox(result);
    } finally {
      if (ctx.isCurrent()) setPending(null);
    }
    if (!ctx.isCurrent()) return;
    if (ok && user.username === me) {
      await ctx.refreshUser(); // our own rights or session changed: ask /api/me again
      return;
    }
    await reload();
    const again = focusKey && tableBox.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    if (ok && again && (!document.activeElement || document.activeElement === document.body)) {
      again.focus();
    } else if (ok && !again) {
      focusBox(result); // the row is gone (deleted)
    }
  }

  tableBox.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button || pending) return;
    const user = users.find((u) => u.username === button.dataset.user);
    if (!user) return;
    const name = user.username;
    const self = name === me;
    const key = button.dataset.focusKey;
    const action = button.dataset.action;

    if (action === 'admin') {
      const makeAdmin = !user.is_admin;
      if (!makeAdmin && self && !await ctx.confirm('Remove your own admin rights?',
        'You can no longer manage users, see the audit log or change what others created. Another admin can give the rights back.',
        'Remove admin')) return;
      await change(user, makeAdmin ? `Could not make ${name} an admin` : `Could not remove admin from ${name}`,
        () => api.updateUser(name, { is_admin: makeAdmin }),
        () => (makeAdmin ? `${name} is now an admin.` : `${name} is no longer an admin.`), key);
    } else if (action === 'disable') {
      const disable = !user.disabled;
      if (disable && !await ctx.confirm(`Disable ${name}?`,
        `${name} cannot log in until enabled again, and ${user.sessions ? `their ${plural(user.sessions, 'live session')} ${user.sessions === 1 ? 'ends' : 'end'}` : 'any session of theirs ends'} now. Their scheduled tasks fire nothing while they are disabled (each occurrence is recorded as skipped; a run already going on is not stopped) and their history is kept.${self ? ' This logs you out.' : ''}`,
        'Disable user')) return;
      await change(user, disable ? `Could not disable ${name}` : `Could not enable ${name}`,
        () => api.updateUser(name, { disabled: disable }),
        (body) => (disable
          ? `${name} is disabled; ${plural(body.sessions_ended || 0, 'session')} ended.`
          : `${name} is enabled and can log in again.`), key);
    } else if (action === 'password') {
      const body = await passwordDialog(ctx, user);
      if (!body || !ctx.isCurrent()) return;
      const text = `New password set for ${name}; ${plural(body.sessions_ended || 0, 'session')} ended.`;
      ctx.toast(text, 'success');
      clear(result);
      result.append(successBox(text));
      await reload();
    } else if (action === 'delete') {
      if (!await ctx.confirm(`Delete ${name}?`,
        `The account ${name} is deleted and cannot be restored. Environments ${name} created become owned by no one (admins manage them). A user who still owns tasks is not deleted.${self ? ' This logs you out.' : ''}`,
        'Delete user')) return;
      await change(user, `Could not delete ${name}`, () => api.deleteUser(name), () => `User ${name} deleted.`, key);
    }
  });

  await refresh();
  if (ctx.isCurrent()) ctx.every(refresh, USERS_POLL);
}

function renderUsers(list, me, disabled) {
  if (!list.length) return h('p', { class: 'empty' }, 'No users.');
  const sorted = [...list].sort((a, b) => a.username.localeCompare(b.username));
  const button = (u, action, text, cls) => h('button', {
    type: 'button',
    class: `button small ${cls || 'secondary'}`,
    'data-action': action,
    'data-user': u.username,
    'data-focus-key': `${action}-${u.username}`,
    'aria-label': `${text} (${u.username})`,
    disabled,
  }, text);
  return h('div', { class: 'table-wrap' },
    stackable(h('table', { class: 'table', id: 'user-table' },
      h('caption', { class: 'visually-hidden' }, 'Users, by name, with what you can do to each'),
      h('thead', null, h('tr', null,
        ['User', 'Role', 'Status', 'Live sessions', 'Created']
          .map((x) => h('th', { scope: 'col' }, x)),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', null, sorted.map((u) => {
        const self = u.username === me;
        return h('tr', { 'data-user': u.username, class: self ? 'is-you' : null },
          h('th', { scope: 'row' }, h('span', { class: 'user-name' }, u.username,
            self ? h('span', { class: 'badge badge-you', 'data-you': '' }, 'you') : null)),
          h('td', { 'data-role': u.is_admin ? 'admin' : 'user' }, u.is_admin ? 'Admin' : 'User'),
          h('td', null, h('span', {
            class: `badge ${u.disabled ? 'badge-disabled' : 'badge-active'}`,
            'data-state': u.disabled ? 'disabled' : 'active',
          }, u.disabled ? 'Disabled' : 'Active')),
          h('td', { class: 'num', 'data-sessions': '' }, String(u.sessions ?? 0)),
          h('td', { class: 'nowrap' }, dash(u.created_at)),
          h('td', { class: 'row-actions' }, h('div', { class: 'actions' },
            button(u, 'admin', u.is_admin ? 'Remove admin' : 'Make admin'),
            button(u, 'disable', u.disabled ? 'Enable' : 'Disable'),
            // Setting our own password here would end this session too: use the account page.
            self
              ? h('a', { class: 'button small secondary', href: '#/account', 'data-focus-key': `password-${u.username}` }, 'Change password')
              : button(u, 'password', 'Set password'),
            button(u, 'delete', 'Delete', 'danger secondary'))));
      })))));
}

// A dialog asking for a new password for `user`. Resolves to the API's answer, or null when
// cancelled.
function passwordDialog(ctx, user) {
  const titleId = nextId('password-dialog-title');
  const input = h('input', { type: 'password', autocomplete: 'new-password', maxlength: 1024 });
  const cancel = h('button', { type: 'button', class: 'button secondary' }, 'Cancel');
  const form = h('form', { class: 'form', novalidate: true, id: 'set-password-form' },
    h('h2', { id: titleId }, `Set a password for ${user.username}`),
    h('p', null, `Every session of ${user.username} ends at once; they log in again with the new password.`),
    // for password managers: whose password this is
    h('input', { type: 'text', autocomplete: 'username', value: user.username, hidden: true, readonly: true, tabindex: '-1' }),
    field({ name: 'password', label: 'New password', control: input, hint: 'At least 8 characters.' }),
    h('div', { class: 'actions' }, cancel, h('button', { type: 'submit', class: 'button' }, 'Set password')),
    busyStatus(),
    formResult());
  const dialog = h('dialog', { class: 'dialog', id: 'password-dialog', 'aria-labelledby': titleId }, form);
  const opener = document.activeElement;
  let answer = null;
  document.body.append(dialog);
  const dispose = () => {
    if (dialog.open) dialog.close();
    dialog.remove();
  };
  ctx.onCleanup(dispose); // leaving the page, or the session ending, closes it
  cancel.addEventListener('click', () => dialog.close());
  dialog.addEventListener('cancel', (event) => {
    if (form.getAttribute('aria-busy')) event.preventDefault(); // wait for the server's answer
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!input.value) {
      showFieldError(form, 'password', 'Enter a password.');
      focusFirstError(form);
      return;
    }
    try {
      answer = await busy(form, 'Setting password', () => api.updateUser(user.username, { password: input.value }));
      dialog.close();
    } catch (err) {
      if (err.status === 401) {
        dispose();
        return;
      }
      if (dialog.isConnected) {
        showApiError(form, err, (b) => (b.field === 'password' ? 'password' : null), 'Could not set the password');
      }
    }
  });
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

// --- your account (everyone) -----------------------------------------------------------------

export function accountView(view, ctx) {
  ctx.title('Your account');
  const u = ctx.user;
  view.append(
    h('h1', null, 'Your account'),
    h('section', { class: 'card', 'aria-labelledby': 'account-about-title' },
      h('h2', { id: 'account-about-title' }, 'About you'),
      h('dl', { class: 'facts' },
        h('dt', null, 'Username'), h('dd', null, u.username),
        h('dt', null, 'Role'), h('dd', null, u.is_admin
          ? 'Admin: may change everything, manage users and see the audit log'
          : 'User: may change what you created'))),
    passwordForm(ctx),
    tokensSection(ctx));
}

function passwordForm(ctx) {
  const current = h('input', { type: 'password', autocomplete: 'current-password', maxlength: 1024 });
  const fresh = h('input', { type: 'password', autocomplete: 'new-password', maxlength: 1024 });
  const repeat = h('input', { type: 'password', autocomplete: 'new-password', maxlength: 1024 });
  const form = h('form', { class: 'card form', novalidate: true, id: 'my-password-form', 'aria-labelledby': 'my-password-title' },
    h('h2', { id: 'my-password-title' }, 'Change my password'),
    h('input', { type: 'text', autocomplete: 'username', value: ctx.user.username, hidden: true, readonly: true, tabindex: '-1' }),
    field({ name: 'current_password', label: 'Current password', control: current }),
    field({ name: 'new_password', label: 'New password', control: fresh,
      hint: 'At least 8 characters. Your other sessions end; this one stays.' }),
    field({ name: 'repeat_password', label: 'New password again', control: repeat }),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button' }, 'Change password')),
    busyStatus(),
    formResult());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!current.value) showFieldError(form, 'current_password', 'Enter your current password.');
    if (!fresh.value) showFieldError(form, 'new_password', 'Enter a new password.');
    else if (repeat.value !== fresh.value) showFieldError(form, 'repeat_password', 'The two new passwords differ.');
    if (form.querySelector('[data-error-for]:not([hidden])')) {
      focusFirstError(form);
      return;
    }
    try {
      const body = await busy(form, 'Changing password', () => api.changeMyPassword(current.value, fresh.value));
      if (!ctx.isCurrent()) {
        ctx.toast('Your password was changed.', 'success');
        return;
      }
      form.reset();
      const n = body.sessions_ended || 0;
      showResult(form, successBox(`Password changed.${n ? ` ${plural(n, 'other session')} ended.` : ''}`));
      focusBox(form.querySelector('.form-result'));
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Changing your password failed: ${err.message}`, 'error');
        return;
      }
      if (err.status === 429 && err.body.retry_after) {
        // Wrong current passwords count as failed logins, and are throttled like them.
        showFieldError(form, 'current_password',
          `Too many wrong passwords. Try again in ${Math.ceil(err.body.retry_after / 60)} minute(s).`);
        focusFirstError(form);
        return;
      }
      // 403 wrong current password, 400 a bad new one: the body names the field.
      showApiError(form, err, (b) => b.field, 'Could not change the password');
    }
  });
  return form;
}

// --- API tokens (everyone; admins see every user's) ------------------------------------------

// The create form, the secret of a token just created (shown once: it lives only in this box,
// never in storage, so leaving or reloading the page forgets it) and the table of tokens.
function tokensSection(ctx) {
  const admin = ctx.user.is_admin;
  const name = h('input', { autocomplete: 'off', spellcheck: 'false', maxlength: 100 });
  const days = h('input', {
    type: 'number', inputmode: 'numeric', min: 1, max: TOKEN_MAX_DAYS, step: 1, value: TOKEN_DAYS,
  });
  const form = h('form', { class: 'form', novalidate: true, id: 'token-form', 'aria-labelledby': 'token-create-title' },
    h('h3', { id: 'token-create-title' }, 'Create a token'),
    h('div', { class: 'form-row' },
      field({ name: 'name', label: 'Name', control: name, hint: 'What it is for. One line, up to 100 characters.' }),
      field({ name: 'expires_in_days', label: 'Lifetime in days', control: days, hint: `1 to ${TOKEN_MAX_DAYS}; ${TOKEN_DAYS} unless you change it.` })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button' }, 'Create token')),
    busyStatus(),
    formResult());
  const secretBox = h('div', { id: 'token-secret' });
  const result = h('div', { class: 'form-result', id: 'tokens-result', 'aria-live': 'polite' });
  const tableBox = h('div', { id: 'tokens-table', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading tokens…'));
  const section = h('section', { class: 'card', id: 'api-tokens', 'aria-labelledby': 'tokens-title' },
    h('h2', { id: 'tokens-title' }, 'API tokens'),
    h('p', { class: 'muted' },
      'A token lets a script use the API as you, with your rights, without logging in: send it in an '
      + '“Authorization: Bearer” header. It stops working when you delete it, when it expires, and when your '
      + 'account is disabled, deleted or given a new password.'),
    form, secretBox,
    h('h3', { id: 'tokens-list-title' }, admin ? 'All tokens (every user’s)' : 'Your tokens'),
    result, tableBox);

  let tokens = [];
  let pending = false; // a delete is on its way

  const render = () => patch(tableBox, tokens, (list) => renderTokens(list, admin, ctx.user.username, pending));

  async function refresh() {
    const body = await api.tokens();
    if (!ctx.isCurrent()) return 0;
    tokens = body.tokens;
    tableBox.setAttribute('aria-busy', 'false');
    render();
    return TOKENS_POLL;
  }

  async function reload() {
    try {
      await refresh();
    } catch (err) {
      if (err.status === 401 || !ctx.isCurrent()) return;
      clear(tableBox);
      tableBox.setAttribute('aria-busy', 'false');
      tableBox.append(errorBox(err, 'Could not load the tokens'));
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const raw = days.value.trim();
    const lifetime = Number(raw);
    // Only what the browser cannot send is checked here; the API's checks appear by their field.
    if (!name.value) showFieldError(form, 'name', 'Enter a name for the token.');
    if (!raw || !Number.isFinite(lifetime)) {
      showFieldError(form, 'expires_in_days', `Enter a number of days from 1 to ${TOKEN_MAX_DAYS}.`);
    }
    if (form.querySelector('[data-error-for]:not([hidden])')) {
      focusFirstError(form);
      return;
    }
    try {
      const body = await busy(form, 'Creating token', () => api.createToken(name.value, lifetime));
      if (!ctx.isCurrent()) {
        // The secret cannot be shown anywhere else; say so rather than lose it silently.
        ctx.toast(`Token “${body.token_info.name}” created, but you left the page before seeing it: delete it and create another.`, 'error', 0);
        return;
      }
      form.reset();
      clear(secretBox);
      secretBox.append(secretPanel(ctx, body, () => {
        clear(secretBox);
        name.focus();
      }));
      secretBox.querySelector('.secret-title').focus();
      await reload();
    } catch (err) {
      if (err.status === 401 || !ctx.isCurrent()) return;
      showApiError(form, err, (b) => b.field, 'Could not create the token');
    }
  });

  tableBox.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action="delete-token"]');
    if (!button || pending) return;
    const token = tokens.find((t) => String(t.id) === button.dataset.tokenId);
    if (!token) return;
    const whose = token.username === ctx.user.username ? '' : ` of ${token.username}`;
    if (!await ctx.confirm(`Delete the token “${token.name}”${whose}?`,
      'Scripts that use it are refused (401) from now on. This cannot be undone.',
      'Delete token')) return;
    if (!ctx.isCurrent()) return;
    pending = true;
    for (const b of tableBox.querySelectorAll('button')) b.disabled = true;
    clear(result);
    try {
      await api.deleteToken(token.id);
      const text = `Token “${token.name}”${whose} deleted.`;
      ctx.toast(text, 'success');
      if (ctx.isCurrent()) result.append(successBox(text));
      // The secret of a deleted token is of no use any more.
      const shown = secretBox.querySelector('[data-token-id]');
      if (shown && shown.dataset.tokenId === String(token.id)) clear(secretBox);
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Could not delete the token: ${err.message}`, 'error');
        return;
      }
      result.append(errorBox(err, `Could not delete the token “${token.name}”`));
    } finally {
      pending = false;
    }
    if (!ctx.isCurrent()) return;
    await reload();
    for (const b of tableBox.querySelectorAll('button')) b.disabled = false;
    // Focus the outcome: the row is gone after a delete, and an error is to be read.
    focusBox(result);
  });

  reload().then(() => {
    if (ctx.isCurrent()) ctx.every(refresh, TOKENS_POLL);
  });
  return section;
}

// The secret of a token just created, with a Copy button and how to use it.
function secretPanel(ctx, body, onDone) {
  const info = body.token_info;
  const input = h('input', {
    id: 'token-secret-value', class: 'code', readonly: true, value: body.token,
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'token-secret-warning',
  });
  const copyStatus = h('p', { class: 'copy-status', role: 'status', id: 'token-copy-status' });
  const copy = h('button', { type: 'button', class: 'button', id: 'token-copy' }, 'Copy');
  const done = h('button', { type: 'button', class: 'button secondary', id: 'token-done' }, 'Done, hide it');
  const selectIt = (why) => {
    input.focus();
    input.select();
    copyStatus.textContent = `${why}The token is selected: press Ctrl+C (⌘C on a Mac) to copy it.`;
  };
  copy.addEventListener('click', async () => {
    copyStatus.textContent = '';
    if (!navigator.clipboard || !navigator.clipboard.writeText) {
      selectIt(''); // not a secure context (plain http on another host), or an old browser
      return;
    }
    try {
      await navigator.clipboard.writeText(body.token);
      copyStatus.textContent = 'Copied to the clipboard.';
    } catch (err) {
      selectIt('The browser did not allow copying. ');
    }
  });
  input.addEventListener('focus', () => input.select());
  done.addEventListener('click', onDone);
  const usage = `curl -H "Authorization: Bearer <token>" ${window.location.origin}/api/tasks`;
  return h('div', { class: 'secret-box', 'data-token-id': info.id, role: 'region', 'aria-labelledby': 'token-secret-title' },
    h('p', { class: 'secret-title', id: 'token-secret-title', tabindex: '-1' }, `Your new token “${info.name}”`),
    h('p', { id: 'token-secret-warning', class: 'secret-warning' },
      'Copy it now. You will not see it again: ctm keeps only a hash of it. ',
      `It expires on ${dash(info.expires_at)}.`),
    h('label', { for: 'token-secret-value', class: 'visually-hidden' }, 'The token'),
    h('div', { class: 'secret-row' }, input, copy),
    copyStatus,
    h('p', { class: 'secret-usage-title' }, 'Use it like this (put the token in place of <token>):'),
    h('pre', { class: 'secret-usage' }, h('code', null, usage)),
    h('div', { class: 'actions' }, done));
}

function renderTokens(list, admin, me, disabled) {
  if (!list.length) return h('p', { class: 'empty', id: 'tokens-empty' }, admin ? 'No one has a token.' : 'You have no tokens.');
  const sorted = [...list].sort((a, b) => Number(b.id) - Number(a.id)); // newest first
  const heads = ['Name', ...(admin ? ['User'] : []), 'Created', 'Expires', 'Last used'];
  return h('div', { class: 'table-wrap' },
    stackable(h('table', { class: 'table', id: 'token-table' },
      h('caption', { class: 'visually-hidden' }, admin ? 'API tokens of every user, newest first' : 'Your API tokens, newest first'),
      h('thead', null, h('tr', null,
        heads.map((x) => h('th', { scope: 'col' }, x)),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', null, sorted.map((t) => h('tr', { 'data-token-id': t.id, 'data-token-name': t.name },
        h('th', { scope: 'row', class: 'break-soft' }, t.name),
        admin ? h('td', { 'data-token-user': '' }, h('span', { class: 'user-name' }, t.username,
          t.username === me ? h('span', { class: 'badge badge-you' }, 'you') : null)) : null,
        h('td', { class: 'nowrap' }, dash(t.created_at)),
        h('td', { class: 'nowrap' }, dash(t.expires_at)),
        h('td', { class: 'nowrap', 'data-last-used': '' }, t.last_used_at ?? h('span', { class: 'muted' }, 'Never')),
        h('td', { class: 'row-actions' }, h('button', {
          type: 'button',
          class: 'button small danger secondary',
          'data-action': 'delete-token',
          'data-token-id': t.id,
          'data-focus-key': `delete-token-${t.id}`,
          'aria-label': `Delete the token ${t.name}${admin ? ` of ${t.username}` : ''}`,
          disabled,
        }, 'Delete'))))))));
}

// --- audit log (admins) ----------------------------------------------------------------------

const OUTCOMES = { ok: 'OK', refused: 'Refused', failed: 'Failed' };

function detailText(detail) {
  if (!detail || typeof detail !== 'object') return '';
  return Object.entries(detail)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('; ');
}

function eventRow(e) {
  const known = Object.prototype.hasOwnProperty.call(OUTCOMES, e.outcome);
  return h('tr', { 'data-event-id': e.id, 'data-action': e.action, 'data-outcome': e.outcome },
    h('td', { class: 'nowrap' }, e.at),
    h('td', null, e.actor ?? h('span', { class: 'muted' }, 'ctm (server)')),
    h('td', null, dash(e.address)),
    h('td', null, h('code', null, e.action)),
    h('td', { class: 'break-soft' }, e.target),
    h('td', null, h('span', { class: `badge outcome-${known ? e.outcome : 'unknown'}` }, known ? OUTCOMES[e.outcome] : String(e.outcome))),
    h('td', { class: 'audit-detail' }, detailText(e.detail) || h('span', { class: 'muted' }, '—')));
}

export async function auditView(view, ctx) {
  if (!ctx.user.is_admin) {
    adminsOnly(view, ctx, 'Audit log', 'see the audit log');
    return;
  }
  ctx.title('Audit log');
  const tbody = h('tbody', { id: 'audit-rows' });
  const table = h('table', { class: 'table compact', id: 'audit-table' },
    h('caption', { class: 'visually-hidden' }, 'Audit events, newest first'),
    h('thead', null, h('tr', null,
      ['Time', 'Actor', 'Address', 'Action', 'Target', 'Outcome', 'Details'].map((x) => h('th', { scope: 'col' }, x)))),
    tbody);
  const empty = h('p', { class: 'empty', hidden: true }, 'No events yet.');
  const more = h('button', { type: 'button', class: 'button secondary', id: 'audit-more', hidden: true }, 'Load more');
  const end = h('p', { class: 'more', id: 'audit-end', hidden: true }, 'That is the whole log.');
  const moreForm = h('div', { class: 'actions audit-more' }, more, busyStatus());
  const moreResult = h('div', { class: 'form-result', 'aria-live': 'polite' });
  view.append(
    h('h1', null, 'Audit log'),
    h('section', { class: 'card', 'aria-labelledby': 'audit-title' },
      h('h2', { id: 'audit-title', class: 'visually-hidden' }, 'Events'),
      h('p', { class: 'muted' },
        'Every login (accepted or refused), user change, environment change and task change: when, who, from which address, '
        + 'on what, and how it ended. Newest first; new events appear at the top. Requests that were refused before '
        + 'changing anything (a missing right, the last admin) are not recorded.'),
      h('div', { class: 'table-wrap' }, table), empty, moreForm, end, moreResult));

  let nextBefore = null;
  let newest = 0; // the id of the top row
  const shown = new Set();

  function setMore(next) {
    nextBefore = next;
    more.hidden = !next;
    end.hidden = !!next || shown.size === 0;
  }

  function add(events, where) {
    const rows = events.filter((e) => !shown.has(e.id)).map((e) => {
      shown.add(e.id);
      return eventRow(e);
    });
    if (where === 'top') tbody.prepend(...rows);
    else tbody.append(...rows);
    for (const e of events) newest = Math.max(newest, Number(e.id));
    stackable(table); // label the new cells for the narrow layout
    empty.hidden = shown.size > 0;
    table.hidden = shown.size === 0;
    return rows;
  }

  function reset(body) {
    clear(tbody);
    shown.clear();
    newest = 0;
    add(body.events, 'bottom');
    setMore(body.next_before);
  }

  async function poll() {
    const body = await api.audit({ limit: AUDIT_PAGE });
    if (!ctx.isCurrent()) return 0;
    const fresh = body.events.filter((e) => Number(e.id) > newest);
    // A whole page of new events may hide a gap behind it: start again from the newest.
    if (fresh.length === body.events.length && body.next_before && shown.size) reset(body);
    else if (fresh.length) add(fresh, 'top');
    return AUDIT_POLL;
  }

  more.addEventListener('click', async () => {
    if (!nextBefore) return;
    clear(moreResult);
    try {
      const body = await busy(moreForm, 'Loading older events', () => api.audit({ limit: AUDIT_PAGE, before: nextBefore }));
      if (!ctx.isCurrent()) return;
      const rows = add(body.events, 'bottom');
      setMore(body.next_before);
      if (!body.next_before) focusBox(end);
      else if (rows.length) more.focus();
    } catch (err) {
      if (err.status === 401 || !ctx.isCurrent()) return;
      moreResult.append(errorBox(err, 'Could not load older events'));
    }
  });

  reset(await api.audit({ limit: AUDIT_PAGE }));
  if (ctx.isCurrent()) ctx.every(poll, AUDIT_POLL);
}
