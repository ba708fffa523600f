// Stories written around fixed text: blanks typed into the prompt as [___:N], an ending, and
// "Rewrite selection" on a finished story. The requests use the API's `segments`, `ending` and `edit`
// (docs/infilling.md). A stream carries only what the model reveals, so the fixed tokens and where
// they lie come from POST /canvas before the story starts, and are drawn as fixed cells.

import { fetchCanvas } from "./api.js";

/** A blank in the prompt: [___:N] is N tokens, [___:~N] at most N (the last blank only), as the CLI's --template. */
const BLANK = /\[_+:(~?)(\d+)\]/g;
const DEFAULT_BLANK = 20;

/** `text` as the API's segments, or null when it has no blank. */
export function segmentsOf(text) {
  const segments = [];
  let at = 0;
  for (const match of text.matchAll(BLANK)) {
    if (text.slice(at, match.index).trim()) segments.push({ text: text.slice(at, match.index) });
    segments.push(match[1] ? { blank: Number(match[2]), flexible: true } : { blank: Number(match[2]) });
    at = match.index + match[0].length;
  }
  if (!segments.length) return null;
  if (text.slice(at).trim()) segments.push({ text: text.slice(at) });
  return segments;
}

/**
 * The request for the form's fields: a prompt with blanks becomes `segments` (the ending its last
 * text); an edit is a whole story already. Both set the length themselves, so the form's is left out.
 */
export function canvasBody(body) {
  const { prompt, ending, length, ...rest } = body;
  if (body.edit) return rest;
  const segments = prompt ? segmentsOf(prompt) : null;
  if (!segments) return body;
  return { ...rest, segments: ending ? [...segments, { text: ending }] : segments };
}

