// Charts drawn as plain SVG: pie, horizontal bars, lines, stacked bars. No library.
// Every chart is a <figure> with a caption, an SVG with role="img" and a text summary,
// <title> tooltips on each mark, a legend, and its numbers as a table behind a disclosure.
// Colours are SVG attributes (allowed by the page's CSP, unlike inline style).

import { h } from './dom.js';

const NS = 'http://www.w3.org/2000/svg';

export const PALETTE = [
  '#2563eb', '#f59e0b', '#10b981', '#db2777', '#0ea5e9',
  '#ea580c', '#7c3aed', '#65a30d', '#64748b', '#b91c1c',
];
export const GREEN = '#16a34a';
export const RED = '#dc2626';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const tip = (text) => s('title', null, text);
const r2 = (n) => Math.round(n * 100) / 100;

function svgRoot(width, height, label, cls) {
  return s('svg', {
    viewBox: `0 0 ${width} ${height}`,
    class: `chart-svg ${cls || ''}`.trim(),
    role: 'img',
    'aria-label': label,
    preserveAspectRatio: 'xMidYMid meet',
    focusable: 'false',
  });
}

function swatch(color) {
  return s('svg', { class: 'swatch', viewBox: '0 0 10 10', 'aria-hidden': 'true', focusable: 'false' },
    s('rect', { width: 10, height: 10, rx: 2, fill: color }));
}

function legend(entries) {
  return h('ul', { class: 'legend' },
    entries.map(([color, label, value]) => h('li', null, swatch(color),
      h('span', { class: 'legend-label' }, label),
      value !== undefined ? h('span', { class: 'legend-value' }, value) : null)));
}

function dataTable(headers, rows) {
  return h('details', { class: 'chart-data' },
    h('summary', null, 'Show the numbers'),
    h('div', { class: 'table-wrap' },
      h('table', { class: 'table compact' },
        h('thead', null, h('tr', null, headers.map((x) => h('th', { scope: 'col' }, x)))),
        h('tbody', null, rows.map((row) => h('tr', null, row.map((x) => h('td', null, x))))))));
}

function figure(title, kind, ...content) {
  return h('figure', { class: `chart chart-${kind}`, 'data-chart': kind },
    h('figcaption', { class: 'chart-title' }, title), content);
}

function empty(title, kind, text) {
  return figure(title, kind, h('p', { class: 'chart-empty' }, text));
}

function truncate(text, max) {
  const str = String(text);
  return str.length > max ? `${str.slice(0, max - 1)}…` : str;
}

export function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  const f = value / exp;
  const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nice * exp;
}

const plain = (v) => String(Math.round(v * 100) / 100);

// --- pie ----------------------------------------------------------------------------------

// items: [{label, value}]; value is a share (for environment_usage: integer percents).
export function pieChart({ title, items, format = (v) => `${v} %`, emptyText = 'No data yet.' }) {
  const data = (items || []).filter((d) => Number(d.value) > 0);
  const total = data.reduce((sum, d) => sum + Number(d.value), 0);
  if (!data.length || total <= 0) return empty(title, 'pie', emptyText);
  const size = 200;
  const c = size / 2;
  const r = 92;
  const summary = `${title}: ${data.map((d) => `${d.label} ${format(d.value)}`).join(', ')}`;
  const svg = svgRoot(size, size, summary, 'pie');
  let angle = -Math.PI / 2;
  data.forEach((d, i) => {
    const color = PALETTE[i % PALETTE.length];
    const frac = Number(d.value) / total;
    let path;
    if (frac >= 0.9999) {
      path = `M ${c} ${c - r} A ${r} ${r} 0 1 1 ${c} ${c + r} A ${r} ${r} 0 1 1 ${c} ${c - r} Z`;
    } else {
      const end = angle + frac * 2 * Math.PI;
      const x0 = r2(c + r * Math.cos(angle));
      const y0 = r2(c + r * Math.sin(angle));
      const x1 = r2(c + r * Math.cos(end));
      const y1 = r2(c + r * Math.sin(end));
      const large = frac > 0.5 ? 1 : 0;
      path = `M ${c} ${c} L ${x0} ${y0} A ${r} ${r} 0 ${large} 1 ${x1} ${y1} Z`;
      angle = end;
    }
    svg.append(s('path', { d: path, fill: color, class: 'pie-slice' },
      tip(`${d.label}: ${format(d.value)}`)));
  });
  return figure(title, 'pie',
    h('div', { class: 'chart-body chart-body-pie' }, svg,
      legend(data.map((d, i) => [PALETTE[i % PALETTE.length], d.label, format(d.value)]))),
    dataTable(['Name', 'Share'], data.map((d) => [d.label, format(d.value)])));
}

