/**
 * QLoRA on the tiny model: a base whose layers' linear weights are held
 * 4-bit (NF4 with double quantization, FP4 without) — quantized at load,
 * multiplied through the 4-bit matmul — against PyTorch + PEFT on the same
 * base dequantized (tools/make_qlora_fixtures.py), and against the f32 model
 * built on the dequantized weights.
 */
import assert from "node:assert";
import { join } from "node:path";
import { getGpu } from "../lib/gpu/device.ts";
import { createBuffer, readF32 } from "../lib/gpu/runtime.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { loadGlmConfig } from "../lib/model/config.ts";
import { createGlmModel, type GlmModel, memoryWeights } from "../lib/model/glm.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import type { PlanQuantization } from "../lib/model/memory_plan.ts";
import { dequantize4bit, quantizeRaw } from "../lib/model/quant/mod.ts";
import { openWeights } from "../lib/model/weights.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";
import { DEFAULT_TRAIN_ARGS } from "../lib/train/args.ts";
import { loraFiles } from "../lib/train/checkpoint.ts";
import { readMaskedJsonl } from "../lib/train/data.ts";
import { train } from "../lib/train/trainer.ts";
import { flat, maxAbs, readTinyForward } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const TRAJ = join(FIX, "tiny-train");
const config = await loadGlmConfig(TINY);
const LINEAR =
  /^transformer\.encoder\.layers\.\d+\.(self_attention\.(query_key_value|dense)|mlp\.dense_(h_to_4h|4h_to_h))\.weight$/;

interface QloraRun {
  quantization: { quant_type: "nf4" | "fp4"; double_quant: boolean; blocksize: number };
  dequantized_sha256: Record<string, string>;
  learning_rate: number;
  per_device_train_batch_size: number;
  max_steps: number;
  steps: Array<{ step: number; loss: number; grad_norm: number; learning_rate: number }>;
  final: Record<string, { sum: number; sumsq: number }>;
}
const qlora = JSON.parse(await Deno.readTextFile(join(TRAJ, "qlora.json"))) as {
  runs: Record<string, QloraRun>;
};
const unquantized = JSON.parse(await Deno.readTextFile(join(TRAJ, "trajectories.json"))).runs
  .lora_5 as QloraRun;

const quantOf = (r: QloraRun): PlanQuantization => ({
  quantType: r.quantization.quant_type,
  doubleQuant: r.quantization.double_quant,
});
const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

async function sha256(a: Float32Array): Promise<string> {
  const h = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(a.buffer as ArrayBuffer, a.byteOffset, a.byteLength),
  );
  return [...new Uint8Array(h)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The tiny model's tensors, its layers' linear weights replaced by their 4-bit dequantization. */
async function dequantizedBase(q: PlanQuantization) {
  const w = await openWeights(TINY, config);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, shape] of w.expected()) {
    const data = LINEAR.test(name)
      ? dequantize4bit(
        quantizeRaw(await w.raw(name), w.dtype(name), shape, {
          type: q.quantType,
          doubleQuant: q.doubleQuant,
        }),
      )
      : await w.f32(name);
    tensors.set(name, { shape, data });
  }
  return tensors;
}

