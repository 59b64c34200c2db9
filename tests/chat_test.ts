/**
 * chat as a user runs it (a subprocess): answers with the tiny base model and
 * with the PEFT adapter dir, checked against the CPU reference model's greedy
 * reply; a wrong base path in adapter_config.json; an interactive session on
 * stdin with history and /reset. And the reply parsing (tool calls as JSON).
 */
import assert from "node:assert";
import { join } from "node:path";
import { ChatSession, formatReply, parseReply } from "../lib/eval/chat.ts";
import type { GlmModel } from "../lib/model/glm.ts";
import { readAdapterDir } from "../lib/model/adapter_dir.ts";
import { type CpuGlm, loadCpuGlm } from "../lib/model/cpu/glm.ts";
import { ChatGLMTokenizer, type HistoryItem } from "../lib/tokenizer/chatglm.ts";
import { runCli } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");
const N = 12;

async function cpu(adapterDir?: string): Promise<CpuGlm> {
  if (!adapterDir) return await loadCpuGlm(TINY, { kind: "none" });
  const a = await readAdapterDir(adapterDir);
  const m = await loadCpuGlm(TINY, a.spec);
  m.setParams(a.tensors);
  return m;
}

const tok = await ChatGLMTokenizer.load(TINY);

/** The reply the CPU reference gives (greedy), as chat prints it, and the history entry it leaves. */
function expected(m: CpuGlm, history: HistoryItem[], query: string) {
  const [ids] = m.generate([tok.buildChatInput(history, query)], {
    maxNewTokens: N,
    stopIds: tok.stopIds,
  });
  const { reply, messages } = parseReply(tok.decode(ids));
  return {
    text: formatReply(reply),
    turn: [
      { role: "user", content: query },
      ...messages.map((m) => ({ role: "assistant", ...m })),
    ] as HistoryItem[],
  };
}

function chat(args: string[], stdin?: string) {
  return runCli(["chat", ...args, "--max-new-tokens", String(N)], stdin);
}

Deno.test("chat --prompt: the tiny base model answers as the reference model does", async () => {
  const want = expected(await cpu(), [], "你好");
  const r = await chat([TINY, "--prompt", "你好"]);
  assert.strictEqual(r.code, 0, r.err);
  assert.strictEqual(r.out, want.text + "\n");
});

Deno.test("chat --prompt: an adapter dir loads its base model and applies the adapter", async () => {
  const want = expected(await cpu(PEFT), [], "hello");
  const base = expected(await cpu(), [], "hello");
  assert.notStrictEqual(want.text, base.text, "the adapter changes the reply");
  const r = await chat([PEFT, "--prompt", "hello"]);
  assert.strictEqual(r.code, 0, r.err);
  assert.strictEqual(r.out, want.text + "\n");
});

