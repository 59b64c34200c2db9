/**
 * `--set key.path=value` overrides: the value is read as a YAML scalar or flow
 * collection (`5`, `1e-4`, `true`, `null`, `[a, b]`, `text`), as it would be in
 * the file itself.
 */
import { parse as parseYaml } from "yaml";
import { UserError } from "../errors.ts";

export interface Override {
  /** the text as given, `key.path=value` */
  text: string;
  path: string[];
  value: unknown;
}

export function parseOverride(text: string): Override {
  const eq = text.indexOf("=");
  if (eq <= 0) {
    throw new UserError(`--set ${text}: expected key.path=value`);
  }
  const key = text.slice(0, eq).trim();
  const path = key.split(".");
  if (path.some((p) => p === "")) {
    throw new UserError(`--set ${text}: "${key}" is not a valid key path`);
  }
  const raw = text.slice(eq + 1);
  let value: unknown = raw;
  try {
    value = raw.trim() === "" ? null : parseYaml(raw);
  } catch {
    // not YAML (`a: b`, `[x`): the text itself, which a typed key then rejects by name
  }
  // `?` or `k: v` written without braces read as a mapping by YAML; mean the text
  if (isBlockMapping(value, raw)) value = raw;
  return { text, path, value };
}

function isBlockMapping(v: unknown, raw: string): boolean {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !raw.trim().startsWith("{");
}

export function parseOverrides(texts: readonly string[]): Override[] {
  return texts.map(parseOverride);
}

/** Set `value` at `path` in a plain object tree, creating mappings on the way. */
export function setPath(tree: Record<string, unknown>, o: Override): void {
  let node: Record<string, unknown> = tree;
  for (let i = 0; i < o.path.length - 1; i++) {
    const k = o.path[i];
    const next = node[k];
    if (next === undefined || next === null) {
      node[k] = {};
    } else if (typeof next !== "object" || Array.isArray(next)) {
      throw new UserError(
        `--set ${o.text}: ${o.path.slice(0, i + 1).join(".")} is not a mapping`,
      );
    }
    node = node[k] as Record<string, unknown>;
  }
  node[o.path[o.path.length - 1]] = o.value;
}
