// Small DOM helpers. Text always goes in as text nodes (never innerHTML), so names, logs
// and error output from the server cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function setAttrs(el, attrs) {
  if (!attrs) return el;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

let uid = 0;
export function nextId(prefix = 'id') {
  uid += 1;
  return `${prefix}-${uid}`;
}

// Give every body cell the text of its column header (data-label), so a narrow screen can
// show each row as a small card (CSS: .table.stack).
export function stackable(table) {
  const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim());
  for (const row of table.querySelectorAll('tbody tr')) {
    [...row.children].forEach((cell, i) => { if (heads[i]) cell.dataset.label = heads[i]; });
  }
  table.classList.add('stack');
  return table;
}

// --- formatting ---------------------------------------------------------------------------

export function dash(value) {
  return value === null || value === undefined || value === '' ? '—' : value;
}

export function fmtSeconds(value) {
  if (value === null || value === undefined) return '—';
  const s = Number(value);
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  const rest = Math.round(s - m * 60);
  if (m < 60) return `${m} min ${rest} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtMB(value) {
  return value === null || value === undefined ? '—' : `${Number(value).toFixed(1)} MB`;
}

export function fmtGB(value) {
  if (value === null || value === undefined) return '—';
  const gb = Number(value);
  if (gb < 1) return `${Math.round(gb * 1024)} MB`;
  return `${gb.toFixed(2)} GB`;
}

export function fmtPercent(value) {
  return value === null || value === undefined ? '—' : `${Number(value)} %`;
}

const STATUS_LABELS = {
  scheduled: 'Scheduled',
  running: 'Running',
  completed: 'Completed',
  failed: 'Failed',
  stopped: 'Stopped',
};

export function badge(status) {
  const known = Object.prototype.hasOwnProperty.call(STATUS_LABELS, status);
  return h('span', {
    class: `badge badge-${known ? status : 'unknown'}`,
    'data-status': status,
  }, known ? STATUS_LABELS[status] : String(status));
}

// A list of package specs typed by a person: commas, spaces or new lines between them.
export function splitSpecs(text) {
  return text.split(/\s+|,(?![<>=!~])/).map((s) => s.trim()).filter(Boolean)
    // a constraint typed with spaces ("numpy >= 1.2") is glued back to its name
    .reduce((out, part) => {
      if (out.length && /^[<>=!~]/.test(part)) out[out.length - 1] += part;
      else if (out.length && /[<>=!~,]$/.test(out[out.length - 1])) out[out.length - 1] += part;
      else out.push(part);
      return out;
    }, []);
}

// --- error rendering ----------------------------------------------------------------------

// Everything an API error body can tell, in words: message, error, failed packages and
// their details, tasks that use an environment, the tool's full output behind a disclosure.
export function errorDetails(body) {
  const parts = [];
  if (!body) return parts;
  const error = typeof body.error === 'string' ? body.error : null;
  const longOutput = error && (error.length > 240 || error.includes('\n'));
  if (error && !longOutput && error !== body.message) parts.push(h('p', { class: 'error-text' }, error));
  if (Array.isArray(body.failed_packages) && body.failed_packages.length) {
    parts.push(h('p', { class: 'error-label' }, 'Failed packages:'),
      h('ul', { class: 'failed-packages' }, body.failed_packages.map((p) => h('li', null, h('code', null, p)))));
  }
  if (Array.isArray(body.error_details) && body.error_details.length) {
    parts.push(h('p', { class: 'error-label' }, 'Details:'),
      h('ul', { class: 'error-details' }, body.error_details.map((d) => h('li', null, d))));
  }
  if (Array.isArray(body.invalid_packages) && body.invalid_packages.length) {
    parts.push(h('p', { class: 'error-label' }, 'Invalid specifications:'),
      h('ul', null, body.invalid_packages.map((p) => h('li', null, h('code', null, p)))));
  }
  if (Array.isArray(body.referencing_tasks) && body.referencing_tasks.length) {
    parts.push(h('p', { class: 'error-label' }, 'Used by these tasks:'),
      h('ul', null, body.referencing_tasks.map((p) => h('li', null, h('code', null, p)))));
  }
  if (body.environment_state) parts.push(h('p', { class: 'error-text' }, `Environment state: ${body.environment_state}`));
  if (body.current_status) parts.push(h('p', { class: 'error-text' }, `Current status: ${body.current_status}`));
  if (body.retry_after) parts.push(h('p', { class: 'error-text' }, `Try again in ${body.retry_after} seconds.`));
  if (longOutput) {
    parts.push(h('details', { class: 'output' },
      h('summary', null, 'Full output'),
      h('pre', { class: 'log' }, error)));
  }
  return parts;
}

export function errorBox(err, title) {
  const body = err && err.body ? err.body : { message: String(err && err.message ? err.message : err) };
  return h('div', { class: 'alert', role: 'alert' },
    h('p', { class: 'alert-title' }, title ? `${title}: ${body.message || 'failed'}` : (body.message || 'Something went wrong')),
    errorDetails(body));
}

export function successBox(text, ...extra) {
  return h('div', { class: 'success', role: 'status' }, h('p', null, text), extra);
}
