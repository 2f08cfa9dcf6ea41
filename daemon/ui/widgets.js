// Pieces the pages share: tables, pagers, count bars, the confirm dialog,
// notices, and waiting helpers.

import { h, fill } from './dom.js';

/** Calls `action` once input has paused for `delayMs`. */
export function debounce(action, delayMs = 300) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => action(...args), delayMs);
  };
}

/** Resolves after `delayMs`, or rejects with AbortError when `signal` fires first. */
export function sleep(delayMs, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) { reject(new DOMException('left the page', 'AbortError')); return; }
    const timer = setTimeout(resolve, delayMs);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new DOMException('left the page', 'AbortError'));
    }, { once: true });
  });
}

/** Runs `refresh` every `periodMs` while the page is open and visible. */
export function every(periodMs, signal, refresh) {
  const timer = setInterval(() => {
    if (document.visibilityState === 'visible') refresh().catch(() => {});
  }, periodMs);
  signal.addEventListener('abort', () => clearInterval(timer), { once: true });
}

/** A table: `columns` is [{title, cell: (row) => node or text, class}]. */
export function table(columns, rows, { empty = 'Nothing to show.', rowClass } = {}) {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h('table', { class: 'grid' },
    h('thead', {}, h('tr', {}, columns.map((column) => h('th', { class: column.class }, column.title)))),
    h('tbody', {}, rows.map((row) => h('tr', { class: rowClass ? rowClass(row) : null },
      columns.map((column) => h('td', { class: column.class }, column.cell(row)))))));
}

/** `key | value` lines; rows whose value is null are left out. */
export function details(rows) {
  return h('dl', { class: 'details' }, rows.filter(([, value]) => value !== null && value !== undefined)
    .map(([label, value]) => [h('dt', {}, label), h('dd', {}, value)]));
}

/** A pager over cursors: remembers the cursors of the pages before, so Previous works too. */
export class CursorPager {
  constructor() { this.cursors = ['']; }
  get cursor() { return this.cursors[this.cursors.length - 1]; }
  get page() { return this.cursors.length; }
  reset() { this.cursors = ['']; }
  next(cursor) { this.cursors.push(cursor); }
  previous() { if (this.cursors.length > 1) this.cursors.pop(); }

  /** Previous / Next buttons; `nextCursor` empty means this is the last page. */
  controls(nextCursor, shown, redraw) {
    if (this.page === 1 && !nextCursor) return null; // all of it fits on one page
    return h('div', { class: 'pager' },
      h('button', { class: 'button', id: 'page-previous', disabled: this.page === 1,
        onclick: () => { this.previous(); redraw(); } }, '← Previous'),
      h('span', { class: 'muted' }, `page ${this.page} · ${shown} shown`),
      h('button', { class: 'button', id: 'page-next', disabled: !nextCursor,
        onclick: () => { this.next(nextCursor); redraw(); } }, 'Next →'));
  }
}

/** A row of counts, each a button that picks a filter: [{id, label, count, class, active, pick}]. */
export function countBar(items) {
  return h('div', { class: 'counts' }, items.map((item) =>
    h('button', { class: `count ${item.class || ''} ${item.active ? 'active' : ''}`, 'data-count': item.id,
      onclick: item.pick, title: `Show only: ${item.label}` },
      h('span', { class: 'count-value' }, typeof item.count === 'number' ? item.count.toLocaleString() : item.count ?? '…'),
      h('span', { class: 'count-label' }, item.label))));
}

/** An error, in words. */
export function errorBox(error) {
  return h('div', { class: 'error', role: 'alert' }, describeError(error));
}

export function describeError(error) {
  if (error && error.unreachable) return 'Cannot reach the Apiary daemon. Is it running, with its HTTP listener on?';
  return error && error.message ? error.message : String(error);
}

/** A short message in the page's notice area (`#notice`), replaced by the next. */
export function notice(text, kind = 'info') {
  const area = document.getElementById('notice');
  if (area) fill(area, h('div', { class: `notice ${kind}`, role: 'status' }, text));
}

/** Empties the notice area. */
export function clearNotice() {
  const area = document.getElementById('notice');
  if (area) fill(area);
}

/** Asks before an action. Resolves to {ok, reason}. */
export function confirmAction({ title, message, confirmLabel, askReason = false }) {
  const dialog = document.getElementById('confirm');
  const form = document.getElementById('confirm-form');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-message').textContent = message;
  document.getElementById('confirm-ok').textContent = confirmLabel;
  document.getElementById('confirm-reason-label').hidden = !askReason;
  const reason = document.getElementById('confirm-reason');
  reason.value = '';
  return new Promise((resolve) => {
    const finish = (ok) => {
      form.removeEventListener('submit', onSubmit);
      cancelButton.removeEventListener('click', onBack);
      dialog.removeEventListener('cancel', onBack);
      dialog.close();
      resolve({ ok, reason: reason.value.trim() });
    };
    const onSubmit = (event) => { event.preventDefault(); finish(true); };
    const onBack = (event) => { event.preventDefault(); finish(false); };
    const cancelButton = document.getElementById('confirm-cancel');
    form.addEventListener('submit', onSubmit);
    cancelButton.addEventListener('click', onBack);
    dialog.addEventListener('cancel', onBack);
    dialog.showModal();
    (askReason ? reason : document.getElementById('confirm-ok')).focus();
  });
}

/** A page's frame: title line, actions, notice area, and the body. */
export function pageFrame(title, ...body) {
  return [h('div', { class: 'page-title' }, title), h('div', { id: 'notice' }), ...body];
}

/** `key:value` chips; `link(text)` gives each its address. */
export function chips(texts, link) {
  if (!texts.length) return h('span', { class: 'muted' }, '-');
  return h('span', { class: 'chips' }, texts.map((text) =>
    link ? h('a', { class: 'chip', href: link(text) }, text) : h('span', { class: 'chip' }, text)));
}
