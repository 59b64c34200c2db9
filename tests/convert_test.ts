import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert";
import { join } from "node:path";
import {
  convertFile,
  convertRecords,
  type ConvertResult,
  parseSplit,
  splitPart,
} from "../lib/data/convert.ts";
import { detectFormat } from "../lib/data/formats/mod.ts";
import { parseToolCall } from "../lib/data/pyliteral.ts";
import { keptNumber, parseKeepingNumbers } from "../lib/data/pynumber.ts";
import { readJsonRecords } from "../lib/jsonl.ts";
import { renderToolCall } from "../lib/tokenizer/pyformat.ts";
import { UserError } from "../lib/errors.ts";
import { runCli } from "./test_util.ts";

const FIX = new URL("./fixtures/convert/", import.meta.url).pathname;
const ROOT = new URL("../", import.meta.url).pathname;
const DENO = Deno.execPath();

async function convert(
  file: string,
  format: "auto" | undefined = "auto",
): Promise<ConvertResult[]> {
  const out: ConvertResult[] = [];
  for await (const r of convertRecords(readJsonRecords(FIX + file), { format })) out.push(r);
  return out;
}

function ok(results: ConvertResult[]): unknown[] {
  for (const r of results) assertEquals(r.problems, [], `line ${r.line}`);
  return results.map((r) => r.record);
}

Deno.test("chatglm3: canonical records pass through; native tool calls and observations merge", async () => {
  const [plain, tools, native, toolObs] = ok(await convert("chatglm3.jsonl")) as Record<
    string,
    unknown
  >[];
  assertEquals(plain, {
    conversations: [
      { role: "system", content: "你是一个乐于助人的助手。" },
      { role: "user", content: "你好" },
      { role: "assistant", content: "你好！有什么可以帮你？" },
      { role: "user", content: "讲个笑话" },
      {
        role: "assistant",
        content: "为什么程序员分不清万圣节和圣诞节？因为 Oct 31 == Dec 25。",
        loss: true,
      },
    ],
  });
  // The record's id is dropped; tools and a nested, non-ASCII observation are kept as JSON.
  assertEquals(Object.keys(tools), ["tools", "conversations"]);
  const conv = tools.conversations as Record<string, unknown>[];
  assertEquals(conv[1], { role: "assistant", content: "我来查一下北京的天气。", loss: false });
  assertEquals(conv[2], {
    role: "tool",
    name: "get_weather",
    parameters: { city: "北京" },
    observation: {
      city: "北京",
      forecast: [{ day: "今天", temp_c: [-3, 6], sky: "晴" }],
      aqi: null,
    },
  });
  // assistant(metadata) + observation → one tool message; the observation text stays text.
  assertEquals((native.conversations as unknown[]).length, 4);
  assertEquals((native.conversations as unknown[])[0], {
    role: "system",
    content: "Answer briefly.",
  });
  assertEquals((native.conversations as unknown[])[2], {
    role: "tool",
    name: "track",
    parameters: {
      symbol: "1Z999",
      verbose: true,
      limit: -3,
      tags: ["a", "b\n"],
      extra: { k: null },
    },
    observation: '{"status": "在途", "eta": "2024-05-01"}',
  });
  assertEquals((toolObs.conversations as unknown[])[1], {
    role: "tool",
    name: "calculator",
    parameters: { expression: "2+2" },
    observation: "4",
  });
});

