/**
 * The train stage's torch engine (engines/torch/, lib/train/torch_engine.ts)
 * against the WebGPU engine and against itself, on the tiny model:
 *
 *  - the engines agree over 5 AdamW steps (LoRA from a non-zero adapter,
 *    P-Tuning v2, full SFT), per-step losses within 1e-3 relative;
 *  - 2 processes of batch 1 (DDP over gloo) are 1 process of batch 2: losses
 *    within 1e-4 relative, the same adapter;
 *  - FSDP FULL_SHARD full SFT over 2 processes matches 1 process;
 *  - upstream's sft.yaml (deepspeed: ds_zero_3.json) runs unchanged;
 *  - either engine resumes the other's checkpoint onto the uninterrupted run;
 *  - the lora, ptuning and sft pipelines run end to end with engine=torch, and
 *    evaluate, merge-adapter, report and chat read what it wrote.
 *
 * They need Python: GLM_TORCH_PYTHON, or the environment `deno task
 * setup-torch` makes (made here, once, when python3 exists; pip must reach a
 * package index). Without python3 they are skipped, saying so. The checks of
 * bad flags and setup at the end need no Python and always run.
 */
import { deepStrictEqual, ok as assert } from "node:assert";
import { join } from "node:path";
import { formatNotApplicable, loadConfig } from "../lib/config/mod.ts";
import { readSafetensorsF32 } from "../lib/safetensors/read.ts";
import { readEvents } from "../lib/tensorboard/events.ts";
import { DEFAULT_VENV } from "../lib/train/torch_engine.ts";
import { requirements, setupTorch } from "../lib/train/torch_setup.ts";
import { CLI, withTempDir } from "./test_util.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIX = join(ROOT, "tests", "fixtures");
const TINY = join(FIX, "tiny");
const TRAJ = join(FIX, "tiny-train");
const DATA = join(TRAJ, "data.jsonl");
const CFG = join(FIX, "torch");
const UPSTREAM = join(FIX, "config", "upstream");

/** The Python the tests run the engine with, or why they are skipped. */
async function torchEnv(): Promise<{ python?: string; skip?: string }> {
  const named = Deno.env.get("GLM_TORCH_PYTHON");
  if (named) return { python: named };
  const venv = join(DEFAULT_VENV, "bin", "python");
  const stamp = await Deno.readTextFile(join(DEFAULT_VENV, "requirements.sha256")).catch(() => "");
  if (stamp.trim() === (await requirements(false)).hash) return { python: venv };
  try {
    await new Deno.Command("python3", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
  } catch {
    return {
      skip: "no python3 on this machine (install Python 3.10+, then `deno task setup-torch`)",
    };
  }
  console.error("torch engine tests: making the Python environment (deno task setup-torch)");
  return { python: await setupTorch({}) };
}

const env = await torchEnv();
const ignore = env.python === undefined;
if (ignore) console.log(`torch engine tests skipped: ${env.skip}`);

function torchTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore, sanitizeResources: false, sanitizeOps: false, fn });
}

/** `deno task stage train ...` in a subprocess, with the tests' Python. */
async function train(args: string[], extraEnv: Record<string, string> = {}) {
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "stage", "train", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { GLM_TORCH_PYTHON: env.python ?? "", ...extraEnv },
  }).output();
  const d = new TextDecoder();
  return { code: p.code, out: d.decode(p.stdout), err: d.decode(p.stderr) };
}

async function trainOk(args: string[]): Promise<string> {
  const r = await train(args);
  assert(r.code === 0, `train ${args.join(" ")}: exit ${r.code}\n${r.err}`);
  return r.err;
}

/** step → loss of a run's metrics.jsonl. */
async function losses(out: string): Promise<Map<number, number>> {
  const m = new Map<number, number>();
  for (const l of (await Deno.readTextFile(join(out, "metrics.jsonl"))).trim().split("\n")) {
    const e = JSON.parse(l);
    if (e.loss !== undefined) m.set(e.step, e.loss);
  }
  return m;
}

