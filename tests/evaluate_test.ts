/**
 * evaluate against the PyTorch fixtures of the tiny model: greedy predictions
 * (tiny-expected/forward.json `greedy`), the loss of label records (`cases`),
 * a LoRA adapter written by PEFT against the CPU reference model with that
 * adapter, metrics-only scoring against the reference scores of
 * tests/fixtures/metrics/pairs.json, and file:line errors for bad input.
 */
import assert from "node:assert";
import { join } from "node:path";
import { evaluate, type EvaluateOptions, evaluateRecords } from "../lib/eval/evaluate.ts";
import { getGpu } from "../lib/gpu/device.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { ChatGLMTokenizer } from "../lib/tokenizer/chatglm.ts";
import { adapterTensorsFor, readAdapterDir } from "../lib/model/adapter_dir.ts";
import { type CpuGlm, loadCpuGlm } from "../lib/model/cpu/glm.ts";
import { UserError } from "../lib/errors.ts";
import { readTinyForward, runCli } from "./test_util.ts";
import { OUTPUT_MARKER } from "../lib/outdir.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");
const forward = await readTinyForward();
const STOP = [2, forward.special["<|user|>"], forward.special["<|observation|>"]];

const GREEDY = {
  maxNewTokens: 32,
  doSample: false,
  temperature: 1,
  topP: 1,
  topK: 50,
  seed: 42,
};

