/**
 * Train and eval records (lib/data/masks.ts) against process_batch /
 * process_batch_eval restated in Python over the same conversations, and the
 * mask stage end to end.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  evalRecords,
  IGNORE_INDEX,
  type MaskIds,
  maskRecords,
  MaskStats,
  trainRecord,
} from "../lib/data/masks.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { fixtureModel, fixturePath, readGzipJson, userError } from "./fixtures/tokenizer/load.ts";
import type { ConversationCase } from "./chatglm_tokenizer_test.ts";
import { runCli, withTempDir } from "./test_util.ts";

interface Fixture {
  n: number;
  limits: [number, number][];
  cases: ConversationCase[];
}

const fx = await readGzipJson<Fixture>("conversations.json.gz");
const tok = new ChatGLMTokenizer(await fixtureModel("glm_bpe.model"));
const ids: MaskIds = { gmask: tok.special("[gMASK]"), sop: tok.special("sop"), eos: tok.eosId };

Deno.test("train records equal process_batch's at every length limit", () => {
  let truncated = 0;
  for (const [i, c] of fx.cases.entries()) {
    for (const [maxIn, maxOut] of fx.limits) {
      const got = trainRecord(c.messages, ids, { maxInputLength: maxIn, maxOutputLength: maxOut });
      const want = c.train[`${maxIn},${maxOut}`];
      assertEquals(got, want, `conversation ${i} at ${maxIn},${maxOut}`);
      if (got.input_ids.length === maxIn + maxOut + 1) truncated++;
    }
  }
  assert(truncated > 20, "the fixtures exercise truncation");
});

Deno.test("eval records equal process_batch_eval's at every length limit", () => {
  let stopped = 0;
  for (const [i, c] of fx.cases.entries()) {
    for (const [maxIn, maxOut] of fx.limits) {
      const got = evalRecords(c.messages, ids, { maxInputLength: maxIn, maxOutputLength: maxOut });
      assertEquals(got, c.eval[`${maxIn},${maxOut}`], `conversation ${i} at ${maxIn},${maxOut}`);
      const assistants = c.messages.filter((m) => m.role === "assistant").length;
      if (got.length < assistants) stopped++;
    }
  }
  assert(stopped > 0, "the fixtures exercise the max_input_length stop");
});

Deno.test("labels are the ids shifted by one flag", () => {
  const msgs = [
    { role: "user", ids: [10, 11], loss: false },
    { role: "assistant", ids: [12, 13, 14], loss: true },
  ];
  const r = trainRecord(msgs, ids, { maxInputLength: 100, maxOutputLength: 100 });
  assertEquals(r.input_ids, [ids.gmask, ids.sop, 10, 11, 12, 13, 14, 2]);
  const X = IGNORE_INDEX;
  // The role token 12 is predicted from 11 (no loss); 13, 14 and eos are learned.
  assertEquals(r.labels, [X, X, X, X, X, 13, 14, 2]);
});

Deno.test("mask_history learns only the last assistant turn", () => {
  const msgs = [
    { role: "user", ids: [10], loss: false },
    { role: "assistant", ids: [20, 21], loss: true },
    { role: "user", ids: [30], loss: false },
    { role: "assistant", ids: [40, 41], loss: true },
  ];
  const limits = { maxInputLength: 100, maxOutputLength: 100 };
  const X = IGNORE_INDEX;
  assertEquals(trainRecord(msgs, ids, limits).labels, [X, X, X, X, 21, 30, X, 41, 2]);
  const history = trainRecord(msgs, ids, limits, { maskHistory: true }).labels;
  assertEquals(history, [X, X, X, X, X, X, X, 41, 2]);
});

async function runMask(args: string[]): Promise<{ code: number; stderr: string; stdout: string }> {
  const { code, out, err } = await runCli(["stage", ...args]);
  return { code, stdout: out, stderr: err };
}

Deno.test("tokenize and mask stages reproduce the reference records", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(fixturePath("glm_bpe.model"), `${dir}/tokenizer.model`);
    const conv = fx.cases.map((c) => JSON.stringify(c.conversation)).join("\n") + "\n";
    await Deno.writeTextFile(`${dir}/conv.jsonl`, conv);
    let r = await runMask([
      "tokenize",
      "--model",
      dir,
      "--in",
      `${dir}/conv.jsonl`,
      "--out",
      `${dir}/tok.jsonl`,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const tokLines = (await Deno.readTextFile(`${dir}/tok.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assertEquals(tokLines.map((t) => t.messages), fx.cases.map((c) => c.messages));

    const [maxIn, maxOut] = fx.limits[1];
    const common = [
      "--in",
      `${dir}/tok.jsonl`,
      "--max-input-length",
      `${maxIn}`,
      "--max-output-length",
      `${maxOut}`,
    ];
    r = await runMask([
      "mask",
      ...common,
      "--out",
      `${dir}/train.jsonl`,
      "--mode",
      "train",
      "--sanity",
      "1",
      "--model",
      dir,
    ]);
    assertEquals(r.code, 0, r.stderr);
    assert(r.stdout.includes(`'<|user|>': ${tok.special("<|user|>")} -> -100`), r.stdout);
    const train = (await Deno.readTextFile(`${dir}/train.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assertEquals(train, fx.cases.map((c) => c.train[`${maxIn},${maxOut}`]));

    r = await runMask(["mask", ...common, "--out", `${dir}/eval.jsonl`, "--mode", "eval"]);
    assertEquals(r.code, 0, r.stderr);
    const evalRecs = (await Deno.readTextFile(`${dir}/eval.jsonl`)).trim().split("\n").map((l) =>
      JSON.parse(l)
    );
    assertEquals(evalRecs, fx.cases.flatMap((c) => c.eval[`${maxIn},${maxOut}`]));

    // Bad records: file, line and field in the message, no output written. The second holds an
    // id past what the model's i32 buffers hold (1e300 is an integer to JavaScript).
    const bad: [string, string][] = [
      ['{"messages": [{"role": "user", "ids": [1, "x"], "loss": false}]}', "expected a token id"],
      [
        '{"messages": [{"role": "assistant", "ids": [377, 1e300], "loss": true}], "prefix": [376, 378], "eos": 2}',
        "expected a token id (an integer from 0 to 2^31 - 1), found 1e+300",
      ],
    ];
    for (const [text, want] of bad) {
      await Deno.writeTextFile(`${dir}/bad.jsonl`, text + "\n");
      r = await runMask([
        "mask",
        "--in",
        `${dir}/bad.jsonl`,
        "--out",
        `${dir}/bad_out.jsonl`,
        "--mode",
        "train",
        "--max-input-length",
        "8",
        "--max-output-length",
        "8",
      ]);
      assertEquals(r.code, 1);
      assert(r.stderr.includes(`${dir}/bad.jsonl:1: messages[0].ids[1]: ${want}`), r.stderr);
      assert(!r.stderr.includes("    at "), r.stderr);
    }
    await Deno.writeTextFile(
      `${dir}/badconv.jsonl`,
      '{"conversations": [{"role": "user", "content": 5}]}\n',
    );
    r = await runMask([
      "tokenize",
      "--model",
      dir,
      "--in",
      `${dir}/badconv.jsonl`,
      "--out",
      `${dir}/x.jsonl`,
    ]);
    assertEquals(r.code, 1);
    assert(r.stderr.includes(`${dir}/badconv.jsonl:1`), r.stderr);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert(!names.includes("bad_out.jsonl") && !names.includes("x.jsonl"), names.join(" "));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("mask stage: missing lengths are a usage error", async () => {
  const e = await userError(async () => {
    const { main } = await import("../stages/mask.ts");
    await main(["--in", "x.jsonl", "--out", "y.jsonl", "--mode", "train"]);
  });
  assert(e.message.includes("--max-input-length") || e.message.includes("--config"), e.message);
});

Deno.test("a prompt that fills max_input_length gives no eval record, as upstream; the stats say why", async () => {
  // Conversation 0 of the fixtures: system 18 tokens, user 20, then the answer. At
  // max_input_length 20, process_batch_eval (restated in Python) gives no record.
  const c = fx.cases[0];
  assertEquals(c.eval["20,10"], []);
  const stats = new MaskStats();
  const limits = { maxInputLength: 20, maxOutputLength: 10 };
  const source = (async function* () {
    yield { line: 7, value: { messages: c.messages, prefix: [ids.gmask, ids.sop], eos: ids.eos } };
  })();
  const out = [];
  for await (const r of maskRecords(source, "dev.tok.jsonl", { ...limits, mode: "eval" }, stats)) {
    out.push(r);
  }
  assertEquals(out, []);
  const why = stats.explain("eval", limits)!;
  assert(
    why.startsWith(
      "1 of 1 conversation gave no eval record: the tokens before the first assistant message " +
        "already reach max_input_length (20), and upstream's process_batch_eval stops there — " +
        "line 7: 40 tokens ([gMASK] sop 2 + system 18 + user 20)",
    ),
    why,
  );
  assertEquals(new MaskStats().explain("eval", limits), undefined);
});

const SHAREGPT = "tests/fixtures/sharegpt-system/dev.json";

Deno.test("mask stage: no eval record is an error naming the limit and the lengths; --allow-empty writes it", async () => {
  await withTempDir(async (dir) => {
    const conv = `${dir}/dev.jsonl`;
    const tokd = `${dir}/dev.tok.jsonl`;
    const out = `${dir}/dev.eval.jsonl`;
    for (
      const args of [
        ["stage", "convert", "--in", SHAREGPT, "--out", conv, "--format", "sharegpt"],
        ["stage", "tokenize", "--model", "data/demo-model", "--in", conv, "--out", tokd],
      ]
    ) assertEquals((await runCli(args)).code, 0);
    const mask = ["stage", "mask", "--in", tokd, "--out", out, "--mode", "eval"];
    const lengths = ["--max-input-length", "64", "--max-output-length", "64"];
    const r = await runCli([...mask, ...lengths]);
    assertEquals(r.code, 1, r.err);
    assertEquals(
      r.err,
      `error: ${tokd}: nothing to evaluate: 2 of 2 conversations gave no eval record: the tokens ` +
        "before the first assistant message already reach max_input_length (64), and upstream's " +
        "process_batch_eval stops there — line 1: 85 tokens ([gMASK] sop 2 + system 69 + user 14); " +
        "line 2: 85 tokens ([gMASK] sop 2 + system 69 + user 14). Raise max_input_length or " +
        "shorten the system prompt and first messages (--allow-empty writes the empty output anyway)\n",
    );
    await Deno.stat(out).then(() => assert(false, "no output on failure"), () => {});
    const allowed = await runCli([...mask, ...lengths, "--allow-empty"]);
    assertEquals(allowed.code, 0, allowed.err);
    assertEquals(await Deno.readTextFile(out), "");
    assert(allowed.err.includes("warning: 2 of 2 conversations gave no eval record"), allowed.err);
    // Long enough for the prompt: both answers become records, and nothing is said.
    const fits = await runCli([...mask, "--max-input-length", "128", "--max-output-length", "64"]);
    assertEquals(fits.code, 0, fits.err);
    assert(fits.err.startsWith("2 conversations -> 2 eval records,"), fits.err);
    assert(!fits.err.includes("warning"), fits.err);
  });
});