/** The worst relative difference of two runs' losses over `steps` (which both must have). */
function worstLoss(a: Map<number, number>, b: Map<number, number>, steps: number[]): number {
  let worst = 0;
  for (const s of steps) {
    assert(a.has(s) && b.has(s), `step ${s} missing: ${[...a.keys()]} / ${[...b.keys()]}`);
    worst = Math.max(worst, Math.abs(a.get(s)! - b.get(s)!) / Math.abs(a.get(s)!));
  }
  return worst;
}

/** Max |a - b| / max |a| over every tensor of two safetensors files with the same names. */
async function worstTensor(a: string, b: string): Promise<number> {
  const x = await readSafetensorsF32(a);
  const y = await readSafetensorsF32(b);
  deepStrictEqual([...x.keys()].sort(), [...y.keys()].sort());
  let worst = 0;
  for (const [k, t] of x) {
    const u = y.get(k)!.data;
    let d = 0, m = 0;
    for (let i = 0; i < t.data.length; i++) {
      d = Math.max(d, Math.abs(t.data[i] - u[i]));
      m = Math.max(m, Math.abs(t.data[i]));
    }
    worst = Math.max(worst, d / Math.max(m, 1e-30));
  }
  return worst;
}

function tinyRun(config: string, out: string, extra: string[] = []): string[] {
  return ["--model", TINY, "--config", join(CFG, config), "--train", DATA, "--out", out, ...extra];
}

/** A directory holding only P-Tuning v2's initial prefix of the golden runs. */
async function prefixInit(dir: string): Promise<string> {
  const d = join(dir, "prefix-init");
  await Deno.mkdir(d);
  await Deno.copyFile(join(TRAJ, "prefix_init.safetensors"), join(d, "prefix.safetensors"));
  return d;
}

// ---- the engines agree ----

const FIVE = [1, 2, 3, 4, 5];

torchTest(
  "the torch engine shuffles records as the WebGPU engine does (the same order, by seed and epoch)",
  async () => {
    const { epochOrder } = await import("../lib/train/data.ts");
    const cases = [[10, 0, 42], [37, 3, 7], [5, 1, 0xffffffff], [1000, 2, 123456]];
    const p = await new Deno.Command(env.python!, {
      args: [
        "-c",
        `import sys, json; sys.path.insert(0, "engines/torch"); from data import epoch_order; ` +
        `print(json.dumps([epoch_order(n, e, s, True) for n, e, s in ${JSON.stringify(cases)}]))`,
      ],
      cwd: ROOT,
      stdout: "piped",
    }).output();
    const got = JSON.parse(new TextDecoder().decode(p.stdout));
    deepStrictEqual(got, cases.map(([n, e, s]) => [...epochOrder(n, e, s, true)]));
  },
);

for (
  const [kind, config, init, shuffle] of [
    // LoRA from a trained (non-zero) adapter, shuffled: 5 steps of batch 2 cross into the second
    // epoch, so both epochs' orders must agree too.
    ["LoRA from a non-zero adapter, shuffled", "lora.yaml", "lora", true],
    ["P-Tuning v2", "ptuning.yaml", "prefix", false],
    ["full SFT", "sft.yaml", null, false],
  ] as const
) {
  torchTest(`engines agree over 5 AdamW steps: ${kind}`, () =>
    withTempDir(async (dir) => {
      const extra = [
        ...(init === "lora" ? ["--init-adapter", join(FIX, "tiny-lora-peft")] : []),
        ...(init === "prefix" ? ["--init-adapter", await prefixInit(dir)] : []),
        ...(shuffle ? [] : ["--no-shuffle"]),
      ];
      const w = join(dir, "webgpu"), t = join(dir, "torch");
      await trainOk([...tinyRun(config, w, extra), "--engine", "webgpu"]);
      await trainOk([...tinyRun(config, t, extra), "--engine", "torch"]);
      const worst = worstLoss(await losses(w), await losses(t), FIVE);
      console.log(`${kind}: worst per-step loss difference ${worst.toExponential(2)} (relative)`);
      assert(worst < 1e-3, `losses differ by ${worst}`);
      // the same files, the same names: every later stage reads either
      const names = (d: string) =>
        [...Deno.readDirSync(d)].map((e) => e.name).filter((n) => !n.startsWith(".")).sort();
      deepStrictEqual(names(t), names(w));
      const ck = (d: string) => names(join(d, "checkpoint-5"));
      const torchOnly = ck(t).filter((n) => !(n.startsWith("rng_state_")));
      deepStrictEqual(torchOnly, ck(w));
    }));
}