/** The `edit` field's text as the request's object; text that is not JSON is sent as is (a 422 says why). */
export function parseEdit(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** [start, end) runs of sorted positions. */
function runs(positions) {
  const spans = [];
  for (const pos of positions) {
    const last = spans[spans.length - 1];
    if (last && last.end === pos) last.end += 1;
    else spans.push({ start: pos, end: pos + 1 });
  }
  return spans;
}

function describeSpans(spans) {
  const parts = spans.map(({ start, end }) => (end - start === 1 ? `${start}` : `${start}–${end - 1}`));
  return `Rewriting token${spans.length === 1 && spans[0].end - spans[0].start === 1 ? "" : "s"} ${parts.join(", ")}`;
}

export class StoryEditor {
  /** @param {import("./panel.js").Panel} panel */
  constructor(panel) {
    this.panel = panel;
    this.layout = null; // the running story's fixed tokens (POST /canvas), or null for a plain story
    this.done = null; // the last finished story's `done` event
    this.selection = []; // positions of the last selection in this panel's cells
    const { ref, inputs, errors } = panel;
    inputs.segments = inputs.prompt; // a 422 about the blanks is shown under the prompt that holds them
    errors.segments = errors.prompt;
    ref.blankSize.id = `${panel.key}-blank-size`;
    ref.blankSizeLabel.htmlFor = ref.blankSize.id;
    ref.insertBlank.addEventListener("click", () => this.insertBlank());
    ref.rewrite.addEventListener("click", () => this.rewrite());
    ref.clearEdit.addEventListener("click", () => this.setEdit(""));
    document.addEventListener("selectionchange", () => this.rememberSelection());
  }

  /** Write [___:N] at the prompt's caret, spaced from the words around it, the caret after it. */
  insertBlank() {
    const prompt = this.panel.inputs.prompt;
    const size = Number.parseInt(this.panel.ref.blankSize.value, 10) || DEFAULT_BLANK;
    const { selectionStart: from, selectionEnd: to, value } = prompt;
    const before = value.slice(0, from);
    const after = value.slice(to);
    const blank = `${before && !/\s$/.test(before) ? " " : ""}[___:${size}]${/^\s/.test(after) ? "" : " "}`;
    prompt.value = before + blank + after;
    prompt.focus();
    prompt.setSelectionRange(from + blank.length, from + blank.length);
    this.panel.setFieldError("prompt", "");
  }

  /** The layout of a request with fixed text, fetched before it starts; null for a plain story. */
  async prepare(body, signal) {
    this.layout = body.segments || body.ending || body.edit ? await fetchCanvas(body, signal) : null;
    return this.layout;
  }

  /** Draw the fixed tokens in their cells (after a reset, and after the scrubber replays the reveals). */
  drawFixed(view) {
    if (!this.layout) return;
    view.reveal(
      this.layout.fixed.map(({ pos, text }) => ({ pos, text, p: 1 })),
      false,
    );
    for (const { pos } of this.layout.fixed) {
      const cell = view.cells[pos];
      cell.classList.add("fixed");
      cell.title = `position ${pos}: ${cell.textContent} (fixed, never masked)`;
    }
    // text its tokens do not spell ("Zoë" read as "Zoe", an emoji as [UNK]): one cell shows it as typed
    for (const { start, end, text } of this.layout.typed ?? []) {
      view.cells.slice(start + 1, end).forEach((cell) => { cell.hidden = true; });
      const first = view.cells[start];
      first.className = "cell word fixed";
      first.textContent = text;
      first.title = `positions ${start}–${end - 1}: ${text} (fixed, as typed; the model reads its tokens)`;
    }
  }

  onDone(done) {
    this.done = done;
    this.panel.ref.rewriteHint.textContent = "Select words in the cells above, then rewrite them: the rest stays.";
  }

  /** Keep the positions of a selection inside this panel's cells (a click on the button may clear it). */
  rememberSelection() {
    const selection = document.getSelection();
    if (!selection || selection.isCollapsed || !this.done) return;
    const cells = this.panel.view.cells;
    const picked = cells.filter((cell) => !cell.hidden && [...Array(selection.rangeCount).keys()].some(
      (i) => selection.getRangeAt(i).intersectsNode(cell),
    ));
    if (picked.length) this.selection = picked.map((cell) => cells.indexOf(cell));
  }

  /** The selected words' positions, each word whole (WordPiece pieces that continue it), no special tokens. */
  selectedSpans() {
    const cells = this.panel.view.cells;
    const limit = this.done.tokens.length;
    const picked = new Set();
    for (const pos of this.selection) {
      let start = pos;
      let end = pos + 1;
      while (start > 0 && cells[start].classList.contains("joins")) start -= 1;
      while (end < cells.length && cells[end].classList.contains("joins")) end += 1;
      for (let p = start; p < Math.min(end, limit); p++) {
        if (!cells[p].classList.contains("special")) picked.add(p);
      }
    }
    return runs([...picked].sort((a, b) => a - b));
  }

  /** Rewrite the selected words of the finished story, live, with a fresh seed; everything else stays. */
  rewrite() {
    if (this.panel.running || !this.done) return;
    const spans = this.selectedSpans();
    if (!spans.length) {
      this.panel.say("Select some words of the story in the cells first.", "error");
      return;
    }
    this.setEdit(JSON.stringify({ tokens: this.done.tokens, spans }));
    this.panel.inputs.seed.value = "";
    this.selection = [];
    document.getSelection()?.removeAllRanges();
    this.panel.run();
  }

  setEdit(text) {
    this.panel.inputs.edit.value = text;
    this.panel.setFieldError("edit", "");
    this.sync();
  }

  /** Show the rewrite in the form while there is one; a prompt, ending and length do not apply to it. */
  sync() {
    const edit = parseEdit(this.panel.inputs.edit.value);
    const field = this.panel.inputs.edit.closest(".field");
    field.hidden = !this.panel.inputs.edit.value;
    const spans = Array.isArray(edit?.spans) ? edit.spans : [];
    this.panel.ref.editSummary.textContent = spans.length
      ? `${describeSpans(spans)} of a finished story; the rest stays (prompt, ending and length do not apply).`
      : "A story to rewrite in part.";
  }
}
