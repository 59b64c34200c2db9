/**
 * A seeded, bounded fuzz of validate and convert: valid records of every
 * input format (the convert fixtures), mutated at random — keys deleted or
 * renamed, values replaced by any JSON, strings given lone surrogates,
 * values nested far too deep, numbers overflowing to 1e999, lines cut short,
 * stray bytes and invalid UTF-8 — are fed to both. Properties:
 *  - neither ever fails with anything but a UserError (no crash, no trace);
 *  - they report exactly the same problems on the same lines;
 *  - every record convert writes is a valid canonical record that tokenize
 *    accepts;
 * and through the CLI (a few files): exit 0 or 1 only, no stack trace, the
 * same bad lines from `validate` and `stage convert`.
 */
import fc from "fast-check";
import { deepStrictEqual, ok as assert } from "node:assert";
import { join } from "node:path";
import { convertFile, type ConvertResult, validateFile } from "../lib/data/convert.ts";
import { FORMAT_NAMES, type FormatName } from "../lib/data/formats/mod.ts";
import { checkConversation } from "../lib/data/schema.ts";
import { UserError } from "../lib/errors.ts";
import { readJsonlStrict, readJsonRecords } from "../lib/jsonl.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { tokenizeRecords } from "../lib/tokenizer/records.ts";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const tok = await ChatGLMTokenizer.load(join(FIX, "tiny"));

/** Valid raw records of each format, from the convert fixtures. */
const SEEDS = {} as Record<FormatName, unknown[]>;
for (const f of Deno.readDirSync(join(FIX, "convert"))) {
  const name = f.name.replace(/\.jsonl?$/, "");
  if (!(FORMAT_NAMES as readonly string[]).includes(name)) continue;
  const values: unknown[] = [];
  for await (const r of readJsonRecords(join(FIX, "convert", f.name))) values.push(r.value);
  SEEDS[name as FormatName] = values;
}
assert(FORMAT_NAMES.every((f) => SEEDS[f]?.length > 0), "a seed record for every format");

/** Stands for a number too large for a double; written out as 1e999 in the text. */
const BIG = "\u0000big\u0000";

type Edit =
  | { kind: "delete" | "surrogate" | "big"; at: number }
  | { kind: "replace"; at: number; value: unknown }
  | { kind: "rename"; at: number; key: string }
  | { kind: "nest"; at: number; levels: number; asArray: boolean };

type TextEdit =
  | { kind: "truncate" | "badUtf8"; at: number }
  | { kind: "insert"; at: number; text: string };

const edit: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({ kind: fc.constantFrom("delete", "surrogate", "big"), at: fc.nat() }),
  fc.record({
    kind: fc.constant("replace"),
    at: fc.nat(),
    value: fc.oneof(
      fc.jsonValue({ maxDepth: 2 }),
      fc.constantFrom(null, "", [], {}, 0, -1, true, "observation", "tool", "function_call"),
    ),
  }),
  fc.record({
    kind: fc.constant("rename"),
    at: fc.nat(),
    key: fc.constantFrom("role", "content", "from", "value", "tools", "loss", "x", "", "name"),
  }),
  fc.record({
    kind: fc.constant("nest"),
    at: fc.nat(),
    levels: fc.integer({ min: 1, max: 160 }),
    asArray: fc.boolean(),
  }),
) as fc.Arbitrary<Edit>;

const textEdit: fc.Arbitrary<TextEdit> = fc.oneof(
  fc.record({ kind: fc.constantFrom("truncate", "badUtf8"), at: fc.nat() }),
  fc.record({
    kind: fc.constant("insert"),
    at: fc.nat(),
    text: fc.constantFrom("{", "}", "[", "]", ",", ":", '"', "\\", "\\ud800", "\n", " ", "x"),
  }),
) as fc.Arbitrary<TextEdit>;

interface Spec {
  seed: number;
  edits: Edit[];
  textEdits: TextEdit[];
}

const spec: fc.Arbitrary<Spec> = fc.record({
  seed: fc.nat(),
  edits: fc.array(edit, { maxLength: 3 }),
  textEdits: fc.array(textEdit, { maxLength: 1 }),
});

