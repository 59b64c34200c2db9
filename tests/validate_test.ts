import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { type ConvertResult, validateFile } from "../lib/data/convert.ts";
import { checkConversation } from "../lib/data/schema.ts";
import { join } from "node:path";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/validate/", import.meta.url).pathname;

async function problemsOf(path: string) {
  const bad: ConvertResult[] = [];
  const report = await validateFile(path, { onBad: (r) => void bad.push(r) });
  const found = bad.flatMap((r) => r.problems.map((p) => `${r.line}: ${p.field}`));
  return { report, found, bad };
}

/** Every kind of bad record in bad.jsonl (a BOM, CRLF line ends, blank lines), by line and field. */
const EXPECTED = [
  "3: ", // malformed JSON (unclosed)
  "4: conversations", // not an array
  "5: conversations", // empty
  "6: conversations", // missing
  "7: conversations", // no assistant turn
  "8: conversations[1].content", // content not a string
  "9: conversations[0].content", // content missing
  "10: conversations[2].role", // system after user
  "11: conversations[1].role", // two systems
  "12: conversations[1].role", // unknown role
  "13: conversations[0].role", // role missing
  "14: conversations[2].name", // tool without name
  "15: conversations[2].parameters", // tool without parameters
  "16: conversations[2].parameters", // parameters an array
  "17: conversations[2].observation", // tool without observation
  "18: conversations[1].loss", // loss not boolean
  "19: conversations[1].weight", // unknown message key
  "20: tools", // tools not an array
  "21: conversations[1]", // message not an object
  "22: ", // record is an array
  "23: conversations", // everything loss: false
  "24: conversations[1].name", // tool name not a string
  "25: conversations[1].name", // tool name empty
  "26: conversations[1].role", // observation without a tool call
  "27: conversations[1].metadata", // native tool call without observation
  "28: conversations[1].content", // native tool call that is not tool_call(...)
  "29: ", // invalid UTF-8
  "30: ", // a record of another format
  "31: conversations[0].role", // role not a string
  "33: conversations[2].loss", // unknown key on an observation message
  "34: conversations[0].content", // content null
  "35: ", // record is a string
  "36: ", // trailing garbage after the JSON
  "37: conversations[1].parameters", // parameters null
  "38: conversations[1].extra", // several problems in one record, all reported
  "38: conversations[1].loss",
  "38: conversations[1].content",
  "38: conversations[2].role",
];

Deno.test("validate reports every bad record of bad.jsonl at its line and field", async () => {
  const { report, found, bad } = await problemsOf(`${FIX}bad.jsonl`);
  assertEquals(found, EXPECTED);
  assertEquals(report.records, 37); // 39 lines, two blank
  assertEquals(report.badRecords, 35);
  assertEquals(report.problems, EXPECTED.length);
  assert(bad.find((r) => r.line === 29)!.problems[0].message.startsWith("invalid UTF-8"));
  assert(bad.find((r) => r.line === 3)!.problems[0].message.startsWith("malformed JSON"));
});

Deno.test("a clean file has no problems", async () => {
  const { report, found } = await problemsOf(`${FIX}good.jsonl`);
  assertEquals(found, []);
  assertEquals(report, { file: `${FIX}good.jsonl`, records: 2, badRecords: 0, problems: 0 });
});

Deno.test("a JSON array: element problems at the element's line, the trailing comma at its own", async () => {
  const { found, report } = await problemsOf(`${FIX}trailing_comma.json`);
  assertEquals(found, ["3: conversations[1].role", "9: "]);
  // The trailing comma is a problem of the file, not a fourth record.
  assertEquals([report.records, report.badRecords, report.problems], [3, 1, 2]);
});