Deno.test("messages: tool_calls, parallel calls by id, legacy function_call, tools unwrapped, weight", async () => {
  const [zhipu, parallel, legacy] = ok(await convert("messages.jsonl")) as Record<
    string,
    unknown
  >[];
  assertEquals(zhipu.tools, [{
    name: "get_recommended_books",
    description: "根据兴趣推荐书籍",
    parameters: {
      type: "object",
      properties: { interests: { type: "string" } },
      required: ["interests"],
    },
  }]);
  assertEquals(zhipu.conversations, [
    { role: "system", content: "你是一个图书推荐助手" },
    { role: "user", content: "我喜欢历史，推荐几本书吧" },
    {
      role: "tool",
      name: "get_recommended_books",
      parameters: { interests: "历史" },
      observation: {
        books: [{
          title: "万历十五年",
          author: "黄仁宇",
          meta: { pages: 320, tags: ["明朝", "经典"] },
        }],
      },
    },
    { role: "assistant", content: "推荐你读黄仁宇的《万历十五年》。" },
  ]);
  assertEquals(parallel.conversations, [
    { role: "user", content: "Weather in Paris and Tokyo?" },
    { role: "assistant", content: "Let me check both." },
    {
      role: "tool",
      name: "weather",
      parameters: { city: "Paris", units: "metric" },
      observation: [12, "cloudy"],
    },
    {
      role: "tool",
      name: "weather",
      parameters: { city: "Tokyo" },
      observation: "Tokyo: 18°C, rain",
    },
    { role: "assistant", content: "Paris is 12°C and cloudy; Tokyo 18°C with rain." },
  ]);
  assertEquals(parallel.tools, [{
    name: "weather",
    parameters: { type: "object", properties: { city: { type: "string" } } },
  }]);
  assertEquals(legacy.conversations, [
    { role: "system", content: "Use functions." },
    { role: "user", content: "Convert 10 USD to EUR" },
    {
      role: "tool",
      name: "convert",
      parameters: { amount: 10, from: "USD", to: "EUR" },
      observation: { result: 9.2 },
    },
    { role: "assistant", content: "10 USD is about 9.20 EUR.", loss: false },
    { role: "user", content: "Thanks" },
    { role: "assistant", content: "You're welcome!" },
  ]);
});

