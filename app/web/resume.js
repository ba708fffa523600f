// A story's events across dropped connections: when the network fails mid-stream, reconnect with
// the stream's id and the last event's id (GET /generate/{id}), with backoff, and carry on.

import { ApiError, generateStream, resumeStream } from "./api.js";

const FIRST_DELAY_MS = 500; // until the server's SSE `retry` says otherwise
const MAX_DELAY_MS = 4000;
const GIVE_UP_AFTER_MS = 60_000; // the server drops a story well before: it answers 404 then

/** Resolves after `ms`, or at once when the browser comes back online; rejects when `signal` aborts. */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", abort);
      resolve();
    };
    const abort = () => {
      done();
      reject(signal.reason);
    };
    const timer = setTimeout(done, ms);
    window.addEventListener("online", done);
    signal.addEventListener("abort", abort);
  });
}

function couldNotResume(err) {
  const reason = err?.message ?? "the server ended the stream.";
  return new ApiError(`Lost the connection, and could not resume the story: ${reason}`, { status: err?.status });
}

/**
 * POST /generate's events, {type, id, data, raw}, until `done` or `error`, reconnecting after a
 * network failure. Hooks: `onOpen(streamId)`, `onReconnecting(attempt)`, `onResumed()`.
 * Ends without `done` when the connection ends and cannot be resumed (no stream id, or the server
 * refused the POST's stream: then it throws that ApiError); AbortError when `signal` aborts.
 */
export async function* storyStream(body, signal, { onOpen, onReconnecting, onResumed } = {}) {
  let streamId = null;
  let lastEventId = null;
  let retryMs = FIRST_DELAY_MS;
  let attempt = 0;
  let lostAt = 0;
  let source = generateStream(body, signal, (id) => {
    streamId = id;
    onOpen?.(id);
  });
  for (;;) {
    let lost = null;
    try {
      for await (const event of source) {
        if (attempt) onResumed?.();
        attempt = 0;
        lastEventId = event.id;
        retryMs = event.retry ?? retryMs;
        yield event;
        if (event.type === "done" || event.type === "error") return;
      }
    } catch (err) {
      if (!(err instanceof ApiError) || streamId === null) throw err; // AbortError, or the POST's refusal
      if (!err.network && err.status < 500) throw attempt ? couldNotResume(err) : err; // 404: it expired
      lost = err;
    }
    if (streamId === null) return; // the POST's stream ended early and cannot be resumed
    lostAt = attempt ? lostAt : Date.now();
    if (Date.now() - lostAt > GIVE_UP_AFTER_MS) throw couldNotResume(lost);
    attempt += 1;
    onReconnecting?.(attempt);
    await pause(Math.min(retryMs * 2 ** (attempt - 1), MAX_DELAY_MS), signal);
    source = resumeStream(streamId, lastEventId, signal);
  }
}