Deno.test("a 20 MB line is read and checked, and later lines keep their numbers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const big = JSON.stringify({
      conversations: [{ role: "user", content: "长".repeat(7_000_000) }, {
        role: "helper",
        content: "x",
      }],
    });
    assert(new TextEncoder().encode(big).length > 20e6);
    const ok =
      '{"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}';
    await Deno.writeTextFile(`${dir}/big.jsonl`, [ok, big, ok, '{"conversations": 1}'].join("\n"));
    const { found, report } = await problemsOf(`${dir}/big.jsonl`);
    assertEquals(found, ["2: conversations[1].role", "4: conversations"]);
    assertEquals(report.records, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("schema: a valid record with every kind of message, and the checks that need a whole record", () => {
  assertEquals(
    checkConversation({
      tools: [{ name: "f" }],
      conversations: [
        { role: "system", content: "s" },
        { role: "user", content: "u" },
        { role: "assistant", content: "", loss: false },
        { role: "tool", name: "f", parameters: { a: [1] }, observation: null, loss: true },
        { role: "assistant", content: "a" },
      ],
    }),
    [],
  );
  assertEquals(
    checkConversation({
      conversations: [{ role: "user", content: "u" }, {
        role: "tool",
        name: "f",
        parameters: {},
        observation: 1,
      }],
    }),
    [],
    "a tool turn alone is something to learn",
  );
  assertEquals(
    checkConversation({
      conversations: [{ role: "user", content: "u" }, { role: "assistant", content: "a" }],
      id: 1,
    }),
    [
      { field: "id", message: `unknown key; a record has "conversations" and optionally "tools"` },
    ],
  );
});

Deno.test("CLI: exit codes, text / github / json reports, never a stack trace", async () => {
  const good = await runCli(["validate", `${FIX}good.jsonl`]);
  assertEquals(good.code, 0, good.err);
  assertEquals(good.out.trim(), `${FIX}good.jsonl: 2 records, 0 bad, 0 problems — ok`);

  const text = await runCli(["validate", `${FIX}bad.jsonl`, `${FIX}good.jsonl`]);
  assertEquals(text.code, 1);
  const lines = text.out.trimEnd().split("\n");
  assertEquals(lines.length, EXPECTED.length + 3);
  assertEquals(lines[0].startsWith(`${FIX}bad.jsonl:3: malformed JSON: `), true);
  assert(
    lines.includes(
      `${FIX}bad.jsonl:15: conversations[2].parameters: missing; a tool message needs an object of call arguments`,
    ),
  );
  assertEquals(lines.at(-1), "total: 2 files, 39 records, 35 bad, 38 problems");
  assert(!/\n\s+at /.test(text.out + text.err), "no stack trace");

  const gh = await runCli(["validate", "--format", "github", `${FIX}trailing_comma.json`]);
  assertEquals(gh.code, 1);
  assertEquals(gh.out.split("\n").slice(0, 2), [
    `::error file=${FIX}trailing_comma.json,line=3::conversations[1].role: unknown role "assistent"; expected one of system, user, assistant, tool`,
    `::error file=${FIX}trailing_comma.json,line=9::trailing comma after the last element of the array`,
  ]);

  const json = await runCli(["validate", "--format", "json", `${FIX}bad.jsonl`]);
  assertEquals(json.code, 1);
  const doc = JSON.parse(json.out);
  assertEquals(doc.ok, false);
  assertEquals(doc.total, { files: 1, records: 37, badRecords: 35, problems: EXPECTED.length });
  assertEquals(
    doc.files[0].bad.flatMap((b: { line: number; problems: { field: string }[] }) =>
      b.problems.map((p) => `${b.line}: ${p.field}`)
    ),
    EXPECTED,
  );

  // A file that cannot be read fails as a file; the files after it are still checked.
  const missing = await runCli(["validate", `${FIX}nope.jsonl`, `${FIX}good.jsonl`]);
  assertEquals(missing.code, 1);
  assertEquals(missing.out.trimEnd().split("\n"), [
    `${FIX}nope.jsonl: no such file`,
    `${FIX}nope.jsonl: 0 records, 0 bad, 1 problem — FAILED`,
    `${FIX}good.jsonl: 2 records, 0 bad, 0 problems — ok`,
    "total: 2 files, 2 records, 0 bad, 1 problem",
  ]);
  const missingJson = await runCli(["validate", "--format", "json", `${FIX}nope.jsonl`]);
  assertEquals(JSON.parse(missingJson.out).files[0].bad[0].problems[0].message, "no such file");
  const twice = await runCli(["validate", "-", "-"]);
  assertEquals(twice.code, 2);
  assert(twice.err.includes("- (standard input) may be named once"), twice.err);
  // A role named like an Object property is an unknown role, not a crash.
  const dir = await Deno.makeTempDir();
  const proto = `${dir}/proto.jsonl`, share = `${dir}/share.jsonl`;
  await Deno.writeTextFile(
    proto,
    '{"messages":[{"role":"constructor","content":"q"},{"role":"assistant","content":"a"}]}\n',
  );
  await Deno.writeTextFile(
    share,
    '{"conversations":[{"from":"toString","value":"q"},{"from":"gpt","value":"a"}]}\n',
  );
  // Control characters from the data are escaped: one line per problem, none forged.
  const forged = `${dir}/forged.jsonl`;
  await Deno.writeTextFile(
    forged,
    JSON.stringify({
      conversations: [
        { role: "user", content: "q", "x\n/tmp/f.jsonl:9: fine\u001b[2K": 1 },
        { role: "assistant\nmore", content: "a" },
      ],
    }) + "\n",
  );
  for (const format of ["text", "github"]) {
    const f = await runCli(["validate", "--format", format, forged]);
    const lines = f.out.trimEnd().split("\n");
    assertEquals(lines.length, 3, f.out);
    assert(lines.slice(0, 2).every((l) => l.includes(forged) && !l.includes("\u001b")), f.out);
    assert(lines[0].includes("x\\n/tmp/f.jsonl:9: fine\\u001b[2K"), f.out);
  }
  const p = await runCli(["validate", proto, share]);
  assertEquals(p.code, 1);
  assert(p.out.includes(`${proto}:1: messages[0].role: unknown role "constructor"`), p.out);
  assert(p.out.includes(`${share}:1: conversations[0].from: unknown speaker "toString"`), p.out);
  await Deno.remove(dir, { recursive: true });
  const badFlag = await runCli(["validate", "--format", "xml", `${FIX}good.jsonl`]);
  assertEquals(badFlag.code, 1);
  assert(badFlag.err.includes('--format: unknown report format "xml"'), badFlag.err);
  assert(!/\n\s+at /.test(missing.err + badFlag.err + p.err));

  const check = await runCli(["stage", "convert", "--in", `${FIX}bad.jsonl`, "--check"]);
  assertEquals(check.code, 1);
  assertEquals(check.out.trimEnd().split("\n").length, EXPECTED.length + 1);
});

Deno.test("CLI: an empty data file is an error unless --allow-empty; counts are singular for 1", async () => {
  await withTempDir(async (dir) => {
    const empty = join(dir, "empty.jsonl");
    const array = join(dir, "empty.json");
    const one = join(dir, "one.jsonl");
    await Deno.writeTextFile(empty, "");
    await Deno.writeTextFile(array, "[]\n");
    await Deno.writeTextFile(
      one,
      '{"conversations": [{"role": "user", "content": "u"}, {"role": "assistent", "content": "a"}]}\n',
    );
    const r = await runCli(["validate", empty, array]);
    assertEquals(r.code, 1, r.err);
    assertEquals(r.out.trimEnd().split("\n"), [
      `${empty}:1: the file holds no records (validate --allow-empty accepts an empty file)`,
      `${empty}: 0 records, 0 bad, 1 problem — FAILED`,
      `${array}:1: the file holds no records (validate --allow-empty accepts an empty file)`,
      `${array}: 0 records, 0 bad, 1 problem — FAILED`,
      "total: 2 files, 0 records, 0 bad, 2 problems",
    ]);
    const gh = await runCli(["validate", "--format", "github", empty]);
    assertEquals(
      gh.out.split("\n")[0],
      `::error file=${empty},line=1::the file holds no records (validate --allow-empty accepts an empty file)`,
    );
    const allowed = await runCli(["validate", "--allow-empty", empty, array]);
    assertEquals(allowed.code, 0, allowed.err);
    assertEquals(
      allowed.out.trimEnd().split("\n").at(-1),
      "total: 2 files, 0 records, 0 bad, 0 problems",
    );
    const single = await runCli(["validate", one]);
    assertEquals(single.code, 1);
    assertEquals(
      single.out.trimEnd().split("\n").at(-1),
      `${one}: 1 record, 1 bad, 1 problem — FAILED`,
    );
  });
});
