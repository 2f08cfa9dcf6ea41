// The task list: newest first, filtered by state, tags and creation time, a
// page at a time, with the count of tasks in each state above it.

import { CODE, tasks } from '../api.js';
import { botLink, fill, h, href, taskLink } from '../dom.js';
import { duration, secondsBetween, taskStateBadge, taskState, timeCell } from '../format.js';
import { replaceQuery } from '../router.js';
import { CursorPager, chips, countBar, debounce, errorBox, every, pageFrame, table } from '../widgets.js';

const PAGE_SIZE = 100;
const LIST_REFRESH_MS = 15000;
/** Counting walks the tasks on the daemon (up to its cap): less often than the list. */
const COUNTS_REFRESH_MS = 60000;
const TAGS_SHOWN = 3;

/** Swarming's StateQuery values (without `QUERY_`) and their labels. */
const STATE_FILTERS = [
  ['ALL', 'All states'], ['PENDING', 'Pending'], ['RUNNING', 'Running'], ['PENDING_RUNNING', 'Pending or running'],
  ['COMPLETED', 'Completed'], ['COMPLETED_SUCCESS', 'Success'], ['COMPLETED_FAILURE', 'Failure'],
  ['DEDUPED', 'Deduplicated'], ['EXPIRED', 'Expired'], ['TIMED_OUT', 'Timed out'], ['BOT_DIED', 'Bot died'],
  ['CANCELED', 'Canceled'], ['KILLED', 'Killed'], ['NO_RESOURCE', 'No resource'], ['CLIENT_ERROR', 'Client error'],
];

/** The states counted above the list, with the class of their color. */
const COUNTED = [
  ['ALL', 'All', ''], ['PENDING', 'Pending', 'state-pending'], ['RUNNING', 'Running', 'state-running'],
  ['COMPLETED_SUCCESS', 'Success', 'state-success'], ['COMPLETED_FAILURE', 'Failure', 'state-failure'],
  ['EXPIRED', 'Expired', 'state-expired'], ['TIMED_OUT', 'Timed out', 'state-timed-out'],
  ['BOT_DIED', 'Bot died', 'state-bot-died'], ['CANCELED', 'Canceled', 'state-canceled'],
  ['KILLED', 'Killed', 'state-killed'], ['NO_RESOURCE', 'No resource', 'state-no-resource'],
  ['CLIENT_ERROR', 'Client error', 'state-client-error'],
];

/** How far back the list and counts go (Swarming's counts need a start).
 *  Counting walks every task of the window on the daemon: the default keeps it short. */
const DEFAULT_WINDOW = '1d';
const WINDOWS = [
  ['1h', 'Created in the last hour', 3600], ['1d', 'Created in the last day', 86400],
  ['7d', 'Created in the last 7 days', 7 * 86400], ['30d', 'Created in the last 30 days', 30 * 86400],
  ['all', 'Created at any time', null],
];

function filterFrom(query) {
  const state = query.get('state') || 'ALL';
  const created = query.get('created') || DEFAULT_WINDOW;
  return {
    state: STATE_FILTERS.some(([value]) => value === state) ? state : 'ALL',
    tags: query.getAll('tag'),
    created: WINDOWS.some(([value]) => value === created) ? created : DEFAULT_WINDOW,
  };
}

function queryOf(filter) {
  const query = new URLSearchParams();
  if (filter.state !== 'ALL') query.set('state', filter.state);
  for (const tag of filter.tags) query.append('tag', tag);
  if (filter.created !== DEFAULT_WINDOW) query.set('created', filter.created);
  return query;
}

/** The start of the window, as a timestamp; the epoch for "any time". */
function startOf(created) {
  const seconds = WINDOWS.find(([value]) => value === created)[2];
  return new Date(seconds === null ? 0 : Date.now() - seconds * 1000).toISOString();
}

