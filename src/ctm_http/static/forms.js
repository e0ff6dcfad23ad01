// Form fields with labels, hints and an error slot each; the API's validation messages are
// shown next to the field they are about (aria-invalid + aria-describedby).

import { api } from './api.js';
import { h, clear, nextId, errorDetails, errorBox, successBox } from './dom.js';

// A labelled control. `control` is an <input>/<textarea>/<select> (its id is set here).
export function field({ name, label, control, hint, optional, cls }) {
  const id = control.id || nextId(`f-${name}`);
  control.id = id;
  if (!control.name) control.name = name;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  control.setAttribute('aria-describedby', hint ? `${hintId} ${errorId}` : errorId);
  return h('div', { class: `field ${cls || ''}`.trim(), 'data-field': name },
    h('label', { for: id }, label, optional ? h('span', { class: 'optional' }, ' (optional)') : null),
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    control,
    h('div', { class: 'field-error', id: errorId, 'data-error-for': name, hidden: true }));
}

// A group of radio buttons (or checkboxes) in a fieldset, with an error slot for the group.
export function fieldset({ name, legend, children, hint }) {
  const errorId = nextId(`fs-${name}-error`);
  const hintId = hint ? `${errorId}-hint` : null;
  return h('fieldset', { class: 'fieldset', 'data-field': name, 'aria-describedby': hint ? `${hintId} ${errorId}` : errorId },
    h('legend', null, legend),
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    children,
    h('div', { class: 'field-error', id: errorId, 'data-error-for': name, hidden: true }));
}

export function radio(name, value, label, checked) {
  const id = nextId(`r-${name}`);
  return h('div', { class: 'choice' },
    h('input', { type: 'radio', id, name, value, checked: !!checked }),
    h('label', { for: id }, label));
}

export function checkbox(name, label, checked) {
  const id = nextId(`c-${name}`);
  return h('div', { class: 'choice' },
    h('input', { type: 'checkbox', id, name, checked: !!checked }),
    h('label', { for: id }, label));
}

export function clearErrors(form) {
  for (const slot of form.querySelectorAll('[data-error-for]')) {
    clear(slot);
    slot.hidden = true;
  }
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  const general = form.querySelector('.form-result');
  if (general) clear(general);
}

// Show `message` (and the details of an API error body) under the field `name`.
// Returns false when the form has no such field.
export function showFieldError(form, name, message, body) {
  const slot = form.querySelector(`[data-error-for="${name}"]`);
  if (!slot) return false;
  clear(slot);
  slot.append(h('p', { class: 'field-error-message' }, message), ...(body ? errorDetails(body) : []));
  slot.hidden = false;
  const wrapper = slot.closest('[data-field]');
  const controls = wrapper ? wrapper.querySelectorAll('input, textarea, select') : [];
  for (const c of controls) {
    if (c.type !== 'radio' && c.type !== 'checkbox') c.setAttribute('aria-invalid', 'true');
  }
  return true;
}

export function focusFirstError(form) {
  const slot = form.querySelector('[data-error-for]:not([hidden])');
  if (!slot) return;
  const wrapper = slot.closest('[data-field]');
  const control = wrapper && [...wrapper.querySelectorAll('input, textarea, select')]
    .find((c) => !c.disabled && !c.closest('[hidden]') && (c.type !== 'radio' || c.checked));
  if (control) control.focus();
}

// Show an API error: under its field when we know which one, else as the form's result.
export function showApiError(form, err, fieldFor, title) {
  const body = err.body || { message: err.message };
  const name = fieldFor ? fieldFor(body) : body.field;
  if (name && showFieldError(form, name, body.message, body)) {
    focusFirstError(form);
    return;
  }
  const general = form.querySelector('.form-result');
  clear(general);
  general.append(errorBox(err, title));
  general.setAttribute('tabindex', '-1');
  general.focus();
}

export function showResult(form, ...nodes) {
  const general = form.querySelector('.form-result');
  clear(general);
  general.append(...nodes);
}

// Disable a form and say what it is doing while `work` runs. Returns work's result.
export async function busy(form, label, work) {
  const buttons = [...form.querySelectorAll('button')];
  const submit = form.querySelector('button[type=submit]');
  const original = submit ? submit.textContent : null;
  const status = form.querySelector('.busy-status');
  form.setAttribute('aria-busy', 'true');
  form.classList.add('is-busy');
  for (const b of buttons) b.disabled = true;
  if (submit) submit.textContent = `${label.split(' ')[0]}…`;
  if (status) {
    status.textContent = `${label}…`;
    status.hidden = false;
  }
  try {
    return await work();
  } finally {
    form.removeAttribute('aria-busy');
    form.classList.remove('is-busy');
    for (const b of buttons) b.disabled = false;
    if (submit) submit.textContent = original;
    if (status) status.hidden = true;
  }
}

export function busyStatus() {
  return h('p', { class: 'busy-status', role: 'status', hidden: true });
}

export function formResult() {
  return h('div', { class: 'form-result', 'aria-live': 'polite' });
}

// --- create user (admins) --------------------------------------------------------------------

export function userForm(ctx, onCreated) {
  const username = h('input', { autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', maxlength: 64 });
  const password = h('input', { type: 'password', autocomplete: 'new-password', maxlength: 1024 });
  const form = h('form', { class: 'card form', novalidate: true, 'aria-labelledby': 'create-user-title', id: 'create-user-form' },
    h('h2', { id: 'create-user-title' }, 'Create a user'),
    field({ name: 'username', label: 'Username', control: username, hint: '1–64 letters, digits, “_”, “.” or “-”.' }),
    field({ name: 'password', label: 'Password', control: password, hint: 'At least 8 characters.' }),
    h('div', { class: 'field', 'data-field': 'is_admin' }, checkbox('is_admin', 'Admin (may change everything and create users)'),
      h('div', { class: 'field-error', 'data-error-for': 'is_admin', hidden: true })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button' }, 'Create user')),
    busyStatus(),
    formResult());
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const isAdmin = form.elements.is_admin.checked;
    const name = username.value.trim();
    if (!name) {
      showFieldError(form, 'username', 'Enter a username.');
      focusFirstError(form);
      return;
    }
    if (!password.value) {
      showFieldError(form, 'password', 'Enter a password.');
      focusFirstError(form);
      return;
    }
    try {
      const body = await busy(form, 'Creating user', () => api.createUser(name, password.value, isAdmin));
      showResult(form, successBox(`User “${body.user.username}” created${body.user.is_admin ? ' as an admin' : ''}.`));
      ctx.toast(`User ${body.user.username} created`, 'success');
      form.reset();
      username.focus();
      onCreated(body.user);
    } catch (err) {
      if (!ctx.isCurrent()) return;
      showApiError(form, err, (b) => (b.message === 'User already exists' ? 'username' : b.field), 'Could not create the user');
    }
  });
  return form;
}
