// Re-render parts of a page from polled data without losing the user's place:
// a part is rebuilt only when its data changed, and focus returns to the same control.

import { clear } from './dom.js';

const lastKeys = new WeakMap();

export function patch(container, data, build) {
  const key = JSON.stringify(data);
  if (lastKeys.get(container) === key) return false;
  lastKeys.set(container, key);
  const active = document.activeElement;
  const focusKey = active && container.contains(active) ? active.dataset.focusKey : undefined;
  clear(container);
  const built = build(data);
  if (built) container.append(...[built].flat().filter(Boolean));
  if (focusKey) {
    const again = container.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    if (again) again.focus({ preventScroll: true });
  }
  return true;
}

// Replace a <pre>'s text; stay pinned to the bottom if the reader was at the bottom.
export function setLog(pre, text) {
  if (pre.textContent === text) return;
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  pre.textContent = text;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}