// ---- several processes ----

torchTest(
  "use_rslora: the WebGPU engine scales by lora_alpha/√r as PEFT does, and writes it so",
  () =>
    withTempDir(async (dir) => {
      const extra = [
        "--init-adapter",
        join(FIX, "tiny-lora-peft"),
        "--no-shuffle",
        "--set",
        "peft_config.use_rslora=true",
      ];
      const w = join(dir, "webgpu"), t = join(dir, "torch"), plain = join(dir, "plain");
      await trainOk([...tinyRun("lora.yaml", w, extra), "--engine", "webgpu"]);
      await trainOk([...tinyRun("lora.yaml", t, extra), "--engine", "torch"]);
      await trainOk([...tinyRun("lora.yaml", plain, extra.slice(0, 3)), "--engine", "webgpu"]);
      const worst = worstLoss(await losses(w), await losses(t), FIVE);
      console.log(`rsLoRA: worst per-step loss difference ${worst.toExponential(2)} (relative)`);
      assert(worst < 1e-3, `losses differ by ${worst}`);
      // and it is not the plain scaling (the adapter is non-zero, so step 1 already differs)
      assert(worstLoss(await losses(w), await losses(plain), FIVE) > 1e-3);
      const cfg = JSON.parse(await Deno.readTextFile(join(w, "adapter_config.json")));
      assert(cfg.use_rslora === true && cfg.lora_alpha === 32, JSON.stringify(cfg));
    }),
);

torchTest(
  "2 processes of batch 1 (DDP over gloo) give 1 process of batch 2's losses and adapter",
  () =>
    withTempDir(async (dir) => {
      const init = ["--init-adapter", join(FIX, "tiny-lora-peft")];
      const one = join(dir, "one"), two = join(dir, "two");
      await trainOk([...tinyRun("lora.yaml", one, init), "--engine", "torch"]);
      const err = await trainOk([
        ...tinyRun("lora.yaml", two, init),
        "--engine",
        "torch",
        "--nproc-per-node",
        "2",
        "--set",
        "training_args.per_device_train_batch_size=1",
      ]);
      assert(/2 processes on cpu, DDP/.test(err), err);
      const worst = worstLoss(await losses(one), await losses(two), FIVE);
      const adapter = await worstTensor(
        join(one, "adapter_model.safetensors"),
        join(two, "adapter_model.safetensors"),
      );
      console.log(`DDP: losses ${worst.toExponential(2)}, adapter ${adapter.toExponential(2)}`);
      assert(worst < 1e-4, `losses differ by ${worst}`);
      assert(adapter < 1e-4, `adapters differ by ${adapter}`);
    }),
);

torchTest(
  "FSDP FULL_SHARD full SFT over 2 processes (gloo) matches 1 process",
  () =>
    withTempDir(async (dir) => {
      const one = join(dir, "one"), two = join(dir, "two");
      await trainOk([...tinyRun("sft.yaml", one, ["--no-shuffle"]), "--engine", "torch"]);
      const err = await trainOk([
        ...tinyRun("sft.yaml", two, ["--no-shuffle"]),
        "--engine",
        "torch",
        "--nproc-per-node",
        "2",
        "--set",
        "training_args.per_device_train_batch_size=1",
        "--set",
        "training_args.fsdp=full_shard auto_wrap",
      ]);
      assert(/2 processes on cpu, FSDP2 FULL_SHARD/.test(err), err);
      const worst = worstLoss(await losses(one), await losses(two), FIVE);
      console.log(`FSDP: losses ${worst.toExponential(2)}`);
      assert(worst < 1e-3, `losses differ by ${worst}`);
      // The sharded run's saved model is whole: every tensor, in the HF layout.
      const names = [...(await readSafetensorsF32(join(two, "model.safetensors"))).keys()];
      assert(names.includes("transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"), names.join());
    }),
);