// --- horizontal bars ----------------------------------------------------------------------

// items: [{label, value}]
export function barChart({ title, items, format = plain, emptyText = 'No data yet.' }) {
  const data = items || [];
  if (!data.length) return empty(title, 'bar', emptyText);
  const width = narrow() ? 340 : 440;
  const labelW = narrow() ? 104 : 130;
  const valueW = 44;
  const rowH = 26;
  const top = 6;
  const height = top * 2 + data.length * rowH;
  const max = Math.max(...data.map((d) => Number(d.value) || 0), 0);
  const scaleMax = niceMax(max);
  const barArea = width - labelW - valueW;
  const summary = `${title}: ${data.map((d) => `${d.label} ${format(d.value)}`).join(', ')}`;
  const svg = svgRoot(width, height, summary, 'bars');
  data.forEach((d, i) => {
    const y = top + i * rowH;
    const w = Math.max(r2((Number(d.value) || 0) / scaleMax * barArea), d.value > 0 ? 2 : 0);
    const g = s('g', { class: 'bar-row' },
      tip(`${d.label}: ${format(d.value)}`),
      s('text', { x: labelW - 8, y: y + rowH / 2, 'text-anchor': 'end', 'dominant-baseline': 'central', class: 'chart-label' },
        truncate(d.label, narrow() ? 14 : 18)),
      s('rect', { x: labelW, y: y + 4, width: barArea, height: rowH - 8, rx: 3, class: 'bar-track' }),
      s('rect', { x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 3, fill: PALETTE[0], class: 'bar' }),
      s('text', { x: labelW + w + 6, y: y + rowH / 2, 'dominant-baseline': 'central', class: 'chart-value' }, format(d.value)));
    svg.append(g);
  });
  return figure(title, 'bar', h('div', { class: 'chart-body' }, svg),
    dataTable(['Name', 'Value'], data.map((d) => [d.label, format(d.value)])));
}

// --- shared axes for line and column charts -----------------------------------------------

// Narrow screens get a narrower drawing, so its text stays readable when scaled down.
const narrow = () => typeof window !== 'undefined' && window.matchMedia('(max-width: 640px)').matches;

function plotBox() {
  return narrow()
    ? { width: 340, height: 210, left: 46, right: 10, top: 12, bottom: 28 }
    : { width: 480, height: 220, left: 52, right: 14, top: 14, bottom: 30 };
}

function yAxis(svg, P, scaleMax, format) {
  const { width, height, left, right, top, bottom } = P;
  const plotH = height - top - bottom;
  for (let i = 0; i <= 4; i += 1) {
    const v = (scaleMax * i) / 4;
    const y = r2(top + plotH - (v / scaleMax) * plotH);
    svg.append(
      s('line', { x1: left, x2: width - right, y1: y, y2: y, class: i === 0 ? 'axis' : 'grid' }),
      s('text', { x: left - 6, y, 'text-anchor': 'end', 'dominant-baseline': 'central', class: 'chart-tick' }, format(v)));
  }
}

function xLabels(svg, P, labels, xOf, short) {
  const n = labels.length;
  const every = Math.max(1, Math.ceil(n / (P.width < 400 ? 4 : 6)));
  const shown = [];
  for (let i = 0; i < n; i += every) shown.push(i);
  if (shown[shown.length - 1] !== n - 1) {
    if (shown.length > 1 && n - 1 - shown[shown.length - 1] < every) shown.pop();
    shown.push(n - 1);
  }
  for (const i of shown) {
    svg.append(s('text', {
      x: xOf(i), y: P.height - P.bottom + 16, 'text-anchor': 'middle', class: 'chart-tick',
    }, short(labels[i])));
  }
}

// --- lines --------------------------------------------------------------------------------