/** Every node of a value: its parent and key (the root has none). */
function nodes(
  v: unknown,
): { parent?: Record<string, unknown> | unknown[]; key?: string | number }[] {
  const out: { parent?: Record<string, unknown> | unknown[]; key?: string | number }[] = [{}];
  const walk = (x: unknown) => {
    if (Array.isArray(x)) {
      x.forEach((y, i) => {
        out.push({ parent: x, key: i });
        walk(y);
      });
    } else if (typeof x === "object" && x !== null) {
      for (const [k, y] of Object.entries(x)) {
        out.push({ parent: x as Record<string, unknown>, key: k });
        walk(y);
      }
    }
  };
  walk(v);
  return out;
}

/** Apply the edits to a copy of `seed`; the result is JSON text (one line, no newline). */
function mutate(seed: unknown, edits: Edit[]): string {
  let root: unknown = structuredClone(seed);
  for (const e of edits) {
    const all = nodes(root);
    const { parent, key } = all[e.at % all.length];
    const get = () => parent === undefined ? root : (parent as Record<string, unknown>)[key!];
    const set = (v: unknown) => {
      if (parent === undefined) root = v;
      else (parent as Record<string, unknown>)[key!] = v;
    };
    switch (e.kind) {
      case "delete":
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else if (parent) delete parent[key as string];
        break;
      case "surrogate": {
        const v = get();
        set(typeof v === "string" ? v + "\udc00" : "\ud800");
        break;
      }
      case "big":
        set(BIG);
        break;
      case "replace":
        set(structuredClone(e.value));
        break;
      case "rename":
        if (parent && !Array.isArray(parent)) {
          const v = parent[key as string];
          delete parent[key as string];
          parent[e.key] = v;
        }
        break;
      case "nest": {
        let v = get();
        for (let i = 0; i < e.levels; i++) v = e.asArray ? [v] : { k: v };
        set(v);
        break;
      }
    }
  }
  return JSON.stringify(root).replaceAll(JSON.stringify(BIG), "1e999");
}

const enc = new TextEncoder();

/** The bytes of one line after the text edits. */
function lineBytes(text: string, edits: TextEdit[]): Uint8Array {
  let bytes = enc.encode(text);
  for (const e of edits) {
    const at = e.at % (bytes.length + 1);
    const insert = e.kind === "badUtf8"
      ? Uint8Array.of(0xff, 0xc3)
      : e.kind === "insert"
      ? enc.encode(e.text)
      : undefined;
    if (e.kind === "truncate") bytes = bytes.slice(0, at);
    else {
      const out = new Uint8Array(bytes.length + insert!.length);
      out.set(bytes.subarray(0, at));
      out.set(insert!, at);
      out.set(bytes.subarray(at), at + insert!.length);
      bytes = out;
    }
  }
  return bytes;
}

interface FileSpec {
  format: FormatName;
  explicit: boolean;
  array: boolean;
  records: Spec[];
}

const fileSpec: fc.Arbitrary<FileSpec> = fc.record({
  format: fc.constantFrom(...FORMAT_NAMES),
  explicit: fc.boolean(),
  array: fc.boolean(),
  records: fc.array(spec, { minLength: 1, maxLength: 12 }),
});

/** Write the file a spec describes; returns its path. */
async function writeFile(dir: string, f: FileSpec): Promise<string> {
  const seeds = SEEDS[f.format];
  const lines = f.records.map((r) =>
    lineBytes(mutate(seeds[r.seed % seeds.length], r.edits), r.textEdits)
  );
  const parts: Uint8Array[] = f.array
    ? [
      enc.encode("[\n"),
      ...lines.flatMap((l, i) => [l, enc.encode(i < lines.length - 1 ? ",\n" : "\n")]),
      enc.encode("]\n"),
    ]
    : lines.flatMap((l) => [l, enc.encode("\n")]);
  const path = join(dir, f.array ? "data.json" : "data.jsonl");
  const bytes = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    bytes.set(p, o);
    o += p.length;
  }
  await Deno.writeFile(path, bytes);
  return path;
}