torchTest(
  "upstream sft.yaml (deepspeed: ds_zero_3.json) runs unchanged: without DeepSpeed, on FSDP FULL_SHARD",
  () =>
    withTempDir(async (dir) => {
      const out = join(dir, "out");
      const err = await trainOk([
        "--engine",
        "torch",
        "--nproc-per-node",
        "2",
        "--model",
        TINY,
        "--config",
        join(UPSTREAM, "sft.yaml"),
        "--train",
        DATA,
        "--eval",
        DATA,
        "--out",
        out,
        // the run's length only: 3,000 steps are for chatglm3-6b
        "--set",
        "training_args.max_steps=2",
      ]);
      const deepspeed = await new Deno.Command(env.python!, {
        args: ["-c", "import deepspeed"],
        stderr: "null",
      }).output();
      if (!deepspeed.success) {
        const notes = err.split("\n").filter((l) => l.includes("deepspeed is not installed"));
        deepStrictEqual(notes, [
          "note: deepspeed is not installed: ds_zero_3.json (ZeRO stage 3) runs as PyTorch FSDP FULL_SHARD, its equivalent",
        ]);
      }
      // the keys the torch engine honours are not reported as ignored; the rest are
      const na = err.split("\n").find((l) => l.includes("not applicable here")) ?? "";
      assert(!/deepspeed|dataloader_num_workers/.test(na) && /log_level/.test(na), na);
      const st = JSON.parse(await Deno.readTextFile(join(out, "trainer_state.json")));
      assert(st.global_step === 2, JSON.stringify(st));
      assert(st.log_history.some((e: { eval_loss?: number }) => e.eval_loss !== undefined));
      await Deno.stat(join(out, "model.safetensors"));
    }),
);

// ---- resume, within and across engines ----

torchTest(
  "either engine resumes the other's checkpoint onto the uninterrupted run",
  () =>
    withTempDir(async (dir) => {
      // A constant rate, so a run's trajectory does not depend on its length; checkpoints at 2 and 4.
      const sets = [
        "--init-adapter",
        join(FIX, "tiny-lora-peft"),
        "--set",
        "training_args.max_steps=4",
        "--set",
        "training_args.save_steps=2",
        "--set",
        "training_args.lr_scheduler_type=constant",
      ];
      const w = join(dir, "webgpu"), t = join(dir, "torch");
      await trainOk([...tinyRun("lora.yaml", w, sets), "--engine", "webgpu"]);
      await trainOk([...tinyRun("lora.yaml", t, sets), "--engine", "torch"]);
      const whole = await losses(t);
      assert(worstLoss(await losses(w), whole, [1, 2, 3, 4]) < 1e-3);
      for (
        const [from, engine, tol] of [
          [t, "torch", 1e-5],
          [t, "webgpu", 1e-3],
          [w, "torch", 1e-3],
        ] as const
      ) {
        const out = join(dir, `${engine}-from-${from === t ? "torch" : "webgpu"}`);
        await copyDir(join(from, "checkpoint-2"), join(out, "checkpoint-2"));
        await trainOk([
          ...tinyRun("lora.yaml", out, [...sets, "--resume", "2"]),
          "--engine",
          engine,
        ]);
        // the log restored from the checkpoint, then the resumed steps
        const got = await losses(out);
        deepStrictEqual([...got.keys()], [1, 2, 3, 4]);
        const worst = worstLoss(whole, got, [3, 4]);
        console.log(
          `resume ${from === t ? "torch" : "webgpu"} → ${engine}: ${worst.toExponential(2)}`,
        );
        assert(worst < tol, `steps 3-4 differ by ${worst}`);
        // train_loss is the mean over all 4 steps, as the uninterrupted run's, not over the 2 resumed
        const a = await trainLoss(out), b = await trainLoss(t);
        assert(Math.abs(a - b) < tol, `train_loss ${a} vs ${b}`);
      }
      // other records of the same number are other data, in the torch engine too
      const other = join(dir, "other.jsonl");
      const lines = (await Deno.readTextFile(DATA)).trim().split("\n");
      await Deno.writeTextFile(other, lines.reverse().join("\n") + "\n");
      const r = await train([
        ...tinyRun("lora.yaml", t, [...sets, "--resume", "2"]).map((a) => a === DATA ? other : a),
        "--engine",
        "torch",
      ]);
      assert(r.code === 1, r.err);
      assert(
        /checkpoint-2: cannot resume: the train records differ from that run's/.test(r.err),
        r.err,
      );
    }),
);

