/**
 * The ChatGLM3 layer: special ids, message layout, conversations with tools,
 * decode, and Python's json.dumps / repr renderings — against
 * tools/make_tokenizer_fixtures.py (sentencepiece + the ChatGLM3 rules restated in Python).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import type { Conversation } from "../lib/data/record.ts";
import { parseKeepingNumbers } from "../lib/data/pynumber.ts";
import { ChatGLMTokenizer, type HistoryItem, SPECIAL_TOKENS } from "../lib/tokenizer/chatglm.ts";
import { conversationMessages, tokenizeConversation } from "../lib/tokenizer/conversation.ts";
import { pythonFloatRepr, pythonJsonDumps, pythonRepr } from "../lib/tokenizer/pyformat.ts";
import { fixtureModel, fixturePath, readGzipJson, userError } from "./fixtures/tokenizer/load.ts";

export interface ConversationCase {
  conversation: Conversation;
  messages: { role: string; ids: number[]; loss: boolean }[];
  train: Record<string, { input_ids: number[]; labels: number[] }>;
  eval: Record<string, { input_ids: number[]; output_ids: number[] }[]>;
  decoded: string;
  decoded_tokens: string[];
}

interface ConversationFixture {
  n: number;
  limits: [number, number][];
  renderings: [unknown, string, string, string][];
  cases: ConversationCase[];
  odd_decodes: [number[], string][];
  chat: {
    history: HistoryItem[];
    query: string;
    ids: number[];
  };
}

const fx = await readGzipJson<ConversationFixture>("conversations.json.gz");
const tok = new ChatGLMTokenizer(await fixtureModel("glm_bpe.model"));

Deno.test("special ids follow the SentencePiece vocabulary", () => {
  assertEquals(tok.n, fx.n);
  SPECIAL_TOKENS.forEach((t, i) => assertEquals(tok.special(t), fx.n + i));
  assertEquals(tok.special("[gMASK]"), fx.n + 1);
  assertEquals(tok.special("<|observation|>"), fx.n + 8);
  assertEquals(tok.vocabSize, fx.n + 9);
  assertEquals(tok.eosId, 2);
  assertEquals(tok.padId, 0);
  assertEquals(tok.stopIds, [2, fx.n + 6, fx.n + 8]);
});

Deno.test(`${fx.cases.length} conversations tokenize to the reference messages`, () => {
  assert(fx.cases.length >= 50);
  for (const [i, c] of fx.cases.entries()) {
    const got = tokenizeConversation(tok, c.conversation);
    assertEquals(got, c.messages, `conversation ${i}`);
  }
});

Deno.test("decode renders special tokens by name, as the HF tokenizer", () => {
  for (const [i, c] of fx.cases.entries()) {
    assertEquals(tok.decode(c.train["1024,1024"].input_ids), c.decoded, `conversation ${i}`);
    const ids = c.train["1024,1024"].input_ids.slice(0, 40);
    const perToken = ids.map((id) => tok.specialName(id) ?? tok.decode([id]));
    assertEquals(perToken, c.decoded_tokens, `conversation ${i}`);
  }
  for (const [ids, expected] of fx.odd_decodes) {
    assertEquals(tok.decode(ids), expected, JSON.stringify(ids));
  }
});

Deno.test("text that looks like a special token is encoded as text", () => {
  for (const s of ["<|user|>", "[gMASK]", "sop", "<|assistant|>hi", "eop<|observation|>"]) {
    const ids = tok.encode(s);
    assert(ids.every((id) => id < tok.n), `${s} -> ${ids}`);
    assertEquals(tok.decode(ids), s);
  }
  const msg = tok.buildSingleMessage("user", "", "<|user|>");
  assertEquals(msg[0], tok.special("<|user|>"));
  assert(msg.slice(1).every((id) => id < tok.n));
});

Deno.test("buildChatInput: [gMASK] sop + history + query + <|assistant|>", () => {
  assertEquals(tok.buildChatInput(fx.chat.history, fx.chat.query), fx.chat.ids);
});

Deno.test("json.dumps and repr renderings equal Python's", () => {
  for (const [v, indented, flat, repr] of fx.renderings) {
    assertEquals(pythonJsonDumps(v, 4), indented, JSON.stringify(v));
    assertEquals(pythonJsonDumps(v), flat, JSON.stringify(v));
    assertEquals(pythonRepr(v), repr, JSON.stringify(v));
  }
  assertEquals(pythonFloatRepr(1e-5), "1e-05");
  assertEquals(pythonFloatRepr(0.0001), "0.0001");
  assertEquals(pythonFloatRepr(1e16), "1e+16");
  assertEquals(pythonFloatRepr(1234.5), "1234.5");
});

Deno.test("a tool turn becomes a tool call and an observation", () => {
  const msgs = conversationMessages({
    tools: [{ name: "f" }],
    conversations: [
      { role: "user", content: "q" },
      { role: "tool", name: "f", parameters: { k: "v", n: 1 }, observation: { ok: true } },
      { role: "assistant", content: "a", loss: false },
    ],
  });
  assertEquals(msgs.map((m) => [m.role, m.metadata, m.loss]), [
    ["system", "", false],
    ["user", "", false],
    ["assistant", "f", true],
    ["observation", "", false],
    ["assistant", "", false],
  ]);
  assertEquals(msgs[2].content, "```python\ntool_call(k='v', n=1)\n```");
  assertEquals(msgs[3].content, '{"ok": true}');
  assert(msgs[0].content.endsWith('[\n    {\n        "name": "f"\n    }\n]'));
});

Deno.test("numbers in tool calls, observations and tool lists render as Python renders json.loads' values", () => {
  // What json.loads + ast.unparse / json.dumps make of this text (checked with CPython 3.11): ints
  // keep every digit, floats written 1.0 stay floats.
  const conv = parseKeepingNumbers(
    '{"tools": [{"name": "f", "min": 0.0, "max": 123456789012345678}], "conversations": [' +
      '{"role": "user", "content": "q"}, {"role": "tool", "name": "f", "parameters": ' +
      '{"id": 123456789012345678, "x": 1.0, "z": -0.0, "e": 1e16, "f": 2.50, "n": -5}, ' +
      '"observation": {"price": 10.0, "big": 10000000000000000, "ok": 1}}, ' +
      '{"role": "assistant", "content": "a"}]}',
  ) as Conversation;
  const msgs = conversationMessages(conv);
  assertEquals(
    msgs[2].content,
    "```python\ntool_call(id=123456789012345678, x=1.0, z=-0.0, e=1e+16, f=2.5, n=-5)\n```",
  );
  assertEquals(msgs[3].content, '{"price": 10.0, "big": 10000000000000000, "ok": 1}');
  assert(
    msgs[0].content.includes('"min": 0.0,\n        "max": 123456789012345678'),
    msgs[0].content,
  );
});

Deno.test("a model directory without tokenizer.model is a clear error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const e = await userError(() => ChatGLMTokenizer.load(dir));
    assert(e.message.includes("tokenizer.model"), e.message);
    const e2 = await userError(() => ChatGLMTokenizer.load(`${dir}/nope`));
    assert(e2.message.includes("no such model directory"), e2.message);
    await Deno.writeTextFile(`${dir}/tokenizer.model`, "not a model");
    const e3 = await userError(() => ChatGLMTokenizer.load(dir));
    assert(e3.message.includes(`${dir}/tokenizer.model`), e3.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const dir2 = await Deno.makeTempDir();
  try {
    await Deno.copyFile(fixturePath("glm_bpe.model"), `${dir2}/tokenizer.model`);
    const loaded = await ChatGLMTokenizer.load(dir2);
    assertEquals(loaded.encode("你好 world"), tok.encode("你好 world"));
  } finally {
    await Deno.remove(dir2, { recursive: true });
  }
});