Deno.test("chat: an adapter whose base path is wrong says what to edit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = JSON.parse(await Deno.readTextFile(join(PEFT, "adapter_config.json")));
    cfg.base_model_name_or_path = "/nonexistent/chatglm3-6b";
    await Deno.writeTextFile(join(dir, "adapter_config.json"), JSON.stringify(cfg));
    await Deno.copyFile(
      join(PEFT, "adapter_model.safetensors"),
      join(dir, "adapter_model.safetensors"),
    );
    const r = await chat([dir, "--prompt", "hello"]);
    assert.strictEqual(r.code, 1);
    assert.match(r.err, /\/nonexistent\/chatglm3-6b/);
    assert.match(r.err, /base_model_name_or_path/);
    assert.ok(r.err.includes(join(dir, "adapter_config.json")), r.err);
    assert.match(r.err, /--model/);
    assert.doesNotMatch(r.err, /\n\s+at /);
    assert.strictEqual(r.out, "");
    // --model points it at the base instead.
    const ok = await chat([dir, "--model", TINY, "--prompt", "hello"]);
    assert.strictEqual(ok.code, 0, ok.err);
    assert.strictEqual(ok.out, expected(await cpu(PEFT), [], "hello").text + "\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chat: an interactive session keeps history; /reset clears it; /exit ends", async () => {
  const m = await cpu();
  const first = expected(m, [], "hi");
  const second = expected(m, first.turn, "你好");
  const fresh = expected(m, [], "你好");
  assert.notStrictEqual(second.text, fresh.text, "history changes the reply");
  const r = await chat([TINY], "hi\n你好\n/reset\n你好\n/exit\nnever read\n");
  assert.strictEqual(r.code, 0, r.err);
  assert.strictEqual(r.out, [first.text, second.text, fresh.text].map((t) => t + "\n").join(""));
  assert.match(r.err, /history cleared/);
  // A line too long for the context (or a /system that is) is reported; the session and its
  // history go on, so the second message still follows the first.
  const long = "hello world ".repeat(100);
  const kept = await chat([TINY], `hi\n${long}\n/system ${long}\n/observation\n你好\n`);
  assert.strictEqual(kept.code, 0, kept.err);
  assert.strictEqual(kept.out, [first.text, second.text].map((t) => t + "\n").join(""));
  assert.match(
    kept.err,
    /the message makes a prompt of \d+ tokens; .* not sent, the session goes on/,
  );
  assert.match(kept.err, /the system prompt makes a prompt of \d+ tokens/);
  assert.match(kept.err, /\/observation needs the tool's result/);
});

Deno.test("chat: a tokenizer.model with more ids than config.json's vocabulary is named, before any GPU work", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const e of Deno.readDirSync(TINY)) {
      await Deno.copyFile(join(TINY, e.name), join(dir, e.name));
    }
    await Deno.copyFile(
      join(TINY, "..", "tokenizer", "glm_bpe.model"),
      join(dir, "tokenizer.model"),
    );
    const r = await chat([dir, "--prompt", "hello world", "--max-new-tokens", "4"], "");
    assert.strictEqual(r.code, 1, r.err);
    assert.match(
      r.err,
      /tokenizer\.model makes ids up to \d+, but \S+config\.json has padded_vocab_size 384/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("chat: replies are split into metadata and content; tool calls become JSON", () => {
  const call = parseReply("get_weather\n```python\ntool_call(city='北京', days=3)\n```");
  assert.deepStrictEqual(call.reply, {
    kind: "tool_call",
    name: "get_weather",
    parameters: { city: "北京", days: 3 },
  });
  assert.strictEqual(
    formatReply(call.reply),
    '{"name":"get_weather","parameters":{"city":"北京","days":3}}',
  );
  assert.deepStrictEqual(parseReply("\n 你好！ \n").reply, { kind: "text", content: "你好！" });
  assert.deepStrictEqual(parseReply("no break").reply, { kind: "text", content: "no break" });
  assert.deepStrictEqual(parseReply("search\nnot a call").reply, {
    kind: "tagged",
    name: "search",
    content: "not a call",
  });
  // As upstream's process_response: each <|assistant|> starts a part of its own in the history,
  // metadata as generated, a text part stripped by Python's rules (\x1c is space there, \ufeff not);
  // the reply is the last part's.
  const two = parseReply(
    "\nI need the tool.\x1c<|assistant|> get_weather\n```python\ntool_call(city='Paris')\n```",
  );
  assert.deepStrictEqual(two.messages, [
    { metadata: "", content: "I need the tool." },
    { metadata: " get_weather", content: "```python\ntool_call(city='Paris')\n```" },
  ]);
  assert.deepStrictEqual(two.reply, {
    kind: "tool_call",
    name: "get_weather",
    parameters: { city: "Paris" },
  });
  assert.deepStrictEqual(parseReply(" \n\ufeffhi").messages, [{
    metadata: " ",
    content: "\ufeffhi",
  }]);
});

Deno.test("chat: a streamed reply with a later part after <|assistant|> shows that part; Python's strip rules", async () => {
  // A model that says these ids, token by token, whatever it is asked.
  const say = (ids: number[]) =>
    ({
      generate: (_p: number[][], o: { onToken?: (row: number, id: number) => void }) => {
        for (const id of ids) o.onToken?.(0, id);
        return Promise.resolve([ids]);
      },
    }) as unknown as GlmModel;
  const gen = { maxNewTokens: 8, doSample: false, temperature: 1, topP: 1, topK: 50, seed: 1 };
  const cases: [string, string][] = [
    ["\nLet me think.<|assistant|>\nThe answer is 4.", "Let me think.\nThe answer is 4."],
    // \x1c is whitespace to Python's strip, not to JavaScript's trim
    ["\nhi\x1c", "hi"],
  ];
  for (const [text, shown] of cases) {
    const ids = text.split("<|assistant|>").flatMap((t, i) =>
      i ? [tok.special("<|assistant|>"), ...tok.encode(t)] : tok.encode(t)
    );
    const session = new ChatSession(say(ids), tok, gen);
    let out = "";
    const reply = await session.ask("q", (t) => void (out += t));
    assert.strictEqual(out, shown);
    assert.strictEqual(reply.kind === "text" && reply.content, shown.split("\n").at(-1));
  }
});

Deno.test("chat: a dir of pytorch_model-*.bin shards gets evaluate's conversion hint, before any GPU work", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const f of ["config.json", "tokenizer.model"]) {
      await Deno.copyFile(join(TINY, f), join(dir, f));
    }
    // chatglm3-6b's own layout: seven shards and an index; the shards alone here.
    for (const f of ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]) {
      await Deno.writeTextFile(join(dir, f), "");
    }
    await Deno.writeTextFile(join(dir, "eval.jsonl"), '{"input_ids": [1], "output_ids": [2]}\n');
    const [chat, evaluate] = await Promise.all([
      runCli(["chat", dir, "--prompt", "hi"]),
      runCli([
        "stage",
        "evaluate",
        "--model",
        dir,
        "--in",
        join(dir, "eval.jsonl"),
        "--out",
        join(dir, "ev"),
      ]),
    ]);
    assert.strictEqual(chat.code, 1, chat.err);
    assert.match(
      chat.err,
      /^error: \S+: holds PyTorch weights only \(pytorch_model-00001-of-00002\.bin, pytorch_model-00002-of-00002\.bin\); this tool reads safetensors\. Convert once with: python -c "from transformers import AutoModel; .*save_pretrained\(.*safe_serialization=True\)"\n$/,
    );
    assert.strictEqual(chat.err, evaluate.err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
