/**
 * Forward throughput: tokens/s of a scoring forward (logits + loss) of the
 * bench model (hidden 512, 8 layers, 8 heads, kv_channels 64, 2 groups, ffn
 * 1368, vocab 8192; batch 4 × seq 256, random weights built in memory)
 * against the same math in PyTorch on the CPU with 2 threads
 * (tools/peers/forward_peer.py), as a ratio. Then where the time goes: the
 * dispatches of one forward (and of one LoRA training step) are recorded,
 * grouped by kernel file, and each group is replayed alone and timed (the
 * cost of the wait itself is measured and subtracted).
 */
import { getGpu, type Gpu, wantsWideCpuVectors } from "../lib/gpu/device.ts";
import {
  createBuffer,
  type InterruptiblePass,
  SplittablePass,
  uniforms,
} from "../lib/gpu/runtime.ts";
import type { AdapterSpec } from "../lib/model/adapter.ts";
import { createGlmModel, type GlmModel, memoryWeights } from "../lib/model/glm.ts";
import { BENCH_BATCH, BENCH_CONFIG, BENCH_SEQ, benchBatch, benchWeights } from "./model.ts";
import { runPeer } from "./peer.ts";

const BATCH = BENCH_BATCH;
const SEQ = BENCH_SEQ;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const wait = (gpu: Gpu) => gpu.device.queue.onSubmittedWorkDone();

interface Recorded {
  kind: string;
  /** A dispatch, or commands recorded between passes (the texture matmul's copies). */
  dispatch?: { pipeline: GPUComputePipeline; group: GPUBindGroup; wg: [number, number, number] };
  between?: (encoder: GPUCommandEncoder) => void;
}

/** The outermost kernel file on the stack: attention's own matmuls count as attention. */
function kernelKind(): string {
  const stack = new Error().stack ?? "";
  const files = [...stack.matchAll(/lib\/gpu\/kernels\/([a-z_0-9]+)\.ts/g)].map((x) => x[1]);
  return files.length ? files[files.length - 1] : "other";
}

/**
 * A stand-in compute pass that records dispatches, and the copies a kernel
 * interrupts the pass for, with the kernel file that encoded them.
 */
function recordingPass(out: Recorded[]): InterruptiblePass {
  let pipeline: GPUComputePipeline | undefined;
  let group: GPUBindGroup | undefined;
  const rec = {
    setPipeline(p: GPUComputePipeline) {
      pipeline = p;
    },
    setBindGroup(_i: number, g: GPUBindGroup) {
      group = g;
    },
    dispatchWorkgroups(x: number, y = 1, z = 1) {
      const wg: [number, number, number] = [x, y, z];
      out.push({ kind: kernelKind(), dispatch: { pipeline: pipeline!, group: group!, wg } });
    },
    interrupt(record: (encoder: GPUCommandEncoder) => void) {
      out.push({ kind: kernelKind(), between: record });
    },
  };
  return rec as unknown as InterruptiblePass;
}

/** Replay each kernel kind's dispatches alone; seconds per kind (the bare wait subtracted). */
async function timeByKind(
  gpu: Gpu,
  recorded: Recorded[],
): Promise<Map<string, { s: number; n: number }>> {
  const kinds = [...new Set(recorded.map((r) => r.kind))];
  const bare: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    gpu.device.queue.submit([gpu.device.createCommandEncoder().finish()]);
    await wait(gpu);
    bare.push(performance.now() - t0);
  }
  const waitMs = median(bare);
  const out = new Map<string, { s: number; n: number }>();
  for (const kind of kinds) {
    const mine = recorded.filter((r) => r.kind === kind);
    const times: number[] = [];
    for (let rep = 0; rep < 2; rep++) {
      const t0 = performance.now();
      const enc = gpu.device.createCommandEncoder();
      const pass = new SplittablePass(enc);
      for (const r of mine) {
        if (r.between) pass.interrupt(r.between);
        if (r.dispatch) {
          pass.setPipeline(r.dispatch.pipeline);
          pass.setBindGroup(0, r.dispatch.group);
          pass.dispatchWorkgroups(...r.dispatch.wg);
        }
      }
      pass.end();
      gpu.device.queue.submit([enc.finish()]);
      await wait(gpu);
      times.push(performance.now() - t0);
    }
    // Dispatches only: the copies a kernel interrupts the pass for are not counted.
    const n = mine.filter((r) => r.dispatch).length;
    out.set(kind, { s: Math.max(0, median(times) - waitMs) / 1000, n });
  }
  return out;
}