for (const [name, run] of Object.entries(qlora.runs)) {
  Deno.test(`QLoRA: the base PyTorch trained on dequantizes from ours bit for bit: ${name}`, async () => {
    const base = await dequantizedBase(quantOf(run));
    const names = Object.keys(run.dequantized_sha256);
    assert.equal(names.length, 4 * config.num_layers);
    for (const n of names) {
      assert.equal(await sha256(base.get(n)!.data), run.dequantized_sha256[n], n);
    }
  });

  Deno.test(`QLoRA: 5 AdamW steps of LoRA on a 4-bit tiny base follow PyTorch + PEFT: ${name}`, async () => {
    const gpu = await getGpu();
    const records = await readMaskedJsonl(join(TRAJ, "data.jsonl"));
    const init = await readSafetensorsF32(join(TRAJ, "lora_init.safetensors"));
    const model = await loadGlmModel(gpu, TINY, {
      adapter: { kind: "lora", r: 4, alpha: 32, dropout: 0, targetModules: ["query_key_value"] },
      maxBatch: run.per_device_train_batch_size,
      maxSeq: Math.max(...records.map((r) => r.inputIds.length)),
      seed: 42,
      quantization: quantOf(run),
    });
    const out = await Deno.makeTempDir({ prefix: "qlora-" });
    try {
      model.setParams(new Map([...init].map(([k, t]) => [k, t.data])));
      const res = await train({
        gpu,
        model,
        files: loraFiles({
          shapes: new Map(model.params.map((p) => [p.name, p.shape])),
          r: 4,
          alpha: 32,
          dropout: 0,
          targetModules: ["query_key_value"],
          baseModel: TINY,
        }),
        train: records,
        args: {
          ...DEFAULT_TRAIN_ARGS,
          learningRate: run.learning_rate,
          batchSize: run.per_device_train_batch_size,
          maxSteps: run.max_steps,
          loggingSteps: 1,
          saveStrategy: "no",
          shuffle: false,
        },
        outDir: out,
        progress: null,
        stop: { requested: false },
      });
      const logs = res.logHistory.filter((e) => e.loss !== undefined);
      assert.equal(logs.length, run.steps.length);
      let worst = 0;
      const lines: string[] = [];
      run.steps.forEach((s, k) => {
        const e = logs[k];
        worst = Math.max(worst, rel(e.loss!, s.loss));
        lines.push(
          `  step ${s.step}: ${s.loss.toFixed(6)} PyTorch, ${e.loss!.toFixed(6)} ours, ${
            rel(e.loss!, s.loss).toExponential(1)
          }`,
        );
        assert(rel(e.loss!, s.loss) < 1e-3, `step ${s.step}: loss ${e.loss} vs ${s.loss}`);
        assert(rel(e.grad_norm!, s.grad_norm) < 1e-3, `step ${s.step}: grad_norm`);
      });
      const params = await model.readParams();
      for (const [k, want] of Object.entries(run.final)) {
        let sq = 0;
        for (const x of params.get(k)!) sq += x * x;
        assert(rel(sq, want.sumsq) < 1e-3, `${k} sum of squares ${sq} vs ${want.sumsq}`);
      }
      // The fixture can tell a 4-bit base from the unquantized one: some step's loss on the
      // f32 base lies outside the tolerance.
      assert(run.steps.some((s, k) => rel(unquantized.steps[k].loss, s.loss) > 1e-3));
      console.log(
        `${name}: worst relative loss difference ${worst.toExponential(2)}\n${lines.join("\n")}`,
      );
    } finally {
      model.destroy();
      await Deno.remove(out, { recursive: true });
    }
  });
}

/** Loss and every trainable gradient of one forward/backward on the gradient fixture's batch. */
async function lossAndGrads(m: GlmModel, init?: Map<string, Float32Array>) {
  const gpu = await getGpu();
  const { input_ids, labels } = (await readTinyForward()).grads;
  if (init) m.setParams(init);
  const B = input_ids.length, S = input_ids[0].length;
  let count = 0;
  for (const row of labels) for (let s = 1; s < row.length; s++) if (row[s] !== -100) count++;
  const lossBuf = createBuffer(gpu, 16);
  const enc = gpu.device.createCommandEncoder();
  m.zeroGrads(enc);
  gpu.device.queue.submit([enc.finish()]);
  m.forwardBackward(
    { batch: B, seq: S, inputIds: flat(input_ids), labels: flat(labels) },
    { gradScale: 1 / count, lossBuffer: lossBuf, lossSlot: 0, training: true, dropoutSeed: 5 },
  );
  const loss = (await readF32(gpu, lossBuf))[0] / count;
  lossBuf.destroy();
  const grads = new Map<string, Float32Array>();
  for (const p of m.params) grads.set(p.name, await readF32(gpu, p.grad, p.size));
  return { loss, grads };
}

