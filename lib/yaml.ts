/**
 * YAML files the user writes (training configs, pipeline files), parsed with
 * the line of every key and list item, so that a problem found later can be
 * reported as `FILE:LINE: key: message`.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Document, Node as YamlNode } from "yaml";
import { located, UserError } from "./errors.ts";

export interface ParsedYaml {
  doc: Document;
  /** The document as plain JavaScript values. */
  value: unknown;
  /** Line of each key path (`training_args.max_steps`, `steps.train.args.0`). */
  lines: Map<string, number>;
}

/**
 * How many alias expansions a document may need: an "alias bomb" (anchors
 * that refer to anchors, nine times over) expands to billions of nodes.
 * Hand-written configs and pipelines use a few at most.
 */
export const MAX_YAML_ALIASES = 100;

/**
 * Parse `text` (read from `path`); a syntax error is a UserError at its line,
 * and so is a document that needs more than MAX_YAML_ALIASES alias expansions.
 */
export function parseYaml(text: string, path: string): ParsedYaml {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const msg = e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "");
    throw new UserError(located(path, e.linePos?.[0].line, undefined, `invalid YAML: ${msg}`));
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (e) {
    const msg = (e as Error).message;
    throw new UserError(
      located(
        path,
        firstAliasLine(text),
        undefined,
        /alias count/i.test(msg)
          ? `invalid YAML: its aliases (*name) expand to too many nodes (more than ` +
            `${MAX_YAML_ALIASES} expansions; a YAML "alias bomb"?); write the values out instead`
          : `invalid YAML: ${msg.split("\n")[0]}`,
      ),
    );
  }
  const lines = new Map<string, number>();
  const lineOf = (n: unknown) => {
    const r = (n as YamlNode | null)?.range;
    return r ? lineCounter.linePos(r[0]).line : undefined;
  };
  const walk = (node: unknown, prefix: string) => {
    if (isMap(node)) {
      for (const pair of node.items) {
        const k = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
        const key = prefix ? `${prefix}.${k}` : k;
        const l = lineOf(pair.key);
        if (l !== undefined) lines.set(key, l);
        walk(pair.value, key);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => {
        const key = `${prefix}.${i}`;
        const l = lineOf(item);
        if (l !== undefined) lines.set(key, l);
        walk(item, key);
      });
    }
  };
  walk(doc.contents, "");
  return { doc, value, lines };
}

/** The line of the first `*alias` in the text, for a message about aliases. */
function firstAliasLine(text: string): number | undefined {
  const i = text.search(/(^|[\s,[{:-])\*[^\s,\]}]/m);
  return i < 0 ? undefined : text.slice(0, i + 1).split("\n").length;
}

/** The line of `key`, or of the nearest enclosing key that has one. */
export function lineOfKey(lines: ReadonlyMap<string, number>, key: string): number | undefined {
  let k = key;
  let line = lines.get(k);
  while (line === undefined && k.includes(".")) {
    k = k.slice(0, k.lastIndexOf("."));
    line = lines.get(k);
  }
  return line;
}
