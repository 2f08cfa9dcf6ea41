// A task's output, followed live: read from the daemon's output stream and
// appended as chunks arrive; after a dropped connection it resumes from the
// byte offset it has. Where the daemon has no stream, it polls GetStdout.

import { ApiError, openOutputStream, tasks } from './api.js';
import { base64Bytes, bytes } from './format.js';
import { sleep } from './widgets.js';

const RETRY_DELAY_MS = 1000;
const POLL_DELAY_MS = 1000;
const STDOUT_PAGE_BYTES = 1 << 20;

/** Shows output in `view` ({append(text), status(text)}) from offset 0 until the
 *  task's output is complete or `signal` fires. `isEnded()` resolves whether the
 *  task has ended (asked when a stream closes). */
export async function followOutput(taskId, view, signal, isEnded) {
  const reader = { offset: 0, decoder: new TextDecoder('utf-8') };
  const receive = (chunk) => {
    reader.offset += chunk.length;
    view.append(reader.decoder.decode(chunk, { stream: true }));
    view.status(`${bytes(reader.offset)} received · following`);
  };
  while (!signal.aborted) {
    view.status(reader.offset ? `${bytes(reader.offset)} received · following` : 'following the output');
    const outcome = await streamOnce(taskId, reader.offset, receive, signal);
    if (outcome === 'no-stream') { await pollStdout(taskId, reader, receive, signal); break; }
    // A daemon that cannot say (restarting, say) has not said the task ended.
    if (outcome === 'ended' && await isEnded().catch(() => false)) break;
    view.status(`${bytes(reader.offset)} received · reconnecting…`);
    await sleep(RETRY_DELAY_MS, signal);
  }
  view.append(reader.decoder.decode());
  view.status(reader.offset ? `${bytes(reader.offset)} · complete` : 'complete · no output');
}

/** One stream connection from `offset`: 'ended' when the body ended, 'dropped'
 *  on a failure, 'no-stream' when the daemon serves no such endpoint. */
async function streamOnce(taskId, offset, receive, signal) {
  let response;
  try {
    response = await openOutputStream(taskId, offset, signal);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    return 'dropped';
  }
  if ([404, 405, 501].includes(response.status)) return 'no-stream';
  if (!response.ok) {
    const message = (await response.text()).trim();
    throw new ApiError(Number(response.headers.get('X-Prpc-Grpc-Code') ?? 2), message || `output: HTTP ${response.status}`, response.status);
  }
  try {
    const body = response.body.getReader();
    for (;;) {
      const { done, value } = await body.read();
      if (done) return 'ended';
      receive(value);
    }
  } catch (error) {
    if (signal.aborted) throw error;
    return 'dropped';
  }
}

/** GetStdout from the offset on, page by page, until the task has ended and
 *  nothing more comes. */
async function pollStdout(taskId, reader, receive, signal) {
  for (;;) {
    const reply = await tasks.stdout(taskId, reader.offset, STDOUT_PAGE_BYTES, signal);
    const chunk = base64Bytes(reply.output);
    if (chunk.length > 0) { receive(chunk); continue; }
    if (reply.state && reply.state !== 'PENDING' && reply.state !== 'RUNNING') return;
    await sleep(POLL_DELAY_MS, signal);
  }
}
