// The sequence as cells, one per position in reading order: masked, prompt, or revealed, with
// the tokens revealed by the latest step highlighted and coloured by the model's probability, and
// the words it returned to the mask (revision sampling) fading back into masks.

const MASK = "░";
const SPECIAL = /^(\[[A-Z]+\]|<\/?[a-z]+>|<\|[a-z_]+\|>)$/;
// the tokens that end a story (PAD, SEP, EOS): the first one cuts the story's text there
const END = /^(\[PAD\]|\[SEP\]|<pad>|<\/s>|<\|endoftext\|>)$/;

/** Red for a guess, green for a sure token: the hue runs 0 -> 130 as p runs 0 -> 1. */
export function probabilityHue(p) {
  return Math.round(130 * Math.min(1, Math.max(0, p)));
}

/** How a WordPiece / SentencePiece token reads inside a sentence. */
function pieceOf(text) {
  if (SPECIAL.test(text)) return { label: text.replace(/[[\]<>|/]/g, ""), kind: "special", joins: false };
  if (text.startsWith("##")) return { label: text.slice(2), kind: "word", joins: true };
  if (text.startsWith("▁")) return { label: text.slice(1), kind: "word", joins: false };
  return { label: text, kind: "word", joins: false };
}

export class SequenceView {
  /** @param {HTMLElement} root the element that holds the cells */
  constructor(root) {
    this.root = root;
    this.cells = [];
    this.fresh = [];
    this.promptCell = null;
    this.endCell = null;
  }

  /** All positions masked: the canvas before the first step. */
  reset(length) {
    this.root.replaceChildren();
    this.cells = [];
    this.fresh = [];
    this.promptCell = null;
    this.endCell = null;
    const fragment = document.createDocumentFragment();
    for (let pos = 0; pos < length; pos++) {
      const cell = document.createElement("span");
      fragment.append(cell);
      this.cells.push(cell);
      this.mask(pos);
    }
    this.root.append(fragment);
    this.root.dataset.length = String(length);
  }

  mask(pos) {
    const cell = this.cells[pos];
    cell.className = "cell masked";
    cell.textContent = MASK;
    cell.title = `position ${pos}: masked`;
    cell.style.removeProperty("--hue");
    delete cell.dataset.end;
  }

  /**
   * Show the first `count` positions as the prompt. The stream carries no prompt tokens (they
   * never change), so the prompt is one cell holding its text that stands for those positions.
   */
  setPrompt(count, text) {
    this.promptCell?.remove();
    this.promptCell = null;
    for (let pos = 0; pos < count; pos++) this.cells[pos].hidden = true; // fresh cells (reset): none hidden yet
    if (count === 0) return;
    const cell = document.createElement("span");
    cell.className = "cell prompt";
    cell.textContent = text.trim() || "[start]";
    cell.title = `positions 0–${count - 1}: the prompt (${count} tokens, never masked)`;
    this.root.prepend(cell);
    this.promptCell = cell;
  }

  /** Write the reveals of one event; `fresh` marks them as this step's. */
  reveal(changed, fresh = true) {
    for (const { pos, text, p } of changed) {
      const cell = this.cells[pos];
      if (!cell) continue;
      const piece = pieceOf(text);
      cell.className = `cell ${piece.kind}${piece.joins ? " joins" : ""}${fresh ? " fresh" : ""}`;
      cell.textContent = piece.label;
      cell.title = `position ${pos}: ${text} (p = ${p.toFixed(3)})`;
      cell.dataset.end = String(END.test(text));
      cell.style.setProperty("--hue", String(probabilityHue(p)));
      if (fresh) this.fresh.push(cell);
    }
  }

  /**
   * Return written words to the mask (revision sampling); `fresh` marks them as this step's, so they
   * fade from the word they held back into a mask.
   */
  remask(positions, fresh = true) {
    for (const pos of positions) {
      const cell = this.cells[pos];
      if (!cell) continue;
      const held = cell.textContent;
      this.mask(pos);
      cell.title = `position ${pos}: masked again (it held "${held}"; revision sampling)`;
      if (fresh) {
        cell.classList.add("remasked");
        this.fresh.push(cell);
      }
    }
  }

  /** One `step` event: its reveals and the positions it returned to the mask (never the same ones). */
  apply(event, fresh = true) {
    this.reveal(event.changed, fresh);
    this.remask(event.remasked ?? [], fresh);
  }

  /** Un-highlight the previous step's reveals and remasks before showing the next ones. */
  settle() {
    for (const cell of this.fresh) cell.classList.remove("fresh", "remasked");
    this.fresh = [];
  }

  /**
   * Fold the finished sequence's tail, from the end token that ends the story (the first one after
   * every fixed text) to the last position, into one "end" cell; returns the story's positions.
   */
  collapseEnd() {
    this.expandEnd();
    const lastFixed = this.cells.findLastIndex((c) => c.classList.contains("fixed") && c.dataset.end !== "true");
    const start = this.cells.findIndex((c, pos) => pos > lastFixed && !c.hidden && c.dataset.end === "true");
    if (start < 0) return this.cells.length;
    this.tail = this.cells.slice(start).filter((c) => !c.hidden);
    for (const cell of this.tail) cell.hidden = true;
    const cell = document.createElement("span");
    cell.className = "cell end";
    cell.textContent = "end";
    cell.title = `position ${start}: the story ends here; positions ${start}–${this.cells.length - 1} are padding`;
    this.root.append(cell); // after the hidden tail: where it would show, and no cell moves
    this.endCell = cell;
    return start;
  }

  /** How many positions at the start hold a special token drawn as such ([CLS] before fixed text). */
  leadCount() {
    const first = this.cells.findIndex((c) => !c.classList.contains("special"));
    return first < 0 ? this.cells.length : first;
  }

  /** Undo `collapseEnd`: every position its own cell again. */
  expandEnd() {
    if (!this.endCell) return;
    this.endCell.remove();
    this.endCell = null;
    for (const cell of this.tail) cell.hidden = false; // only those it hid: the prompt's stay in its cell
  }

  /** The state after `upto` of the recorded events, the last of them highlighted (for scrubbing). */
  replay(history, upto) {
    this.expandEnd();
    for (let pos = 0; pos < this.cells.length; pos++) this.mask(pos);
    this.fresh = [];
    for (let i = 0; i < upto; i++) this.apply(history[i], i === upto - 1);
  }
}