async function trainLoss(dir: string): Promise<number> {
  const st = JSON.parse(await Deno.readTextFile(join(dir, "trainer_state.json")));
  return st.log_history.at(-1).train_loss;
}

torchTest(
  "TensorBoard gets each of this run's entries once, none of the metrics.jsonl an earlier run left",
  () =>
    withTempDir(async (dir) => {
      const out = join(dir, "out"), tb = join(dir, "tb");
      // An earlier run's log (no checkpoints, so a fresh run may start here).
      await Deno.mkdir(out);
      const stale = [1, 2, 3, 4, 5].map((step) => JSON.stringify({ step, epoch: 0, loss: 99 }));
      await Deno.writeTextFile(join(out, "metrics.jsonl"), stale.join("\n") + "\n");
      await trainOk([
        ...tinyRun("lora.yaml", out, [
          "--set",
          "training_args.max_steps=3",
          "--set",
          "training_args.report_to=tensorboard",
          "--set",
          `training_args.logging_dir=${tb}`,
        ]),
        "--engine",
        "torch",
      ]);
      const files = [...Deno.readDirSync(tb)].filter((e) => e.name.startsWith("events."));
      deepStrictEqual(files.length, 1);
      const loss: [number, number][] = [];
      for (const e of readEvents(await Deno.readFile(join(tb, files[0].name)))) {
        for (const v of e.summary?.value ?? []) {
          if (v.tag === "train/loss") loss.push([e.step!, v.simple_value!]);
        }
      }
      const want = [...(await losses(out))].map(([s, l]) => [s, Math.fround(l)]);
      deepStrictEqual(want.map(([s]) => s), [1, 2, 3]);
      deepStrictEqual(loss, want);
    }),
);

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}

/** `stage train --engine torch` on the tiny LoRA job in a child process, its stderr piped. */
function spawnTorchTrain(out: string, set: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      CLI,
      "stage",
      "train",
      "--engine",
      "torch",
      ...tinyRun("lora.yaml", out, ["--set", set]),
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { GLM_TORCH_PYTHON: env.python! },
  }).spawn();
}

torchTest(
  "Ctrl-C: the workers finish the step, save a checkpoint, and the stage exits 130",
  () =>
    withTempDir(async (dir) => {
      const out = join(dir, "out");
      const child = spawnTorchTrain(out, "training_args.max_steps=100000");
      const stderr = new Response(child.stderr).text();
      // once a few steps are logged
      for (let i = 0; i < 600; i++) {
        const m = await Deno.readTextFile(join(out, "metrics.jsonl")).catch(() => "");
        if (m.split("\n").length > 3) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      child.kill("SIGINT");
      const status = await child.status;
      const err = await stderr;
      assert(status.code === 130, `exit ${status.code}: ${err}`);
      const m = /resume with the same command and --resume (\d+)/.exec(err);
      assert(m, err);
      const st = JSON.parse(
        await Deno.readTextFile(join(out, `checkpoint-${m[1]}`, "trainer_state.json")),
      );
      assert(st.global_step === Number(m[1]));
    }),
);

torchTest(
  "Ctrl-C during the last step: the run finishes (exit 0, final adapter, summary entry)",
  () =>
    withTempDir(async (dir) => {
      const out = join(dir, "out");
      const child = spawnTorchTrain(out, "training_args.max_steps=1");
      // train.py prints its "engine torch" line after taking SIGINT and before step 1, the last.
      const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
      let err = "";
      while (!/engine torch/.test(err)) {
        const { value, done } = await reader.read();
        if (done) break;
        err += value;
      }
      child.kill("SIGINT");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        err += value;
      }
      const status = await child.status;
      assert(status.code === 0, `exit ${status.code}: ${err}`);
      assert(!/resume with/.test(err), err);
      await Deno.stat(join(out, "adapter_model.safetensors"));
      const st = JSON.parse(await Deno.readTextFile(join(out, "trainer_state.json")));
      assert(st.global_step === 1, JSON.stringify(st));
      assert(st.log_history.at(-1).train_runtime !== undefined, JSON.stringify(st.log_history));
    }),
);