Deno.test("QLoRA: a 4-bit base computes what the f32 model on its dequantized weights computes", async () => {
  const gpu = await getGpu();
  const tiny = await readTinyForward();
  const adapters: AdapterSpec[] = [
    {
      kind: "lora",
      r: 4,
      alpha: 8,
      dropout: 0.1,
      targetModules: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    },
    { kind: "prefix", preSeqLen: 3, prefixProjection: false, dropout: 0 },
  ];
  for (const q of Object.values(qlora.runs).map(quantOf)) {
    const deq = memoryWeights(await dequantizedBase(q));
    for (const adapter of adapters) {
      for (const gradientCheckpointing of [false, true]) {
        const opts = {
          adapter,
          maxBatch: 2,
          maxSeq: 68,
          seed: 3,
          frozenF16: false,
          gradientCheckpointing,
        };
        const m4 = await loadGlmModel(gpu, TINY, { ...opts, quantization: q });
        const ref = await createGlmModel(gpu, config, deq, opts);
        try {
          const what = `${q.quantType}${q.doubleQuant ? "+dq" : ""} ${adapter.kind}${
            gradientCheckpointing ? ", checkpointing" : ""
          }`;
          // The same adapter tensors in both (their initialisation is seeded alike anyway).
          const init = await ref.readParams();
          const a = await lossAndGrads(m4, init), b = await lossAndGrads(ref, init);
          assert(rel(a.loss, b.loss) < 1e-5, `${what}: loss ${a.loss} vs ${b.loss}`);
          for (const [n, g] of b.grads) {
            const got = a.grads.get(n)!;
            let worst = 0;
            for (let i = 0; i < g.length; i++) worst = Math.max(worst, Math.abs(got[i] - g[i]));
            assert(worst <= 1e-4 * maxAbs(g), `${what}: ${n} differs by ${worst}`);
          }
          if (adapter.kind !== "lora" || gradientCheckpointing) continue;
          const c = tiny.cases[0];
          const la = await m4.logits(flat(c.input_ids), c.batch, c.seq);
          const lb = await ref.logits(flat(c.input_ids), c.batch, c.seq);
          let worst = 0;
          for (let i = 0; i < lb.length; i++) worst = Math.max(worst, Math.abs(la[i] - lb[i]));
          assert(worst <= 1e-5 * maxAbs(lb), `${what}: logits differ by ${worst}`);
          const prompts = tiny.greedy.map((g) => g.prompt);
          const gen = { maxNewTokens: 12, stopIds: [] };
          assert.deepEqual(await m4.generate(prompts, gen), await ref.generate(prompts, gen), what);
        } finally {
          m4.destroy();
          ref.destroy();
        }
      }
    }
  }
});

Deno.test("QLoRA: full fine-tuning of a 4-bit base is refused", async () => {
  const gpu = await getGpu();
  await assert.rejects(
    () =>
      loadGlmModel(gpu, TINY, {
        adapter: { kind: "full" },
        maxBatch: 1,
        maxSeq: 8,
        seed: 1,
        quantization: { quantType: "nf4", doubleQuant: true },
      }),
    /4-bit base is frozen/,
  );
});

// ---- the stages with --set quantization_bit=4 ----

/** What chat prints for `prompt` on the tiny base held 4-bit with `adapterDir`'s LoRA (greedy). */
async function chatReply(
  prompt: string,
  q: PlanQuantization | undefined,
  adapterDir: string,
  n: number,
) {
  const { readAdapterDir, adapterTensorsFor } = await import("../lib/model/adapter_dir.ts");
  const { ChatSession, formatReply } = await import("../lib/eval/chat.ts");
  const { ChatGLMTokenizer } = await import("../lib/tokenizer/chatglm.ts");
  const a = await readAdapterDir(adapterDir);
  const m = await loadGlmModel(await getGpu(), TINY, {
    adapter: a.spec,
    maxBatch: 1,
    maxSeq: 128,
    seed: 42,
    gradientCheckpointing: true,
    ...(q ? { quantization: q } : {}),
  });
  try {
    m.setParams(adapterTensorsFor(m.params, a));
    const session = new ChatSession(m, await ChatGLMTokenizer.load(TINY), {
      maxNewTokens: n,
      doSample: false,
      temperature: 1,
      topP: 1,
      topK: 0,
      seed: 42,
    });
    return formatReply(await session.ask(prompt));
  } finally {
    m.destroy();
  }
}