Deno.test("chatglm3: nulls for absent keys, as HF datasets exports write them, are absent keys", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = join(dir, "hf.jsonl");
    const blank = { name: null, parameters: null, observation: null, loss: null, content: null };
    await Deno.writeTextFile(
      f,
      JSON.stringify({
        tools: null,
        conversations: [
          { ...blank, role: "user", content: "q" },
          { ...blank, role: "tool", name: "f", parameters: { k: 1 }, observation: { ok: true } },
          { ...blank, role: "assistant", content: "a" },
        ],
      }) + "\n" +
        // a null observation that an observation message gives
        JSON.stringify({
          conversations: [
            { role: "user", content: "q" },
            { role: "tool", name: "f", parameters: {}, observation: null },
            { role: "observation", content: "r" },
            { role: "assistant", content: "a" },
          ],
        }) + "\n",
    );
    const [r, r2] = ok(
      await Array.fromAsync(convertRecords(readJsonRecords(f), { format: "chatglm3" })),
    ) as Record<string, unknown>[];
    assertEquals((r2.conversations as unknown[])[1], {
      role: "tool",
      name: "f",
      parameters: {},
      observation: "r",
    });
    assertEquals(r, {
      conversations: [
        { role: "user", content: "q" },
        { role: "tool", name: "f", parameters: { k: 1 }, observation: { ok: true } },
        { role: "assistant", content: "a" },
      ],
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("messages: a system message there only to carry the tools makes no empty system turn", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = join(dir, "m.jsonl");
    const tools = [{ type: "function", function: { name: "f", parameters: {} } }];
    await Deno.writeTextFile(
      f,
      [{ role: "system", content: "", tools }, { role: "system", tools }].map((sys) =>
        JSON.stringify({
          messages: [sys, { role: "user", content: "q" }, { role: "assistant", content: "a" }],
        })
      ).join("\n") + "\n",
    );
    const out = ok(
      await Array.fromAsync(convertRecords(readJsonRecords(f), { format: "messages" })),
    );
    for (const r of out as { tools: unknown[]; conversations: { role: string }[] }[]) {
      assertEquals(r.conversations.map((m) => m.role), ["user", "assistant"]);
      assertEquals(r.tools.length, 1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("alpaca: the instruction and input, the non-empty ones joined (LLaMA-Factory's loader)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = join(dir, "a.jsonl");
    await Deno.writeTextFile(
      f,
      [
        { instruction: "", input: "X", output: "o" },
        { input: "Y", output: "o" },
        { instruction: "I", input: "", output: "o" },
        { output: "o" },
        { input: "", output: "o" },
      ].map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    const out: ConvertResult[] = [];
    for await (const r of convertRecords(readJsonRecords(f), { format: "alpaca" })) out.push(r);
    const users = out.slice(0, 3).map((r) =>
      (r.record as { conversations: { content: string }[] }).conversations[0].content
    );
    assertEquals(users, ["X", "Y", "I"]);
    // neither an instruction nor an input: the instruction is missing
    assertEquals(out.slice(3).map((r) => r.problems.map((p) => p.field)), [["instruction"], [
      "instruction",
    ]]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("advertisegen (JSON Lines in a .json file), alpaca, sharegpt", async () => {
  assertEquals(ok(await convert("advertisegen.json")), [
    {
      conversations: [
        { role: "user", content: "类型#上衣*版型#宽松*颜色#黑色*风格#街头*图案#字母" },
        {
          role: "assistant",
          content: "这款黑色上衣采用宽松版型，胸前的字母图案充满街头感，随意搭配都很有型。",
        },
      ],
    },
    {
      conversations: [
        { role: "user", content: "类型#裙*材质#雪纺*裙长#连衣裙" },
        { role: "assistant", content: "轻盈的雪纺面料，让这条连衣裙穿起来飘逸又清爽。" },
      ],
    },
  ]);
  const alpaca = await convert("alpaca.json");
  assertEquals(alpaca.map((r) => r.line), [2, 7]);
  assertEquals(ok(alpaca), [
    {
      conversations: [
        { role: "user", content: "把下面的句子翻译成英文。\n今天天气很好。" },
        { role: "assistant", content: "The weather is nice today." },
      ],
    },
    {
      conversations: [
        { role: "system", content: "You are a concise assistant." },
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello! How can I help?" },
        { role: "user", content: "What's your name?" },
        { role: "assistant", content: "I'm an assistant." },
        { role: "user", content: "Give three tips for staying healthy." },
        {
          role: "assistant",
          content: "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well.",
        },
      ],
    },
  ]);
  const [tool, plain] = ok(await convert("sharegpt.json")) as Record<string, unknown>[];
  assertEquals(tool, {
    tools: [{
      name: "current_time",
      description: "Current time in a time zone",
      parameters: { type: "object", properties: { tz: { type: "string" } } },
    }],
    conversations: [
      { role: "system", content: "You are a helpful assistant." },
      { role: "user", content: "东京现在几点？" },
      {
        role: "tool",
        name: "current_time",
        parameters: { tz: "Asia/Tokyo" },
        observation: { time: "14:05", tz: { name: "JST", offset: 9 } },
      },
      { role: "assistant", content: "东京现在是 14:05（JST）。" },
      { role: "user", content: "谢谢" },
      { role: "assistant", content: "不客气！" },
    ],
  });
  assertEquals(plain, {
    conversations: [
      { role: "system", content: "Be terse." },
      { role: "user", content: "2+2?" },
      { role: "assistant", content: "4" },
    ],
  });
});

Deno.test("toolalpaca: one conversation per instance, as ChatGLM3's format_tool_alpaca.py builds them", async () => {
  const results = await convert("toolalpaca.json");
  assertEquals(results.map((r) => [r.line, r.index]), [[2, 0], [2, 1]]);
  const [first, second] = ok(results) as Record<string, unknown>[];
  const doc = "getAxolotlFacts: Retrieve interesting facts about axolotls.\n" +
    'Parameters: {"category": "string.", "limit": "integer."}\nOutput: Successful response.\n';
  assertEquals(first, {
    tools: [doc],
    conversations: [
      { role: "user", content: "Can you tell me two facts about axolotl habitats?" },
      { role: "assistant", content: "I need to call getAxolotlFacts with the habitat category." },
      {
        role: "tool",
        name: "getAxolotlFacts",
        parameters: { category: "habitat", limit: 2 },
        observation: 'Status Code: 200. Response: [{"fact": "Lake Xochimilco", "source": ' +
          '"https://example.org/a"}, {"fact": "Cool water, 16–18°C"}]',
      },
      {
        role: "assistant",
        content:
          "I have two facts to share.\nAxolotls live in lakes near Mexico City, and they prefer cool water.",
      },
    ],
  });
  // No thought before "Action:" → no empty assistant message.
  assertEquals((second.conversations as Record<string, unknown>[]).map((m) => m.role), [
    "user",
    "tool",
    "assistant",
  ]);
});

Deno.test("format detection by keys; a record of another format in the same file is reported", async () => {
  assertEquals(detectFormat({ conversations: [{ from: "human", value: "x" }] }), "sharegpt");
  assertEquals(detectFormat({ conversations: [{ role: "user", content: "x" }] }), "chatglm3");
  assertEquals(detectFormat({ messages: [] }), "messages");
  assertEquals(detectFormat({ content: "a", summary: "b" }), "advertisegen");
  assertEquals(detectFormat({ instruction: "a", output: "b" }), "alpaca");
  assertEquals(detectFormat({ Name: "x", Instances: [] }), "toolalpaca");
  assertEquals(detectFormat({ foo: 1 }), undefined);

  async function* src() {
    yield { line: 1, value: { content: "k", summary: "s" } };
    yield { line: 2, value: { instruction: "i", output: "o" } };
    yield { line: 3, value: { content: 5, summary: "s" } };
    yield { line: 4, value: { foo: 1 } };
  }
  const got = [];
  for await (const r of convertRecords(src())) got.push(r);
  assertEquals(got[0].problems, []);
  assert(
    got[1].problems[0].message.includes(
      "alpaca format, but the file is advertisegen (recognised at line 1)",
    ),
  );
  assertEquals(got[2].problems, [{
    field: "content",
    message: "must be a string, found a number",
  }]);
  assertEquals(got[3].problems.map((p) => p.field), ["content", "summary"]);

  // --format overrides detection: the same records read as alpaca.
  const forced = [];
  for await (const r of convertRecords(src(), { format: "alpaca" })) forced.push(r);
  assertEquals(forced[1].record, {
    conversations: [{ role: "user", content: "i" }, { role: "assistant", content: "o" }],
  });
  assertEquals(forced[0].problems.map((p) => p.field), ["instruction", "output"]);
});

Deno.test("converter problems name the raw record's own fields", async () => {
  async function* src() {
    yield {
      line: 7,
      value: {
        messages: [
          { role: "user", content: "hi" },
          {
            role: "assistant",
            tool_calls: [{ type: "function", function: { name: "f", arguments: "{oops" } }],
          },
          { role: "assistant", content: "done" },
          { role: "system", content: "late" },
        ],
      },
    };
  }
  const [r] = await Array.fromAsync(convertRecords(src()));
  assertEquals(r.line, 7);
  assertEquals(r.problems.map((p) => p.field), [
    "messages[1].tool_calls[0].function.arguments",
    "messages[1].tool_calls[0]",
    "messages[3].role",
  ]);
  // An OpenAI tool whose function is not an object, at the top level and on the system message.
  async function* tools() {
    yield {
      line: 1,
      value: {
        tools: [{ type: "function", function: null }],
        messages: [
          { role: "system", content: "s", tools: [{ type: "function" }] },
          { role: "user", content: "q" },
          { role: "assistant", content: "a" },
        ],
      },
    };
  }
  const [t] = await Array.fromAsync(convertRecords(tools()));
  assertEquals(t.problems.map((p) => `${p.field}: ${p.message}`), [
    "tools[0].function: missing or not an object",
    "messages[0].tools[0].function: missing or not an object",
  ]);
});

Deno.test("tool_call parsing: Python literals as ast.unparse/astunparse write them", () => {
  assertEquals(
    parseToolCall(
      "```python\ntool_call(a='x\\'y', b=\"中\", c=1.5e3, d=(- 2), e=[1, (2, 3)], f={'k': False}, g=None)\n```",
    ),
    // 1.5e3 is a float: kept as Python prints it (1500.0), not as the int 1500
    { a: "x'y", b: "中", c: keptNumber("1500.0"), d: -2, e: [1, [2, 3]], f: { k: false }, g: null },
  );
  assertEquals(parseToolCall("tool_call()"), {});
  throws(() => parseToolCall("tool_call(a=1, a=2)"), /keyword argument repeated: a/);
  assertEquals(parseToolCall("tool_call(s='\\u4e2d\\x41\\n')"), { s: "中A\n" });
});

Deno.test("tool_call parsing reads back what Python's ast.unparse wrote (tools/make_toolcall_fixtures.py)", async () => {
  const cases = parseKeepingNumbers(await Deno.readTextFile(FIX + "tool_calls.json")) as {
    parameters: Record<string, unknown>;
    text: string;
  }[];
  assert(cases.length >= 8);
  for (const c of cases) assertEquals(parseToolCall(c.text), c.parameters, c.text);
  // Read back and rendered again (as tokenize renders a tool message), the text is unchanged:
  // a native-format tool call costs no token, integers past 2^53 and floats like 1.0 included.
  for (const c of cases) assertEquals(renderToolCall(parseToolCall(c.text)), c.text);
});

Deno.test("split: deterministic per (seed, index), near the asked fraction, stable across runs", () => {
  const split = parseSplit("dev=0.05", 42);
  const parts = Array.from({ length: 20000 }, (_, i) => splitPart(split, i));
  const dev = parts.filter((p) => p === "dev").length;
  assert(dev > 850 && dev < 1150, `dev got ${dev} of 20000`);
  assertEquals(Array.from({ length: 20000 }, (_, i) => splitPart(split, i)), parts);
  const other = Array.from({ length: 20000 }, (_, i) => splitPart(parseSplit("dev=0.05", 7), i));
  assert(other.some((p, i) => p !== parts[i]), "another seed gives another split");
  const three = parseSplit("dev=0.1,test=0.2", 1);
  const counts: Record<string, number> = {};
  for (let i = 0; i < 10000; i++) {
    counts[splitPart(three, i)] = (counts[splitPart(three, i)] ?? 0) + 1;
  }
  assert(
    Math.abs(counts.dev - 1000) < 150 && Math.abs(counts.test - 2000) < 200,
    JSON.stringify(counts),
  );
  for (const bad of ["dev", "dev=2", "train=0.1", "dev=0.6,test=0.6", "dev=0.1,dev=0.1"]) {
    let threw = false;
    try {
      parseSplit(bad, 1);
    } catch (e) {
      threw = e instanceof UserError;
    }
    assert(threw, bad);
  }
});

Deno.test("convertFile: split files beside the output or in a directory, same records either way", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines = Array.from(
      { length: 400 },
      (_, i) => JSON.stringify({ content: `k${i}`, summary: `s${i}` }),
    );
    await Deno.writeTextFile(`${dir}/raw.jsonl`, lines.join("\n") + "\n");
    const split = parseSplit("dev=0.1", 42);
    const rep = await convertFile(`${dir}/raw.jsonl`, `${dir}/conv.jsonl`, { split });
    const train = (await Deno.readTextFile(`${dir}/conv.train.jsonl`)).trimEnd().split("\n");
    const dev = (await Deno.readTextFile(`${dir}/conv.dev.jsonl`)).trimEnd().split("\n");
    assertEquals(train.length + dev.length, 400);
    assert(dev.length > 20 && dev.length < 65, `dev ${dev.length}`);
    assertEquals(rep.written, {
      [`${dir}/conv.train.jsonl`]: train.length,
      [`${dir}/conv.dev.jsonl`]: dev.length,
    });
    // Each record went where splitPart says, in input order.
    const devIdx = dev.map((l) => Number(JSON.parse(l).conversations[0].content.slice(1)));
    assertEquals(
      devIdx,
      Array.from({ length: 400 }, (_, i) => i).filter((i) => splitPart(split, i) === "dev"),
    );
    await Deno.mkdir(`${dir}/out`);
    await convertFile(`${dir}/raw.jsonl`, `${dir}/out`, { split });
    assertEquals((await Deno.readTextFile(`${dir}/out/dev.jsonl`)).trimEnd().split("\n"), dev);
    assertEquals((await Deno.readTextFile(`${dir}/out/train.jsonl`)).trimEnd().split("\n"), train);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convertFile writes nothing when a record is bad, unless --skip-invalid", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/raw.jsonl`,
      '{"content": "a", "summary": "b"}\n{"content": "a"}\n{"content": "c", "summary": "d"}\n',
    );
    const bad: number[] = [];
    await rejects(
      convertFile(`${dir}/raw.jsonl`, `${dir}/conv.jsonl`, { onBad: (r) => void bad.push(r.line) }),
      (e: Error) =>
        e instanceof UserError && e.message.includes("1 of 3 records is bad (1 problem)"),
    );
    assertEquals(bad, [2]);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["raw.jsonl"]);
    const rep = await convertFile(`${dir}/raw.jsonl`, `${dir}/conv.jsonl`, { skipInvalid: true });
    assertEquals([rep.records, rep.badRecords], [3, 1]);
    assertEquals((await Deno.readTextFile(`${dir}/conv.jsonl`)).trimEnd().split("\n").length, 2);
    // Nothing to write is an error too (as --check says of an empty file), with nothing written:
    // an empty input, every record bad, or a split part that gets no record.
    const other = `${dir}/other.jsonl`;
    const cases: [string, Parameters<typeof convertFile>[2], RegExp][] = [
      ["", {}, /holds no records; nothing written/],
      [
        '{"content": "a"}\n',
        { skipInvalid: true },
        /its one record is bad; nothing written/,
      ],
      [
        '{"content": "a", "summary": "b"}\n',
        { split: parseSplit("dev=0.05", 42) },
        /--split: (train|dev) gets none of the 1 record; nothing written/,
      ],
    ];
    for (const [text, opts, re] of cases) {
      await Deno.writeTextFile(`${dir}/raw.jsonl`, text);
      await rejects(convertFile(`${dir}/raw.jsonl`, other, opts), re);
    }
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["conv.jsonl", "raw.jsonl"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: stdin to stdout; bad input exits 1 with located messages and no stack trace", async () => {
  const piped = await runCli(
    ["stage", "convert", "--in", "-", "--out", "-"],
    '[{"instruction": "说你好", "output": "你好"}]',
  );
  assertEquals(piped.code, 0, piped.err);
  assertEquals(JSON.parse(piped.out), {
    conversations: [{ role: "user", content: "说你好" }, { role: "assistant", content: "你好" }],
  });
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/raw.json`,
      '[\n{"messages": [{"role": "user", "content": "hi"}]},\n]',
    );
    const bad = await runCli([
      "stage",
      "convert",
      "--in",
      `${dir}/raw.json`,
      "--out",
      `${dir}/o.jsonl`,
    ]);
    assertEquals(bad.code, 1);
    assert(
      bad.err.includes(
        `${dir}/raw.json:2: messages: has no assistant or tool message to learn from`,
      ),
      bad.err,
    );
    assert(
      bad.err.includes(`${dir}/raw.json:2: trailing comma after the last element of the array`),
      bad.err,
    );
    assert(!/\n\s+at /.test(bad.err), `stack trace: ${bad.err}`);
    assertEquals([...Deno.readDirSync(dir)].length, 1);
    const check = await runCli(["stage", "convert", "--in", `${FIX}toolalpaca.json`, "--check"]);
    assertEquals(check.code, 0, check.err + check.out);
    const flag = await runCli([
      "stage",
      "convert",
      "--in",
      `${FIX}toolalpaca.json`,
      "--out",
      "-",
      "--format",
      "csv",
    ]);
    assertEquals(flag.code, 1);
    assert(flag.err.includes('--format: unknown format "csv"'), flag.err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Peak resident set size of a process, polled from /proc while it runs. */
async function peakRssMB(
  cmd: Deno.Command,
): Promise<{ peak: number; code: number; stderr: string }> {
  const p = cmd.spawn();
  let peak = 0;
  let running = true;
  const poll = (async () => {
    while (running) {
      try {
        const s = await Deno.readTextFile(`/proc/${p.pid}/status`);
        const m = /VmHWM:\s+(\d+) kB/.exec(s);
        if (m) peak = Math.max(peak, Number(m[1]) / 1024);
      } catch { /* exited */ }
      await new Promise((r) => setTimeout(r, 25));
    }
  })();
  const o = await p.output();
  running = false;
  await poll;
  return { peak, code: o.code, stderr: new TextDecoder().decode(o.stderr) };
}

Deno.test("convert streams: a 30 MB file converts inside a 32 MB JavaScript heap", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const f = await Deno.open(`${dir}/raw.jsonl`, { write: true, create: true });
    const enc = new TextEncoder();
    let size = 0;
    let n = 0;
    const chunk: string[] = [];
    while (size < 30e6) {
      const line = JSON.stringify({
        messages: [
          { role: "system", content: "你是一个助手" },
          { role: "user", content: `问题 ${n} ` + "x".repeat(400) },
          { role: "assistant", content: `回答 ${n} ` + "答".repeat(150) },
        ],
      }) + "\n";
      chunk.push(line);
      size += line.length + 2 * 160;
      n++;
      if (chunk.length === 1000) {
        await f.write(enc.encode(chunk.join("")));
        chunk.length = 0;
      }
    }
    await f.write(enc.encode(chunk.join("")));
    f.close();
    // With the heap capped below the data's size, holding the data set would abort
    // with "out of memory"; streaming stays within it.
    const run = await peakRssMB(
      new Deno.Command(DENO, {
        args: [
          "run",
          "-A",
          "--v8-flags=--max-old-space-size=32",
          `${ROOT}cli.ts`,
          "stage",
          "convert",
          "--in",
          `${dir}/raw.jsonl`,
          "--out",
          `${dir}/conv.jsonl`,
        ],
        stdout: "null",
        stderr: "piped",
      }),
    );
    assertEquals(run.code, 0, run.stderr.slice(0, 2000));
    assert(run.peak < 150, `peak RSS ${run.peak.toFixed(0)} MB`);
    const out = await Deno.open(`${dir}/conv.jsonl`);
    let lines = 0;
    for await (const c of out.readable) for (const b of c) if (b === 10) lines++;
    assertEquals(lines, n);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CLI: the summary says what was read, left out and written, with singulars for 1", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const raw = `${dir}/raw.jsonl`;
    await Deno.writeTextFile(
      raw,
      '{"content": "a", "summary": "b"}\n{"content": 1, "summary": "b"}\n{"content": "c", "summary": "d"}\n',
    );
    const r = await runCli([
      "stage",
      "convert",
      "--in",
      raw,
      "--out",
      `${dir}/o.jsonl`,
      "--skip-invalid",
    ]);
    assertEquals(r.code, 0, r.err);
    assertEquals(
      r.err.trimEnd().split("\n").at(-1),
      `convert: read 3 records from ${raw} (1 bad record left out); wrote 2 records: 2 → ${dir}/o.jsonl`,
    );
    await Deno.writeTextFile(raw, '{"content": "a", "summary": "b"}\n');
    const one = await runCli(["stage", "convert", "--in", raw, "--out", `${dir}/o.jsonl`]);
    assertEquals(
      one.err.trimEnd(),
      `convert: read 1 record from ${raw}; wrote 1 record: 1 → ${dir}/o.jsonl`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
