// One generation: its settings form, its own stream, the live view, and the history to scrub.

import { ApiError, cancelStream, seedOf } from "./api.js";
import { StoryEditor, canvasBody, parseEdit } from "./editor.js";
import { storyStream } from "./resume.js";
import { bodyValue, fieldElement, shownValue } from "./sampler_fields.js";
import { SequenceView } from "./view.js";

/** The request fields, in the order the form shows them and URLs list them; the sampler's join after
 * `length` once the schema is read (`useSamplerFields`). */
export const FIELDS = ["prompt", "ending", "edit", "preset", "length", "seed", "stream_every"];
const NUMERIC = new Set(["length", "stream_every"]);
/** The sampler's fields by name (sampler_fields.js), from the schema. */
const SAMPLER = new Map();

/** Take the sampler's fields (from GET /openapi.json) into every panel made from now on. */
export function useSamplerFields(fields) {
  for (const field of fields) SAMPLER.set(field.name, field);
  FIELDS.splice(FIELDS.indexOf("length") + 1, 0, ...fields.map((field) => field.name));
}

const BLOCKS_HINT = "confidence rules: left to right";
const NO_BLOCKS_HINT = "not for random remasking";
const NO_BLOCKS_WHY =
  "Random remasking reveals each masked position by chance, not by the model's confidence: there is no " +
  "ranking for blocks to order left to right, so it ignores block length. Choose a confidence rule to use it.";

/** Fields that only one remasking rule reads. */
const RULE_FIELDS = { confidence_threshold: "threshold", entropy_budget: "entropy_bound" };

let panelsMade = 0;

/** A page URL that loads `groups` of settings (one per panel) and, with `run`, starts them. */
export function settingsUrl(groups, run = true) {
  const params = new URLSearchParams();
  groups.forEach((values, i) => {
    for (const field of FIELDS) {
      const value = values[field];
      // a blank top-k/p/block length means "none" and must survive the trip (absent: "default")
      if (value === undefined || (value === "" && !SAMPLER.get(field)?.nullable)) continue;
      params.set(groups.length === 1 ? field : `${i + 1}.${field}`, value);
    }
  });
  if (run) params.set("run", "1");
  return `${location.pathname}?${params}`;
}

function formatSeconds(s) {
  return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
}

export class Panel {
  /**
   * @param {HTMLTemplateElement} template
   * @param {{info: object, onChange: () => void, onRemove: (panel: Panel) => void}} hooks
   */
  constructor(template, { info, onChange, onRemove }) {
    this.info = info;
    this.onChange = onChange;
    this.key = `g${++panelsMade}`;
    this.root = template.content.firstElementChild.cloneNode(true);
    this.ref = {};
    for (const el of this.root.querySelectorAll("[data-ref]")) this.ref[el.dataset.ref] = el;
    this.inputs = {};
    this.errors = {};
    const settings = this.ref.advanced.querySelector(".settings");
    const showEvery = settings.querySelector('[data-field="stream_every"]');
    for (const field of SAMPLER.values()) settings.insertBefore(fieldElement(field), showEvery);
    for (const field of this.root.querySelectorAll("[data-field]")) this.wireField(field);
    this.view = new SequenceView(this.ref.cells);
    this.editor = new StoryEditor(this); // blanks, an ending, rewriting a selection
    this.history = [];
    this.controller = null;
    this.seed = null;
    this.pending = [];
    this.frame = 0;
    this.ref.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.ref.stop.addEventListener("click", () => this.stop());
    this.ref.remove.addEventListener("click", () => onRemove(this));
    this.ref.scrubber.addEventListener("input", () => this.scrubTo(Number(this.ref.scrubber.value)));
    this.ref.scrubber.id = `${this.key}-scrubber`;
    this.ref.scrubLabel.htmlFor = this.ref.scrubber.id;
    this.applyDefaults(info);
    // a preset fills the sampler fields with its values (GET /info); a field changed afterwards overrides it
    this.inputs.preset.addEventListener("change", () => {
      const preset = this.inputs.preset.value;
      this.applySampler(preset ? info.presets[preset] : info.defaults);
    });
    this.inputs.remasking.addEventListener("change", () => this.showRuleFields());
    this.view.reset(Number(this.inputs.length.value) || info.defaults.length);
  }

