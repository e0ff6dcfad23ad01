// Task views: the list with stats (GET /api/tasks, GET /api/tasks/stats), the create form
// (POST /api/tasks), and the detail (GET /api/tasks/{id}, POST .../stop, DELETE).

import { api } from './api.js';
import { h, badge, dash, fmtSeconds, fmtMB, errorBox, stackable } from './dom.js';
import { lineChart, stackedColumns, GREEN, RED, PALETTE } from './charts.js';
import {
  field, fieldset, radio, checkbox, clearErrors, showFieldError, focusFirstError,
  showApiError, busy, busyStatus, formResult,
} from './forms.js';
import { followLog, patch, setLog } from './live.js';

const FAST = 1500; // while something runs
const HISTORY_PAGE = 20; // runs shown at first in the history table
const CHART_POINTS = 200; // runs drawn at most in the performance charts
const SOON = 2000; // while a one-shot run is waiting to start
const SLOW = 5000; // otherwise (cron runs can start at any time)

// A one-shot task that has not started yet and starts soon (now, or after a short delay).
// (Its next_run_time may already be cleared while the scheduler starts it.)
const isPendingOneShot = (t) => t.status === 'scheduled' && !t.cron_expression
  && !(Number(t.delay_seconds) > 60);

function pollDelay(taskList) {
  if (taskList.some((t) => t.status === 'running')) return FAST;
  if (taskList.some(isPendingOneShot)) return SOON;
  return SLOW;
}

const shortTime = (ts) => (ts ? String(ts).slice(11, 19) || ts : '');
const shortDate = (d) => (d ? String(d).slice(5) : '');

function scheduleText(t) {
  if (t.cron_expression) return h('span', null, 'Cron ', h('code', null, t.cron_expression));
  if (t.delay_seconds) return `Once, ${fmtSeconds(t.delay_seconds)} after creation`;
  return 'Once';
}

function taskLink(id, name) {
  return h('a', { href: `#/tasks/${id}`, 'data-focus-key': `task-${id}` }, name);
}

