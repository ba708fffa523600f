// A Server-Sent Events parser for streams read with fetch (EventSource cannot POST a JSON body).
// It follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or CR (a CRLF
// may be split across two chunks), `data:` lines join with "\n", `id:` persists across events,
// `event:` names one event, lines starting with ":" are comments (keep-alive pings), and an
// event is dispatched only at a blank line, so a half-received event at the end is dropped.

export class SSEParser {
  /**
   * @param {(event: {type: string, data: string, id: string}) => void} onEvent
   * @param {(comment: string) => void} [onComment]
   */
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = "";
    this.skipLF = false; // the last chunk ended in CR: a leading LF in the next one ends no line
    this.started = false;
    this.type = "";
    this.data = [];
    this.lastEventId = "";
    this.retry = null;
  }

  /** Feed decoded text; complete lines are interpreted at once, the rest waits for more. */
  feed(text) {
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLF && text.startsWith("\n")) text = text.slice(1);
    this.skipLF = false;
    this.buffer += text;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\r" && c !== "\n") continue;
      this.line(this.buffer.slice(start, i));
      if (c === "\r") {
        if (i + 1 === this.buffer.length) this.skipLF = true;
        else if (this.buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return this.onComment(line.slice(1).replace(/^ /, ""));
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    const value = colon === -1 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }

  dispatch() {
    const type = this.type || "message";
    const data = this.data;
    this.type = "";
    this.data = [];
    if (data.length === 0) return;
    this.onEvent({ type, data: data.join("\n"), id: this.lastEventId });
  }
}

/**
 * The events of a `text/event-stream` response, as they arrive.
 * Ends when the server closes the stream; throws AbortError when the fetch is aborted.
 * @param {Response} response
 * @param {(comment: string) => void} [onComment]
 */
export async function* readEvents(response, onComment) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const queue = [];
  // `retry`: the server's reconnection delay (ms) as of this event, null until it sends one
  const parser = new SSEParser((event) => queue.push({ ...event, retry: parser.retry }), onComment);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
      while (queue.length) yield queue.shift();
    }
    parser.feed(decoder.decode());
    while (queue.length) yield queue.shift();
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stops early closes the connection too
  }
}
