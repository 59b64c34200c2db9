import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  JsonlSink,
  type JsonRecord,
  readJsonArray,
  readJsonl,
  readJsonRecords,
  readLines,
} from "../lib/jsonl.ts";

/** A stream that delivers `bytes` in pieces of `size` (to cross every chunk boundary). */
function streamOf(bytes: Uint8Array | string, size = 7): ReadableStream<Uint8Array> {
  const b = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  let o = 0;
  return new ReadableStream({
    pull(c) {
      if (o >= b.length) return c.close();
      c.enqueue(b.slice(o, o + size));
      o += size;
    },
  });
}

async function all(it: AsyncIterable<JsonRecord>): Promise<JsonRecord[]> {
  const out: JsonRecord[] = [];
  for await (const r of it) out.push(r);
  return out;
}

const ARRAY = `[
  {"a": 1, "s": "x,]}\\"{["},
  {
    "b": [1, 2,
      {"c": "é中"}]
  }, 3, "four", null
  ,
  true
]
`;

Deno.test("readJsonArray yields each element with the line it starts on, whatever the chunking", async () => {
  for (const size of [1, 2, 5, 64, 1 << 16]) {
    const got = await all(readJsonArray(streamOf(ARRAY, size)));
    assertEquals(got, [
      { line: 2, value: { a: 1, s: 'x,]}"{[' } },
      { line: 3, value: { b: [1, 2, { c: "é中" }] } },
      { line: 6, value: 3 },
      { line: 6, value: "four" },
      { line: 6, value: null },
      { line: 8, value: true },
    ], `chunk size ${size}`);
  }
});

Deno.test("readJsonArray: empty array, BOM and CRLF", async () => {
  assertEquals(await all(readJsonArray(streamOf("  [ ]  \n"))), []);
  const crlf = new Uint8Array([
    0xef,
    0xbb,
    0xbf,
    ...new TextEncoder().encode('[\r\n{"a":1},\r\n{"b":2}\r\n]\r\n'),
  ]);
  assertEquals(await all(readJsonArray(streamOf(crlf, 3))), [
    { line: 2, value: { a: 1 } },
    { line: 3, value: { b: 2 } },
  ]);
});

Deno.test("readJsonArray reports a trailing comma at the comma's line and keeps the elements", async () => {
  const got = await all(readJsonArray(streamOf('[\n{"a": 1},\n{"b": 2},\n\n]\n')));
  assertEquals(got.length, 3);
  assertEquals(got[0], { line: 2, value: { a: 1 } });
  assertEquals(got[1], { line: 3, value: { b: 2 } });
  assertEquals(got[2], {
    structural: true,
    line: 3,
    error: "trailing comma after the last element of the array",
  });
});

Deno.test("readJsonArray: malformed element, missing comma, mismatched bracket, unclosed array", async () => {
  const bad = await all(readJsonArray(streamOf('[\n{"a": 1},\n{"b":\n  2 3},\n{"c": 4}\n]')));
  assertEquals(bad[0].value, { a: 1 });
  assertEquals(bad[1].line, 4, "the error is on the line inside the element where it is");
  assertEquals(bad[1].error?.startsWith("malformed JSON"), true);
  assertEquals(bad[2], { line: 5, value: { c: 4 } });

  const missing = await all(readJsonArray(streamOf('[{"a": 1}\n{"b": 2}]')));
  assertEquals(missing.map((r) => [r.line, r.value ?? r.error]), [
    [1, { a: 1 }],
    [2, "expected ',' or ']' after the element that starts at line 1"],
    [2, { b: 2 }],
  ]);

  const mismatched = await all(readJsonArray(streamOf('[{"a": 1},\n{"b": [1, 2}\n, {"c": 3}]')));
  assertEquals(mismatched.length, 2);
  assertEquals(mismatched[1].line, 2);
  assertEquals(mismatched[1].error?.startsWith("mismatched '}'"), true);

  const unclosed = await all(readJsonArray(streamOf('[{"a": 1},\n{"b": 2}\n')));
  assertEquals(
    unclosed.at(-1)!.error,
    "unexpected end of file: the array opened at line 1 is not closed",
  );
  const cut = await all(readJsonArray(streamOf('[{"a": 1},\n{"b": "x\n')));
  assertEquals(cut.at(-1), {
    structural: true,
    line: 3,
    error: "unexpected end of file inside the element that starts at line 2",
  });

  const after = await all(readJsonArray(streamOf("[1]\n[2]")));
  assertEquals(after.at(-1), {
    structural: true,
    line: 2,
    error: "unexpected '[' after the closing ']' of the array",
  });
  const notArray = await all(readJsonArray(streamOf('{"a": 1}')));
  assertEquals(notArray[0].error?.startsWith("expected a JSON array"), true);

  // A stray '}' is one structural problem, skipped: no element is made of it.
  const stray = await all(readJsonArray(streamOf('[{"a": 1}}\n, }, {"b": 2}]')));
  assertEquals(stray.map((r) => [r.line, r.value ?? r.error, !!r.structural]), [
    [1, { a: 1 }, false],
    [1, "unexpected '}' after the element that starts at line 1", true],
    [2, "expected an element, found '}'", true],
    [2, "expected an element, found ','", true],
    [2, { b: 2 }, false],
  ]);
});

