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

const MAX_SHOWN = 1024 * 1024; // characters of a followed log kept on the page
const CUT_NOTE = '[… earlier lines are not shown here: download the whole log]\n';

// Follow a run's log as server-sent events (GET .../log with Accept: text/event-stream; an
// EventSource sends the session cookie, same origin). Lines are added to `pre` as they come,
// a frame at a time, and it stays pinned to the bottom if the reader was there. The first
// line replaces what `pre` showed before. onEnd(final, anyLine) once the run has ended
// (final: { status, exit_code, note }); onFail() when no stream can be had (no EventSource,
// refused: 401, 404, 503): the caller falls back to polling. A lost connection is retried
// by the EventSource itself, from after the last line shown (Last-Event-ID). Returns a
// function that closes the stream.
export function followLog(pre, url, { onEnd, onFail }) {
  if (typeof EventSource !== 'function') {
    onFail();
    return () => {};
  }
  const source = new EventSource(url);
  let lastId = ''; // the event id as last seen (an event without one keeps it)
  let lastOffset = -1; // byte offset after the last line shown: none is shown twice
  let pending = [];
  let started = false;
  let frame = 0;

  const flush = () => {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    if (!pending.length) return;
    const text = pending.join('');
    pending = [];
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    if (!started) {
      pre.textContent = '';
      started = true;
    }
    if (pre.textContent.length + text.length > MAX_SHOWN) {
      const all = pre.textContent + text;
      const keep = all.slice(all.length - MAX_SHOWN / 2);
      pre.textContent = CUT_NOTE + keep.slice(keep.indexOf('\n') + 1);
    } else {
      pre.append(text);
    }
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  };

  source.onmessage = (event) => {
    if (event.lastEventId !== lastId) {
      lastId = event.lastEventId;
      const offset = Number(lastId);
      if (Number.isFinite(offset)) {
        if (offset <= lastOffset) return; // sent again after a reconnection
        lastOffset = offset;
      }
    }
    pending.push(`${event.data}\n`);
    if (!frame) frame = requestAnimationFrame(flush);
  };
  source.addEventListener('end', (event) => {
    source.close();
    flush();
    let final = null;
    try { final = JSON.parse(event.data); } catch (err) { /* an end all the same */ }
    onEnd(final, started);
  });
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) return; // connecting again by itself
    flush();
    onFail();
  };
  return () => {
    source.close();
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
  };
}