// labels: x labels (timestamps); series: [{name, values, color}]
export function lineChart({ title, labels, series, format = plain, short = (x) => x, emptyText = 'No finished runs yet.' }) {
  const n = (labels || []).length;
  const usable = (series || []).filter((ser) => ser.values && ser.values.some((v) => v !== null && v !== undefined));
  if (!n || !usable.length) return empty(title, 'line', emptyText);
  const P = plotBox();
  const { width, height, left, right, top, bottom } = P;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const max = Math.max(...usable.flatMap((ser) => ser.values.filter((v) => v !== null && v !== undefined).map(Number)), 0);
  const scaleMax = niceMax(max);
  const xOf = (i) => r2(n === 1 ? left + plotW / 2 : left + 10 + (i * (plotW - 20)) / (n - 1));
  const yOf = (v) => r2(top + plotH - (Number(v) / scaleMax) * plotH);
  const summary = `${title}: ${usable.map((ser) => `${ser.name} from ${format(ser.values[0])} to ${format(ser.values[n - 1])} over ${n} runs`).join('; ')}`;
  const svg = svgRoot(width, height, summary, 'lines');
  yAxis(svg, P, scaleMax, format);
  xLabels(svg, P, labels, xOf, short);
  usable.forEach((ser, k) => {
    const color = ser.color || PALETTE[k % PALETTE.length];
    let d = '';
    ser.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      d += `${d ? ' L' : 'M'} ${xOf(i)} ${yOf(v)}`;
    });
    const g = s('g', { class: 'series' });
    g.append(s('path', { d, fill: 'none', stroke: color, 'stroke-width': 2.5, 'stroke-linejoin': 'round', 'stroke-linecap': 'round', class: 'line' }));
    ser.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      g.append(s('circle', { cx: xOf(i), cy: yOf(v), r: n > 40 ? 2 : 4, fill: color, class: 'point' },
        tip(`${ser.name}, ${labels[i]}: ${format(v)}`)));
    });
    svg.append(g);
  });
  return figure(title, 'line', h('div', { class: 'chart-body' }, svg),
    legend(usable.map((ser, k) => [ser.color || PALETTE[k % PALETTE.length], ser.name])),
    dataTable(['Run', ...usable.map((ser) => ser.name)],
      labels.map((label, i) => [label, ...usable.map((ser) => format(ser.values[i]))])));
}

// --- stacked columns ----------------------------------------------------------------------

// labels: categories (dates); series: [{name, values, color}] stacked bottom-up.
export function stackedColumns({ title, labels, series, format = plain, short = (x) => x, emptyText }) {
  const n = (labels || []).length;
  if (!n) return empty(title, 'columns', emptyText || 'No data yet.');
  const P = plotBox();
  const { width, height, left, right, top, bottom } = P;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const totals = labels.map((_, i) => series.reduce((sum, ser) => sum + (Number(ser.values[i]) || 0), 0));
  const max = Math.max(...totals, 0);
  const scaleMax = max > 0 ? Math.max(niceMax(max), 4) : 4;
  const slot = plotW / n;
  const barW = Math.min(40, slot * 0.6);
  const xOf = (i) => r2(left + slot * i + slot / 2);
  const summary = `${title}: ${labels.map((label, i) => `${label}: ${series.map((ser) => `${ser.values[i] || 0} ${ser.name.toLowerCase()}`).join(', ')}`).join('; ')}`;
  const svg = svgRoot(width, height, summary, 'columns');
  yAxis(svg, P, scaleMax, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)));
  xLabels(svg, P, labels, xOf, short);
  labels.forEach((label, i) => {
    let base = top + plotH;
    const g = s('g', { class: 'column' });
    series.forEach((ser, k) => {
      const v = Number(ser.values[i]) || 0;
      if (v <= 0) return;
      const hgt = r2((v / scaleMax) * plotH);
      base -= hgt;
      g.append(s('rect', {
        x: r2(xOf(i) - barW / 2), y: r2(base), width: r2(barW), height: hgt,
        fill: ser.color || PALETTE[k % PALETTE.length], class: 'column-part',
      }, tip(`${label}: ${format(v)} ${ser.name.toLowerCase()}`)));
    });
    svg.append(g);
  });
  if (max <= 0 && emptyText) {
    svg.append(s('text', { x: left + plotW / 2, y: top + plotH / 2, 'text-anchor': 'middle', class: 'chart-empty-text' }, emptyText));
  }
  return figure(title, 'columns', h('div', { class: 'chart-body' }, svg),
    legend(series.map((ser, k) => [ser.color || PALETTE[k % PALETTE.length], ser.name])),
    dataTable(['Date', ...series.map((ser) => ser.name)],
      labels.map((label, i) => [label, ...series.map((ser) => format(Number(ser.values[i]) || 0))])));
}
