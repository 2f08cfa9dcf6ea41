// Every call the UI makes to the daemon, in one place: Swarming's v2 API over
// pRPC (JSON bodies in the proto3 JSON mapping, replies after the `)]}'` line),
// the live output stream, and the sign-in token that goes with each call.

/** The live output of a task from `offset` on: a chunked body of raw bytes
 *  that grows while the task runs and ends when the output is complete. */
export function outputStreamUrl(taskId, offset) {
  return `/api/v1/tasks/${encodeURIComponent(taskId)}/output/stream?offset=${offset}`;
}

/** Apiary's own calls, for what Swarming's v2 API has no method for. */
const APIARY_BOTS = 'apiary.v1.Bots';
const APIARY_TASKS = 'apiary.v1.Tasks';

const TOKEN_KEY = 'apiary.token';
const PRPC_PREFIX = ")]}'";

/** gRPC status codes the UI tells apart (sent as `X-Prpc-Grpc-Code`). */
export const CODE = { NOT_FOUND: 5, UNAUTHENTICATED: 16 };

/** A refused or failed call: the gRPC code (or null when the daemon could not
 *  be reached) and the daemon's message. */
export class ApiError extends Error {
  constructor(code, message, httpStatus) {
    super(message);
    this.code = code;
    this.httpStatus = httpStatus;
  }
  get unreachable() { return this.code === null; }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY) || '',
  signIn: (token) => sessionStorage.setItem(TOKEN_KEY, token.trim()),
  signOut: () => sessionStorage.removeItem(TOKEN_KEY),
  /** Whether a call without a token was answered: the daemon's access is open. */
  openAccess: false,
};

/** Notes that a call went through without a token, once. */
function answeredWithoutToken() {
  if (session.openAccess || session.token()) return;
  session.openAccess = true;
  window.dispatchEvent(new Event('apiary:session'));
}

function authorization() {
  const token = session.token();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// What went wrong reaching the daemon, said once for every call.
const UNREACHABLE = 'cannot reach the Apiary daemon';

async function call(service, method, body, signal) {
  let response;
  try {
    response = await fetch(`/prpc/${service}/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...authorization() },
      body: JSON.stringify(body || {}),
      signal,
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(null, UNREACHABLE, 0);
  }
  const text = await response.text();
  const grpcCode = Number(response.headers.get('X-Prpc-Grpc-Code') ?? (response.ok ? 0 : 2));
  if (!response.ok || grpcCode !== 0) {
    throw new ApiError(grpcCode, text.trim() || `${method}: HTTP ${response.status}`, response.status);
  }
  answeredWithoutToken();
  const json = text.startsWith(PRPC_PREFIX) ? text.slice(PRPC_PREFIX.length) : text;
  return json.trim() ? JSON.parse(json) : {};
}

const tasksCall = (method, body, signal) => call('swarming.v2.Tasks', method, body, signal);
const botsCall = (method, body, signal) => call('swarming.v2.Bots', method, body, signal);

export const tasks = {
  /** `filter`: {state: 'QUERY_...', tags: [...], start, limit, cursor}; newest first. */
  list: (filter, signal) => tasksCall('ListTasks', { sort: 'QUERY_CREATED_TS', ...filter }, signal),
  count: (filter, signal) => tasksCall('CountTasks', filter, signal),
  result: (taskId, signal) => tasksCall('GetResult', { taskId }, signal),
  request: (taskId, signal) => tasksCall('GetRequest', { taskId }, signal),
  stdout: (taskId, offset, length, signal) =>
    tasksCall('GetStdout', { taskId, offset: String(offset), length: String(length) }, signal),
  cancel: (taskId, killRunning) => tasksCall('CancelTask', { taskId, killRunning }),
  create: (newTaskRequest) => tasksCall('NewTask', newTaskRequest),
  /** Why a pending task waits: {state, matchingBots, busyBots, queuePosition} (0s left out). */
  explainPending: (taskId, signal) => call(APIARY_TASKS, 'ExplainPending', { taskId }, signal),
};

export const bots = {
  /** `filter`: {dimensions: [{key, value}], quarantined, isDead, isBusy ('TRUE'/'FALSE'), limit, cursor}. */
  list: (filter, signal) => botsCall('ListBots', filter, signal),
  count: (dimensions, signal) => botsCall('CountBots', { dimensions }, signal),
  get: (botId, signal) => botsCall('GetBot', { botId }, signal),
  tasks: (botId, cursor, limit, signal) =>
    botsCall('ListBotTasks', { botId, cursor, limit, state: 'QUERY_ALL', sort: 'QUERY_CREATED_TS' }, signal),
  events: (botId, cursor, limit, signal) => botsCall('ListBotEvents', { botId, cursor, limit }, signal),
  terminate: (botId, reason) => botsCall('TerminateBot', { botId, reason }),
  remove: (botId) => botsCall('DeleteBot', { botId }),
  quarantine: (botId, reason) => call(APIARY_BOTS, 'QuarantineBot', { botId, reason }),
  unquarantine: (botId) => call(APIARY_BOTS, 'UnquarantineBot', { botId }),
};

export const server = {
  /** `ClientPermissions`, for a task or bot when named: {taskId} or {botId}. */
  permissions: (about, signal) => call('swarming.v2.Swarming', 'GetPermissions', about || {}, signal),
};

/** Opens the output stream; resolves to the fetch Response (the caller reads its body). */
export async function openOutputStream(taskId, offset, signal) {
  try {
    return await fetch(outputStreamUrl(taskId, offset), { headers: authorization(), signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(null, UNREACHABLE, 0);
  }
}