Deno.test("QLoRA through the stages: train, evaluate and chat with --set quantization_bit=4; the adapter is PEFT's and merges into the unquantized base", async () => {
  const { runCli } = await import("./test_util.ts");
  const dir = await Deno.makeTempDir({ prefix: "qlora-stages-" });
  const data = join(TRAJ, "data.jsonl");
  const q4 = ["--set", "quantization_bit=4"];
  try {
    const train = await runCli([
      "stage",
      "train",
      "--model",
      TINY,
      "--config",
      join(FIX, "config", "upstream", "lora.yaml"),
      "--train",
      data,
      "--out",
      join(dir, "train"),
      "--no-shuffle",
      ...q4,
      "--set",
      "training_args.max_steps=8",
      "--set",
      "training_args.learning_rate=0.01",
      "--set",
      "training_args.per_device_train_batch_size=2",
      "--set",
      "training_args.save_strategy=no",
      "--set",
      "training_args.logging_steps=1",
    ]);
    assert.equal(train.code, 0, train.err);
    assert.match(train.err, /train: lora on a 4-bit NF4, double quantization base \(QLoRA\)/);
    // A plain PEFT LoRA adapter: its config names no quantization.
    const cfg = JSON.parse(await Deno.readTextFile(join(dir, "train", "adapter_config.json")));
    assert.equal(cfg.peft_type, "LORA");
    assert(!JSON.stringify(cfg).includes("quant"), JSON.stringify(cfg));

    // Teacher-forced loss of the training records: on the 4-bit base before and after training,
    // and on the unquantized base (a different number: the flag is honoured).
    const evaluate = async (name: string, ...extra: string[]) => {
      const r = await runCli([
        "stage",
        "evaluate",
        ...(extra.includes("--model") ? [] : ["--model", TINY]),
        "--in",
        data,
        "--out",
        join(dir, name),
        ...extra,
      ]);
      assert.equal(r.code, 0, r.err);
      return JSON.parse(await Deno.readTextFile(join(dir, name, "metrics.json"))).eval_loss;
    };
    const before4 = await evaluate("before4", ...q4);
    const before16 = await evaluate("before16");
    const after4 = await evaluate("after4", "--adapter", join(dir, "train"), ...q4);
    assert(Math.abs(before4 - before16) > 1e-4 * before16, `${before4} vs ${before16}`);
    assert(after4 < 0.9 * before4, `loss ${before4} → ${after4}`);
    // The same base from a config that asks for it.
    const cfgFile = join(dir, "q.yaml");
    await Deno.writeTextFile(
      cfgFile,
      (await Deno.readTextFile(join(FIX, "config", "upstream", "lora.yaml"))) +
        "quantization_bit: 4\n",
    );
    assert.equal(await evaluate("before4cfg", "--config", cfgFile), before4);

    // chat on the 4-bit base with the adapter: what the 4-bit model in this process says.
    const want = await chatReply(
      "你好",
      { quantType: "nf4", doubleQuant: true },
      join(dir, "train"),
      8,
    );
    // (the unquantized base answers otherwise, so the comparison tells the two apart)
    assert.notEqual(await chatReply("你好", undefined, join(dir, "train"), 8), want);
    const chat = await runCli([
      "chat",
      join(dir, "train"),
      "--model",
      TINY,
      "--prompt",
      "你好",
      "--max-new-tokens",
      "8",
      ...q4,
    ]);
    assert.equal(chat.code, 0, chat.err);
    assert.equal(chat.out, want + "\n");
    const bad = await runCli(["chat", TINY, "--prompt", "x", "--set", "temperature=2"]);
    assert(bad.code !== 0 && /chat takes only the quantization keys/.test(bad.err), bad.err);

    // merge-adapter: into the unquantized base, as PEFT advises for a QLoRA adapter.
    const merge = await runCli([
      "stage",
      "merge-adapter",
      "--model",
      TINY,
      "--adapter",
      join(dir, "train"),
      "--out",
      join(dir, "merged"),
    ]);
    assert.equal(merge.code, 0, merge.err);
    const merged = await evaluate("merged-eval", "--model", join(dir, "merged"));
    const after16 = await evaluate("after16", "--adapter", join(dir, "train"));
    // The merged model is base + adapter in f16/f32 (not the 4-bit base): it scores as the
    // unquantized base with the adapter does.
    assert(Math.abs(merged - after16) <= 1e-3 * after16, `${merged} vs ${after16}`);

    // The torch engine refuses a 4-bit base, saying why.
    const torch = await runCli([
      "stage",
      "train",
      "--engine",
      "torch",
      "--model",
      TINY,
      "--config",
      join(FIX, "config", "upstream", "lora.yaml"),
      "--train",
      data,
      "--out",
      join(dir, "torch"),
      ...q4,
    ]);
    assert(torch.code !== 0 && /needs bitsandbytes/.test(torch.err), torch.err);
    assert(!/\bat /.test(torch.err), torch.err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
