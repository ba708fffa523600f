// The storydiff HTTP API as the page uses it: GET /info and the SSE stream of POST /generate.

import { readEvents } from "./sse.js";

/** A request the server refused, or a connection that failed; `fields` maps field -> message. */
export class ApiError extends Error {
  constructor(message, { status = 0, fields = {}, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields;
    this.retryAfter = retryAfter;
  }
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
  return new ApiError(`The server answered ${status}: ${text}.`, {
    status,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
  });
}

/** GET /info: model, device, limits, defaults and the engine's counters. */
export async function fetchInfo(signal) {
  let response;
  try {
    response = await fetch("/info", { signal, cache: "no-store" });
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

/**
 * POST /generate with stream: true; yields {type, id, data, raw} for every SSE event.
 * Throws ApiError when the server refuses (422, 429, 503) or cannot be reached, and AbortError
 * when `signal` aborts, which closes the connection (the server then frees the batch slot).
 */
export async function* generateStream(body, signal) {
  let response;
  try {
    response = await fetch("/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: encodeRequest({ ...body, stream: true }),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError("Cannot reach the server.");
  }
  if (!response.ok) throw await refusal(response);
  try {
    for await (const event of readEvents(response)) {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        throw new ApiError(`The server sent an unreadable ${event.type} event.`);
      }
      yield { type: event.type, id: event.id, data, raw: event.data };
    }
  } catch (err) {
    if (err.name === "AbortError" || err instanceof ApiError) throw err;
    throw new ApiError("Lost the connection to the server.");
  }
}