  wireField(field) {
    const name = field.dataset.field;
    const input = field.querySelector("input, select, textarea");
    const label = field.querySelector("label");
    const hint = field.querySelector(".hint");
    const error = field.querySelector(".error");
    input.id = `${this.key}-${name}`;
    label.htmlFor = input.id;
    error.id = `${input.id}-error`;
    const described = [error.id];
    if (hint) {
      hint.id = `${input.id}-hint`;
      described.unshift(hint.id);
    }
    input.setAttribute("aria-describedby", described.join(" "));
    input.addEventListener("input", () => this.setFieldError(name, ""));
    this.inputs[name] = input;
    this.errors[name] = error;
  }

  applyDefaults(info) {
    const d = info.defaults;
    const { length, steps } = this.inputs;
    length.max = String(info.max_length);
    length.value = String(d.length);
    this.applySampler(d);
    length.placeholder = String(d.length);
    steps.placeholder = String(d.steps);
  }

  /** Show sampler settings (the defaults, or a preset's values) in the form. */
  applySampler(d) {
    for (const field of SAMPLER.values()) this.show(field.name, shownValue(field, d[field.name]));
    this.showRuleFields();
  }

  /** Show `text` in a field (a checkbox: checked for "true"). */
  show(name, text) {
    const input = this.inputs[name];
    if (input.type === "checkbox") input.checked = text === "true";
    else input.value = text;
  }

  /**
   * Fields that do nothing under the chosen remasking rule are off, and not sent: block length orders
   * the confidence-ranked reveals (off under random, saying why); the threshold and the entropy budget
   * belong to their own rule alone, so they show only under it.
   */
  showRuleFields() {
    const rule = this.inputs.remasking.value;
    const unused = rule === "random";
    const blocks = this.inputs.block_length;
    blocks.disabled = unused;
    blocks.title = unused ? NO_BLOCKS_WHY : "";
    blocks.closest(".field").querySelector(".hint").textContent = unused ? NO_BLOCKS_HINT : BLOCKS_HINT;
    for (const [field, owner] of Object.entries(RULE_FIELDS)) {
      const input = this.inputs[field];
      input.disabled = rule !== owner;
      input.closest(".field").hidden = rule !== owner;
    }
  }

  /** The form as strings, field by field (what a URL carries). */
  values() {
    return Object.fromEntries(
      FIELDS.map((field) => {
        const input = this.inputs[field];
        return [field, input.type === "checkbox" ? String(input.checked) : input.value.trim()];
      }),
    );
  }

  setValues(values) {
    // a preset first, as its select would fill the form; the fields given override it
    const preset = this.info.presets?.[values.preset];
    if (preset) this.applySampler(preset);
    for (const [field, value] of Object.entries(values)) {
      if (this.inputs[field]) this.show(field, value);
    }
    this.showRuleFields();
    this.editor.sync();
  }

  setNumber(n, removable) {
    this.ref.number.textContent = String(n);
    this.root.setAttribute("aria-label", `Generation ${n}`);
    this.ref.remove.hidden = !removable;
  }

  /** The request body; fields whose text is not a number are listed in `unreadable`. */
  requestBody() {
    const body = {};
    const unreadable = [];
    for (const [field, text] of Object.entries(this.values())) {
      const input = this.inputs[field];
      if (input.disabled) continue; // not used by these settings (block length under random remasking)
      if (input.validity?.badInput) unreadable.push(field);
      else if (field === "prompt") {
        if (text) body.prompt = text;
      } else if (field === "seed") {
        if (text) body.seed = text; // digits, sent as a bare JSON number (see encodeRequest)
      } else if (field === "preset") {
        if (text) body.preset = text;
      } else if (field === "ending" || field === "edit") {
        if (text) body[field] = field === "edit" ? parseEdit(text) : text;
      } else if (SAMPLER.has(field)) {
        const value = bodyValue(SAMPLER.get(field), text);
        if (value !== undefined) body[field] = value;
      } else if (NUMERIC.has(field) && text !== "") body[field] = Number(text);
    }
    return { body: canvasBody(body), unreadable };
  }

