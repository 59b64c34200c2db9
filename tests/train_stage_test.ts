import { deepStrictEqual, match as assertMatch, ok as assert, rejects } from "node:assert";
import { main } from "../stages/train.ts";
import { readInitAdapter } from "../lib/train/run.ts";
import { loadGlmModel } from "../lib/model/load.ts";
import { UserError } from "../lib/errors.ts";
import { join } from "node:path";
import { getGpu } from "../lib/gpu/device.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { DEFAULT_TRAIN_ARGS } from "../lib/train/args.ts";
import { loraFiles } from "../lib/train/checkpoint.ts";
import { readMaskedJsonl } from "../lib/train/data.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";
import { train } from "../lib/train/trainer.ts";
import { runCli, tinyAdapter } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const TRAJ = join(FIX, "tiny-train");

interface Run {
  adapter: {
    kind: string;
    r?: number;
    lora_alpha?: number;
    target_modules?: string[];
    pre_seq_len?: number;
    prefix_projection?: boolean;
  };
  init: string;
  max_steps: number;
  gradient_accumulation_steps: number;
  weight_decay: number;
  learning_rate: number;
  per_device_train_batch_size: number;
  steps: Array<{ step: number; loss: number; grad_norm: number; learning_rate: number }>;
  final: Record<string, { sum: number; sumsq: number }>;
}

const specOf = (r: Run): AdapterSpec => tinyAdapter(r.adapter.kind, r.adapter);

/**
 * Train `name` from its initial tensors; with `stopAt`, stop there (as Ctrl-C does) and resume in a
 * fresh model; with `rowsPerPass`, feed each micro-batch that many records at a time.
 */