export async function tasksPage(outlet, { query, signal }) {
  const filter = filterFrom(query);
  const pager = new CursorPager();
  const countsArea = h('div', { id: 'task-counts' });
  const listArea = h('div', { id: 'task-list' }, h('p', { class: 'muted' }, 'Loading…'));
  const tagHint = h('span', { class: 'hint', id: 'tag-hint' });
  // The newest drawing wins when answers arrive out of order.
  let listDrawn = 0;
  let countsDrawn = 0;

  const stateSelect = h('select', { id: 'filter-state', 'aria-label': 'State', onchange: () => { filter.state = stateSelect.value; apply(); } },
    STATE_FILTERS.map(([value, label]) => h('option', { value, selected: value === filter.state }, label)));
  const windowSelect = h('select', { id: 'filter-created', 'aria-label': 'Created', onchange: () => { filter.created = windowSelect.value; apply(); } },
    WINDOWS.map(([value, label]) => h('option', { value, selected: value === filter.created }, label)));
  const tagInput = h('input', { id: 'filter-tags', 'aria-label': 'Tags', type: 'search', value: filter.tags.join(' '), spellcheck: 'false',
    placeholder: 'tags: key:value key:value', oninput: debounce(() => readTags(), 350) });

  function readTags() {
    const words = tagInput.value.split(/\s+/).filter(Boolean);
    const bad = words.filter((word) => !/^[^:]+:.*$/.test(word));
    tagHint.textContent = bad.length ? `not key:value: ${bad.join(' ')}` : '';
    if (bad.length) return;
    filter.tags = words;
    apply();
  }

  function apply() {
    replaceQuery('/tasks', queryOf(filter));
    pager.reset();
    fill(countsArea); // the old counts are not those of the new filter
    refresh();
  }

  const refreshList = () => drawList(++listDrawn);
  const refreshCounts = () => drawCounts(++countsDrawn);
  // The list first: it is what people wait for, and it is cheap.
  const refresh = async () => { await refreshList(); await refreshCounts(); };

  /** Counts one state after the other, each shown as it comes: the daemon
   *  answers other calls between two counts, and the bar fills in. */
  async function drawCounts(ticket) {
    const base = { tags: filter.tags, start: startOf(filter.created) };
    const bar = countBar(COUNTED.map(([state, label, colorClass]) => ({
      id: state, label, count: countsArea.querySelector(`[data-count=${state}] .count-value`)?.textContent,
      class: colorClass, active: filter.state === state,
      pick: () => { filter.state = state; stateSelect.value = state; apply(); },
    })));
    fill(countsArea, bar);
    for (const [state] of COUNTED) {
      const count = await tasks.count({ ...base, state: `QUERY_${state}` }, signal).then((reply) => reply.count ?? 0, () => '?');
      if (ticket !== countsDrawn) return;
      bar.querySelector(`[data-count=${state}] .count-value`).textContent =
        typeof count === 'number' ? count.toLocaleString() : count;
    }
  }

  async function drawList(ticket) {
    let reply;
    try {
      reply = await tasks.list({ state: `QUERY_${filter.state}`, tags: filter.tags, start: startOf(filter.created),
        limit: PAGE_SIZE, cursor: pager.cursor || undefined }, signal);
    } catch (error) {
      // Without a valid token the page cannot work at all: the router leads to sign-in.
      if (error.name === 'AbortError' || error.code === CODE.UNAUTHENTICATED) throw error;
      if (ticket === listDrawn) fill(listArea, errorBox(error));
      return;
    }
    if (ticket !== listDrawn) return;
    const items = reply.items || [];
    fill(listArea, taskTable(items), pager.controls(reply.cursor, items.length, refreshList));
  }

  fill(outlet, pageFrame(h('h1', {}, 'Tasks'),
    h('div', { class: 'filters' }, stateSelect, windowSelect, tagInput, tagHint),
    countsArea, listArea));
  every(LIST_REFRESH_MS, signal, refreshList);
  every(COUNTS_REFRESH_MS, signal, refreshCounts);
  await refresh();
}

/** The rows of a task list; shared with the bot page's recent tasks. */
export function taskTable(items, { showBot = true } = {}) {
  const columns = [
    { title: 'Task', cell: (task) => h('a', { href: href.task(task.taskId), class: 'task-name' }, task.name || task.taskId) },
    { title: 'State', cell: taskStateBadge },
    { title: 'ID', cell: (task) => taskLink(task.taskId) },
    { title: 'Created', cell: (task) => timeCell(task.createdTs) },
    { title: 'Pending', class: 'number', cell: pendingTime },
    { title: 'Duration', class: 'number', cell: (task) => (task.duration !== undefined ? duration(task.duration) : '-') },
    showBot ? { title: 'Bot', cell: (task) => botLink(task.botId) } : null,
    { title: 'User', cell: (task) => task.user || '-' },
    { title: 'Tags', cell: (task) => tagChips(task.tags || []) },
  ].filter(Boolean);
  return table(columns, items, { empty: 'No task matches.', rowClass: (task) => `row-${taskState(task).key}` });
}

function pendingTime(task) {
  const until = task.startedTs || task.abandonedTs || (task.state === 'PENDING' ? new Date().toISOString() : null);
  const seconds = secondsBetween(task.createdTs, until);
  return seconds === null ? '-' : duration(Math.max(0, seconds));
}

function tagChips(tags) {
  const shown = tags.slice(0, TAGS_SHOWN);
  const more = tags.length - shown.length;
  return h('span', {}, chips(shown, (tag) => href.tasks({ tag })),
    more > 0 ? h('span', { class: 'muted' }, ` +${more}`) : null);
}