  setFieldError(field, message) {
    const input = this.inputs[field];
    this.errors[field].textContent = message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  /** Field errors next to their fields; returns those that name no field of the form. */
  showFieldErrors(fields) {
    const unplaced = [];
    let first = null;
    for (const [field, message] of Object.entries(fields)) {
      if (!this.inputs[field]) {
        unplaced.push(`${field}: ${message}`);
        continue;
      }
      this.setFieldError(field, message);
      if (this.ref.advanced.contains(this.inputs[field])) this.ref.advanced.open = true; // to be seen
      first ??= this.inputs[field];
    }
    first?.focus();
    return unplaced;
  }

  say(message, kind = "info") {
    this.ref.status.textContent = message;
    this.ref.status.dataset.kind = kind;
  }

  get running() {
    return this.controller !== null;
  }

  /** Start this panel's stream; resolves when it ends (done, error, stop or lost connection). */
  async run() {
    if (this.running) return;
    for (const field of FIELDS) this.setFieldError(field, "");
    const { body, unreadable } = this.requestBody();
    if (unreadable.length) {
      this.showFieldErrors(Object.fromEntries(unreadable.map((f) => [f, "Enter a number."])));
      this.say("Some settings are not numbers.", "error");
      return;
    }
    const outOfLimits = this.limitErrors(body);
    if (Object.keys(outOfLimits).length) {
      this.showFieldErrors(outOfLimits);
      this.say("Some settings are beyond this server's limits (GET /info); nothing was sent.", "error");
      return;
    }
    this.begin(body);
    let ended = false;
    try {
      this.length = (await this.editor.prepare(body, this.controller.signal))?.length ?? this.length;
      for await (const event of storyStream(body, this.controller.signal, this.connectionHooks())) {
        if (event.type === "step") this.onStep(event.data);
        else if (event.type === "done") ended = this.onDone(event.data, event.raw);
        else if (event.type === "error") {
          ended = true;
          this.say(`The server ended this story (${event.data.error}): ${event.data.detail}`, "error");
        }
      }
      if (!ended) {
        this.say(`Lost the connection at step ${this.lastStep()}; the story is unfinished.`, "error");
      }
    } catch (err) {
      if (err.name === "AbortError") {
        if (!ended) this.say(`Stopped at step ${this.lastStep()}.`); // a late Stop keeps "Done"
      }
      else if (err instanceof ApiError) {
        const unplaced = this.showFieldErrors(err.fields);
        this.say([err.message, ...unplaced].join(" "), "error");
      } else {
        console.error(err);
        this.say(`Something went wrong: ${err.message}`, "error");
      }
    } finally {
      this.finish();
    }
  }

  /** Fields beyond the limits /info gives, with why: checked before sending, so the message names the model's. */
  limitErrors(body) {
    const max = this.info.max_length;
    const length = body.length;
    if (length === undefined || (Number.isInteger(length) && length >= 1 && length <= max)) return {};
    return { length: `Enter a whole number of tokens from 1 to ${max}, this model's maximum length.` };
  }

  /** Stop for real: the server cancels the story at once (a dropped connection only pauses it). */
  stop() {
    if (this.running && this.streamId) cancelStream(this.streamId);
    this.controller?.abort();
  }

  connectionHooks() {
    return {
      onOpen: (streamId) => {
        this.streamId = streamId;
        this.view.reset(this.length); // drawn once the server accepted the request, never for a refusal
        this.editor.drawFixed(this.view);
        this.showCanvas();
      },
      onReconnecting: (attempt) => {
        this.say(`Connection lost at step ${this.lastStep()}; reconnecting… (attempt ${attempt})`);
        this.root.dataset.connection = "reconnecting";
      },
      onResumed: () => {
        this.say("Reconnected. Denoising…");
        delete this.root.dataset.connection;
      },
    };
  }

  begin(body) {
    this.controller = new AbortController();
    this.streamId = null;
    this.body = body;
    this.length = body.length ?? this.info.defaults.length;
    this.history = [];
    this.pending = [];
    this.revealed = 0;
    this.promptCount = null;
    this.seed = null;
    this.started = performance.now();
    this.ref.final.hidden = true;
    this.ref.scrub.hidden = true;
    this.ref.forwards.textContent = "–";
    this.ref.tokensPerForward.textContent = "–";
    this.ref.generate.disabled = true;
    this.ref.stop.disabled = false;
    this.root.dataset.state = "running";
    this.showStats(null);
    this.say("Waiting for the first step…");
    this.ticker = setInterval(() => this.showTime(), 100);
  }

  /** Bring the cells into view when the form pushed them below the fold (a laptop's 768 px). */
  showCanvas() {
    const top = this.ref.cells.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.6) this.ref.progress.scrollIntoView({ block: "start" });
  }

