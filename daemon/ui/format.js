// How values of Swarming's v2 messages read on screen: times in local time
// with their age, durations, byte counts, and task and bot states.

import { h } from './dom.js';

/** A `google.protobuf.Timestamp` in RFC 3339 as a Date; null when absent or invalid. */
export function parseTime(text) {
  if (!text) return null;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

const LOCAL = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: '2-digit', day: '2-digit',
  hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});

/** The date in the viewer's time zone, e.g. `2026-11-30, 17:04:05` (locale's order). */
export function localTime(date) {
  return LOCAL.format(date);
}

/** How long ago `date` was, in the largest unit that fits: `5 s ago`, `3 min ago`, `2 d ago`. */
export function age(date, now = new Date()) {
  const seconds = Math.round((now.getTime() - date.getTime()) / 1000);
  if (seconds < 0) return 'in the future';
  if (seconds < 5) return 'just now';
  return `${shortDuration(seconds)} ago`;
}

/** A whole number of seconds as its largest unit: `42 s`, `3 min`, `5 h`, `2 d`. */
function shortDuration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

/** Seconds (a float) as `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`. */
export function duration(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(Number(seconds))) return '-';
  const value = Number(seconds);
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return Number.isInteger(value) ? `${value} s` : `${value.toFixed(1)} s`;
  const whole = Math.round(value);
  if (whole < 3600) return joinUnits(Math.floor(whole / 60), 'min', whole % 60, 's');
  return joinUnits(Math.floor(whole / 3600), 'h', Math.floor((whole % 3600) / 60), 'min');
}

/** `2 h 5 min`, or `2 h` when the smaller unit is 0. */
function joinUnits(large, largeUnit, small, smallUnit) {
  return small ? `${large} ${largeUnit} ${small} ${smallUnit}` : `${large} ${largeUnit}`;
}

/** Seconds between two timestamps, or null. */
export function secondsBetween(fromText, toText) {
  const from = parseTime(fromText);
  const to = parseTime(toText);
  return from && to ? (to.getTime() - from.getTime()) / 1000 : null;
}

/** A `<time>` showing local time and age; the exact UTC time on hover. */
export function timeCell(text) {
  const date = parseTime(text);
  if (!date) return h('span', { class: 'muted' }, '-');
  return h('time', { datetime: date.toISOString(), title: date.toISOString() },
    localTime(date), h('span', { class: 'age' }, ` · ${age(date)}`));
}

/** A byte count as `512 B`, `3.4 KiB`, `12.0 MiB`. */
export function bytes(count) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = Number(count) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} ${units[0]}` : `${value.toFixed(1)} ${units[unit]}`;
}

/** An int64 field (a string in proto3 JSON, absent when 0) as a Number. */
export function int64(value) {
  return value === undefined || value === null || value === '' ? 0 : Number(value);
}

/** Base64 (proto3 JSON `bytes`) as a Uint8Array. */
export function base64Bytes(text) {
  if (!text) return new Uint8Array(0);
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  const result = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) result[index] = binary.charCodeAt(index);
  return result;
}

// Task states as Swarming shows them: the key names the CSS class.
const TASK_STATES = {
  PENDING: { key: 'pending', label: 'Pending' },
  RUNNING: { key: 'running', label: 'Running' },
  EXPIRED: { key: 'expired', label: 'Expired' },
  TIMED_OUT: { key: 'timed-out', label: 'Timed out' },
  BOT_DIED: { key: 'bot-died', label: 'Bot died' },
  CANCELED: { key: 'canceled', label: 'Canceled' },
  KILLED: { key: 'killed', label: 'Killed' },
  NO_RESOURCE: { key: 'no-resource', label: 'No resource' },
  CLIENT_ERROR: { key: 'client-error', label: 'Client error' },
};

/** The state of a `TaskResultResponse` as shown: COMPLETED splits into success,
 *  failure and deduplicated, as in Swarming. */
export function taskState(result) {
  const state = result && result.state;
  if (state === 'COMPLETED') {
    if (result.failure) return { key: 'failure', label: 'Failure' };
    if (result.dedupedFrom) return { key: 'deduped', label: 'Deduplicated' };
    return { key: 'success', label: 'Success' };
  }
  return TASK_STATES[state] || { key: 'unknown', label: state || 'Unknown' };
}

/** Whether a task may still change: PENDING or RUNNING. */
export function isActive(result) {
  return result && (result.state === 'PENDING' || result.state === 'RUNNING');
}

/** A colored badge for a task's state. */
export function taskStateBadge(result) {
  const state = taskState(result);
  return h('span', { class: `badge state-${state.key}`, 'data-state': state.key }, state.label);
}

/** A bot's status from a `BotInfo`, the first that applies: dead, shut down
 *  (exited when asked to terminate), quarantined, maintenance, busy,
 *  disconnected, idle. The last few come from its `state` when it says. */
export function botStatus(bot) {
  const state = botState(bot) || {};
  if (bot.deleted) return { key: 'deleted', label: 'Deleted' };
  if (bot.isDead) return { key: 'dead', label: 'Dead' };
  if (state.shut_down) return { key: 'shut-down', label: 'Shut down' };
  if (bot.quarantined) return { key: 'quarantined', label: 'Quarantined' };
  if (bot.maintenanceMsg) return { key: 'maintenance', label: 'Maintenance' };
  if (bot.taskId) return { key: 'busy', label: 'Busy' };
  if (state.connected === false) return { key: 'disconnected', label: 'Disconnected' };
  return { key: 'idle', label: 'Idle' };
}

/** The bot's `state` (JSON text in BotInfo) as an object; null when absent or not JSON. */
export function botState(bot) {
  try {
    const state = bot.state ? JSON.parse(bot.state) : null;
    return state && typeof state === 'object' ? state : null;
  } catch {
    return null;
  }
}

export function botStatusBadge(bot) {
  const status = botStatus(bot);
  return h('span', { class: `badge bot-${status.key}`, 'data-status': status.key }, status.label);
}

/** `[{key, value: [..]}]` (StringListPair) or `[{key, value}]` (StringPair) as `key:value` texts. */
export function pairs(list) {
  const texts = [];
  for (const pair of list || []) {
    for (const value of [].concat(pair.value ?? [])) texts.push(`${pair.key}:${value}`);
  }
  return texts;
}
