// One bot: its status, dimensions, current task, the tasks it ran and its
// events; and the actions: quarantine, unquarantine, terminate and delete.

import { bots, CODE, server } from '../api.js';
import { fill, h, href, taskLink } from '../dom.js';
import { botState, botStatusBadge, timeCell } from '../format.js';
import { taskTable } from './tasks.js';
import { CursorPager, confirmAction, describeError, details, errorBox, every, notice, pageFrame, table } from '../widgets.js';

const PAGE_SIZE = 50;
const REFRESH_MS = 5000;

export async function botPage(outlet, { params: [botId], signal }) {
  const [bot, permissions] = await Promise.all([
    bots.get(botId, signal),
    server.permissions({ botId }, signal).catch(() => ({})),
  ]);
  const view = {
    status: h('span', { id: 'bot-status' }),
    actions: h('div', { class: 'actions', id: 'actions' }),
    summary: h('section', { class: 'card', id: 'summary' }),
    dimensions: h('section', { class: 'card', id: 'dimensions' }),
  };
  const state = { bot, permissions };
  const redraw = () => drawBot(botId, state, view);
  const reload = async () => {
    try {
      state.bot = await bots.get(botId, signal);
    } catch (error) {
      if (error.code !== CODE.NOT_FOUND) throw error;
      state.bot = { botId, deleted: true };
    }
    redraw();
  };
  state.reload = reload;

  fill(outlet, pageFrame(
    h('div', { class: 'title-line' }, h('h1', { class: 'id' }, botId), view.status),
    view.actions,
    h('div', { class: 'columns' }, h('div', {}, view.summary), h('div', {}, view.dimensions)),
    pagedSection('Recent tasks', 'bot-tasks', signal, (cursor) => bots.tasks(botId, cursor, PAGE_SIZE, signal),
      (items) => taskTable(items, { showBot: false })),
    pagedSection('Events', 'bot-events', signal, (cursor) => bots.events(botId, cursor, PAGE_SIZE, signal), eventTable)));
  redraw();
  every(REFRESH_MS, signal, reload);
}

/** Redraws what changed since the last drawing (and only that, so that a
 *  click never lands on a button that was replaced under it). */
function drawBot(botId, state, view) {
  const { bot } = state;
  const botText = JSON.stringify(bot);
  if (botText === state.drawnBot) return;
  state.drawnBot = botText;
  fill(view.status, botStatusBadge(bot));
  const actionsKey = JSON.stringify([bot.deleted, bot.quarantined, bot.isDead, botState(bot)?.shut_down]);
  if (actionsKey !== state.drawnActions) {
    state.drawnActions = actionsKey;
    fill(view.actions, actionButtons(botId, state));
  }
  fill(view.summary, h('h2', {}, 'Bot'), details([
    ['Status', botStatusBadge(bot)],
    ['Current task', bot.taskId ? taskLink(bot.taskId, bot.taskName || bot.taskId) : '-'],
    ['Quarantined', bot.quarantined ? quarantineReason(bot) : null],
    ['Maintenance', bot.maintenanceMsg || null],
    ['First seen', bot.firstSeenTs ? timeCell(bot.firstSeenTs) : null],
    ['Last seen', bot.lastSeenTs ? timeCell(bot.lastSeenTs) : null],
    ['Address', bot.externalIp || null],
    ['Authenticated as', bot.authenticatedAs || null],
    ['Version', bot.version || null],
  ]), stateDetails(bot));
  fill(view.dimensions, h('h2', {}, 'Dimensions'), dimensionTable(bot.dimensions || []));
}

/** The actions the principal may take. Their places do not change while the
 *  page refreshes: an action that does not apply now is disabled, not removed,
 *  so a click never lands on the neighbour that moved under it. */