  finish() {
    clearInterval(this.ticker);
    this.flush();
    this.showTime();
    this.controller = null;
    delete this.root.dataset.connection;
    this.ref.generate.disabled = false;
    this.ref.stop.disabled = true;
    this.root.dataset.state = "idle";
    if (this.history.length) {
      const scrubber = this.ref.scrubber;
      scrubber.max = String(this.history.length);
      scrubber.value = scrubber.max;
      this.ref.scrub.hidden = false;
      this.showScrubPosition(this.history.length);
    }
    this.onChange(this);
  }

  onStep(event) {
    if (this.promptCount === null) {
      // the prompt is whatever was neither masked nor revealed by the first event
      // fixed text around blanks has cells of its own (editor.js); a prompt alone is one cell
      this.promptCount = this.editor.layout ? 0 : Math.max(0, this.length - event.masked - event.changed.length);
      this.view.setPrompt(this.promptCount, this.body.prompt ?? "");
      this.say("Denoising…");
    }
    this.history.push(event);
    this.pending.push(event);
    this.frame ||= requestAnimationFrame(() => this.flush());
  }

  /** Draw what arrived since the last frame: a fast stream costs one repaint per frame. */
  flush() {
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    if (!this.pending.length) return;
    this.view.settle();
    for (const event of this.pending) this.view.apply(event);
    this.showStats(this.pending[this.pending.length - 1]);
    this.pending = [];
  }

  lastStep() {
    return this.history.length ? this.history[this.history.length - 1].step : 0;
  }

  showStats(event) {
    const steps = event?.steps ?? this.body?.steps ?? this.info.defaults.steps;
    this.ref.step.textContent = event ? `${event.step} / ${event.steps}` : `0 / ${steps}`;
    this.ref.t.textContent = event ? event.t.toFixed(3) : "1.000";
    this.ref.masked.textContent = String(event ? event.masked : this.length - (this.promptCount ?? 0));
    this.ref.progress.value = event ? event.step / event.steps : 0;
    this.ref.progress.setAttribute("aria-valuetext", `step ${event ? event.step : 0} of ${steps}`);
  }

  showTime() {
    const seconds = (performance.now() - this.started) / 1000;
    this.ref.elapsed.textContent = formatSeconds(seconds);
    const step = this.lastStep();
    this.ref.rate.textContent = step && seconds > 0 ? (step / seconds).toFixed(1) : "–";
  }

  onDone(done, raw) {
    this.flush();
    this.seed = seedOf(raw) ?? String(done.seed);
    this.ref.story.textContent = done.text || "(the model ended the story at once)";
    this.ref.seed.textContent = this.seed;
    const perForward = done.tokens_per_forward.toFixed(2);
    this.ref.forwards.textContent = String(done.forwards);
    this.ref.tokensPerForward.textContent = perForward;
    const storyTokens = this.view.collapseEnd() - this.view.leadCount();
    this.ref.summary.textContent =
      `${done.steps} steps · ${done.forwards} forwards (${perForward} tokens each) · ` +
      `${storyTokens} story tokens of ${done.length} positions · ${formatSeconds(done.elapsed_s)} on the server`;
    this.ref.replay.href = settingsUrl([this.replayValues()]);
    this.editor.onDone(done);
    this.ref.final.hidden = false;
    this.say(`Done: ${done.steps} steps in ${formatSeconds(done.elapsed_s)}.`, "done");
    return true;
  }

  /** The settings of the last finished story, with its seed: they write the same story again. */
  replayValues() {
    const values = this.values();
    return this.seed ? { ...values, seed: this.seed } : values;
  }

  scrubTo(upto) {
    if (this.running) return;
    this.view.replay(this.history, upto);
    this.editor.drawFixed(this.view);
    if (upto === this.history.length) this.view.collapseEnd();
    this.showScrubPosition(upto);
  }

  showScrubPosition(upto) {
    const event = upto > 0 ? this.history[upto - 1] : null;
    this.showStats(event);
    const steps = this.history[this.history.length - 1].steps;
    const text = event ? `step ${event.step} of ${steps}` : "before the first step";
    this.ref.scrubOutput.textContent = text;
    this.ref.scrubber.setAttribute("aria-valuetext", text);
  }
}
