// The sampler's fields, built from their one declaration: `SamplerSettings` in GET /openapi.json
// (app/diffusion/sampler_settings.py). Its order, labels (x-title), hints (x-hint), options (enum),
// bounds (minimum, maximum) and "null means off" (a nullable field; x-off is its placeholder) make
// the form, so a new sampler setting needs no edit here.

const SCHEMA_NAME = "SamplerSettings";

/**
 * @typedef {{name: string, title: string, hint: string, kind: "integer"|"number"|"enum"|"boolean",
 *   options: string[], min?: number, max?: number, step?: number, nullable: boolean, off?: string}} SamplerField
 */

/** The sampler's fields, in their declared order, from an OpenAPI document. */
export function samplerFields(openapi) {
  const schemas = openapi.components.schemas;
  const resolve = (schema) => (schema.$ref ? schemas[schema.$ref.split("/").pop()] : schema);
  return Object.entries(schemas[SCHEMA_NAME].properties).map(([name, property]) => {
    const kinds = (property.anyOf ?? [property]).map(resolve);
    const value = kinds.find((kind) => kind.type !== "null") ?? {};
    const kind = value.enum ? "enum" : value.type;
    return {
      name,
      title: property["x-title"] ?? property.title ?? name,
      hint: property["x-hint"] ?? "",
      kind,
      options: value.enum ?? [],
      min: value.minimum ?? value.exclusiveMinimum,
      max: value.maximum ?? value.exclusiveMaximum,
      step: kind === "integer" ? 1 : property["x-step"] ?? "any",
      nullable: kinds.some((k) => k.type === "null"),
      off: property["x-off"],
    };
  });
}

function control(field) {
  if (field.kind === "enum") {
    const select = document.createElement("select");
    for (const value of field.options) select.append(new Option(value.replaceAll("_", " "), value));
    return select;
  }
  const input = document.createElement("input");
  if (field.kind === "boolean") {
    input.type = "checkbox";
    return input;
  }
  input.type = "number";
  input.inputMode = field.kind === "integer" ? "numeric" : "decimal";
  input.step = String(field.step);
  if (field.min !== undefined) input.min = String(field.min);
  if (field.max !== undefined) input.max = String(field.max);
  if (field.off) input.placeholder = field.off;
  return input;
}

/** One field of the form: label, control, hint and the error the server may name it in. */
export function fieldElement(field) {
  const root = document.createElement("div");
  root.className = "field";
  root.dataset.field = field.name;
  const label = document.createElement("label");
  label.textContent = field.title;
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = field.hint;
  const error = document.createElement("p");
  error.className = "error";
  error.setAttribute("aria-live", "polite");
  root.append(label, control(field), hint, error);
  return root;
}

/** A field's value as the form shows it, from a settings object (the defaults, or a preset's). */
export function shownValue(field, value) {
  if (field.kind === "boolean") return value ? "true" : "false";
  return value == null ? "" : String(value);
}

/**
 * A field's text as the request body wants it: undefined leaves the field out (the default applies);
 * null turns a nullable field off.
 */
export function bodyValue(field, text) {
  if (field.kind === "boolean") return text === "true";
  if (field.kind === "enum") return text || undefined;
  if (text !== "") return Number(text); // 1.5 steps: sent as is, the server says why not
  return field.nullable ? null : undefined;
}
