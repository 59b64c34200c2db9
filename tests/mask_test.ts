/**
 * Train and eval records (lib/data/masks.ts) against process_batch /
 * process_batch_eval restated in Python over the same conversations, and the
 * mask stage end to end.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { evalRecords, IGNORE_INDEX, type MaskIds, trainRecord } from "../lib/data/masks.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { fixtureModel, fixturePath, readGzipJson, userError } from "./fixtures/tokenizer/load.ts";
import type { ConversationCase } from "./chatglm_tokenizer_test.ts";
import { runCli } from "./test_util.ts";

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

    // A bad record: file, line and field in the message, no output written.
    await Deno.writeTextFile(
      `${dir}/bad.jsonl`,
      '{"messages": [{"role": "user", "ids": [1, "x"], "loss": false}]}\n',
    );
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
    assert(
      r.stderr.includes(`${dir}/bad.jsonl:1`) && r.stderr.includes("messages[0].ids[1]"),
      r.stderr,
    );
    assert(!r.stderr.includes("    at "), r.stderr);
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