function actionButtons(botId, state) {
  const { bot, permissions } = state;
  if (bot.deleted) return h('span', { class: 'muted', id: 'deleted' }, 'This bot was deleted.');
  const mayManage = Boolean(permissions.terminateBot);
  const gone = Boolean(bot.isDead || botState(bot)?.shut_down);
  const action = (id, label, run, { danger = false, disabled = false, title } = {}) =>
    h('button', { class: danger ? 'button danger' : 'button', id, disabled, title, onclick: () => run(botId, state) }, label);
  return [
    mayManage && !bot.quarantined ? action('quarantine', 'Quarantine', quarantine) : null,
    mayManage && bot.quarantined ? action('unquarantine', 'Unquarantine', unquarantine) : null,
    mayManage ? action('terminate', 'Terminate', terminate, { danger: true, disabled: gone, title: gone ? 'The bot is not running' : null }) : null,
    permissions.deleteBot ? action('delete', 'Delete', remove, { danger: true }) : null,
  ];
}

/** Runs an action after the user agreed, then shows the bot as it is now. */
async function act(state, question, run, done) {
  const answer = await confirmAction(question);
  if (!answer.ok) return;
  try {
    await run(answer.reason);
    notice(done);
    await state.reload();
  } catch (error) {
    notice(describeError(error), 'error');
  }
}

const quarantine = (botId, state) => act(state,
  { title: 'Quarantine this bot?', message: `${botId} finishes its current task and takes no new one until unquarantined.`,
    confirmLabel: 'Quarantine', askReason: true },
  (reason) => bots.quarantine(botId, reason || 'quarantined from the web UI'), 'Quarantined.');

const unquarantine = (botId, state) => act(state,
  { title: 'Unquarantine this bot?', message: `${botId} takes tasks again.`, confirmLabel: 'Unquarantine' },
  () => bots.unquarantine(botId), 'Unquarantined.');

const terminate = (botId, state) => act(state,
  { title: 'Terminate this bot?', message: `${botId} finishes its current task, then its process exits.`,
    confirmLabel: 'Terminate', askReason: true },
  (reason) => bots.terminate(botId, reason), 'Termination requested.');

const remove = (botId, state) => act(state,
  { title: 'Delete this bot?', message: `The daemon forgets ${botId}. A bot still running shows up again when it next polls.`,
    confirmLabel: 'Delete' },
  () => bots.remove(botId), 'Deleted.');

function quarantineReason(bot) {
  const stateObject = botState(bot);
  const reason = stateObject && typeof stateObject.quarantined === 'string' ? stateObject.quarantined : '';
  return reason || 'yes';
}

/** The bot's state, folded away: it is long and rarely needed. */
function stateDetails(bot) {
  const stateObject = botState(bot);
  if (!stateObject) return null;
  return h('details', { class: 'bot-state' }, h('summary', {}, 'State'),
    h('pre', {}, JSON.stringify(stateObject, null, 2)));
}

function dimensionTable(dimensions) {
  return table([
    { title: 'Key', cell: (pair) => pair.key },
    { title: 'Values', cell: (pair) => h('span', { class: 'chips' }, [].concat(pair.value ?? []).map((value) =>
      h('a', { class: 'chip', href: href.bots({ dimension: `${pair.key}:${value}` }), title: 'Bots with this dimension' },
        value))) },
  ], dimensions, { empty: 'No dimensions.' });
}

function eventTable(items) {
  return table([
    { title: 'Time', cell: (event) => timeCell(event.ts) },
    { title: 'Event', cell: (event) => h('span', { class: 'event-type' }, event.eventType || '-') },
    { title: 'Message', cell: (event) => event.message || '' },
    { title: 'Task', cell: (event) => (event.taskId ? taskLink(event.taskId) : '') },
  ], items, { empty: 'No events.' });
}

/** A section that lists a page at a time with `load(cursor)` and draws it with `draw(items)`. */
function pagedSection(title, id, signal, load, draw) {
  const pager = new CursorPager();
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const show = async () => {
    try {
      const reply = await load(pager.cursor || undefined);
      const items = reply.items || [];
      fill(body, draw(items), pager.controls(reply.cursor, items.length, show));
    } catch (error) {
      if (!signal.aborted) fill(body, errorBox(error));
    }
  };
  show();
  return h('section', { class: 'card', id }, h('h2', {}, title), body);
}