torchTest(
  "a problem found in Python is the stage's one error line too (a .bin-only model dir)",
  () =>
    withTempDir(async (dir) => {
      const model = join(dir, "model");
      await Deno.mkdir(model);
      await Deno.copyFile(join(TINY, "config.json"), join(model, "config.json"));
      await Deno.writeFile(join(model, "pytorch_model.bin"), new Uint8Array(8));
      const r = await train([
        "--engine",
        "torch",
        ...tinyRun("lora.yaml", join(dir, "out")).map((a) => a === TINY ? model : a),
      ]);
      assert(r.code === 1, `exit ${r.code}: ${r.err}`);
      const lines = r.err.trim().split("\n");
      deepStrictEqual(lines.filter((l) => /error|Traceback|\bat /.test(l)).length, 1, r.err);
      assert(/^error: .*holds only PyTorch \.bin weights.*convert/.test(lines.at(-1)!), r.err);
    }),
);

// ---- the pipelines ----

const SHORT = [
  "eval_limit=2",
  "training_args.max_steps=3",
  "training_args.per_device_train_batch_size=4",
  "training_args.logging_steps=1",
  "training_args.eval_steps=3",
  "training_args.save_steps=3",
  "training_args.generation_config.max_new_tokens=8",
];

for (const name of ["lora", "ptuning", "sft"]) {
  torchTest(
    `pipeline ${name} with engine=torch: evaluate, merge, report and chat read its outputs`,
    () =>
      withTempDir(async (dir) => {
        const data = join(dir, "data");
        await Deno.mkdir(data);
        for (const [f, n] of [["train.json", 24], ["dev.json", 4]] as const) {
          const lines = (await Deno.readTextFile(join(ROOT, "data/demo", f))).split("\n");
          await Deno.writeTextFile(join(data, f), lines.slice(0, n).join("\n") + "\n");
        }
        const out = join(dir, "run");
        const sets = [`data=${data}`, "engine=torch", ...SHORT].flatMap((s) => ["--set", s]);
        const run = async () => {
          const p = await new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", CLI, "pipeline", name, "--out", out, ...sets],
            cwd: ROOT,
            stdout: "piped",
            stderr: "piped",
            env: { GLM_TORCH_PYTHON: env.python! },
          }).output();
          const d = new TextDecoder();
          const text = d.decode(p.stdout) + d.decode(p.stderr);
          assert(p.code === 0, `pipeline ${name}: exit ${p.code}\n${text}`);
          return text;
        };
        const first = await run();
        assert(/engine torch/.test(first), first);
        const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
        assert(summary.train_steps === 3, JSON.stringify(summary));
        assert(summary.train_loss_first > 0 && summary.metrics_after.examples === 2);
        if (name === "lora") await Deno.stat(join(out, "merged-model", "model.safetensors"));
        // chat loads the trained adapter (or model) dir as it is
        const chat = await new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            CLI,
            "chat",
            join(out, "train"),
            "--prompt",
            "你好",
            "--max-new-tokens",
            "4",
          ],
          cwd: ROOT,
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert(chat.code === 0, new TextDecoder().decode(chat.stderr));
        // unchanged inputs: every step skipped, the torch engine's train step too
        const second = await run();
        assert(/0 run, \d+ skipped/.test(second), second);
      }),
  );
}

// ---- bad flags and setup: one line, before any Python starts (no Python needed) ----

