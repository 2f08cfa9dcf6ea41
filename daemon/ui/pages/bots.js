// The bot list: filtered by dimensions and status, a page at a time, with
// the counts of alive, busy, idle, quarantined and dead bots above it.

import { CODE, bots } from '../api.js';
import { botLink, fill, h, href, taskLink } from '../dom.js';
import { botStatusBadge, int64, pairs, timeCell } from '../format.js';
import { replaceQuery } from '../router.js';
import { CursorPager, chips, countBar, debounce, errorBox, every, pageFrame, table } from '../widgets.js';

const PAGE_SIZE = 100;
const REFRESH_MS = 15000;
const DIMENSIONS_SHOWN = 5;

/** Status filters as BotsRequest's NullableBool fields. */
const STATUSES = {
  all: { label: 'All', request: {} },
  alive: { label: 'Alive', request: { isDead: 'FALSE' } },
  busy: { label: 'Busy', request: { isDead: 'FALSE', isBusy: 'TRUE' } },
  idle: { label: 'Idle', request: { isDead: 'FALSE', isBusy: 'FALSE', quarantined: 'FALSE' } },
  quarantined: { label: 'Quarantined', request: { quarantined: 'TRUE' } },
  dead: { label: 'Dead', request: { isDead: 'TRUE' } },
};

/** `key:value` words as BotsRequest dimensions. */
function dimensionPairs(words) {
  return words.map((word) => {
    const at = word.indexOf(':');
    return { key: word.slice(0, at), value: word.slice(at + 1) };
  });
}

/** BotsCount as the numbers the bar shows. */
function countsOf(reply) {
  const all = int64(reply.count);
  const dead = int64(reply.dead);
  const busy = int64(reply.busy);
  const quarantined = int64(reply.quarantined);
  return { all, alive: all - dead, busy, idle: Math.max(0, all - dead - busy - quarantined), quarantined, dead };
}

export async function botsPage(outlet, { query, signal }) {
  const filter = {
    dimensions: query.getAll('dimension'),
    status: STATUSES[query.get('status')] ? query.get('status') : 'all',
  };
  const pager = new CursorPager();
  const countsArea = h('div', { id: 'bot-counts' });
  const listArea = h('div', { id: 'bot-list' }, h('p', { class: 'muted' }, 'Loading…'));
  const hint = h('span', { class: 'hint', id: 'dimension-hint' });
  let drawn = 0;

  const statusSelect = h('select', { id: 'filter-status', 'aria-label': 'Status', onchange: () => { filter.status = statusSelect.value; apply(); } },
    Object.entries(STATUSES).map(([value, status]) => h('option', { value, selected: value === filter.status }, status.label)));
  const dimensionInput = h('input', { id: 'filter-dimensions', 'aria-label': 'Dimensions', type: 'search', value: filter.dimensions.join(' '),
    spellcheck: 'false', placeholder: 'dimensions: pool:ci os:Linux', oninput: debounce(() => readDimensions(), 350) });

  function readDimensions() {
    const words = dimensionInput.value.split(/\s+/).filter(Boolean);
    const bad = words.filter((word) => !/^[^:]+:.+$/.test(word));
    hint.textContent = bad.length ? `not key:value: ${bad.join(' ')}` : '';
    if (bad.length) return;
    filter.dimensions = words;
    apply();
  }

  function apply() {
    const query = new URLSearchParams();
    for (const dimension of filter.dimensions) query.append('dimension', dimension);
    if (filter.status !== 'all') query.set('status', filter.status);
    replaceQuery('/bots', query);
    pager.reset();
    refresh();
  }

  async function refresh() {
    const ticket = ++drawn;
    await Promise.all([drawCounts(ticket), drawList(ticket)]);
  }

  async function drawCounts(ticket) {
    let counts = null;
    try {
      counts = countsOf(await bots.count(dimensionPairs(filter.dimensions), signal));
    } catch (error) {
      if (error.name === 'AbortError') throw error;
    }
    if (ticket !== drawn) return;
    fill(countsArea, countBar(Object.entries(STATUSES).map(([status, { label }]) => ({
      id: status, label, count: counts ? counts[status] : '?', class: `bot-${status}`, active: filter.status === status,
      pick: () => { filter.status = status; statusSelect.value = status; apply(); },
    }))));
  }

  async function drawList(ticket) {
    let reply;
    try {
      reply = await bots.list({ ...STATUSES[filter.status].request, dimensions: dimensionPairs(filter.dimensions),
        limit: PAGE_SIZE, cursor: pager.cursor || undefined }, signal);
    } catch (error) {
      // Without a valid token the page cannot work at all: the router leads to sign-in.
      if (error.name === 'AbortError' || error.code === CODE.UNAUTHENTICATED) throw error;
      if (ticket === drawn) fill(listArea, errorBox(error));
      return;
    }
    if (ticket !== drawn) return;
    const items = reply.items || [];
    fill(listArea, botTable(items), pager.controls(reply.cursor, items.length, refresh));
  }

  fill(outlet, pageFrame(h('h1', {}, 'Bots'),
    h('div', { class: 'filters' }, statusSelect, dimensionInput, hint),
    countsArea, listArea));
  every(REFRESH_MS, signal, refresh);
  await refresh();
}

function botTable(items) {
  return table([
    { title: 'Bot', cell: (bot) => botLink(bot.botId) },
    { title: 'Status', cell: botStatusBadge },
    { title: 'Task', cell: (bot) => (bot.taskId ? taskLink(bot.taskId, bot.taskName || bot.taskId) : '-') },
    { title: 'Dimensions', cell: (bot) => dimensionChips(bot.dimensions) },
    { title: 'Last seen', cell: (bot) => timeCell(bot.lastSeenTs) },
    { title: 'Version', cell: (bot) => bot.version || '-' },
  ], items, { empty: 'No bot matches.' });
}

function dimensionChips(dimensions) {
  const texts = pairs(dimensions).filter((text) => !text.startsWith('id:'));
  const shown = texts.slice(0, DIMENSIONS_SHOWN);
  return h('span', {}, chips(shown, (text) => href.bots({ dimension: text })),
    texts.length > shown.length ? h('span', { class: 'muted' }, ` +${texts.length - shown.length}`) : null);
}