Deno.test("readJsonArray reports invalid UTF-8 at the line where it is", async () => {
  const enc = new TextEncoder();
  const bytes = new Uint8Array([
    ...enc.encode('[{"a": 1},\n{"b":\n"caf'),
    0xc3,
    0x28,
    ...enc.encode('"},\n{"c": 3}]'),
  ]);
  const got = await all(readJsonArray(streamOf(bytes, 4)));
  assertEquals(got[0], { line: 1, value: { a: 1 } });
  assertEquals(got[1], { line: 3, error: "invalid UTF-8 (first bad byte at column 5)" });
  assertEquals(got[2], { line: 4, value: { c: 3 } });
});

Deno.test("readJsonRecords: .jsonl is lines; .json and stdin are sniffed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.json`, '\n\n  [{"x": 1},\n {"x": 2}]');
    await Deno.writeTextFile(`${dir}/b.json`, '{"x": 1}\n\n{"x": 2}\n');
    await Deno.writeTextFile(`${dir}/c.jsonl`, '[1, 2]\n{"x": 2}\n');
    assertEquals(await all(readJsonRecords(`${dir}/a.json`)), [
      { line: 3, value: { x: 1 } },
      { line: 4, value: { x: 2 } },
    ]);
    assertEquals(await all(readJsonRecords(`${dir}/b.json`)), [
      { line: 1, value: { x: 1 } },
      { line: 3, value: { x: 2 } },
    ]);
    assertEquals(await all(readJsonRecords(`${dir}/c.jsonl`)), [
      { line: 1, value: [1, 2] },
      { line: 2, value: { x: 2 } },
    ]);
    assertEquals(await all(readJsonRecords(streamOf('[{"x": 1}]', 1))), [{
      line: 1,
      value: { x: 1 },
    }]);
    assertEquals(await all(readJsonRecords(streamOf(""))), []);
    const pretty = await all(readJsonRecords(streamOf('{\n  "a": 1\n}\n')));
    assertEquals(pretty[0].line, 1);
    assert(
      pretty[0].error!.endsWith(
        "(a data file is a JSON array of records or one JSON record per line)",
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readLines/readJsonl: CRLF, BOM, blank lines, invalid UTF-8, malformed JSON", async () => {
  const bytes = new Uint8Array([
    0xef,
    0xbb,
    0xbf,
    ...new TextEncoder().encode('{"a": 1}\r\n\r\n  \n{"b": \n'),
    0xff,
    0x0a,
    ...new TextEncoder().encode('{"c": 3}'),
  ]);
  const got = await all(readJsonl(streamOf(bytes, 3)));
  assertEquals(got[0], { line: 1, value: { a: 1 } });
  assertEquals(got[1].line, 4);
  assertEquals(got[1].error?.startsWith("malformed JSON"), true);
  assertEquals(got[2], { line: 5, error: "invalid UTF-8 (first bad byte at column 1)" });
  assertEquals(got[3], { line: 6, value: { c: 3 } });
  const lines = [];
  for await (const l of readLines(streamOf("a\r\nb", 1))) lines.push(l);
  assertEquals(lines, [{ line: 1, text: "a" }, { line: 2, text: "b" }]);
});

Deno.test("JsonlSink writes atomically: nothing under the name until commit, nothing after abort", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sink = await JsonlSink.create(`${dir}/out.jsonl`);
    for (let i = 0; i < 3000; i++) await sink.write({ i, pad: "x".repeat(500) });
    assertEquals(await Deno.stat(`${dir}/out.jsonl`).then(() => true, () => false), false);
    await sink.commit();
    const text = await Deno.readTextFile(`${dir}/out.jsonl`);
    const lines = text.trimEnd().split("\n");
    assertEquals(lines.length, 3000);
    assertEquals(JSON.parse(lines[2999]).i, 2999);
    const aborted = await JsonlSink.create(`${dir}/gone.jsonl`);
    await aborted.write({ a: 1 });
    await aborted.abort();
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["out.jsonl"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readJsonRecords: a byte-order mark split across the first chunks of a pipe", async () => {
  const enc = new TextEncoder();
  const rec = '{"a": 1}';
  for (const [body, size] of [[`[${rec},\n${rec}]`, 1], [`${rec}\n${rec}\n`, 2]] as const) {
    const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode(body)]);
    // Chunks of 1 or 2 bytes: the mark arrives in pieces.
    assertEquals(await all(readJsonRecords(streamOf(bytes, size))), [
      { line: 1, value: { a: 1 } },
      { line: 2, value: { a: 1 } },
    ]);
  }
});