Deno.test("torch engine: bad flags and setup are one clear line, no stack trace", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const base = tinyRun("lora.yaml", out);
    const cases: Array<[string[], Record<string, string>, RegExp]> = [
      [
        [...base, "--engine", "torch"],
        { GLM_TORCH_PYTHON: join(dir, "no-python") },
        /GLM_TORCH_PYTHON=.*no-python: no such file; .*deno task setup-torch/,
      ],
      [[...base, "--nproc-per-node", "2"], {}, /--nproc-per-node applies to --engine torch/],
      [[...base, "--engine", "jax"], {}, /--engine: expected webgpu or torch, got "jax"/],
      [
        [...base, "--engine", "torch", "--nnodes", "2"],
        { GLM_TORCH_PYTHON: Deno.execPath() },
        /--nnodes > 1 needs --rdzv-endpoint HOST:PORT/,
      ],
      [
        [...base, "--engine", "torch", "--set", "training_args.deepspeed=nope.json"],
        { GLM_TORCH_PYTHON: Deno.execPath() },
        /training_args.deepspeed: nope.json not found \(looked in /,
      ],
      [
        [...base, "--engine", "torch", "--resume", "yes"],
        { GLM_TORCH_PYTHON: Deno.execPath() },
        /cannot resume: .* holds no complete checkpoint-N directory/,
      ],
    ];
    for (const [args, extra, want] of cases) {
      const r = await train(args, extra);
      assert(r.code === 1, `${args.join(" ")}: exit ${r.code}\n${r.err}`);
      const lines = r.err.trim().split("\n").filter((l) => !l.includes("not applicable here"));
      assert(lines.length === 1 && want.test(lines[0]), `${args.join(" ")}:\n${r.err}`);
    }
  });
});

Deno.test("torch engine: the keys it honours are not reported as ignored", async () => {
  const sft = await loadConfig(join(UPSTREAM, "sft.yaml"));
  const webgpu = formatNotApplicable(sft);
  const torch = formatNotApplicable(sft, "torch");
  for (const k of ["deepspeed", "dataloader_num_workers"]) {
    assert(webgpu.includes(`training_args.${k}`), webgpu);
    assert(!torch.includes(`training_args.${k}`), torch);
  }
  assert(torch.includes("training_args.log_level"), torch);
});

Deno.test("--dry-run --engine torch: the per-GPU plan of upstream sft.yaml's ZeRO-3 on 4 GPUs", async () => {
  await withTempDir(async (dir) => {
    // THUDM's config.json alone: no weights, no Python.
    await Deno.copyFile(join(FIX, "chatglm3-6b-config.json"), join(dir, "config.json"));
    const r = await train(
      [
        "--engine",
        "torch",
        "--dry-run",
        "--nproc-per-node",
        "4",
        "--model",
        dir,
        "--config",
        join(UPSTREAM, "sft.yaml"),
      ],
      { GLM_TORCH_PYTHON: join(dir, "none") },
    );
    assert(r.code === 0, r.err);
    const { parseGlmConfig } = await import("../lib/model/config.ts");
    const { formatTorchMemoryPlan, torchMemoryPlan } = await import(
      "../lib/model/memory_plan.ts"
    );
    const config = parseGlmConfig(
      JSON.parse(await Deno.readTextFile(join(dir, "config.json"))),
      "config.json",
    );
    // upstream: full SFT, batch 4 × (256 + 512 + 1), ds_zero_3.json = ZeRO-3 with CPU offload, no bf16
    const plan = torchMemoryPlan(config, {
      adapter: { kind: "full" },
      batch: 4,
      seq: 769,
      gradientCheckpointing: false,
      gpus: 4,
      sharding: "zero3",
      half: false,
      frozenHalf: false,
      offload: true,
    });
    const got = r.out.trimEnd().split("\n");
    assert(
      /4 GPUs, ZeRO-3 \(ds_zero_3\.json\) with CPU offload, batch 4 × 769/.test(got[0]),
      got[0],
    );
    deepStrictEqual(got.slice(1), formatTorchMemoryPlan(plan, "x").split("\n").slice(1));
  });
});

Deno.test("the WebGPU engine reads a full model checkpoint saved as HF shards (as torch saves one past 5 GB)", async () => {
  const { fullFiles } = await import("../lib/train/checkpoint.ts");
  const whole = await readSafetensorsF32(join(TINY, "model.safetensors"));
  const files = fullFiles({
    shapes: new Map([...whole].map(([k, t]) => [k, t.shape])),
    baseModelDir: TINY,
  });
  const got = await files.read(join(FIX, "tiny-sharded"));
  deepStrictEqual([...got.keys()].sort(), [...whole.keys()].sort());
  for (const [k, t] of whole) deepStrictEqual(got.get(k), t.data, k);
});