function statCard(label, value, extra) {
  return h('div', { class: `stat ${extra || ''}`.trim() },
    h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-label' }, label));
}

// --- list ----------------------------------------------------------------------------------

export async function listView(view, ctx) {
  ctx.title('Tasks');
  const statsBox = h('div', { class: 'stats-grid', id: 'task-stat-cards' });
  const chartBox = h('div', { class: 'chart-slot', id: 'task-7day-chart' });
  const recentBox = h('div', { id: 'recent-runs' });
  const tableBox = h('div', { id: 'tasks-table' });
  view.append(
    h('div', { class: 'page-head' },
      h('h1', null, 'Tasks'),
      h('a', { class: 'button', href: '#/tasks/new' }, 'New task')),
    h('section', { class: 'card', 'aria-labelledby': 'tasks-all-title' },
      h('h2', { id: 'tasks-all-title' }, 'All tasks'), tableBox),
    h('section', { class: 'card', 'aria-labelledby': 'task-stats-title' },
      h('h2', { id: 'task-stats-title' }, 'Statistics'), statsBox,
      h('div', { class: 'two-col' },
        chartBox,
        h('div', null, h('h3', null, 'Recent runs'), recentBox))));

  async function refresh() {
    const [list, stats] = await Promise.all([api.tasks(), api.taskStats()]);
    if (!ctx.isCurrent()) return 0;
    patch(tableBox, list, renderTaskTable);
    patch(statsBox, stats, renderStatCards);
    patch(chartBox, stats.last_7_days, (d) => stackedColumns({
      title: 'Runs in the last 7 days',
      labels: d.dates,
      series: [
        { name: 'Succeeded', values: d.success_counts, color: GREEN },
        { name: 'Failed', values: d.failed_counts, color: RED },
      ],
      format: (v) => String(v),
      short: shortDate,
      emptyText: 'No runs in the last 7 days',
    }));
    patch(recentBox, stats.recent_tasks, renderRecent);
    return pollDelay(list);
  }
  const first = await refresh();
  if (first) ctx.every(refresh, first);
}

function renderTaskTable(list) {
  if (!list.length) {
    return h('p', { class: 'empty' }, 'No tasks yet. ', h('a', { href: '#/tasks/new' }, 'Create the first one.'));
  }
  const sorted = [...list].sort((a, b) => b.task_id - a.task_id);
  return h('div', { class: 'table-wrap' },
    stackable(h('table', { class: 'table', id: 'task-table' },
      h('caption', { class: 'visually-hidden' }, 'Tasks, newest first'),
      h('thead', null, h('tr', null,
        ['Name', 'Status', 'Environment', 'Schedule', 'Next run', 'Last run', 'Last duration']
          .map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, sorted.map((t) => h('tr', { 'data-task-id': t.task_id },
        h('th', { scope: 'row' }, taskLink(t.task_id, t.task_name)),
        h('td', null, badge(t.status)),
        h('td', null, h('a', { href: `#/environments/${encodeURIComponent(t.conda_env)}` }, t.conda_env)),
        h('td', null, scheduleText(t)),
        h('td', { class: 'nowrap' }, dash(t.next_run_time_formatted)),
        h('td', { class: 'nowrap' }, dash(t.last_run_time_formatted)),
        h('td', { class: 'num' }, fmtSeconds(t.last_run_duration_formatted))))))));
}

function renderStatCards(s) {
  return [
    statCard('Tasks', s.total),
    statCard('Scheduled', s.scheduled ?? 0, 'stat-scheduled'),
    statCard('Running', s.running ?? 0, 'stat-running'),
    statCard('Completed', s.completed ?? 0, 'stat-completed'),
    statCard('Failed', s.failed ?? 0, 'stat-failed'),
    statCard('Stopped', s.stopped ?? 0, 'stat-stopped'),
    statCard('Success rate', `${s.success_rate ?? 0} %`),
    statCard('Average run', fmtSeconds(s.avg_duration)),
    statCard('Shortest run', fmtSeconds(s.min_duration)),
    statCard('Longest run', fmtSeconds(s.max_duration)),
  ];
}

function renderRecent(recent) {
  if (!recent || !recent.length) return h('p', { class: 'empty' }, 'No runs yet.');
  return h('ol', { class: 'recent-runs' }, recent.map((r) => h('li', null,
    taskLink(r.task_id, r.name), ' ', badge(r.status),
    h('span', { class: 'muted' }, ` ${dash(r.start_time)} · ${fmtSeconds(r.duration)}`))));
}

// --- create --------------------------------------------------------------------------------

// Which form field an API error is about (api.md's messages, or the body's `field`).
export function taskErrorField(body) {
  const fieldMap = { name: 'conda_env', script: 'script', conda_env: 'conda_env', task_name: 'task_name',
    requirements: 'requirements', reuse_env: 'conda_env', delay_seconds: 'delay_seconds',
    cron_expression: 'cron_expression', timeout_seconds: 'schedule',
    memory_limit_mb: 'memory_limit_mb', max_processes: 'max_processes', cpu_limit: 'cpu_limit',
    network: 'network' };
  if (body.field && fieldMap[body.field]) return fieldMap[body.field];
  const m = body.message || '';
  if (m.startsWith('Please specify either cron')) return 'schedule';
  if (m.includes('cron expression')) return 'cron_expression';
  if (m.includes('delay')) return 'delay_seconds';
  if (m.startsWith('Task with this name')) return 'task_name';
  if (m.startsWith('Cannot reuse') || m.startsWith('Environment')) return 'conda_env';
  if (m.startsWith('Script file') || (body.error || '').includes('script roots')) return 'script';
  if (m.includes('requirements') || m.startsWith('Invalid package')) return 'requirements';
  return null;
}

export async function newView(view, ctx) {
  ctx.title('New task');
  let envNames = [];
  try {
    envNames = (await api.environments()).map((e) => e.name);
  } catch (err) {
    if (err.status === 401) throw err;
  }
  if (!ctx.isCurrent()) return;
  const listId = 'env-options';
  const code = h('textarea', { rows: 9, class: 'code', spellcheck: 'false', placeholder: 'print("hello from ctm")' });
  const path = h('input', { class: 'code', spellcheck: 'false', placeholder: '/srv/jobs/report.py' });
  const envInput = h('input', { list: listId, autocomplete: 'off', spellcheck: 'false', required: true });
  if (envNames.length === 1) envInput.value = envNames[0];
  const requirements = h('textarea', { rows: 3, class: 'code', spellcheck: 'false', placeholder: 'requests>=2.31' });
  const delay = h('input', { type: 'number', min: 0, step: 'any', inputmode: 'decimal' });
  const cron = h('input', { class: 'code', spellcheck: 'false', placeholder: '*/10 * * * *' });
  const name = h('input', { maxlength: 200 });
  const memory = h('input', { type: 'number', min: 1, step: 'any', inputmode: 'decimal' });
  const processes = h('input', { type: 'number', min: 1, step: 1, inputmode: 'numeric' });
  const cpus = h('input', { type: 'number', min: 0.1, step: 'any', inputmode: 'decimal' });

  const codeField = field({ name: 'script_code', label: 'Python code', control: code });
  const pathField = field({ name: 'script_path', label: 'Path of a .py file on the server', control: path,
    hint: 'An absolute path. Non-admins may only use paths inside the configured script roots.' });
  pathField.hidden = true;
  const delayField = field({ name: 'delay_seconds', label: 'Delay in seconds', control: delay });
  const cronField = field({ name: 'cron_expression', label: 'Cron expression', control: cron,
    hint: 'Five fields: minute hour day-of-month month day-of-week (e.g. “*/10 * * * *”), or @hourly, @daily, @weekly…' });
  delayField.hidden = true;
  cronField.hidden = true;

  const form = h('form', { class: 'card form', novalidate: true, id: 'task-form', 'aria-labelledby': 'new-task-title' },
    h('h2', { id: 'new-task-title', class: 'visually-hidden' }, 'Task details'),
    field({ name: 'task_name', label: 'Task name', control: name, optional: true,
      hint: 'Defaults to the script’s file name. Names are unique.' }),
    fieldset({ name: 'script', legend: 'Script', children: [
      h('div', { class: 'choices' },
        radio('script_mode', 'code', 'Write the code here', true),
        radio('script_mode', 'path', 'Run a file on the server')),
      codeField, pathField] }),
    field({ name: 'conda_env', label: 'Environment', control: envInput,
      hint: envNames.length
        ? `Existing: ${envNames.slice(0, 8).join(', ')}${envNames.length > 8 ? `, … (${envNames.length} in all)` : ''}. A new name creates the environment (unless “reuse” is ticked).`
        : 'No environment exists yet: a new one with this name is created.' }),
    h('datalist', { id: listId }, envNames.map((n) => h('option', { value: n }))),
    h('div', { class: 'field', 'data-field': 'reuse_env' },
      checkbox('reuse_env', 'Reuse an existing environment only (fail if it does not exist)'),
      h('div', { class: 'field-error', 'data-error-for': 'reuse_env', hidden: true })),
    field({ name: 'requirements', label: 'Requirements', control: requirements, optional: true,
      hint: 'requirements.txt lines, installed into the environment with its pip before the task is created.' }),
    fieldset({ name: 'schedule', legend: 'When to run', children: [
      h('div', { class: 'choices' },
        radio('schedule_mode', 'now', 'Now, once', true),
        radio('schedule_mode', 'delay', 'Once, after a delay'),
        radio('schedule_mode', 'cron', 'Repeatedly, on a cron schedule')),
      delayField, cronField] }),
    fieldset({ name: 'limits', legend: 'Limits of each run', children: [
      field({ name: 'memory_limit_mb', label: 'Memory limit (MB)', control: memory, optional: true,
        hint: 'For the run’s whole process tree. Empty: the server’s default.' }),
      field({ name: 'max_processes', label: 'Max processes', control: processes, optional: true,
        hint: 'Processes the run may have at once. Empty: the server’s default.' }),
      field({ name: 'cpu_limit', label: 'CPU cores', control: cpus, optional: true,
        hint: 'Empty: the server’s default.' }),
      h('div', { class: 'field', 'data-field': 'network' },
        checkbox('network', 'Network (untick to cut the run off the network)', true),
        h('div', { class: 'field-error', 'data-error-for': 'network', hidden: true }))] }),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'button' }, 'Create task'),
      h('a', { class: 'button secondary', href: '#/tasks' }, 'Cancel')),
    busyStatus(),
    formResult());

  form.addEventListener('change', (event) => {
    if (event.target.name === 'script_mode') {
      const usePath = event.target.value === 'path';
      codeField.hidden = usePath;
      pathField.hidden = !usePath;
    }
    if (event.target.name === 'schedule_mode') {
      delayField.hidden = event.target.value !== 'delay';
      cronField.hidden = event.target.value !== 'cron';
    }
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const scriptMode = form.elements.script_mode.value;
    const scheduleMode = form.elements.schedule_mode.value;
    const body = { conda_env: envInput.value.trim(), reuse_env: form.elements.reuse_env.checked };
    let bad = false;
    if (scriptMode === 'path') {
      const p = path.value.trim();
      if (!p) { showFieldError(form, 'script_path', 'Enter the path of a .py file.'); bad = true; }
      else if (!/\.py$/.test(p) || p.includes('\n')) { showFieldError(form, 'script_path', 'A script path is one line ending in “.py”.'); bad = true; }
      body.script = p;
    } else {
      if (!code.value.trim()) { showFieldError(form, 'script_code', 'Write some Python code to run.'); bad = true; }
      body.script = code.value;
    }
    if (!body.conda_env) { showFieldError(form, 'conda_env', 'Choose or name an environment.'); bad = true; }
    if (name.value.trim()) body.task_name = name.value.trim();
    if (requirements.value.trim()) body.requirements = requirements.value;
    if (scheduleMode === 'delay') {
      const raw = delay.value.trim();
      if (delay.validity.badInput) {
        showFieldError(form, 'delay_seconds', 'Enter the delay as a number of seconds.');
        bad = true;
      } else if (raw === '') {
        showFieldError(form, 'delay_seconds', 'Enter the delay in seconds.');
        bad = true;
      } else {
        body.delay_seconds = Number(raw);
      }
    } else if (scheduleMode === 'cron') {
      body.cron_expression = cron.value.trim();
    }
    for (const [key, input, whole] of [['memory_limit_mb', memory, false],
      ['max_processes', processes, true], ['cpu_limit', cpus, false]]) {
      const raw = input.value.trim();
      if (input.validity.badInput) {
        showFieldError(form, key, 'Enter a number.');
        bad = true;
      } else if (raw !== '') {
        const value = Number(raw);
        if (!(value > 0) || (whole && !Number.isInteger(value))) {
          showFieldError(form, key, whole ? 'Enter a whole number of at least 1.' : 'Enter a number above 0.');
          bad = true;
        } else {
          body[key] = value;
        }
      }
    }
    if (!form.elements.network.checked) body.network = false;
    if (bad) { focusFirstError(form); return; }
    const slow = body.requirements || !envNamesHas(envNames, body.conda_env);
    try {
      const created = await busy(form, slow ? 'Creating task (preparing the environment can take a few minutes)' : 'Creating task',
        () => api.createTask(body));
      const msg = created.environment_message ? ` ${created.environment_message}.` : '';
      ctx.toast(`Task “${created.task.task_name}” created.${msg}`, 'success');
      if (ctx.isCurrent()) ctx.go(`#/tasks/${created.task.task_id}`);
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Creating the task failed: ${err.message}`, 'error');
        return;
      }
      showApiError(form, err, (b) => {
        const f = taskErrorField(b);
        if (f === 'script') return scriptMode === 'path' ? 'script_path' : 'script_code';
        return f;
      }, 'Could not create the task');
    }
  });

  view.append(
    h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/tasks' }, 'Tasks'), ' › New task'),
    h('h1', null, 'New task'),
    form);
}

function envNamesHas(names, name) {
  return names.includes(name);
}

// --- detail --------------------------------------------------------------------------------

export async function detailView(view, ctx, id) {
  ctx.title(`Task ${id}`);
  const heading = h('h1', null, `Task ${id}`);
  const badgeSlot = h('span', { class: 'status-slot', id: 'task-status' });
  const announce = h('p', { class: 'visually-hidden', role: 'status', 'aria-live': 'polite' });
  const stopButton = h('button', { type: 'button', class: 'button warning', id: 'stop-task', hidden: true }, 'Stop run');
  const deleteButton = h('button', { type: 'button', class: 'button danger secondary', id: 'delete-task' }, 'Delete');
  const actionResult = h('div', { class: 'form-result', 'aria-live': 'polite' });
  const facts = h('div', { id: 'task-facts' });
  const latestFacts = h('div', { id: 'latest-run' });
  const log = h('pre', { class: 'log', id: 'task-log', tabindex: '0', 'aria-label': 'Log of the latest run' });
  const logLink = h('a', { class: 'log-download', id: 'latest-log-download', download: '', hidden: true }, 'Download the whole log');
  const durationChart = h('div', { class: 'chart-slot', id: 'duration-chart' });
  const memoryChart = h('div', { class: 'chart-slot', id: 'memory-chart' });
  const history = h('div', { id: 'execution-history' });
  const body = h('div', null,
    h('div', { class: 'page-head' },
      h('div', { class: 'title-line' }, heading, badgeSlot),
      h('div', { class: 'actions' }, stopButton, deleteButton)),
    announce, actionResult,
    h('section', { class: 'card', 'aria-labelledby': 'task-about-title' },
      h('h2', { id: 'task-about-title' }, 'About this task'), facts),
    h('section', { class: 'card', 'aria-labelledby': 'latest-title' },
      h('h2', { id: 'latest-title' }, 'Latest run'), latestFacts,
      h('div', { class: 'log-head' }, h('h3', null, 'Log'), logLink), log),
    h('section', { class: 'card', 'aria-labelledby': 'perf-title' },
      h('h2', { id: 'perf-title' }, 'Performance'),
      h('div', { class: 'two-col' }, durationChart, memoryChart)),
    h('section', { class: 'card', 'aria-labelledby': 'history-title' },
      h('h2', { id: 'history-title' }, 'Execution history'), history));
  view.append(h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' },
    h('a', { href: '#/tasks' }, 'Tasks'), ' › ', h('span', { id: 'crumb-name' }, `Task ${id}`)), body);

  let current = null;
  let stopping = false;
  let poller = null;
  let historyLimit = HISTORY_PAGE;
  // The latest run's log, followed live while it runs: { id, close, failed }.
  let stream = null;
  ctx.onCleanup(() => { if (stream) stream.close(); });

  // Follow the latest run's log when it is queued or running (once per run); after the end
  // its streamed text stays. Without a stream the polled log shows, as before.
  function followLatest(latest) {
    if (!latest || (stream && stream.id === latest.execution_id)) return;
    if (latest.status !== 'running' && latest.status !== 'queued') return;
    if (stream) stream.close();
    const s = { id: latest.execution_id, failed: false, close: () => {} };
    stream = s;
    setLog(log, '(no output yet)');
    s.close = followLog(log, api.logUrl(id, latest.execution_id), {
      onEnd: (final, anyLine) => {
        if (!anyLine && stream === s) setLog(log, '(no output)');
        if (ctx.isCurrent() && poller) poller.now();
      },
      onFail: () => {
        s.failed = true;
        if (ctx.isCurrent() && poller) poller.now();
      },
    });
  }

  function render(d) {
    const t = d.task;
    const first = current === null;
    if (!first && current.task.status !== t.status) {
      announce.textContent = `Status changed to ${t.status}.`;
    }
    current = d;
    heading.textContent = t.task_name;
    view.querySelector('#crumb-name').textContent = t.task_name;
    ctx.title(t.task_name);
    patch(badgeSlot, t.status, badge);
    stopButton.hidden = t.status !== 'running' && !stopping;
    stopButton.disabled = stopping;
    patch(facts, t, renderFacts);
    const latest = d.latest_execution;
    patch(latestFacts, latest ? { ...latest, logs: undefined } : null, renderLatest);
    followLatest(latest);
    const streamed = latest && stream && stream.id === latest.execution_id && !stream.failed;
    if (!streamed) {
      setLog(log, latest ? (latest.logs || (latest.status === 'running' ? '(no output yet)' : '(no output)')) : '(not run yet)');
    }
    logLink.hidden = !latest;
    if (latest) logLink.href = api.logUrl(t.task_id, latest.execution_id, true);
    const pm = lastRuns(d.performance_metrics, CHART_POINTS);
    const ofN = pm.total > pm.timestamps.length ? ` (last ${pm.timestamps.length} of ${pm.total})` : '';
    patch(durationChart, pm, (m) => lineChart({
      title: `Duration per run${ofN}`,
      labels: m.timestamps,
      series: [{ name: 'Duration (s)', values: m.durations, color: PALETTE[0] }],
      format: (v) => (v === null || v === undefined ? '—' : `${Number(v).toFixed(v < 10 ? 2 : 1)} s`),
      short: shortTime,
    }));
    patch(memoryChart, pm, (m) => lineChart({
      title: `Memory per run${ofN}`,
      labels: m.timestamps,
      series: [
        { name: 'Peak memory (MB)', values: m.peak_memories, color: PALETTE[3] },
        { name: 'Average memory (MB)', values: m.avg_memories, color: PALETTE[2] },
      ],
      format: (v) => (v === null || v === undefined ? '—' : `${Number(v).toFixed(1)} MB`),
      short: shortTime,
    }));
    patch(history, { list: d.execution_history, limit: historyLimit, older: Boolean(d.execution_history_next_before) },
      ({ list, limit, older }) => renderHistory(t.task_id, list, limit, older));
  }

  async function refresh() {
    let d;
    try {
      // One page (the server's are at most 5,000): enough for the table and the charts.
      d = await api.task(id, Math.min(5000, Math.max(historyLimit + 1, CHART_POINTS)));
    } catch (err) {
      if (err.status === 404 && ctx.isCurrent()) {
        body.replaceChildren(errorBox(err, 'This task does not exist (any more)'),
          h('p', null, h('a', { href: '#/tasks' }, 'Back to the tasks')));
        heading.textContent = 'Task not found';
        return 0;
      }
      throw err;
    }
    if (!ctx.isCurrent()) return 0;
    render(d);
    const t = d.task;
    if (t.status === 'running') return 1000;
    if (isPendingOneShot(t)) return 1000; // it is about to start: catch it running
    return SLOW;
  }

  history.addEventListener('click', (event) => {
    if (!event.target.closest('[data-more-runs]')) return;
    historyLimit += HISTORY_PAGE * 5;
    if (current) render(current);
    if (current && historyLimit >= current.execution_history.length && current.execution_history_next_before) {
      refresh().catch(() => {}); // the next runs are on the server: fetch a bigger page
    }
    const rows = history.querySelectorAll('tbody tr');
    const next = rows[historyLimit - HISTORY_PAGE * 5];
    if (next) { next.setAttribute('tabindex', '-1'); next.focus(); }
  });

  stopButton.addEventListener('click', async () => {
    stopping = true;
    stopButton.disabled = true;
    stopButton.textContent = 'Stopping…';
    stopButton.setAttribute('aria-busy', 'true');
    actionResult.replaceChildren();
    try {
      const r = await api.stopTask(id);
      ctx.toast(`Task “${r.task.task_name}” stopped.`, 'success');
    } catch (err) {
      if (err.status !== 401 && ctx.isCurrent()) actionResult.replaceChildren(errorBox(err, 'Could not stop the task'));
    } finally {
      stopping = false;
      stopButton.textContent = 'Stop run';
      stopButton.removeAttribute('aria-busy');
      if (ctx.isCurrent() && poller) poller.now();
    }
  });

  deleteButton.addEventListener('click', async () => {
    const name = current ? current.task.task_name : `task ${id}`;
    const running = current && current.task.status === 'running';
    const ok = await ctx.confirm(`Delete “${name}”?`,
      `${running ? 'Its run is stopped first. ' : ''}The task, its schedule, all its runs and logs are deleted. This cannot be undone.`,
      'Delete task');
    if (!ok) return;
    deleteButton.disabled = true;
    deleteButton.textContent = 'Deleting…';
    try {
      await api.deleteTask(id);
      ctx.toast(`Task “${name}” deleted.`, 'success');
      if (ctx.isCurrent()) ctx.go('#/tasks');
    } catch (err) {
      if (err.status !== 401 && ctx.isCurrent()) actionResult.replaceChildren(errorBox(err, 'Could not delete the task'));
    } finally {
      deleteButton.disabled = false;
      deleteButton.textContent = 'Delete';
    }
  });

  const first = await refresh();
  if (first) poller = ctx.every(refresh, first);
}

function renderFacts(t) {
  const row = (label, value) => [h('dt', null, label), h('dd', null, value)];
  return h('dl', { class: 'facts' },
    row('Environment', h('a', { href: `#/environments/${encodeURIComponent(t.conda_env)}` }, t.conda_env)),
    row('Script', h('code', { class: 'break' }, t.script_path)),
    row('Schedule', scheduleText(t)),
    row('Next run', dash(t.next_run_time)),
    row('Last run', dash(t.last_run_time)),
    row('Last duration', fmtSeconds(t.last_run_duration)),
    row('Created', dash(t.created_at)),
    t.requirements ? row('Requirements', h('pre', { class: 'inline-pre' }, t.requirements)) : null,
    t.timeout_seconds ? row('Timeout', fmtSeconds(t.timeout_seconds)) : null,
    'memory_limit_mb' in t ? row('Memory limit', t.memory_limit_mb == null ? 'none' : fmtMB(t.memory_limit_mb)) : null,
    'max_processes' in t ? row('Max processes', t.max_processes == null ? 'no limit' : String(t.max_processes)) : null,
    'cpu_limit' in t ? row('CPU cores', t.cpu_limit == null ? 'no limit' : String(t.cpu_limit)) : null,
    'network' in t ? row('Network', t.network ? 'on' : 'off') : null);
}

function renderLatest(ex) {
  if (!ex) return h('p', { class: 'empty' }, 'This task has not run yet.');
  const row = (label, value) => [h('dt', null, label), h('dd', null, value)];
  return h('dl', { class: 'facts' },
    row('Status', badge(ex.status)),
    row('Started', dash(ex.start_time)),
    row('Ended', dash(ex.end_time)),
    row('Duration', fmtSeconds(ex.duration)),
    row('Peak memory', fmtMB(ex.peak_memory)),
    row('Average memory', fmtMB(ex.avg_memory)),
    row('Exit code', dash(ex.exit_code)),
    ex.note ? row('Note', ex.note) : null);
}

// The last `max` finished runs of performance_metrics (it is oldest first).
function lastRuns(pm, max) {
  const total = pm.timestamps.length;
  const from = Math.max(0, total - max);
  return {
    total,
    timestamps: pm.timestamps.slice(from),
    durations: pm.durations.slice(from),
    peak_memories: pm.peak_memories.slice(from),
    avg_memories: pm.avg_memories.slice(from),
  };
}

function renderHistory(taskId, all, limit, older) {
  if (!all || !all.length) return h('p', { class: 'empty' }, 'No runs yet.');
  const list = all.slice(0, limit);
  const more = all.length > list.length || older
    ? h('p', { class: 'more' }, `Showing the latest ${list.length} of ${all.length}${older ? '+' : ''} runs. `,
      h('button', { type: 'button', class: 'button small secondary', 'data-more-runs': '1', 'data-focus-key': 'more-runs' }, 'Show more runs'))
    : null;
  return [h('div', { class: 'table-wrap' },
    stackable(h('table', { class: 'table' },
      h('caption', { class: 'visually-hidden' }, 'Runs of this task, newest first'),
      h('thead', null, h('tr', null, ['Started', 'Status', 'Ended', 'Duration', 'Peak memory', 'Avg memory', 'Exit code', 'Note', 'Log']
        .map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', null, list.map((ex) => h('tr', null,
        h('td', { class: 'nowrap' }, dash(ex.start_time)),
        h('td', null, badge(ex.status)),
        h('td', { class: 'nowrap' }, dash(ex.end_time)),
        h('td', { class: 'num' }, fmtSeconds(ex.duration)),
        h('td', { class: 'num' }, fmtMB(ex.peak_memory)),
        h('td', { class: 'num' }, fmtMB(ex.avg_memory)),
        h('td', { class: 'num' }, dash(ex.exit_code)),
        h('td', null, dash(ex.note)),
        h('td', null, h('a', {
          href: api.logUrl(taskId, ex.execution_id, true),
          download: '',
          class: 'log-download',
          'aria-label': `Download the log of the run started ${ex.start_time || 'not yet'}`,
        }, 'Download')))))))), more];
}