async function golden(name: string, stopAt?: number, rowsPerPass?: number) {
  const doc = JSON.parse(await Deno.readTextFile(join(TRAJ, "trajectories.json")));
  const run: Run = doc.runs[name];
  const gpu = await getGpu();
  const records = await readMaskedJsonl(join(TRAJ, "data.jsonl"));
  const init = await readSafetensorsF32(join(TRAJ, run.init));
  const makeModel = async () => {
    const m = await loadGlmModel(gpu, TINY, {
      adapter: specOf(run),
      maxBatch: rowsPerPass ?? run.per_device_train_batch_size,
      maxSeq: Math.max(...records.map((r) => r.inputIds.length)),
      seed: 42,
    });
    const wanted = new Set(m.params.map((p) => p.name));
    m.setParams(new Map([...init].filter(([k]) => wanted.has(k)).map(([k, t]) => [k, t.data])));
    return m;
  };
  const out = await Deno.makeTempDir({ prefix: "golden-" });
  const session = async (resume: boolean) => {
    const model = await makeModel();
    const stop = { requested: false };
    try {
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
          weightDecay: run.weight_decay,
          batchSize: run.per_device_train_batch_size,
          accumulation: run.gradient_accumulation_steps,
          maxSteps: run.max_steps,
          loggingSteps: 1,
          saveStrategy: "no",
          shuffle: false,
        },
        outDir: out,
        progress: null,
        stop,
        rowsPerPass,
        onStep: (k) => {
          if (!resume && k === stopAt) stop.requested = true;
        },
        ...(resume ? { resume: "yes" as const } : {}),
      });
      return { res, params: await model.readParams() };
    } finally {
      model.destroy();
    }
  };
  try {
    let { res, params } = await session(false);
    if (stopAt !== undefined) {
      assert(res.interrupted && res.globalStep === stopAt);
      ({ res, params } = await session(true));
    }
    const logs = res.logHistory.filter((e) => e.loss !== undefined);
    assert(logs.length === run.steps.length);
    const rel = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    let worst = 0;
    run.steps.forEach((s, k) => {
      const e = logs[k];
      worst = Math.max(worst, rel(e.loss!, s.loss));
      assert(rel(e.loss!, s.loss) < 1e-3, `${name} step ${s.step}: loss ${e.loss} vs ${s.loss}`);
      assert(
        rel(e.grad_norm!, s.grad_norm) < 1e-3,
        `${name} step ${s.step}: grad_norm ${e.grad_norm} vs ${s.grad_norm}`,
      );
      assert(Math.abs(e.learning_rate! - s.learning_rate) < 1e-9, `${name} step ${s.step}: lr`);
    });
    // Final tensors: sum of squares per tensor (weight decay only where HF applies it).
    for (const [k, want] of Object.entries(run.final)) {
      const t = params.get(k);
      assert(t, `${name}: no trainable tensor ${k}`);
      let sq = 0;
      for (const x of t) sq += x * x;
      assert(rel(sq, want.sumsq) < 1e-3, `${name}: ${k} sum of squares ${sq} vs ${want.sumsq}`);
    }
    console.log(`${name}: worst per-step loss relative difference ${worst.toExponential(2)}`);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

for (const name of ["lora_5", "lora_5_ga2", "prefix_5", "prefix_proj_5", "full_5", "full_5_wd"]) {
  Deno.test(`5 AdamW steps on the tiny model follow PyTorch: ${name}`, () => golden(name));
}

// A model sized for one record, fed batches of two as two passes: the same trajectory.
for (const name of ["lora_5", "full_5"]) {
  Deno.test(`batches run as passes of one record follow PyTorch too: ${name}`, () =>
    golden(name, undefined, 1));
}

Deno.test("20 LoRA steps stopped at 10 and resumed follow PyTorch's uninterrupted run", () =>
  golden("lora_20", 10));

// ---- the train stage on the tiny model ----

const DATA = join(TRAJ, "data.jsonl");
const UPSTREAM = join(FIX, "config", "upstream");
const CHECK_IDS = [248, 250, 253, 30, 40, 50, 254, 60, 70];

/** Our logits with a LoRA dir loaded as --init-adapter does, vs what PEFT computed for the same dir. */
async function compareWithPeft(adapterDir: string, checkFile: string) {
  const check = JSON.parse(await Deno.readTextFile(join(FIX, "train", checkFile)));
  deepStrictEqual(check.missing, []);
  deepStrictEqual(check.unexpected, []);
  const cfg = JSON.parse(await Deno.readTextFile(join(adapterDir, "adapter_config.json")));
  const spec: AdapterSpec = {
    kind: "lora",
    r: cfg.r,
    alpha: cfg.lora_alpha,
    dropout: 0,
    targetModules: [...cfg.target_modules],
  };
  const gpu = await getGpu();
  // f32 base weights: PEFT ran the f32 model (f16 storage alone moves logits by ~1e-3).
  const model = await loadGlmModel(gpu, TINY, {
    adapter: spec,
    maxBatch: 1,
    maxSeq: 16,
    seed: 1,
    frozenF16: false,
  });
  try {
    model.setParams(await readInitAdapter(adapterDir, spec));
    const logits = await model.logits(Int32Array.from(CHECK_IDS), 1, CHECK_IDS.length);
    const V = logits.length / CHECK_IDS.length;
    let worst = 0;
    check.logits.forEach((row: { head: number[]; sum: number }, i: number) => {
      row.head.forEach((want, j) => worst = Math.max(worst, Math.abs(logits[i * V + j] - want)));
      let sum = 0;
      for (let j = 0; j < V; j++) sum += logits[i * V + j];
      assert(Math.abs(sum - row.sum) < 2e-3, `row ${i} sum ${sum} vs ${row.sum}`);
    });
    assert(worst < 1e-4, `max |logit - PEFT logit| = ${worst}`);
    // The adapter changes the model by more than the tolerance, so the check means something.
    assert(check.max_abs_logit_change > 1e-3);
  } finally {
    model.destroy();
  }
}

Deno.test("a PEFT-written LoRA adapter loads with --init-adapter and gives PEFT's logits", () =>
  compareWithPeft(join(FIX, "tiny-lora-peft"), "peft_check_fixture.json"));

Deno.test("the LoRA adapter we write loads in PEFT (tools/check_peft_load.py record) with the same logits", async () => {
  await compareWithPeft(join(FIX, "train", "ours-lora"), "peft_check_ours.json");
  // The recorded dir is what our writer produces today: rewrite it and compare the config.
  const dir = join(FIX, "train", "ours-lora");
  const cfg = JSON.parse(await Deno.readTextFile(join(dir, "adapter_config.json")));
  const tensors = await readSafetensorsF32(join(dir, "adapter_model.safetensors"));
  const out = await Deno.makeTempDir();
  const files = loraFiles({
    shapes: new Map([...tensors].map(([k, t]) => [k, t.shape])),
    r: cfg.r,
    alpha: cfg.lora_alpha,
    dropout: cfg.lora_dropout,
    targetModules: cfg.target_modules,
    baseModel: cfg.base_model_name_or_path,
  });
  await files.write(out, new Map([...tensors].map(([k, t]) => [k, t.data])));
  deepStrictEqual(
    await Deno.readTextFile(join(out, "adapter_config.json")),
    await Deno.readTextFile(join(dir, "adapter_config.json")),
  );
  deepStrictEqual(
    await Deno.readFile(join(out, "adapter_model.safetensors")),
    await Deno.readFile(join(dir, "adapter_model.safetensors")),
  );
  await Deno.remove(out, { recursive: true });
});

function quiet<T>(f: () => Promise<T>): Promise<T> {
  const err = console.error;
  console.error = () => {};
  return f().finally(() => console.error = err);
}

Deno.test("upstream lora / ptuning_v2 / sft configs drive a run unchanged (max_steps=2)", async () => {
  const expected: Record<string, string[]> = {
    "lora.yaml": ["adapter_config.json", "adapter_model.safetensors"],
    "ptuning_v2.yaml": ["prefix_config.json", "prefix_encoder.safetensors"],
    "sft.yaml": ["config.json", "model.safetensors", "tokenizer.model"],
  };
  for (const [cfg, files] of Object.entries(expected)) {
    const out = await Deno.makeTempDir({ prefix: "stage-" });
    const code = await quiet(() =>
      main([
        "--model",
        TINY,
        "--config",
        join(UPSTREAM, cfg),
        "--train",
        DATA,
        "--out",
        out,
        "--set",
        "training_args.max_steps=2",
      ])
    );
    assert(code === 0, `${cfg}: exit ${code}`);
    const names = new Set([...Deno.readDirSync(out)].map((e) => e.name));
    for (const f of [...files, "trainer_state.json", "metrics.jsonl", "checkpoint-2"]) {
      assert(names.has(f), `${cfg}: ${f} missing from ${[...names]}`);
    }
    const st = JSON.parse(await Deno.readTextFile(join(out, "trainer_state.json")));
    assert(st.global_step === 2 && st.max_steps === 2);
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("positional form reads data_config files in DATA_DIR; raw files name the stages to run", async () => {
  const dataDir = await Deno.makeTempDir();
  const out = await Deno.makeTempDir();
  const cfgText = (await Deno.readTextFile(join(UPSTREAM, "lora.yaml")))
    .replace("output_dir: ./output", `output_dir: ${out}`)
    .replace("max_steps: 3000", "max_steps: 1");
  await Deno.writeTextFile(join(dataDir, "cfg.yaml"), cfgText);
  await Deno.copyFile(DATA, join(dataDir, "train.json"));
  await Deno.copyFile(DATA, join(dataDir, "dev.json"));
  const code = await quiet(() => main([dataDir, TINY, join(dataDir, "cfg.yaml")]));
  assert(code === 0);
  const evals = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
    .map((l) => JSON.parse(l)).filter((e) => e.eval_loss !== undefined);
  assert(evals.length === 1 && evals[0].step === 1, "eval at the last step from val_file");
  await Deno.writeTextFile(
    join(dataDir, "train.json"),
    '{"conversations": [{"role": "user", "content": "hi"}]}\n',
  );
  await rejects(
    () => quiet(() => main([dataDir, TINY, join(dataDir, "cfg.yaml")])),
    (e: Error) =>
      e instanceof UserError &&
      /train\.json:1: this is a conversation record; run the convert, tokenize and mask/.test(
        e.message,
      ),
  );
  await rejects(() => main(["--model", TINY]), /--config is required/);
  for (const d of [dataDir, out]) await Deno.remove(d, { recursive: true });
});

const CLI = new URL("../cli.ts", import.meta.url).pathname;

function stageArgs(out: string, extra: string[] = []): string[] {
  return [
    "--model",
    TINY,
    "--config",
    join(UPSTREAM, "lora.yaml"),
    "--train",
    DATA,
    "--out",
    out,
    "--set",
    "training_args.max_steps=8",
    "--set",
    "training_args.logging_steps=1",
    "--set",
    "training_args.save_steps=1",
    "--set",
    "training_args.learning_rate=0.001",
    ...extra,
  ];
}

async function losses(out: string): Promise<Map<number, number>> {
  const lines = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n");
  const m = new Map<number, number>();
  for (const l of lines) {
    const e = JSON.parse(l);
    if (e.loss !== undefined) m.set(e.step, e.loss);
  }
  return m;
}

/** Run the CLI in a subprocess and signal it once `ready(outDir)` holds. */
async function killDuring(out: string, signal: Deno.Signal, ready: () => Promise<boolean>) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CLI, "stage", "train", ...stageArgs(out)],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const errText = new Response(child.stderr).text();
  let sent = false;
  const deadline = Date.now() + 120_000;
  while (!sent && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    if (await ready()) {
      child.kill(signal);
      sent = true;
    }
  }
  const status = await child.status;
  return { status, stderr: await errText, sent };
}

const hasCheckpoint = (out: string, step: number) => async () => {
  try {
    await Deno.stat(join(out, `checkpoint-${step}`, "trainer_state.json"));
    return true;
  } catch {
    return false;
  }
};

Deno.test("a run killed with SIGKILL mid-run resumes onto the uninterrupted trajectory", async () => {
  const full = await Deno.makeTempDir({ prefix: "stage-full-" });
  assert((await quiet(() => main(stageArgs(full)))) === 0);
  const killed = await Deno.makeTempDir({ prefix: "stage-killed-" });
  const { status, sent } = await killDuring(killed, "SIGKILL", hasCheckpoint(killed, 3));
  assert(sent && status.signal === "SIGKILL", `status ${JSON.stringify(status)}`);
  assert((await quiet(() => main(stageArgs(killed, ["--resume", "yes"])))) === 0);
  const a = await losses(full);
  const b = await losses(killed);
  deepStrictEqual([...b.keys()], [1, 2, 3, 4, 5, 6, 7, 8]);
  for (const [step, loss] of a) {
    assert(Math.abs(loss - b.get(step)!) < 1e-6, `step ${step}: ${loss} vs ${b.get(step)}`);
  }
  deepStrictEqual(
    await Deno.readFile(join(killed, "adapter_model.safetensors")),
    await Deno.readFile(join(full, "adapter_model.safetensors")),
  );
  for (const d of [full, killed]) await Deno.remove(d, { recursive: true });
});

Deno.test("Ctrl-C: the CLI saves a checkpoint, says how to resume and exits 130", async () => {
  const out = await Deno.makeTempDir({ prefix: "stage-int-" });
  const { status, stderr } = await killDuring(out, "SIGINT", hasCheckpoint(out, 2));
  assert(status.code === 130, `exit ${status.code}: ${stderr}`);
  assert(/resume with the same command and --resume \d+/.test(stderr), stderr);
  await Deno.remove(out, { recursive: true });
});

Deno.test("--eval FILE is evaluated on with a config that names no val_file", async () => {
  const out = await Deno.makeTempDir();
  try {
    await quiet(() =>
      main([
        ...["--model", TINY, "--config", join(FIX, "torch", "lora.yaml"), "--train", DATA],
        ...["--eval", DATA, "--out", out, "--set", "training_args.max_steps=2"],
        ...["--set", "training_args.eval_strategy=steps", "--set", "training_args.eval_steps=1"],
      ])
    );
    const evals = (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((e) => e.eval_loss !== undefined).map((e) => e.step);
    deepStrictEqual(evals, [1, 2]);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("resuming from an earlier checkpoint sets the later ones aside; a changed learning rate is refused", async () => {
  const out = await Deno.makeTempDir();
  try {
    const run = (extra: string[]) =>
      quiet(() => main([...stageArgs(out, ["--set", "training_args.save_steps=2", ...extra])]));
    await run(["--set", "training_args.max_steps=4"]);
    const dirs = () =>
      [...Deno.readDirSync(out)].map((e) => e.name).filter((n) => /checkpoint/.test(n)).sort();
    deepStrictEqual(dirs(), ["checkpoint-2", "checkpoint-4"]);
    // The same schedule, a different length: from step 2 to 3. The abandoned run's checkpoint-4 is
    // kept under another name, so --resume yes finds this run's checkpoint-3, not it.
    await run(["--set", "training_args.max_steps=3", "--resume", "2"]);
    deepStrictEqual(dirs(), ["checkpoint-2", "checkpoint-3", "superseded-checkpoint-4"]);
    const state = JSON.parse(await Deno.readTextFile(join(out, "trainer_state.json")));
    deepStrictEqual(state.global_step, 3);
    await rejects(
      run([
        "--set",
        "training_args.max_steps=3",
        "--resume",
        "yes",
        "--set",
        "training_args.learning_rate=0.005",
      ]),
      (e: Error) =>
        e instanceof UserError &&
        /checkpoint-3: cannot resume: training_args\.learning_rate was 0\.001 in that run, now 0\.005/
          .test(e.message),
    );
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("--init-adapter: any safetensors with the prefix embedding; mismatches are UserErrors", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.copyFile(join(TRAJ, "prefix_init.safetensors"), join(dir, "weights.safetensors"));
  const spec: AdapterSpec = { kind: "prefix", preSeqLen: 4, prefixProjection: false };
  const t = await readInitAdapter(dir, spec);
  const emb = t.get("transformer.prefix_encoder.embedding.weight");
  // [pre_seq_len, num_layers · 2 · groups · kv_channels] = [4, 2·2·2·16]
  assert(emb && emb.length === 4 * 128);
  await rejects(
    () => readInitAdapter(join(FIX, "tiny-lora-peft"), { ...spec }),
    /no prefix_encoder.safetensors nor any .safetensors file|holds transformer.prefix_encoder/,
  );
  await rejects(
    () =>
      readInitAdapter(join(FIX, "tiny-lora-peft"), {
        kind: "lora",
        r: 8,
        alpha: 32,
        dropout: 0,
        targetModules: ["query_key_value"],
      }),
    /r is 4, the config's peft_config.r is 8/,
  );
  await rejects(() => readInitAdapter(join(dir, "nope"), spec), /no such directory/);
  // a prefix trained without the projection cannot start one with it, nor the other way
  await rejects(
    () => readInitAdapter(dir, { ...spec, prefixProjection: true }),
    /prefix_projection is false, the config's peft_config.prefix_projection is true/,
  );
  // another scaling (lora_alpha, use_rslora) or more target modules: a note, the tensors load
  const notes: string[] = [];
  const error = console.error;
  console.error = (...a: unknown[]) => notes.push(a.join(" "));
  try {
    const lora = join(FIX, "tiny-lora-peft");
    const cfg = JSON.parse(await Deno.readTextFile(join(lora, "adapter_config.json")));
    const base = { kind: "lora", r: cfg.r, alpha: cfg.lora_alpha, dropout: 0 } as const;
    await readInitAdapter(lora, { ...base, targetModules: cfg.target_modules });
    deepStrictEqual(notes, []);
    await readInitAdapter(lora, { ...base, useRslora: true, targetModules: cfg.target_modules });
    await readInitAdapter(lora, { ...base, targetModules: [...cfg.target_modules, "dense"] });
    deepStrictEqual(notes.length, 2, notes.join("\n"));
    assertMatch(
      notes[0],
      new RegExp(
        `scales its LoRA by ${
          cfg.lora_alpha / cfg.r
        } \\(lora_alpha ${cfg.lora_alpha} / r ${cfg.r}\\), ` +
          `this run by ${
            cfg.lora_alpha / Math.sqrt(cfg.r)
          } .*use_rslora\\): it starts from another function`,
      ),
    );
    assertMatch(notes[1], /has no LoRA on dense; those start fresh \(B = 0\)/);
    // LoRA the config does not train would be dropped: refused, naming the file
    await rejects(
      () => readInitAdapter(lora, { ...base, targetModules: ["dense"] }),
      /adapter_config\.json: has LoRA on query_key_value, which the config's peft_config\.target_modules \(dense\) does not train/,
    );
  } finally {
    console.error = error;
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--dry-run with quantization_bit=4: chatglm3-6b QLoRA at upstream's LoRA job plans at most 6 GiB", async () => {
  const { parseGlmConfig } = await import("../lib/model/config.ts");
  const { formatMemoryPlan, largestRowsPerPass, memoryPlan } = await import(
    "../lib/model/memory_plan.ts"
  );
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(join(FIX, "chatglm3-6b-config.json"), join(dir, "config.json"));
    const config = parseGlmConfig(
      JSON.parse(await Deno.readTextFile(join(FIX, "chatglm3-6b-config.json"))),
      "config.json",
    );
    // upstream lora.yaml (LoRA r=8 on query_key_value, batch 4, 256 + 512 + 1 tokens) with
    // gradient checkpointing; LLaMA-Factory's quantization_bit: 4 is NF4, double-quantized.
    const opts = {
      adapter: {
        kind: "lora",
        r: 8,
        alpha: 32,
        dropout: 0.1,
        targetModules: ["query_key_value"],
      } as AdapterSpec,
      batch: 4,
      seq: 769,
      gradientCheckpointing: true,
      quantization: { quantType: "nf4", doubleQuant: true } as const,
    };
    const rows = largestRowsPerPass(config, opts, 6 * 2 ** 30);
    assert(rows >= 1, "not even one record per pass fits 6 GiB");
    const base = ["--model", dir, "--config", join(UPSTREAM, "lora.yaml")];
    const sets = [
      "--set",
      "quantization_bit=4",
      "--set",
      "training_args.gradient_checkpointing=true",
    ];
    const out = await runCli([
      "stage",
      "train",
      ...base,
      ...sets,
      "--dry-run",
      "--rows-per-pass",
      String(rows),
    ]);
    assert(out.code === 0, out.err);
    console.log(out.out);
    const plan = memoryPlan(config, { ...opts, rowsPerPass: rows });
    const got = out.out.trimEnd().split("\n");
    assert(/on a 4-bit NF4, double quantization base \(QLoRA\)/.test(got[0]), got[0]);
    deepStrictEqual(got.slice(1), formatMemoryPlan(plan, "x").split("\n").slice(1));
    assert(plan.total <= 6 * 2 ** 30, `${plan.total / 2 ** 20} MiB`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--dry-run prints the memory plan of the real chatglm3-6b config: no weights, exit 0", async () => {
  const { parseGlmConfig } = await import("../lib/model/config.ts");
  const { formatMemoryPlan, memoryPlan } = await import("../lib/model/memory_plan.ts");
  const dir = await Deno.makeTempDir();
  try {
    // THUDM's config.json alone: the dir holds no weights.
    await Deno.copyFile(join(FIX, "chatglm3-6b-config.json"), join(dir, "config.json"));
    const run = (...extra: string[]) =>
      runCli([
        "stage",
        "train",
        "--model",
        dir,
        "--config",
        join(UPSTREAM, "lora.yaml"),
        "--dry-run",
        ...extra,
      ]);
    const out = await run("--set", "training_args.gradient_checkpointing=true");
    const stdout = out.out;
    assert(out.code === 0, out.err);
    const config = parseGlmConfig(
      JSON.parse(await Deno.readTextFile(join(FIX, "chatglm3-6b-config.json"))),
      "config.json",
    );
    // upstream lora.yaml: LoRA r=8 on query_key_value, batch 4, 256 + 512 (+1) tokens.
    const adapter: AdapterSpec = {
      kind: "lora",
      r: 8,
      alpha: 32,
      dropout: 0.1,
      targetModules: ["query_key_value"],
    };
    const plan = memoryPlan(config, { adapter, batch: 4, seq: 769, gradientCheckpointing: true });
    const table = formatMemoryPlan(plan, "x").split("\n");
    const got = stdout.trimEnd().split("\n");
    assert(/batch 4 × 769 tokens, gradient checkpointing on/.test(got[0]), got[0]);
    deepStrictEqual(got.slice(1), table.slice(1));
    assert(got.some((l) => /frozen base weights\s+11909\.4 MiB/.test(l)), stdout);
    // The trainer feeds the batch of 4 one record per pass with --rows-per-pass 1: the plan is that run's.
    const passes = await run(
      "--set",
      "training_args.gradient_checkpointing=true",
      "--rows-per-pass",
      "1",
    );
    assert(passes.code === 0, passes.err);
    assert(/in passes of 1/.test(passes.out), passes.out);
    const onePass = memoryPlan(config, {
      adapter,
      batch: 4,
      seq: 769,
      gradientCheckpointing: true,
      rowsPerPass: 1,
    });
    deepStrictEqual(
      passes.out.trimEnd().split("\n").slice(1),
      formatMemoryPlan(onePass, "x").split("\n").slice(1),
    );
    assert(onePass.total < 14082 * 2 ** 20, `${onePass.total / 2 ** 20} MiB`);
    // Without a config.json it is a UserError, not a stack trace.
    await Deno.remove(join(dir, "config.json"));
    const bad = await run();
    const err = bad.err;
    assert(bad.code !== 0 && /config\.json: not found/.test(err) && !/\bat /.test(err), err);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
