/**
 * The limits every record meets in validate, convert and tokenize alike
 * (lib/data/limits.ts): nesting depth, numbers a double holds, valid Unicode.
 * Each is reported as FILE:LINE: field: message, never as a crash, and the
 * three commands agree on it.
 */
import { parseKeepingNumbers } from "../lib/data/pynumber.ts";
import { deepStrictEqual, match, ok as assert, rejects, throws } from "node:assert";
import { join } from "node:path";
import { convertFile, type ConvertResult, validateFile } from "../lib/data/convert.ts";
import { checkJsonValue, MAX_DEPTH } from "../lib/data/limits.ts";
import { parsePyLiteral, parseToolCall, PyLiteralError } from "../lib/data/pyliteral.ts";
import { article } from "../lib/data/schema.ts";
import { UserError } from "../lib/errors.ts";
import { readJsonlStrict } from "../lib/jsonl.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { tokenizeRecords } from "../lib/tokenizer/records.ts";
import { runCli, withTempDir } from "./test_util.ts";

const TINY = new URL("./fixtures/tiny", import.meta.url).pathname;
const tok = await ChatGLMTokenizer.load(TINY);

/** `{"a": {"a": ... 1}}` with `levels` objects. */
const nested = (levels: number) => '{"a":'.repeat(levels) + "1" + "}".repeat(levels);

/** A canonical record whose tool call's parameters are `params` (JSON text). */
const toolRecord = (params: string) =>
  `{"conversations": [{"role": "user", "content": "q"}, ` +
  `{"role": "tool", "name": "f", "parameters": ${params}, "observation": "ok"}, ` +
  `{"role": "assistant", "content": "a"}]}`;

/** The problems validate reports, convert reports, and tokenize's error, for one file. */
async function allThree(dir: string, lines: string[]) {
  const file = join(dir, "data.jsonl");
  await Deno.writeTextFile(file, lines.join("\n") + "\n");
  const fmt = (r: ConvertResult) => r.problems.map((p) => `${r.line}: ${p.field}: ${p.message}`);
  const validated: string[] = [];
  await validateFile(file, { onBad: (r) => void validated.push(...fmt(r)) });
  const converted: string[] = [];
  await convertFile(file, join(dir, "out.jsonl"), {
    skipInvalid: true,
    onBad: (r) => void converted.push(...fmt(r)),
  }).catch((e) => {
    // every record bad: nothing to write, which convert says
    if (!(e instanceof UserError && /its one record is bad|records are bad/.test(e.message))) {
      throw e;
    }
  });
  const tokenized: string[] = [];
  for (const [i, line] of lines.entries()) {
    const one = join(dir, "one.jsonl");
    await Deno.writeTextFile(one, line + "\n");
    try {
      const records = readJsonlStrict(one, parseKeepingNumbers);
      for await (const _ of tokenizeRecords(tok, records, one)) { /* ok */ }
    } catch (e) {
      assert(e instanceof UserError, `tokenize crashed: ${e}`);
      tokenized.push(...e.message.split("\n").map((l) => l.replace(`${one}:1`, `${i + 1}`)));
    }
  }
  return { validated, converted, tokenized };
}

Deno.test("nesting: one limit of 100 levels for validate, convert and tokenize, by field", async () => {
  await withTempDir(async (dir) => {
    // The record, its conversations list, the tool message and the parameters are 4 levels.
    const ok = toolRecord(nested(MAX_DEPTH - 3));
    const over = toolRecord(nested(MAX_DEPTH - 2));
    const deep = toolRecord(nested(3000));
    const r = await allThree(dir, [ok, over, deep]);
    const msg =
      "conversations[1].parameters: nested more than 100 levels of arrays and objects deep (the limit for a record)";
    deepStrictEqual(r.validated, [`2: ${msg}`, `3: ${msg}`]);
    deepStrictEqual(r.converted, r.validated);
    deepStrictEqual(r.tokenized, r.validated);
    // The record at the limit converted and tokenizes.
    const out = (await Deno.readTextFile(join(dir, "out.jsonl"))).trim().split("\n");
    deepStrictEqual(out.length, 1);
    // Through the CLI: located lines, exit 1, no "Maximum call stack size exceeded".
    const v = await runCli(["validate", join(dir, "data.jsonl")]);
    assert(v.code === 1 && !/Maximum call stack|\n\s+at /.test(v.out + v.err), v.err);
    match(v.out, /data\.jsonl:3: conversations\[1\]\.parameters: nested more than 100 levels/);
  });
});

Deno.test("nesting: a native tool call's Python literal and runs of signs are bounded too", () => {
  throws(() => parsePyLiteral("[".repeat(3000) + "]".repeat(3000)), PyLiteralError);
  throws(
    () => parseToolCall(`tool_call(a=${"(".repeat(5000)}1${")".repeat(5000)})`),
    /nested more than 100 levels deep/,
  );
  deepStrictEqual(parsePyLiteral("-".repeat(100_000) + "1"), 1);
  deepStrictEqual(parsePyLiteral("[".repeat(MAX_DEPTH) + "]".repeat(MAX_DEPTH)), nestedList(100));
});

