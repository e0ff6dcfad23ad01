// Environment views: the list with stats and charts (GET /api/conda/environments,
// GET /api/conda/stats, POST /api/conda/environment) and the detail
// (GET/PUT/DELETE /api/conda/environment/{name}, POST/DELETE .../packages).

import { api } from './api.js';
import { h, dash, fmtGB, fmtSeconds, splitSpecs, errorBox, successBox, badge, stackable } from './dom.js';
import { pieChart, barChart } from './charts.js';
import {
  field, clearErrors, showFieldError, focusFirstError, showApiError, showResult, busy,
  busyStatus, formResult,
} from './forms.js';
import { patch } from './live.js';

const LIST_POLL = 15000;
const envHref = (name) => `#/environments/${encodeURIComponent(name)}`;

function statCard(label, value, sub) {
  return h('div', { class: sub ? 'stat stat-text' : 'stat' }, sub ? h('span', { class: 'stat-sub' }, sub) : null,
    h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-label' }, label));
}

// --- list ----------------------------------------------------------------------------------

export async function listView(view, ctx) {
  ctx.title('Environments');
  const cards = h('div', { class: 'stats-grid', id: 'env-stat-cards' });
  const pie = h('div', { class: 'chart-slot', id: 'env-usage-chart' });
  const bars = h('div', { class: 'chart-slot', id: 'package-count-chart' });
  const tableBox = h('div', { id: 'env-table' });
  const disk = new Map(); // name -> GB, filled lazily from the detail route

  const nameInput = h('input', { autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', maxlength: 64 });
  const pyInput = h('input', { autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. 3.11', inputmode: 'decimal', maxlength: 20 });
  const pkgInput = h('input', { autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', placeholder: 'numpy pandas>=2' });
  const form = h('form', { class: 'form', novalidate: true, id: 'env-form' },
    h('div', { class: 'form-row' },
      field({ name: 'name', label: 'Name', control: nameInput, hint: 'Letters, digits, “_”, “.” or “-”.' }),
      field({ name: 'python_version', label: 'Python version', control: pyInput, optional: true, hint: 'The server’s default when empty.' }),
      field({ name: 'packages', label: 'Packages', control: pkgInput, optional: true, hint: 'Separated by spaces or commas.' })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button' }, 'Create environment')),
    busyStatus(),
    formResult());

  view.append(
    h('div', { class: 'page-head' }, h('h1', null, 'Environments'),
      h('button', { type: 'button', class: 'button secondary', id: 'env-refresh', onclick: () => refresh(true).catch((err) => {
        if (err.status !== 401) ctx.toast(`Refreshing failed: ${err.message}`, 'error');
      }) }, 'Refresh')),
    h('section', { class: 'card', 'aria-labelledby': 'env-list-title' },
      h('h2', { id: 'env-list-title' }, 'All environments'), tableBox),
    h('section', { class: 'card', 'aria-labelledby': 'env-create-title' },
      h('h2', { id: 'env-create-title' }, 'Create an environment'), form),
    h('section', { class: 'card', 'aria-labelledby': 'env-stats-title' },
      h('h2', { id: 'env-stats-title' }, 'Statistics'), cards,
      h('div', { class: 'two-col' }, pie, bars)));

  let loadingDisk = false;
  async function fillDisk(list) {
    if (loadingDisk) return;
    loadingDisk = true;
    try {
      for (const env of list) {
        if (!ctx.isCurrent()) return;
        if (disk.has(env.name)) continue;
        try {
          const d = await api.environment(env.name);
          disk.set(env.name, d.usage_stats ? d.usage_stats.disk_usage : null);
        } catch (err) {
          if (err.status === 401) return;
          disk.set(env.name, undefined);
        }
        const cell = tableBox.querySelector(`[data-disk-for="${CSS.escape(env.name)}"]`);
        if (cell) cell.textContent = diskText(disk.get(env.name));
      }
    } finally {
      loadingDisk = false;
    }
  }

  const diskText = (v) => (v === undefined ? 'unknown' : fmtGB(v));

  async function refresh(force) {
    if (force) disk.clear();
    const [list, stats] = await Promise.all([api.environments(), api.environmentStats()]);
    if (!ctx.isCurrent()) return 0;
    patch(tableBox, force ? { list, t: Date.now() } : { list }, ({ list: l }) => renderEnvTable(l, disk, diskText));
    patch(cards, stats, (st) => [
      statCard('Environments', st.total_environments),
      statCard('Used by tasks', st.active_environments),
      statCard('Disk used', fmtGB(st.total_disk_usage)),
      statCard('Newest', st.latest_created ? st.latest_created.name : '—', st.latest_created ? st.latest_created.created_at : null),
    ]);
    patch(pie, stats.environment_usage, (u) => pieChart({
      title: 'Share of tasks per environment',
      items: u.map((x) => ({ label: x.name, value: x.usage_percent })),
      emptyText: 'No task uses an environment yet.',
    }));
    patch(bars, stats.package_stats, (p) => barChart({
      title: 'Packages per environment',
      items: p.map((x) => ({ label: x.name, value: x.package_count })),
      format: (v) => String(v),
      emptyText: 'No environments yet.',
    }));
    fillDisk(list);
    return LIST_POLL;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const name = nameInput.value.trim();
    if (!name) {
      showFieldError(form, 'name', 'Enter a name for the environment.');
      focusFirstError(form);
      return;
    }
    const body = { name };
    if (pyInput.value.trim()) body.python_version = pyInput.value.trim();
    const specs = splitSpecs(pkgInput.value);
    if (specs.length) body.packages = specs;
    try {
      const r = await busy(form, `Creating environment “${name}” — this can take a minute`, () => api.createEnvironment(body));
      const env = r.environment;
      ctx.toast(`Environment “${env.name}” created.`, 'success');
      if (!ctx.isCurrent()) return;
      form.reset();
      showResult(form, successBox(`Environment “${env.name}” created${env.python_version ? ` with Python ${env.python_version}` : ''}.`,
        h('p', null, h('a', { href: envHref(env.name) }, `Open ${env.name}`))));
      await refresh(false);
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Creating environment “${name}” failed: ${err.message}`, 'error');
        return;
      }
      showApiError(form, err, (b) => {
        if (b.field) return b.field;
        if ((b.message || '').startsWith('Environment with this name')) return 'name';
        if (Array.isArray(b.failed_packages) && b.failed_packages.length) return 'packages';
        return null;
      }, 'Could not create the environment');
    }
  });

  const first = await refresh(false);
  if (first) ctx.every(() => refresh(false), first);
}

function renderEnvTable(list, disk, diskText) {
  if (!list.length) return h('p', { class: 'empty' }, 'No environments yet. Create one below.');
  const sorted = [...list].sort((a, b) => a.name.localeCompare(b.name));
  return h('div', { class: 'table-wrap' },
    stackable(h('table', { class: 'table', id: 'environment-table' },
      h('caption', { class: 'visually-hidden' }, 'Environments'),
      h('thead', null, h('tr', null, ['Name', 'Python', 'Packages', 'Created', 'Disk']
        .map((x, i) => h('th', { scope: 'col', class: i === 2 || i === 4 ? 'num' : null }, x)))),
      h('tbody', null, sorted.map((e) => h('tr', { 'data-env': e.name },
        h('th', { scope: 'row' }, h('a', { href: envHref(e.name), 'data-focus-key': `env-${e.name}` }, e.name)),
        h('td', null, dash(e.python_version)),
        h('td', { class: 'num' }, e.package_count ?? (e.packages ? e.packages.length : '—')),
        h('td', { class: 'nowrap' }, dash(e.created_at)),
        h('td', { class: 'num', 'data-disk-for': e.name }, disk.has(e.name) ? diskText(disk.get(e.name)) : '…')))))));
}

// --- detail --------------------------------------------------------------------------------

export async function detailView(view, ctx, name) {
  ctx.title(name);
  const opStatus = h('p', { class: 'busy-status op-status', role: 'status', hidden: true, id: 'env-op-status' });
  const cards = h('div', { class: 'stats-grid', id: 'env-usage-cards' });
  const facts = h('div', { id: 'env-facts' });
  const pkgTable = h('div', { id: 'package-table' });
  const taskList = h('div', { id: 'env-tasks' });

  const pkgInput = h('input', { autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', placeholder: 'numpy==1.26 pandas>=2' });
  const installForm = h('form', { class: 'form', novalidate: true, id: 'install-form' },
    field({ name: 'packages', label: 'Packages to install', control: pkgInput,
      hint: 'Separated by spaces or commas; version constraints allowed (numpy==1.26, pandas>=2).' }),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button' }, 'Install')),
    busyStatus(), formResult());
  const removeResult = h('div', { class: 'form-result', 'aria-live': 'polite', id: 'remove-result' });

  const newName = h('input', { autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', maxlength: 64 });
  const renameForm = h('form', { class: 'form', novalidate: true, id: 'rename-form' },
    field({ name: 'new_name', label: 'New name', control: newName, hint: 'Tasks that use this environment are updated too.' }),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'button secondary' }, 'Rename')),
    busyStatus(), formResult());
  const deleteButton = h('button', { type: 'button', class: 'button danger', id: 'delete-env' }, 'Delete environment');
  const deleteResult = h('div', { class: 'form-result', 'aria-live': 'polite' });

  const content = h('div', null,
    h('div', { class: 'page-head' }, h('h1', null, name)),
    opStatus,
    h('section', { class: 'card', 'aria-labelledby': 'env-about-title' },
      h('h2', { id: 'env-about-title' }, 'About'), facts, cards),
    h('section', { class: 'card', 'aria-labelledby': 'env-pkg-title' },
      h('h2', { id: 'env-pkg-title' }, 'Packages'), installForm, removeResult, pkgTable),
    h('section', { class: 'card', 'aria-labelledby': 'env-tasks-title' },
      h('h2', { id: 'env-tasks-title' }, 'Tasks using it'), taskList),
    h('section', { class: 'card', 'aria-labelledby': 'env-manage-title' },
      h('h2', { id: 'env-manage-title' }, 'Rename or delete'), renameForm,
      h('div', { class: 'danger-zone' },
        h('p', null, 'Deleting removes the environment and its files. It is refused while a task uses it.'),
        deleteButton, deleteResult)));
  view.append(h('nav', { class: 'breadcrumb', 'aria-label': 'Breadcrumb' },
    h('a', { href: '#/environments' }, 'Environments'), ` › ${name}`), content);

  // One operation at a time on this page (the server serializes them per environment anyway).
  let running = false;
  function setBusy(label) {
    running = !!label;
    opStatus.textContent = label ? `${label}…` : '';
    opStatus.hidden = !label;
    content.setAttribute('aria-busy', label ? 'true' : 'false');
    for (const b of content.querySelectorAll('button')) b.disabled = !!label;
  }
  async function operation(label, form, work) {
    setBusy(label);
    try {
      return form ? await busy(form, label, work) : await work();
    } finally {
      if (ctx.isCurrent()) setBusy(null);
    }
  }

  async function load() {
    let d;
    try {
      d = await api.environment(name);
    } catch (err) {
      if (err.status === 404 && ctx.isCurrent()) {
        content.replaceChildren(h('h1', null, name), errorBox(err, 'This environment does not exist (any more)'),
          h('p', null, h('a', { href: '#/environments' }, 'Back to the environments')));
        return false;
      }
      throw err;
    }
    if (!ctx.isCurrent()) return false;
    const u = d.usage_stats || {};
    patch(facts, d, (x) => h('dl', { class: 'facts' },
      h('dt', null, 'Python'), h('dd', null, dash(x.python_version)),
      h('dt', null, 'Created'), h('dd', null, dash(x.created_at)),
      h('dt', null, 'Packages'), h('dd', null, String(x.packages.length))));
    patch(cards, u, () => [
      statCard('Tasks using it', u.total_tasks ?? 0),
      statCard('Success rate', `${u.success_rate ?? 0} %`),
      statCard('Average run', fmtSeconds(u.avg_execution_time)),
      statCard('Disk used', fmtGB(u.disk_usage)),
    ]);
    patch(pkgTable, d.packages, renderPackages);
    api.tasks().then((all) => {
      if (ctx.isCurrent()) patch(taskList, all.filter((t) => t.conda_env === name), renderEnvTasks);
    }).catch(() => {});
    return true;
  }

  function renderPackages(packages) {
    if (!packages.length) return h('p', { class: 'empty' }, 'No packages installed.');
    const sorted = [...packages].sort((a, b) => a.name.localeCompare(b.name));
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'table compact', id: 'packages' },
        h('caption', { class: 'visually-hidden' }, `Packages installed in ${name}`),
        h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Package'), h('th', { scope: 'col' }, 'Version'),
          h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
        h('tbody', null, sorted.map((p) => h('tr', { 'data-package': p.name },
          h('th', { scope: 'row' }, p.name),
          h('td', null, h('code', null, dash(p.version))),
          h('td', { class: 'row-actions' }, h('button', {
            type: 'button', class: 'button small secondary', 'data-remove': p.name, 'data-focus-key': `rm-${p.name}`,
            'aria-label': `Remove ${p.name}`, disabled: running,
          }, 'Remove')))))));
  }

  pkgTable.addEventListener('click', async (event) => {
    const button = event.target.closest('[data-remove]');
    if (!button) return;
    const pkg = button.dataset.remove;
    const ok = await ctx.confirm(`Remove ${pkg}?`, `${pkg} is uninstalled from ${name}. Tasks that import it will fail.`, 'Remove');
    if (!ok) return;
    removeResult.replaceChildren();
    try {
      const r = await operation(`Removing ${pkg} from ${name}`, null, () => api.removePackages(name, [pkg]));
      ctx.toast(`Removed ${r.removed_packages.join(', ')} from ${name}.`, 'success');
      if (!ctx.isCurrent()) return;
      removeResult.replaceChildren(successBox(`Removed: ${r.removed_packages.join(', ')}.`));
      await load();
    } catch (err) {
      if (err.status === 401) return;
      if (ctx.isCurrent()) removeResult.replaceChildren(errorBox(err, `Could not remove ${pkg}`));
      else ctx.toast(`Removing ${pkg} from ${name} failed: ${err.message}`, 'error');
    }
  });

  installForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(installForm);
    const specs = splitSpecs(pkgInput.value);
    if (!specs.length) {
      showFieldError(installForm, 'packages', 'Enter at least one package.');
      focusFirstError(installForm);
      return;
    }
    try {
      const r = await operation(`Installing ${specs.join(', ')} — this can take a few minutes`, installForm,
        () => api.installPackages(name, specs));
      ctx.toast(`Installed ${r.installed_packages.join(', ')} in ${name}.`, 'success');
      if (!ctx.isCurrent()) return;
      installForm.reset();
      showResult(installForm, successBox(`Installed: ${r.installed_packages.join(', ')}.`));
      await load();
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Installing into ${name} failed: ${err.message}`, 'error');
        return;
      }
      showApiError(installForm, err, (b) => (b.failed_packages || b.invalid_packages || b.field === 'packages' ? 'packages' : null),
        'Could not install');
    }
  });

  renameForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(renameForm);
    const target = newName.value.trim();
    if (!target) {
      showFieldError(renameForm, 'new_name', 'Enter the new name.');
      focusFirstError(renameForm);
      return;
    }
    try {
      const r = await operation(`Renaming ${name} to ${target}`, renameForm, () => api.renameEnvironment(name, target));
      const n = r.updated_tasks_count || 0;
      ctx.toast(`Renamed ${r.old_name} to ${r.new_name}${n ? `; ${n} task${n === 1 ? '' : 's'} updated` : ''}.`, 'success');
      if (ctx.isCurrent()) ctx.go(envHref(r.new_name));
    } catch (err) {
      if (err.status === 401) return;
      if (!ctx.isCurrent()) {
        ctx.toast(`Renaming ${name} failed: ${err.message}`, 'error');
        return;
      }
      showApiError(renameForm, err, (b) => (b.field === 'name' || b.field === 'new_name' || (b.message || '').startsWith('Environment with this name') || b.message === 'Invalid environment name' ? 'new_name' : null),
        'Could not rename');
    }
  });

  deleteButton.addEventListener('click', async () => {
    const ok = await ctx.confirm(`Delete ${name}?`, `The environment ${name} and all its packages are deleted. This cannot be undone. Tasks that use it are kept, with their history, but their later runs fail. It cannot be deleted while one of its tasks is running.`, 'Delete environment');
    if (!ok) return;
    deleteResult.replaceChildren();
    try {
      await operation(`Deleting ${name}`, null, () => api.deleteEnvironment(name));
      ctx.toast(`Environment ${name} deleted.`, 'success');
      if (ctx.isCurrent()) ctx.go('#/environments');
    } catch (err) {
      if (err.status === 401) return;
      if (ctx.isCurrent()) {
        deleteResult.replaceChildren(errorBox(err, 'Could not delete'));
        deleteResult.setAttribute('tabindex', '-1');
        deleteResult.focus();
      } else {
        ctx.toast(`Deleting ${name} failed: ${err.message}`, 'error');
      }
    }
  });

  await load();
}

function renderEnvTasks(list) {
  if (!list.length) return h('p', { class: 'empty' }, 'No task uses this environment.');
  return h('ul', { class: 'plain-list' }, list.map((t) => h('li', null,
    h('a', { href: `#/tasks/${t.task_id}` }, t.task_name), ' ', badge(t.status))));
}