const problemLines = (r: ConvertResult) =>
  r.problems.map((p) => `${r.line}: ${p.field}: ${p.message}`);

/** What the runs met, so the test can tell it exercised the bad cases it is about. */
const seen = { files: 0, problems: 0, written: 0, messages: new Set<string>() };

/** Validate and convert one file in-process and check the properties. */
async function check(dir: string, f: FileSpec): Promise<void> {
  const path = await writeFile(dir, f);
  const format = f.explicit ? f.format : "auto";
  const validated: string[] = [];
  await validateFile(path, { format, onBad: (r) => void validated.push(...problemLines(r)) });
  const converted: string[] = [];
  const out = join(dir, "out.jsonl");
  try {
    await convertFile(path, out, {
      format,
      skipInvalid: true,
      onBad: (r) => void converted.push(...problemLines(r)),
    });
  } catch (e) {
    // Only a broken JSON array, or nothing left to write, stops convert, and it says so.
    assert(
      e instanceof UserError &&
        /JSON structure is broken|holds no records|its one record is bad|records are bad/.test(
          e.message,
        ),
      String(e),
    );
    // A file without records: convert's error says what validate's problem says.
    if (/holds no records/.test(e.message)) {
      converted.push(...validated.filter((l) => l.includes("the file holds no records")));
    }
  }
  deepStrictEqual(converted, validated);
  seen.files++;
  seen.problems += validated.length;
  for (const p of validated) {
    const m = /(nested more than|number out of range|lone surrogate|invalid UTF-8|malformed JSON)/
      .exec(p);
    if (m) seen.messages.add(m[1]);
  }
  let written = 0;
  try {
    for await (const r of readJsonlStrict(out)) {
      deepStrictEqual(checkConversation(r.value), [], `written record ${r.line}`);
      written++;
    }
  } catch (e) {
    if (!(e instanceof UserError && /no such file/.test(e.message))) throw e;
  }
  if (written > 0) {
    let n = 0;
    for await (const _ of tokenizeRecords(tok, readJsonlStrict(out), out)) n++;
    deepStrictEqual(n, written);
    seen.written += written;
  }
  await Deno.remove(out).catch(() => {});
}

Deno.test("fuzz: validate and convert agree on every mutated record and never crash", async () => {
  await withTempDir(async (dir) => {
    await fc.assert(fc.asyncProperty(fileSpec, (f) => check(dir, f)), {
      seed: 20240615,
      numRuns: 400,
    });
  });
  // The runs met good records and every kind of bad one this fuzz is about.
  assert(seen.files === 400 && seen.written > 200 && seen.problems > 200, JSON.stringify(seen));
  deepStrictEqual([...seen.messages].sort(), [
    "invalid UTF-8",
    "lone surrogate",
    "malformed JSON",
    "nested more than",
    "number out of range",
  ]);
});

Deno.test("fuzz through the CLI: exit 0 or 1, no stack trace, the same bad lines", async () => {
  const samples = fc.sample(fileSpec, { seed: 7, numRuns: 3 });
  await withTempDir(async (dir) => {
    for (const f of samples) {
      const path = await writeFile(dir, f);
      const fmt = f.explicit ? ["--input-format", f.format] : [];
      const v = await runCli(["validate", path, ...fmt]);
      const c = await runCli([
        "stage",
        "convert",
        "--in",
        path,
        "--out",
        join(dir, "out.jsonl"),
        "--skip-invalid",
        ...(f.explicit ? ["--format", f.format] : []),
      ]);
      for (const r of [v, c]) {
        assert(r.code === 0 || r.code === 1, `exit ${r.code}: ${r.err}`);
        assert(!/\n\s+at |Uncaught|RangeError|TypeError/.test(r.out + r.err), r.out + r.err);
      }
      // FILE:LINE: lines (not the summary, FILE: N records ...).
      const bad = (text: string) =>
        text.split("\n").filter((l) => l.startsWith(path) && /^:\d+:/.test(l.slice(path.length)))
          .sort();
      deepStrictEqual(bad(c.err), bad(v.out));
      await Deno.remove(join(dir, "out.jsonl")).catch(() => {});
    }
  });
});