function nestedList(levels: number): unknown {
  let v: unknown = [];
  for (let i = 1; i < levels; i++) v = [v];
  return v;
}

Deno.test("a number kept as its literal is a number: no level of nesting; ints up to Python's 4300 digits", async () => {
  await withTempDir(async (dir) => {
    // 1.0 is kept as its literal; at the deepest level a value may be, it is fine, as 1 is
    const deep = (x: string) =>
      toolRecord(`{"a": ${"[".repeat(MAX_DEPTH - 5)}${x}${"]".repeat(MAX_DEPTH - 5)}}`);
    const r = await allThree(dir, [
      deep("1"),
      deep("1.0"),
      toolRecord(`{"n": ${"9".repeat(4301)}}`),
      toolRecord(`{"n": ${"9".repeat(4300)}}`),
    ]);
    deepStrictEqual(r.validated, [
      "3: conversations[1].parameters.n: an integer of 4301 digits (Python's json.loads reads at most 4300)",
    ]);
    deepStrictEqual(r.converted, r.validated);
    deepStrictEqual(r.tokenized, r.validated);
  });
});

Deno.test("numbers out of range (1e999) are bad records in validate, convert and tokenize", async () => {
  await withTempDir(async (dir) => {
    const r = await allThree(dir, [
      toolRecord('{"n": 1e999, "m": [-1e400]}'),
      toolRecord('{"n": 1.7e308}'),
    ]);
    const msg = "number out of range (larger than a 64-bit float holds, about 1.8e308)";
    deepStrictEqual(r.validated, [
      `1: conversations[1].parameters.n: ${msg}`,
      `1: conversations[1].parameters.m[0]: ${msg}`,
    ]);
    deepStrictEqual(r.converted, r.validated);
    deepStrictEqual(r.tokenized, r.validated);
    // Nothing became null: the good record is written as it was, its literal kept.
    match(await Deno.readTextFile(join(dir, "out.jsonl")), /"n":1\.7e308/);
  });
});

Deno.test("a lone surrogate is a bad record, not a silent U+FFFD", async () => {
  await withTempDir(async (dir) => {
    const r = await allThree(dir, [
      '{"conversations": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "a"}]}',
      '{"conversations": [{"role": "user", "content": "ok \\ud83d\\ude00"}, {"role": "assistant", "content": "a"}]}',
      toolRecord('{"\\udc00key": 1}'),
    ]);
    deepStrictEqual(r.validated, [
      "1: conversations[0].content: holds a lone surrogate (\\ud800) at character 3, which is not Unicode text (half of an escaped pair?)",
      '3: conversations[1].parameters["\\udc00key"]: the key holds a lone surrogate (\\udc00) at character 0, which is not Unicode text (half of an escaped pair?)',
    ]);
    deepStrictEqual(r.converted, r.validated);
    deepStrictEqual(r.tokenized, r.validated);
  });
});

Deno.test('messages say "a user message", "an assistant message"', async () => {
  deepStrictEqual(
    ["user", "assistant", "system", "tool", "observation", "unit"].map(article),
    ["a user", "an assistant", "a system", "a tool", "an observation", "a unit"],
  );
  await withTempDir(async (dir) => {
    const r = await allThree(dir, [
      '{"conversations": [{"role": "user", "content": "q", "x": 1}, {"role": "assistant", "content": "a"}]}',
    ]);
    deepStrictEqual(r.validated, [
      "1: conversations[0].x: unknown key for a user message; allowed: role, content, loss",
    ]);
  });
});

Deno.test("checkJsonValue: depth counts the record itself; problems are capped per record", () => {
  let v: unknown = 1;
  for (let i = 0; i < MAX_DEPTH; i++) v = [v];
  deepStrictEqual(checkJsonValue(v), []);
  deepStrictEqual(checkJsonValue([v]).length, 1);
  const many = Array.from({ length: 1000 }, () => Infinity);
  // 20 listed, then one line that says more are not
  deepStrictEqual(checkJsonValue({ many }).length, 21);
});

Deno.test("tokenize names the record's file and line for every limit", async () => {
  await withTempDir(async (dir) => {
    const f = join(dir, "c.jsonl");
    await Deno.writeTextFile(f, toolRecord('{"a": 1}') + "\n" + toolRecord(nested(500)) + "\n");
    await rejects(
      async () => {
        for await (const _ of tokenizeRecords(tok, readJsonlStrict(f), f)) { /* read */ }
      },
      (e: Error) =>
        e instanceof UserError &&
        e.message === `${f}:2: conversations[1].parameters: nested more than 100 levels of ` +
            "arrays and objects deep (the limit for a record)",
    );
  });
});

Deno.test("a record with more problems than are listed says so", () => {
  const problems = checkJsonValue({ tools: Array(25).fill("\ud800") });
  deepStrictEqual(problems.length, 21);
  deepStrictEqual(problems[19].field, "tools[19]");
  deepStrictEqual(problems[20], {
    field: "",
    message: "more problems past these 20 are not listed",
  });
  deepStrictEqual(checkJsonValue({ tools: Array(20).fill("\ud800") }).length, 20);
});
