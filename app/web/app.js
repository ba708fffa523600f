// The page: loads /info and the sampler's fields (GET /openapi.json), builds one panel per settings
// group in the URL, runs them side by side.

import { ApiError, KEY_NEEDED, fetchInfo, fetchOpenApi, setApiKey } from "./api.js";
import { FIELDS, Panel, settingsUrl, useSamplerFields } from "./panel.js";
import { samplerFields } from "./sampler_fields.js";

const MAX_PANELS = 4; // browsers open at most 6 connections per host; keep some for /info
const LOAD_RETRY_MS = 1000;
const ENGINE_POLL_MS = 1500; // the engine line's refresh while the page is visible

const panels = [];
const els = {
  panels: document.getElementById("panels"),
  template: document.getElementById("panel-template"),
  server: document.getElementById("server"),
  engine: document.getElementById("engine"),
  add: document.getElementById("add"),
  runAll: document.getElementById("run-all"),
  share: document.getElementById("share"),
  keyForm: document.getElementById("key-form"),
  keyInput: document.getElementById("api-key"),
  keyMessage: document.getElementById("key-message"),
};
const KEY_GIVEN = "storydiff:key-given";

/**
 * Settings groups from the query string: `steps=64&seed=3` is one panel, `1.remasking=random&
 * 2.remasking=low_confidence` two; `run=1` starts them on load.
 */
function settingsFromUrl(search) {
  const params = new URLSearchParams(search);
  const groups = new Map();
  for (const [key, value] of params) {
    const match = /^(\d+)\.(\w+)$/.exec(key);
    const [index, field] = match ? [Number(match[1]), match[2]] : [1, key];
    if (!FIELDS.includes(field)) continue;
    if (!groups.has(index)) groups.set(index, {});
    groups.get(index)[field] = value;
  }
  const ordered = [...groups.keys()].sort((a, b) => a - b).map((i) => groups.get(i));
  return { groups: ordered.slice(0, MAX_PANELS), run: params.get("run") === "1" };
}

function describeServer(info) {
  const millions = (info.parameters / 1e6).toFixed(1);
  els.server.textContent =
    `${info.model} · ${info.device} (${info.dtype}) · ${millions}M parameters · ` +
    `max length ${info.max_length}`;
  describeEngine(info.engine);
}

function describeEngine(engine) {
  els.engine.textContent =
    `engine: ${engine.active} active, ${engine.waiting} waiting (batch ≤ ${engine.max_batch})`;
  els.engine.dataset.active = String(engine.active);
}

const enginePoll = { timer: 0, busy: false };

/**
 * Show the engine's counters now, then every ENGINE_POLL_MS while the page is visible: other tabs'
 * and other clients' requests count too, and a stopped one leaves the engine a step later.
 */
async function refreshEngine() {
  clearTimeout(enginePoll.timer);
  if (enginePoll.busy) return; // the answer on its way schedules the next look
  enginePoll.busy = true;
  try {
    describeEngine((await fetchInfo()).engine);
  } catch {
    els.engine.textContent = "engine: unreachable";
  } finally {
    enginePoll.busy = false;
  }
  if (document.visibilityState === "visible") enginePoll.timer = setTimeout(refreshEngine, ENGINE_POLL_MS);
}

/** A hidden tab asks nothing; it looks again as soon as it is shown. */
function onVisibilityChange() {
  if (document.visibilityState === "visible") refreshEngine();
  else clearTimeout(enginePoll.timer);
}

function layout() {
  panels.forEach((panel, i) => panel.setNumber(i + 1, panels.length > 1));
  els.add.disabled = panels.length >= MAX_PANELS;
  els.panels.dataset.count = String(panels.length);
  updateShare();
}

function updateShare() {
  els.share.hidden = panels.length < 2;
  els.share.href = settingsUrl(panels.map((panel) => panel.replayValues()));
}

function onPanelChange() {
  updateShare();
  refreshEngine();
}

function addPanel(info, values = {}) {
  const panel = new Panel(els.template, { info, onChange: onPanelChange, onRemove: removePanel });
  panel.setValues(values);
  panels.push(panel);
  els.panels.append(panel.root);
  layout();
  return panel;
}

function removePanel(panel) {
  panel.stop();
  panels.splice(panels.indexOf(panel), 1);
  panel.root.remove();
  layout();
  panels[panels.length - 1]?.ref.generate.focus();
}

/** A second look at the last panel's settings: the other remasking strategy, same everything else. */
function addComparison(info) {
  const last = panels[panels.length - 1].values();
  const other = last.remasking === "random" ? "low_confidence" : "random";
  const panel = addPanel(info, { ...last, remasking: other });
  panel.inputs.remasking.focus();
}

/** The key form, shown while the server answers 401; a key entered is kept by api.js and sent from then on. */
function askForKey(event) {
  els.keyMessage.textContent = `${event.detail} The page keeps it for this tab only.`;
  els.keyForm.hidden = false;
  els.keyInput.focus();
}

function useKey(event) {
  event.preventDefault();
  setApiKey(els.keyInput.value.trim());
  els.keyInput.value = "";
  els.keyForm.hidden = true;
  window.dispatchEvent(new Event(KEY_GIVEN));
}

async function loadInfo() {
  for (;;) {
    try {
      return await fetchInfo();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        els.server.textContent = "Waiting for an API key…";
        await new Promise((resolve) => window.addEventListener(KEY_GIVEN, resolve, { once: true }));
        continue;
      }
      const reason = err instanceof ApiError ? err.message : String(err);
      els.server.textContent = `Waiting for the model… (${reason})`;
      await new Promise((resolve) => setTimeout(resolve, LOAD_RETRY_MS));
    }
  }
}

async function main() {
  const info = await loadInfo();
  useSamplerFields(samplerFields(await fetchOpenApi()));
  describeServer(info);
  const { groups, run } = settingsFromUrl(location.search);
  for (const values of groups.length ? groups : [{}]) addPanel(info, values);
  els.add.addEventListener("click", () => addComparison(info));
  els.runAll.addEventListener("click", () => panels.forEach((panel) => panel.run()));
  // leaving cancels the stories: a dropped connection would keep them for the server's resume grace
  window.addEventListener("pagehide", () => panels.forEach((panel) => panel.stop()));
  els.add.disabled = panels.length >= MAX_PANELS;
  els.runAll.disabled = false;
  document.body.dataset.ready = "true";
  document.addEventListener("visibilitychange", onVisibilityChange);
  enginePoll.timer = setTimeout(refreshEngine, ENGINE_POLL_MS);
  if (run) panels.forEach((panel) => panel.run());
}

window.addEventListener(KEY_NEEDED, askForKey);
els.keyForm.addEventListener("submit", useKey);
main();
