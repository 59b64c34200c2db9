/**
 * The project's side of bench/gpu.sh: upstream's jobs at chatglm3-6b's shape
 * on this machine's WebGPU device, from the shaped checkpoints
 * (./shaped_checkpoint.ts):
 *  - LoRA as finetune_demo's lora.yaml runs it: r 8, alpha 32, query_key_value,
 *    batch 4 × (256 + 512 + 1) tokens, gradient checkpointing, the micro-batch
 *    in passes of as many records as keep the plan within PyTorch's 14,082 MiB;
 *  - P-Tuning v2: pre_seq_len 128, the same batch;
 *  - full SFT on the 2-layer shape (the 28-layer one needs ~100 GB of AdamW state).
 * Each job: one step to build the pipelines, then timed steps; samples/s,
 * tokens/s, the device bytes allocated at peak, the plan's total.
 * `--small` runs the same jobs at batch 1 × 64 tokens, for a CPU adapter.
 *
 *   deno run -A bench/gpu_jobs.ts [--layers 28] [--sft-layers 2] [--small] [--steps 2] [--json FILE]
 */
import { parseFlags, positiveIntFlag } from "../lib/args.ts";
import { writeJsonAtomic } from "../lib/atomic.ts";
import { runCli } from "../lib/errors.ts";
import { describeGpu } from "../lib/gpu/device.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { loadGlmConfig } from "../lib/model/config.ts";
import { gpuForModel, loadGlmModel } from "../lib/model/load.ts";
import { largestRowsPerPass, memoryPlan } from "../lib/model/memory_plan.ts";
import { releaseOperandTextures } from "../lib/gpu/kernels/matmul_texture.ts";
import { DeviceMemory } from "./device_memory.ts";
import {
  peakRss,
  planDevice,
  seededIds,
  trainSteps,
  UPSTREAM_LORA,
  UPSTREAM_PTUNING,
} from "./jobs.ts";
import { makeShapedCheckpoint, shapedDir } from "./shaped_checkpoint.ts";

/** What PyTorch + PEFT needs for upstream's LoRA job (README, docs/model.md). */
const PYTORCH_LORA_MIB = 14082;
const MiB = 2 ** 20;

/** A job: which base (layer count) and what it trains; every job takes the same batch. */
interface Job {
  name: string;
  layers: number;
  adapter: AdapterSpec;
}

async function runJobs(o: {
  layers: number;
  sftLayers: number;
  small: boolean;
  steps: number;
}): Promise<Record<string, unknown>> {
  const batch = o.small ? 1 : 4, seq = o.small ? 65 : 256 + 512 + 1;
  const jobs: Job[] = [
    { name: "lora", layers: o.layers, adapter: UPSTREAM_LORA },
    { name: "ptuning", layers: o.layers, adapter: UPSTREAM_PTUNING },
    { name: "sft", layers: o.sftLayers, adapter: { kind: "full" } },
  ];
  const out: Record<string, unknown> = { small: o.small };
  // One count for the whole run (the jobs share the process's device, and its uniform arena, which
  // reset() counts as live); each job starts without the matmul textures an earlier one made.
  let mem: DeviceMemory | undefined;
  for (const job of jobs) {
    const dir = shapedDir(job.layers);
    await makeShapedCheckpoint(dir, { layers: job.layers });
    const config = await loadGlmConfig(dir);
    const gpu = await gpuForModel(config);
    out.device ??= describeGpu(gpu);
    // The passes are chosen from the plan that is reported: with this device's limits.
    const planOpts = {
      adapter: job.adapter,
      batch,
      seq,
      gradientCheckpointing: true,
      ...planDevice(gpu),
    };
    const rowsPerPass = Math.max(
      1,
      largestRowsPerPass(config, planOpts, PYTORCH_LORA_MIB * MiB) || 1,
    );
    const plan = memoryPlan(config, { ...planOpts, rowsPerPass });
    mem ??= new DeviceMemory(gpu);
    mem.reset();
    const t0 = performance.now();
    const model = await loadGlmModel(gpu, dir, {
      adapter: job.adapter,
      maxBatch: rowsPerPass,
      maxSeq: seq,
      seed: 42,
      gradientCheckpointing: true,
    });
    const loadS = (performance.now() - t0) / 1000;
    try {
      const ids = seededIds(batch * seq, config.padded_vocab_size, 11);
      const r = await trainSteps(gpu, model, {
        ids,
        batch,
        seq,
        rowsPerPass,
        steps: 1 + o.steps,
      });
      const timed = r.stepS.slice(1);
      const stepS = timed.reduce((a, b) => a + b, 0) / timed.length;
      const peak = mem.peakByKind().reduce((a, [, b]) => a + b, 0);
      const res = {
        layers: job.layers,
        batch,
        seq,
        rows_per_pass: rowsPerPass,
        load_s: loadS,
        first_step_s: r.stepS[0],
        step_s: stepS,
        samples_per_s: batch / stepS,
        tokens_per_s: batch * seq / stepS,
        losses: r.losses,
        device_peak_mib: peak / MiB,
        planned_mib: plan.total / MiB,
      };
      console.log(
        `${job.name} (${job.layers} layers, batch ${batch} × ${seq}, passes of ${rowsPerPass}): ` +
          `load ${loadS.toFixed(1)} s, step ${stepS.toFixed(2)} s, ${
            res.samples_per_s.toFixed(2)
          } samples/s, ${res.tokens_per_s.toFixed(0)} tokens/s, device ${
            res.device_peak_mib.toFixed(0)
          } MiB (plan ${res.planned_mib.toFixed(0)}), losses ${
            r.losses.map((l) => l.toFixed(4)).join(" ")
          }`,
      );
      out[job.name] = res;
    } finally {
      model.destroy();
      releaseOperandTextures(gpu);
    }
  }
  mem?.restore();
  out.peak_rss_mib = peakRss() / MiB;
  return out;
}

if (import.meta.main) {
  await runCli(async () => {
    const usage =
      "usage: deno run -A bench/gpu_jobs.ts [--layers N] [--sft-layers N] [--small] [--steps N] [--json FILE]";
    const { values } = parseFlags(Deno.args, {
      layers: { type: "string" },
      "sft-layers": { type: "string" },
      small: { type: "boolean" },
      steps: { type: "string" },
      json: { type: "string" },
    }, usage);
    const res = await runJobs({
      layers: positiveIntFlag(values.layers, "--layers") ?? 28,
      sftLayers: positiveIntFlag(values["sft-layers"], "--sft-layers") ?? 2,
      small: !!values.small,
      steps: positiveIntFlag(values.steps, "--steps") ?? 2,
    });
    if (values.json) await writeJsonAtomic(values.json as string, res);
  });
}