async function writeJsonl(path: string, recs: unknown[]): Promise<void> {
  await Deno.writeTextFile(path, recs.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

async function readJsonl(path: string): Promise<Record<string, unknown>[]> {
  return (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
}

function opts(dir: string, input: string, extra: Partial<EvaluateOptions> = {}): EvaluateOptions {
  return {
    modelDir: TINY,
    input,
    outDir: join(dir, "out"),
    batchSize: 2,
    generation: GREEDY,
    segmenter: "char",
    quiet: true,
    ...extra,
  };
}

/** Cut a greedy run at the first stop id, as generation with stop ids does. */
function untilStop(tokens: number[]): number[] {
  const i = tokens.findIndex((t) => STOP.includes(t));
  return i < 0 ? tokens : tokens.slice(0, i);
}

async function cpuModel(adapterDir?: string): Promise<CpuGlm> {
  if (!adapterDir) return await loadCpuGlm(TINY, { kind: "none" });
  const a = await readAdapterDir(adapterDir);
  const m = await loadCpuGlm(TINY, a.spec);
  m.setParams(a.tensors);
  return m;
}

Deno.test("evaluate: greedy predictions of the tiny model equal PyTorch's", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = join(dir, "eval.jsonl");
    // The second record's label ends in eos, which the label text leaves out.
    await writeJsonl(
      input,
      forward.greedy.map((g: { prompt: number[] }, i: number) => ({
        input_ids: g.prompt,
        output_ids: i === 0 ? [283, 13, 2] : [2],
      })),
    );
    const m = await evaluate(opts(dir, input));
    const preds = await readJsonl(join(dir, "out/predictions.jsonl"));
    assert.strictEqual(preds.length, forward.greedy.length);
    forward.greedy.forEach((g: { tokens: number[] }, i: number) => {
      assert.deepStrictEqual(preds[i].prediction_ids, untilStop(g.tokens), `record ${i}`);
      assert.strictEqual(preds[i].index, i);
      assert.strictEqual(typeof preds[i].prediction, "string");
      assert.strictEqual(typeof preds[i].label, "string");
    });
    assert.strictEqual(m.examples, 2);
    for (const k of ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "bleu-4 (x100)"]) {
      assert.strictEqual(typeof m[k], "number", k);
    }
    const onDisk = JSON.parse(await Deno.readTextFile(join(dir, "out/metrics.json")));
    assert.deepStrictEqual(onDisk, m);
    // Nothing partial is left once the run completes; the marker says whose dir it is.
    assert.deepStrictEqual(
      [...Deno.readDirSync(join(dir, "out"))].map((e) => e.name).sort(),
      [OUTPUT_MARKER, "metrics.json", "predictions.jsonl"],
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate: a prediction that stops at <|user|> has it in its text, as upstream decodes it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tok = await ChatGLMTokenizer.load(TINY);
    // The tiny model's greedy reply to this prompt ends at <|user|> after 12 tokens (CPU
    // reference); upstream decodes the generated ids with the one that stopped them.
    const prompt = tok.buildChatInput([], "q7 ");
    const cpu = await loadCpuGlm(TINY, { kind: "none" });
    const [ref] = cpu.generate([prompt], { maxNewTokens: 32, stopIds: [] });
    const at = ref.findIndex((t) => STOP.includes(t));
    assert.strictEqual(ref[at], forward.special["<|user|>"]);
    const input = join(dir, "eval.jsonl");
    await writeJsonl(input, [{ input_ids: prompt, output_ids: [2] }]);
    await evaluate(opts(dir, input));
    const [p] = await readJsonl(join(dir, "out/predictions.jsonl"));
    assert.deepStrictEqual(p.prediction_ids, ref.slice(0, at));
    assert.strictEqual(p.prediction, tok.decode(ref.slice(0, at + 1)).trim());
    assert.ok((p.prediction as string).endsWith("<|user|>"), String(p.prediction));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate: label records give the fixture loss", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Each fixture case's loss is the mean over the valid targets of its rows,
    // i.e. the token-weighted mean of the per-record losses evaluate reports.
    for (const c of forward.cases) {
      const input = join(dir, `${c.name}.jsonl`);
      await writeJsonl(
        input,
        c.input_ids.map((ids: number[], b: number) => ({
          input_ids: ids.slice(0, c.lengths[b]),
          labels: c.labels[b].slice(0, c.lengths[b]),
        })),
      );
      const m = await evaluate(opts(dir, input, { frozenF16: false, outDir: join(dir, c.name) }));
      const loss = m.eval_loss as number;
      assert.ok(Math.abs(loss - c.loss) <= 1e-4 * c.loss, `${c.name}: ${loss} vs ${c.loss}`);
      const preds = await readJsonl(join(dir, c.name, "predictions.jsonl"));
      let sum = 0, n = 0;
      for (const p of preds) {
        sum += (p.loss as number) * (p.n_tokens as number);
        n += p.n_tokens as number;
      }
      assert.strictEqual(n, m.eval_tokens);
      assert.ok(Math.abs(sum / n - c.loss) <= 1e-4 * c.loss);
    }
    // Frozen weights in f16 (the default) stay close.
    const c = forward.cases[0];
    const m = await evaluate(opts(dir, join(dir, `${c.name}.jsonl`), { outDir: join(dir, "f16") }));
    assert.ok(Math.abs((m.eval_loss as number) - c.loss) <= 2e-3 * c.loss);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate: --adapter (PEFT LoRA) changes predictions and follows base + adapter", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = join(dir, "eval.jsonl");
    const prompts: number[][] = forward.greedy.map((g: { prompt: number[] }) => g.prompt);
    await writeJsonl(input, prompts.map((p) => ({ input_ids: p, output_ids: [2] })));
    const base = await evaluate(opts(dir, input, { frozenF16: false, outDir: join(dir, "base") }));
    const lora = await evaluate(
      opts(dir, input, { frozenF16: false, adapterDir: PEFT, outDir: join(dir, "lora") }),
    );
    assert.strictEqual(base.examples, lora.examples);
    const bp = await readJsonl(join(dir, "base/predictions.jsonl"));
    const lp = await readJsonl(join(dir, "lora/predictions.jsonl"));
    const cpu = (await cpuModel(PEFT)).generate(prompts, { maxNewTokens: 32, stopIds: STOP });
    prompts.forEach((_, i) => {
      assert.deepStrictEqual(lp[i].prediction_ids, cpu[i], `record ${i}: base + adapter`);
    });
    // The logits behind them: the adapter as evaluate loads it, against the reference with it.
    const a = await readAdapterDir(PEFT);
    const gpuModel = await loadGlmModel(await getGpu(), TINY, {
      adapter: a.spec,
      frozenF16: false,
      maxBatch: 1,
      maxSeq: 64,
      seed: 1,
    });
    try {
      gpuModel.setParams(adapterTensorsFor(gpuModel.params, a));
      const ids = Int32Array.from(prompts[1]);
      const got = await gpuModel.logits(ids, 1, ids.length);
      const want = (await cpuModel(PEFT)).logits(ids, 1, ids.length);
      let max = 0, diff = 0;
      for (let i = 0; i < want.length; i++) {
        max = Math.max(max, Math.abs(want[i]));
        diff = Math.max(diff, Math.abs(got[i] - want[i]));
      }
      assert.ok(diff <= 1e-4 * max, `logits: max |Δ| ${diff}, max |logit| ${max}`);
    } finally {
      gpuModel.destroy();
    }
    assert.notDeepStrictEqual(
      lp.map((p) => p.prediction_ids),
      bp.map((p) => p.prediction_ids),
      "the adapter changes the predictions",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate --metrics-only: the reference scores of the demo pairs", async () => {
  const ref = JSON.parse(await Deno.readTextFile(join(FIX, "metrics/pairs.json")));
  const pairs = ref.pairs.slice(0, 24) as {
    prediction: string;
    label: string;
    scores: Record<string, number>;
  }[];
  const dir = await Deno.makeTempDir();
  try {
    const input = join(dir, "preds.jsonl");
    await writeJsonl(input, pairs.map((p) => ({ prediction: p.prediction, label: p.label })));
    const m = await evaluate({
      input,
      outDir: join(dir, "out"),
      batchSize: 1,
      generation: GREEDY,
      segmenter: "jieba",
      metricsOnly: true,
      quiet: true,
    });
    for (const k of ["rouge-1", "rouge-2", "rouge-l", "bleu-4"]) {
      const want = pairs.reduce((a, p) => a + p.scores[k], 0) / pairs.length;
      assert.ok(Math.abs((m[k] as number) - want) <= 1e-6, `${k}: ${m[k]} vs ${want}`);
    }
    assert.strictEqual(m.count, pairs.length);
    const preds = await readJsonl(join(dir, "out/predictions.jsonl"));
    preds.forEach((p, i) => assert.deepStrictEqual(p.scores, pairs[i].scores));

    // --limit reads only the first N records.
    const lim = await evaluate({
      input,
      outDir: join(dir, "lim"),
      batchSize: 1,
      generation: GREEDY,
      segmenter: "jieba",
      metricsOnly: true,
      quiet: true,
      limit: 3,
    });
    assert.strictEqual(lim.examples, 3);

    // From standard input, through the CLI.
    const o = await runCli(
      ["stage", "evaluate", "--metrics-only", "--in", "-", "--out", join(dir, "stdin")],
      await Deno.readTextFile(input),
    );
    assert.strictEqual(o.code, 0, o.err);
    const fromStdin = JSON.parse(await Deno.readTextFile(join(dir, "stdin/metrics.json")));
    for (const k of ["rouge-1", "rouge-2", "rouge-l", "bleu-4", "count"]) {
      assert.strictEqual(fromStdin[k], m[k], k);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate: bad records are reported with file, line and field", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [string, string, RegExp, boolean][] = [
      [
        '{"input_ids": [1, 2], "output_ids": [3]}\n{"input_ids": "x", "output_ids": [3]}\n',
        "",
        /:2: input_ids: expected an array/,
        false,
      ],
      ['{"input_ids": [376, 378]}\n', "", /:1: expected output_ids .* or labels/, false],
      [
        '{"input_ids": [1, 2], "labels": [1]}\n',
        "",
        /:1: labels: has 1 entries, input_ids has 2/,
        false,
      ],
      [
        '{"input_ids": [376, 378, 99999], "output_ids": [2]}\n',
        "",
        /:1: input_ids\[2\]: token id 99999 is outside/,
        false,
      ],
      [
        '{"input_ids": [376, 378, 5], "output_ids": [999999, 2]}\n',
        "",
        /:1: output_ids\[0\]: token id 999999 is outside/,
        false,
      ],
      ['{"prediction": "a", "label": 3}\n', "", /:1: label: expected a string/, true],
      ['{"prediction": "a", "label": "b"}\nnot json\n', "", /:2: /, true],
    ];
    for (const [text, , re, metricsOnly] of cases) {
      const input = join(dir, "bad.jsonl");
      await Deno.writeTextFile(input, text);
      await assert.rejects(
        () => evaluate({ ...opts(dir, input), metricsOnly }),
        (e: Error) => e instanceof UserError && re.test(e.message) && e.message.includes(input),
        `${text} → ${re}`,
      );
    }

    // --model that is missing, or an adapter.
    const one = join(dir, "one.jsonl");
    await Deno.writeTextFile(one, '{"input_ids": [376, 378, 5], "output_ids": [7, 2]}\n');
    await assert.rejects(
      () => evaluate(opts(dir, one, { modelDir: join(dir, "nope"), outDir: join(dir, "o1") })),
      /--model \S+nope: no such model directory/,
    );
    await assert.rejects(
      () =>
        evaluate(
          opts(dir, one, { modelDir: join(FIX, "tiny-lora-peft"), outDir: join(dir, "o2") }),
        ),
      /is an adapter directory; pass it as --adapter, with its base model as --model/,
    );

    // More new tokens than generation can reach: refused before the model loads, nothing written.
    const gen = join(dir, "gen.jsonl");
    await Deno.writeTextFile(gen, '{"input_ids": [376, 378, 5], "output_ids": [7, 2]}\n');
    await assert.rejects(
      () =>
        evaluate(
          opts(dir, gen, { generation: { ...GREEDY, maxNewTokens: 1e9 }, batchSize: 30000 }),
        ),
      (e: Error) =>
        e instanceof UserError &&
        /max_new_tokens 1000000000: with prompts of up to 3 tokens, generation would reach 1000000003 positions; at most 32768/
          .test(e.message),
    );
    assert.ok(!(await Deno.stat(join(dir, "gen-out")).then(() => true, () => false)));

    // Through the CLI: exit 1, the message, no stack trace, no predictions.jsonl.
    const input = join(dir, "bad.jsonl");
    await Deno.writeTextFile(input, '{"input_ids": [1], "output_ids": "x"}\n');
    const { code, err } = await runCli(
      ["stage", "evaluate", "--model", TINY, "--in", input, "--out", join(dir, "cli")],
    );
    assert.strictEqual(code, 1, err);
    assert.match(err, /bad\.jsonl:1: output_ids: expected an array of integer token ids/);
    assert.doesNotMatch(err, /\n\s+at /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluate: --adapter with a P-Tuning v2 dir follows the reference model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const adapter = join(dir, "prefix");
    await Deno.mkdir(adapter);
    await Deno.copyFile(
      join(FIX, "tiny-train/prefix_proj_init.safetensors"),
      join(adapter, "prefix_encoder.safetensors"),
    );
    await Deno.writeTextFile(
      join(adapter, "prefix_config.json"),
      JSON.stringify({ pre_seq_len: 4, prefix_projection: true, base_model_name_or_path: TINY }),
    );
    const input = join(dir, "eval.jsonl");
    const prompts: number[][] = forward.greedy.map((g: { prompt: number[] }) => g.prompt);
    await writeJsonl(input, prompts.map((p) => ({ input_ids: p, output_ids: [2] })));
    await evaluate(opts(dir, input, { frozenF16: false, adapterDir: adapter }));
    const got = await readJsonl(join(dir, "out/predictions.jsonl"));
    const cpu = (await cpuModel(adapter)).generate(prompts, { maxNewTokens: 32, stopIds: STOP });
    prompts.forEach((_, i) => assert.deepStrictEqual(got[i].prediction_ids, cpu[i], `record ${i}`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("evaluateRecords: mixed records stream out in input order, as the file form gives them", async () => {
  const c = forward.cases[2];
  const records = [
    { input_ids: forward.greedy[0].prompt, output_ids: [2] },
    { input_ids: c.input_ids[0], labels: c.labels[0] },
    { input_ids: forward.greedy[1].prompt, output_ids: [2] },
    { input_ids: forward.greedy[0].prompt, output_ids: [2] },
  ];
  const model = await loadGlmModel(await getGpu(), TINY, {
    adapter: { kind: "none" },
    frozenF16: false,
    maxBatch: 2,
    maxSeq: 32,
    seed: 1,
  });
  try {
    const predictor = {
      model,
      tokenizer: await ChatGLMTokenizer.load(TINY),
      generation: GREEDY,
      batchSize: 2,
    };
    const stream = (async function* () {
      yield* records;
    })();
    const out = [];
    for await (const r of evaluateRecords(stream, { predictor, segmenter: "char" })) out.push(r);
    assert.deepStrictEqual(out.map((r) => r.index), [0, 1, 2, 3]);
    assert.deepStrictEqual(out[0].prediction_ids, untilStop(forward.greedy[0].tokens));
    assert.deepStrictEqual(out[2].prediction_ids, untilStop(forward.greedy[1].tokens));
    assert.deepStrictEqual(out[3].prediction_ids, out[0].prediction_ids);
    assert.ok(Math.abs((out[1].loss as number) - c.loss) <= 1e-4 * c.loss);

    await assert.rejects(async () => {
      for await (const _ of evaluateRecords([{ input_ids: [1], labels: [1, 2] }], { predictor })) {
        // drain
      }
    }, /records:1: labels: has 2 entries/);
  } finally {
    model.destroy();
  }
  // Texts need no model.
  const texts = [];
  for await (
    const r of evaluateRecords([{ prediction: "a b c", label: "a b d" }], {
      metricsOnly: true,
      segmenter: "space",
    })
  ) texts.push(r);
  assert.strictEqual(texts.length, 1);
  assert.ok((texts[0].scores as Record<string, number>)["rouge-1"] > 0);
});

Deno.test("generation settings out of the config's ranges are refused in evaluate --set and chat flags", async () => {
  const cases: [string[], RegExp][] = [
    // the config schema's ranges, as with --config
    [
      ["stage", "evaluate", "--set", "top_p=2"],
      /top_p: must be <= 1, got 2 \(from --set top_p=2\)/,
    ],
    [
      ["stage", "evaluate", "--set", "max_new_tokens=0"],
      /max_new_tokens: must be >= 1, got 0 \(from --set max_new_tokens=0\)/,
    ],
    [["chat", TINY, "--prompt", "hi", "--top-p", "2"], /--top-p: expected a number from 0 to 1/],
  ];
  for (const [args, re] of cases) {
    const full = args[0] === "stage"
      ? [...args, "--model", TINY, "--in", "/dev/null", "--out", "/nonexistent/x"]
      : args;
    const { code, err } = await runCli(full);
    assert.strictEqual(code, 1, err);
    assert.match(err, re);
  }
  // and a --model that names a file, said before the output dir is made
  const out = await Deno.makeTempDir();
  try {
    const { code, err } = await runCli([
      "stage",
      "evaluate",
      "--model",
      join(TINY, "config.json"),
      "--in",
      "/dev/null",
      "--out",
      join(out, "x"),
    ]);
    assert.strictEqual(code, 1, err);
    assert.match(err, /config\.json: a file, not a model directory/);
    assert.deepStrictEqual([...Deno.readDirSync(out)], []);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("evaluate --config: generation settings by their short names set the config's generation_config", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const input = join(dir, "eval.jsonl");
    await writeJsonl(input, [{ input_ids: forward.greedy[0].prompt, output_ids: [2] }]);
    const out = join(dir, "out");
    const { code, err } = await runCli([
      "stage",
      "evaluate",
      "--model",
      TINY,
      "--in",
      input,
      "--out",
      out,
      "--config",
      "tests/fixtures/torch/lora.yaml",
      "--set",
      "generation_config.max_new_tokens=3",
      "--set",
      "top_k=1",
      "--set",
      "generation_config.seed=5",
      // a pipeline's unset value: no override, as without --config
      "--set",
      "temperature=null",
      // accepted, but not applied by generation here: said
      "--set",
      "training_args.generation_config.repetition_penalty=1.2",
    ]);
    assert.strictEqual(code, 0, err);
    assert.match(
      err,
      /not applied by generation here, ignored: training_args\.generation_config\.repetition_penalty/,
    );
    const [p] = await readJsonl(join(out, "predictions.jsonl"));
    assert.deepStrictEqual(p.prediction_ids, untilStop(forward.greedy[0].tokens).slice(0, 3));
    // Sampled: generation_config.seed is the config's training_args.seed, and a seed counts.
    const sampled = async (name: string, ...sets: string[]) => {
      const o = join(dir, name);
      const r = await runCli([
        "stage",
        "evaluate",
        "--model",
        TINY,
        "--in",
        input,
        "--out",
        o,
        "--config",
        "tests/fixtures/torch/lora.yaml",
        ...["do_sample=true", "top_k=0", "max_new_tokens=8", ...sets].flatMap((x) => ["--set", x]),
      ]);
      assert.strictEqual(r.code, 0, r.err);
      return (await readJsonl(join(o, "predictions.jsonl")))[0].prediction_ids;
    };
    const a = await sampled("a", "generation_config.seed=5");
    assert.deepStrictEqual(await sampled("b", "training_args.seed=5"), a);
    assert.notDeepStrictEqual(await sampled("c", "generation_config.seed=6"), a);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
