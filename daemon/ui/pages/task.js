// One task: what was asked (the request), what happened (the result and its
// timings), why it still waits when pending, its output followed live, and
// the actions: cancel (pending), kill (running) and retry.

import { bots, server, tasks } from '../api.js';
import { botLink, fill, h, href, taskLink } from '../dom.js';
import { duration, int64, isActive, pairs, secondsBetween, taskStateBadge, timeCell } from '../format.js';
import { followOutput } from '../output.js';
import { chips, clearNotice, confirmAction, describeError, details, errorBox, notice, pageFrame, sleep } from '../widgets.js';

const REFRESH_MS = 2000;
/** Tags the daemon sets itself and refuses from a client. */
const DAEMON_TAG_PREFIXES = ['authenticated:', 'parent_task_id:'];

export async function taskPage(outlet, { params: [taskId], signal }) {
  const [result, request, permissions] = await Promise.all([
    tasks.result(taskId, signal),
    tasks.request(taskId, signal).catch((error) => error),
    server.permissions({ taskId }, signal).catch(() => ({})),
  ]);
  const view = {
    actions: h('div', { class: 'actions', id: 'actions' }),
    summary: h('section', { class: 'card', id: 'summary' }),
    pending: h('section', { class: 'card pending-why', id: 'pending', hidden: true }),
    output: outputView(),
  };
  const state = { result, request, permissions, following: false };

  fill(outlet, pageFrame(
    h('div', { class: 'title-line' }, h('h1', { id: 'task-name' }, result.name || taskId), h('span', { id: 'task-state' })),
    view.actions,
    h('div', { class: 'columns' },
      h('div', {}, view.summary, view.pending, requestSection(request)),
      h('section', { class: 'card output-card' }, h('div', { class: 'card-title' }, h('h2', {}, 'Output'), view.output.statusLine,
        view.output.followBox), view.output.pre))));

  const redraw = () => drawTask(taskId, state, view, signal, redraw);
  redraw();
  keepFresh(taskId, state, redraw, signal);
}

/** Redraws what depends on the result, and starts the output once there is
 *  any. What did not change is left alone, so that a click never lands on a
 *  button that was replaced under it. */
function drawTask(taskId, state, view, signal, redraw) {
  const { result } = state;
  const resultText = JSON.stringify(result);
  // A running or pending task's ages move on even when its result does not.
  if (resultText === state.drawnResult && !isActive(result)) return;
  state.drawnResult = resultText;
  if (result.state !== state.drawnState) {
    state.drawnState = result.state;
    fill(document.getElementById('task-state'), taskStateBadge(result));
    fill(view.actions, actionButtons(taskId, state, redraw));
  }
  fill(view.summary, h('h2', {}, 'Result'), resultDetails(result));
  view.pending.hidden = result.state !== 'PENDING';
  if (result.state === 'PENDING') drawPending(view.pending, result, state.request, signal);
  if (result.state !== 'PENDING' && !state.following) {
    state.following = true;
    const isEnded = async () => { state.result = await tasks.result(taskId, signal); redraw(); return !isActive(state.result); };
    followOutput(taskId, view.output, signal, isEnded).catch((error) => {
      if (error.name !== 'AbortError') view.output.status(describeError(error));
    });
  }
}

/** Fetches the result again while the task may still change. */
async function keepFresh(taskId, state, redraw, signal) {
  let failing = false;
  while (isActive(state.result)) {
    await sleep(REFRESH_MS, signal).catch(() => {});
    if (signal.aborted) return;
    try {
      state.result = await tasks.result(taskId, signal);
      if (failing) clearNotice();
      failing = false;
      redraw();
    } catch (error) {
      if (signal.aborted) return;
      failing = true;
      notice(describeError(error), 'error');
    }
  }
}

function actionButtons(taskId, state, redraw) {
  const { result, request, permissions } = state;
  const mayCancel = Boolean(permissions.cancelTask);
  return [
    mayCancel && result.state === 'PENDING'
      ? h('button', { class: 'button danger', id: 'cancel', onclick: () => cancel(taskId, state, false, redraw) }, 'Cancel')
      : null,
    mayCancel && result.state === 'RUNNING'
      ? h('button', { class: 'button danger', id: 'kill', onclick: () => cancel(taskId, state, true, redraw) }, 'Kill')
      : null,
    request instanceof Error ? null : h('button', { class: 'button', id: 'retry', onclick: () => retry(request) }, 'Retry'),
  ];
}

async function cancel(taskId, state, killRunning, redraw) {
  const name = state.result.name || taskId;
  const answer = await confirmAction(killRunning
    ? { title: 'Kill this task?', message: `The bot stops "${name}" now (SIGTERM, then SIGKILL after the grace period). It ends KILLED.`, confirmLabel: 'Kill task' }
    : { title: 'Cancel this task?', message: `"${name}" has not started; it will not run. It ends CANCELED.`, confirmLabel: 'Cancel task' });
  if (!answer.ok) return;
  try {
    const reply = await tasks.cancel(taskId, killRunning);
    notice(reply.canceled ? (killRunning ? 'Kill requested: the bot is stopping the task.' : 'Canceled.')
      : 'Nothing to do: the task had already ended.', reply.canceled ? 'info' : 'warning');
    state.result = await tasks.result(taskId);
    redraw();
  } catch (error) {
    notice(describeError(error), 'error');
  }
}