export function printKinds(title: string, kinds: Map<string, { s: number; n: number }>): void {
  const total = [...kinds.values()].reduce((a, b) => a + b.s, 0);
  console.log(
    `  ${title}: ${[...kinds.values()].reduce((a, b) => a + b.n, 0)} dispatches, ${
      total.toFixed(3)
    } s replayed`,
  );
  for (const [k, v] of [...kinds].sort((a, b) => b[1].s - a[1].s)) {
    console.log(
      `    ${k.padEnd(14)} ${v.s.toFixed(3)} s  ${
        (100 * v.s / total).toFixed(1).padStart(5)
      }%  (${v.n} dispatches)`,
    );
  }
}

async function forwardSeconds(gpu: Gpu, model: GlmModel, runs: number): Promise<number> {
  const b = benchBatch();
  const loss = createBuffer(gpu, 16);
  const times: number[] = [];
  for (let k = 0; k <= runs; k++) {
    const t0 = performance.now();
    model.forwardLoss(b, loss, 0);
    await wait(gpu);
    if (k > 0) times.push(performance.now() - t0);
  }
  loss.destroy();
  return median(times) / 1000;
}

export async function profile(
  gpu: Gpu,
  model: GlmModel,
  training: boolean,
): Promise<Map<string, { s: number; n: number }>> {
  const recorded: Recorded[] = [];
  const pass = recordingPass(recorded);
  const loss = createBuffer(gpu, 16);
  const b = benchBatch();
  const t0 = performance.now();
  if (training) {
    model.encodeForwardBackward(pass, b, {
      gradScale: 1 / (BATCH * (SEQ - 1)),
      lossBuffer: loss,
      lossSlot: 0,
      training: true,
      dropoutSeed: 1,
    });
  } else model.encodeForwardLoss(pass, b, loss, 0);
  const encodeS = (performance.now() - t0) / 1000;
  const kinds = await timeByKind(gpu, recorded);
  kinds.set("(encoding, CPU)", { s: encodeS, n: 0 });
  uniforms(gpu).reset();
  loss.destroy();
  return kinds;
}

export async function run(): Promise<void> {
  const gpu = await getGpu({ wideCpuVectors: wantsWideCpuVectors(BENCH_CONFIG.hidden_size) });
  const weights = benchWeights();
  const tokens = BATCH * SEQ;
  const results: Record<string, number> = {};
  for (const f16 of (Deno.env.get("FWD_F32") ? [true, false] : [true])) {
    const model = await createGlmModel(gpu, BENCH_CONFIG, memoryWeights(weights), {
      adapter: { kind: "none" },
      frozenF16: f16,
      maxBatch: BATCH,
      maxSeq: SEQ,
      seed: 1,
    });
    const s = await forwardSeconds(gpu, model, 2);
    results[f16 ? "f16" : "f32"] = s;
    console.log(
      `  forward ${BATCH}×${SEQ} (${f16 ? "f16" : "f32"} weights): ${s.toFixed(3)} s, ${
        (tokens / s).toFixed(0)
      } tokens/s`,
    );
    if (f16) printKinds("forward by kernel", await profile(gpu, model, false));
    model.destroy();
  }
  const lora: AdapterSpec = {
    kind: "lora",
    r: 8,
    alpha: 32,
    dropout: 0.1,
    targetModules: ["query_key_value"],
  };
  const lm = await createGlmModel(gpu, BENCH_CONFIG, memoryWeights(weights), {
    adapter: lora,
    maxBatch: BATCH,
    maxSeq: SEQ,
    seed: 1,
  });
  printKinds("LoRA training step (forward + backward) by kernel", await profile(gpu, lm, true));
  lm.destroy();
  const peer = await runPeer("forward_peer.py", {
    config: BENCH_CONFIG,
    batch: BATCH,
    seq: SEQ,
    runs: 3,
  });
  if (peer) {
    const ps = peer.forward_s as number;
    console.log(
      `  PyTorch CPU (${peer.threads} threads): ${ps.toFixed(3)} s, ${
        (tokens / ps).toFixed(0)
      } tokens/s`,
    );
    const ratios = Object.entries(results).map(([k, v]) => `${k} ${(ps / v).toFixed(2)}×`);
    console.log(`  ratio (ours / PyTorch tokens/s): ${ratios.join(", ")}`);
  }
}

if (import.meta.main) await run();
