// The storydiff HTTP API as the page uses it: GET /info, the SSE stream of POST /generate, and
// resuming (GET) or cancelling (DELETE) a stream by the id of its X-Stream-ID header.

import { readEvents } from "./sse.js";

/**
 * A request the server refused, or a connection that failed (`network`: worth retrying);
 * `fields` maps field -> message.
 */
export class ApiError extends Error {
  constructor(message, { status = 0, fields = {}, retryAfter = null, network = false } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields;
    this.retryAfter = retryAfter;
    this.network = network;
  }
}

const KEY_STORAGE = "storydiff.apiKey";
/** Fired on `window` when the server answers 401 (detail: the message to show); the page asks for a key. */
export const KEY_NEEDED = "storydiff:key-needed";

/** The API key given on this page, kept for this tab's session only (sessionStorage), or null. */
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage disabled: the page works without keys
  }
}

export function setApiKey(key) {
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    // storage disabled: nothing to keep it in
  }
}

/** `headers` plus `Authorization: Bearer KEY` once the page has a key (fetch can send it; EventSource could not). */
function withKey(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

async function refusal(response) {
  let detail = null;
  try {
    detail = (await response.json()).detail;
  } catch {
    // not JSON (a proxy's error page): fall back to the status line
  }
  const status = response.status;
  if (status === 422 && Array.isArray(detail)) {
    const fields = {};
    const general = [];
    for (const item of detail) {
      const loc = Array.isArray(item.loc) ? item.loc : [];
      const field = loc[0] === "body" && loc.length > 1 ? String(loc[1]) : null;
      if (field) fields[field] = fields[field] ? `${fields[field]}; ${item.msg}` : item.msg;
      else general.push(item.msg);
    }
    const message = general.length ? general.join("; ") : "Some settings are invalid; see the fields marked.";
    return new ApiError(message, { status, fields });
  }
  const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  if (status === 429) {
    const seconds = Number.isFinite(retryAfter) ? retryAfter : 1;
    return new ApiError(`The server is busy: retry in ${seconds} s.`, { status, retryAfter: seconds });
  }
  const text = typeof detail === "string" ? detail : response.statusText || "request failed";
  if (status === 401) {
    const message = apiKey() ? "The server did not accept this API key." : "This server needs an API key.";
    window.dispatchEvent(new CustomEvent(KEY_NEEDED, { detail: message }));
    return new ApiError(`${message} Enter it above, then try again.`, { status });
  }
  return new ApiError(`The server answered ${status}: ${text}.`, {
    status,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
  });
}

/** GET /info: model, device, limits, defaults and the engine's counters. */
export async function fetchInfo(signal) {
  let response;
  try {
    response = await fetch("/info", { signal, cache: "no-store", headers: withKey() });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the server.");
  }
  if (!response.ok) throw await refusal(response);
  return response.json();
}

/** GET /openapi.json: the API's schema, where the sampler's fields are declared (with the key, where the
 * server has keys: it is closed to others, as the rest of the API). */
export async function fetchOpenApi(signal) {
  let response;
  try {
    response = await fetch("/openapi.json", { signal, headers: withKey() });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the server.");
  }
  if (!response.ok) throw await refusal(response);
  return response.json();
}

/**
 * The request body as JSON. `seed` is a string of digits, written as a bare JSON number so that
 * seeds above 2^53 survive (a JS number would round them); anything else is sent as a string,
 * which the server rejects with a 422 naming the field.
 */
export function encodeRequest(body) {
  const json = JSON.stringify(body);
  if (typeof body.seed !== "string" || !/^-?\d+$/.test(body.seed)) return json;
  return json.replace(`"seed":"${body.seed}"`, `"seed":${body.seed}`);
}

/** The seed of a `done` event, read from the raw JSON so that large seeds keep every digit. */
export function seedOf(rawDone) {
  const match = /"seed":\s*(\d+)/.exec(rawDone);
  return match ? match[1] : null;
}

/** The stream's URL for resuming (GET) and cancelling (DELETE). */
function streamUrl(streamId) {
  return `/generate/${encodeURIComponent(streamId)}`;
}

/** fetch, with a network failure as an ApiError worth retrying; AbortError passes through. */
async function request(url, init) {
  try {
    return await fetch(url, { ...init, headers: withKey(init.headers), cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the server.", { network: true });
  }
}

/**
 * POST /canvas: where a request's fixed text lies, {length, fixed: [{pos, id, text}], blanks}, before it is
 * written (a stream carries only reveals); refusals (422 and the rest) throw as generateStream's do.
 */
export async function fetchCanvas(body, signal) {
  const response = await request("/canvas", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: encodeRequest(body),
    signal,
  });
  if (!response.ok) throw await refusal(response);
  return response.json();
}

/**
 * POST /generate with stream: true; yields {type, id, data, raw, retry} for every SSE event, and
 * calls `onOpen(streamId)` once the server accepted it. Throws ApiError when the server refuses
 * (422, 429, 503) or cannot be reached, and AbortError when `signal` aborts, which closes the
 * connection (the server keeps the story for a while, for a resume: cancel it to free its slot).
 */
export async function* generateStream(body, signal, onOpen = () => {}) {
  const response = await request("/generate", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: encodeRequest({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await refusal(response);
  onOpen(response.headers.get("X-Stream-ID"));
  yield* eventsOf(response);
}

/**
 * GET /generate/{id}: the stream again after a dropped connection, from an event that brings the
 * page up to date (`lastEventId`: the id of the last event received); errors as generateStream's,
 * 404 once the server dropped the story.
 */
export async function* resumeStream(streamId, lastEventId, signal) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const response = await request(streamUrl(streamId), { headers, signal });
  if (!response.ok) throw await refusal(response);
  yield* eventsOf(response);
}

/** DELETE /generate/{id}: the server cancels the story now and frees its slot; survives unloading the page. */
export function cancelStream(streamId) {
  request(streamUrl(streamId), { method: "DELETE", keepalive: true }).catch(() => {});
}

async function* eventsOf(response) {
  try {
    for await (const event of readEvents(response)) {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        throw new ApiError(`The server sent an unreadable ${event.type} event.`);
      }
      yield { type: event.type, id: event.id, data, raw: event.data, retry: event.retry };
    }
  } catch (err) {
    if (err.name === "AbortError" || err instanceof ApiError) throw err;
    throw new ApiError("Lost the connection to the server.", { network: true });
  }
}