/** Runs the same request again as a new task, as Swarming's retry does:
 *  never deduplicated against the old one. */
async function retry(request) {
  const secretLost = hasSecretBytes(request)
    ? ' Its secret bytes cannot be read back, so the new task runs without them.' : '';
  const answer = await confirmAction({ title: 'Retry this task?',
    message: `A new task runs "${request.name || request.taskId}" again with the same request (not deduplicated).${secretLost}`,
    confirmLabel: 'Retry' });
  if (!answer.ok) return;
  try {
    const reply = await tasks.create(retryRequest(request));
    location.hash = href.task(reply.taskId);
  } catch (error) {
    notice(`Retry refused: ${describeError(error)}`, 'error');
  }
}

/** The request's slices (Swarming's older form has one, as `properties`). */
function slicesOf(request) {
  return request.taskSlices && request.taskSlices.length
    ? request.taskSlices
    : [{ properties: request.properties, expirationSecs: request.expirationSecs }];
}

function hasSecretBytes(request) {
  return slicesOf(request).some((slice) => slice.properties && slice.properties.secretBytes);
}

/** A NewTaskRequest from a TaskRequestResponse: the same slices with
 *  `idempotent` off, and without what the daemon sets itself or only shows
 *  as a placeholder (the secret bytes). */
export function retryRequest(request) {
  const slices = slicesOf(request);
  return {
    name: request.name,
    priority: request.priority,
    user: request.user,
    tags: (request.tags || []).filter((tag) => !DAEMON_TAG_PREFIXES.some((prefix) => tag.startsWith(prefix))),
    taskSlices: slices.map((slice) => ({ ...slice, properties: retryProperties(slice.properties || {}) })),
    serviceAccount: request.serviceAccount,
    realm: request.realm,
    botPingToleranceSecs: request.botPingToleranceSecs,
    pubsubTopic: request.pubsubTopic,
    pubsubUserdata: request.pubsubUserdata,
  };
}

function retryProperties(properties) {
  const { secretBytes: _placeholder, ...rest } = properties;
  return { ...rest, idempotent: false };
}

function resultDetails(result) {
  const ended = !isActive(result);
  const pendingUntil = result.startedTs || result.abandonedTs || (result.state === 'PENDING' ? new Date().toISOString() : null);
  const pendingSeconds = secondsBetween(result.createdTs, pendingUntil);
  return details([
    ['State', taskStateBadge(result)],
    ['Task ID', taskLink(result.taskId)],
    ['Run ID', result.runId ? taskLink(result.runId) : null],
    ['Bot', result.botId ? botLink(result.botId) : null],
    ['Exit code', ended && result.state === 'COMPLETED' ? String(int64(result.exitCode)) : null],
    ['Failure', result.internalFailure ? 'internal failure (the bot died)' : null],
    ['Deduplicated from', result.dedupedFrom ? taskLink(result.dedupedFrom) : null],
    ['Outputs', result.casOutputRoot ? casDigest(result.casOutputRoot) : null],
    ['Created', timeCell(result.createdTs)],
    ['Started', result.startedTs ? timeCell(result.startedTs) : null],
    ['Completed', result.completedTs ? timeCell(result.completedTs) : null],
    ['Abandoned', result.abandonedTs ? timeCell(result.abandonedTs) : null],
    ['Pending for', pendingSeconds === null ? null : duration(Math.max(0, pendingSeconds))],
    ['Ran for', result.duration !== undefined ? duration(result.duration) : null],
    ['Running for', result.state === 'RUNNING' && result.startedTs
      ? duration(Math.max(0, secondsBetween(result.startedTs, new Date().toISOString()))) : null],
    ['Slice', result.currentTaskSlice !== undefined ? String(result.currentTaskSlice) : null],
    ['User', result.user || null],
    ['Tags', chips(result.tags || [], (tag) => href.tasks({ tag }))],
    ['Bot dimensions', result.botDimensions ? chips(pairs(result.botDimensions)) : null],
    ['Server versions', result.serverVersions ? result.serverVersions.join(', ') : null],
  ]);
}

/** Why the task still waits: what the daemon says, and the bots that match
 *  its current slice. */
async function drawPending(area, result, request, signal) {
  const slice = request instanceof Error ? null : (request.taskSlices || [])[result.currentTaskSlice || 0];
  const dimensions = slice && slice.properties ? slice.properties.dimensions || [] : [];
  let explained = null;
  let matching = null;
  try {
    [explained, matching] = await Promise.all([
      tasks.explainPending(result.taskId, signal).then(daemonExplanation),
      dimensions.length ? bots.count(dimensions, signal) : null,
    ]);
  } catch (error) {
    if (error.name === 'AbortError') return;
  }
  const lines = [explained].filter(Boolean);
  if (matching) lines.push(matchingBotsLine(matching));
  if (slice && slice.expirationSecs) {
    const expiry = new Date(new Date(result.createdTs).getTime() + slice.expirationSecs * 1000);
    lines.push(h('span', {}, `If no bot takes it, this slice expires at `, timeCell(expiry.toISOString()), '.'));
  }
  fill(area, h('h2', {}, 'Why is it pending?'),
    lines.length ? h('ul', {}, lines.map((line) => h('li', {}, line))) : h('p', {}, 'Waiting for a bot.'),
    dimensions.length ? h('p', {}, 'It needs a bot with ', chips(pairs(dimensions)), ' ',
      h('a', { href: href.bots({ dimension: pairs(dimensions) }) }, 'see those bots')) : null);
}

/** The daemon's own account of the wait (`apiary.v1.Tasks/ExplainPending`). */
function daemonExplanation(pending) {
  if (pending.state !== 'PENDING') return null;
  const matchingBots = int64(pending.matchingBots);
  const busyBots = int64(pending.busyBots);
  const ahead = int64(pending.queuePosition);
  return `${matchingBots} live bots could run it (${busyBots} busy); ${ahead} tasks are ahead of it in its queue.`;
}

function matchingBotsLine(count) {
  const total = int64(count.count);
  const dead = int64(count.dead);
  const busy = int64(count.busy);
  const quarantined = int64(count.quarantined);
  if (total === 0) return 'No bot has these dimensions: it waits for one to appear, until it expires.';
  if (total === dead) return `All ${total} bots with these dimensions are dead.`;
  return `${total} bots have these dimensions: ${busy} busy, ${quarantined} quarantined, ${dead} dead.` +
    (busy + quarantined + dead >= total ? ' None is free to take it now.' : '');
}

function requestSection(request) {
  if (request instanceof Error) return h('section', { class: 'card' }, h('h2', {}, 'Request'), errorBox(request));
  const slices = request.taskSlices || [];
  return h('section', { class: 'card', id: 'request' }, h('h2', {}, 'Request'),
    details([
      ['Priority', request.priority !== undefined ? String(request.priority) : null],
      ['Created by', request.authenticated || null],
      ['User', request.user || null],
      ['Parent', request.parentTaskId ? taskLink(request.parentTaskId) : null],
      ['Realm', request.realm || null],
    ]),
    slices.map((slice, index) => sliceDetails(slice, index, slices.length)));
}

function sliceDetails(slice, index, count) {
  const properties = slice.properties || {};
  return h('div', { class: 'slice' },
    count > 1 ? h('h3', {}, `Slice ${index}`) : null,
    details([
      ['Command', h('code', { class: 'command' }, (properties.command || []).map(shellWord).join(' '))],
      ['Dimensions', chips(pairs(properties.dimensions), (text) => href.bots({ dimension: text }))],
      ['Working dir', properties.relativeCwd || null],
      ['Environment', properties.env && properties.env.length
        ? chips(properties.env.map((pair) => `${pair.key}=${pair.value}`)) : null],
      ['Env prefixes', properties.envPrefixes ? chips(pairs(properties.envPrefixes)) : null],
      ['Caches', properties.caches ? chips(properties.caches.map((cache) => `${cache.name} → ${cache.path}`)) : null],
      ['Inputs', properties.casInputRoot ? casDigest(properties.casInputRoot) : null],
      ['Outputs', properties.outputs ? properties.outputs.join(', ') : null],
      ['Hard timeout', properties.executionTimeoutSecs ? duration(properties.executionTimeoutSecs) : null],
      ['I/O timeout', properties.ioTimeoutSecs ? duration(properties.ioTimeoutSecs) : null],
      ['Grace period', properties.gracePeriodSecs ? duration(properties.gracePeriodSecs) : null],
      ['Expires after', slice.expirationSecs ? duration(slice.expirationSecs) : null],
      ['Wait for capacity', slice.waitForCapacity ? 'yes' : null],
      ['Idempotent', properties.idempotent ? 'yes' : null],
    ]));
}

/** A tree in the store, as `apiary cas download` takes it: `hash/size`. */
function casDigest(reference) {
  const digest = reference.digest || {};
  return h('code', { class: 'digest' }, `${digest.hash}/${int64(digest.sizeBytes)}`);
}

/** A command word as a shell would need it: quoted when it has anything special. */
function shellWord(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, "'\\''")}'`;
}

/** The output pane: appends text to one text node, and keeps the end in view
 *  while "follow" is on. */
function outputView() {
  const text = document.createTextNode('');
  const pre = h('pre', { class: 'output', id: 'output' }, text);
  const statusLine = h('span', { class: 'muted output-status', id: 'output-status' }, 'waiting for the task to start');
  const follow = h('input', { type: 'checkbox', id: 'follow', checked: true });
  const followBox = h('label', { class: 'follow' }, follow, ' follow');
  return {
    pre, statusLine, followBox,
    append(chunk) {
      if (!chunk) return;
      text.appendData(chunk);
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
    },
    status(line) { statusLine.textContent = line; },
  };
}
