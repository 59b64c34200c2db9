/**
 * Matmul throughput on the shapes of one training step of the bench model
 * (hidden 512, 8 layers, 8 heads, kv_channels 64, 2 groups, ffn 1368, vocab
 * 8192; batch 4 × seq 256 = 1024 rows): the forward products against the
 * weights [N,K] (nt), the input gradients (nn with the weight) and the weight
 * gradients (tn), in GFLOP/s, against PyTorch on the CPU with 2 threads
 * (tools/peers/matmul_peer.py) measured in the same run.
 *
 * Each shape is timed as 20 dispatches (MATMUL_BENCH_REPS) in one submission
 * with one wait, after a warm-up that compiles the pipeline. A wait costs
 * ~10 ms whatever the work, so where 20 products take less than 0.25 s (a
 * GPU) the count grows until they do. The process CPU time is printed beside the wall time:
 * on a shared machine, GFLOP per CPU-second shows the kernel's efficiency
 * when other work takes the cores.
 */
import process from "node:process";
import { describeGpu, getGpu, type Gpu, wantsWideCpuVectors } from "../lib/gpu/device.ts";
import { createBuffer, SplittablePass, uniforms } from "../lib/gpu/runtime.ts";
import { encodeMatmul, matmulKernelKind } from "../lib/gpu/kernels/matmul.ts";
import {
  type MatmulProfile,
  matmulProfile,
  smallTiles,
  stagesTiles,
  vec4Tiles,
} from "../lib/gpu/kernels/matmul_profile.ts";
import { BENCH_BATCH, BENCH_CONFIG, BENCH_SEQ } from "./model.ts";
import { runPeer } from "./peer.ts";

interface Shape {
  name: string;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  bF16?: boolean;
}

const ROWS = BENCH_BATCH * BENCH_SEQ;
const c = BENCH_CONFIG;
/** [K, N] of each linear: qkv, dense, h_to_4h, 4h_to_h, output layer. */
const LINEARS: [string, number, number][] = [
  ["qkv", c.hidden_size, (c.num_attention_heads + 2 * c.multi_query_group_num) * c.kv_channels],
  ["dense", c.num_attention_heads * c.kv_channels, c.hidden_size],
  ["h_to_4h", c.hidden_size, 2 * c.ffn_hidden_size],
  ["4h_to_h", c.ffn_hidden_size, c.hidden_size],
  ["output", c.hidden_size, c.padded_vocab_size],
];

export function benchShapes(): Shape[] {
  const out: Shape[] = [];
  for (const [n, K, N] of LINEARS) {
    // forward: X[rows,K] · Wᵀ with W [N,K]
    out.push({ name: `${n} fwd nt`, M: ROWS, N, K, transB: true });
  }
  for (const [n, K, N] of LINEARS) {
    // dX[rows,K] = dY[rows,N] · W[N,K]
    out.push({ name: `${n} dX nn`, M: ROWS, N: K, K: N });
  }
  for (const [n, K, N] of LINEARS) {
    // dW[N,K] = dYᵀ · X: A = dY [rows,N] read transposed
    out.push({ name: `${n} dW tn`, M: N, N: K, K: ROWS, transA: true });
  }
  // Frozen f16 weights (LoRA / P-Tuning): the forward with B as packed halves.
  const [, h4K, h4N] = LINEARS[2];
  out.push({ name: "h_to_4h fwd nt f16", M: ROWS, N: h4N, K: h4K, transB: true, bF16: true });
  return out;
}

/**
 * Milliseconds of wall and CPU time per product `encode` encodes, and the
 * first dispatch's (it builds the pipeline). A wait costs ~10 ms whatever the
 * device; on a GPU, `reps` products take less than that, so more are timed
 * until the work dominates (≥ 0.25 s a batch).
 */
export async function timeProducts(
  gpu: Gpu,
  encode: (pass: SplittablePass) => void,
  reps: number,
): Promise<{ firstMs: number; ms: number; cpuMs: number }> {
  const batch = async (n: number) => {
    const enc = gpu.device.createCommandEncoder();
    const pass = new SplittablePass(enc);
    for (let i = 0; i < n; i++) encode(pass);
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
    uniforms(gpu).reset();
  };
  const t0 = performance.now();
  await batch(1);
  const firstMs = performance.now() - t0;
  let n = reps, elapsed = 0, cpu = process.cpuUsage();
  for (;;) {
    const cpu0 = process.cpuUsage();
    const t = performance.now();
    await batch(n);
    elapsed = performance.now() - t;
    cpu = process.cpuUsage(cpu0);
    if (elapsed >= 250 || n >= 4000) break;
    n = Math.min(4000, Math.ceil(n * 300 / Math.max(elapsed, 1)));
  }
  return { firstMs, ms: elapsed / n, cpuMs: (cpu.user + cpu.system) / 1000 / n };
}

export async function run(): Promise<void> {
  const gpu = await getGpu({ wideCpuVectors: wantsWideCpuVectors(BENCH_CONFIG.hidden_size) });
  const reps = Number(Deno.env.get("MATMUL_BENCH_REPS") ?? 20);
  const only = Deno.env.get("MATMUL_BENCH_ONLY");
  const shapes = benchShapes().filter((s) => !only || s.name.includes(only));
  const prof = matmulProfile(gpu);
  const l = prof.large;
  const large = l
    ? `, ${l.tm}×${l.tn} (${l.wgM}×${l.wgN} invocations) from ${l.minM}×${l.minN}`
    : "";
  const staged = prof.bk ? `, ${prof.bk} K steps staged in workgroup memory` : "";
  const tex = prof.textures ? ", operands copied into textures where the copies allow" : "";
  console.log(
    `  ${describeGpu(gpu)}; tiles ${prof.tm}×${prof.tn}${large}, ${prof.wgM}×${prof.wgN} ` +
      `invocations${staged}${tex}; ${reps} or more dispatches per wait (until a wait holds ≥ 0.25 s of work); ` +
      "first dispatch includes the pipeline build",
  );
  const peer = await runPeer("matmul_peer.py", {
    shapes: shapes.filter((s) => !s.bF16),
    reps: 5,
  });
  const peerBy = new Map<string, number>();
  for (const r of (peer?.results ?? []) as { name: string; gflops: number }[]) {
    peerBy.set(r.name, r.gflops);
  }
  const rows: string[][] = [[
    "shape",
    "M×N×K",
    "kernel",
    "first ms",
    "ours GFLOP/s",
    "per CPU-s",
    "torch (2 thr)",
    "ours/torch",
  ]];
  let sumOurs = 0, sumPeer = 0, flopsAll = 0;
  for (const s of shapes) {
    const aElems = s.M * s.K, bElems = s.K * s.N;
    const a = createBuffer(gpu, aElems * 4, "bench-a");
    const b = createBuffer(gpu, s.bF16 ? Math.ceil(bElems / 2) * 4 : bElems * 4, "bench-b");
    const c = createBuffer(gpu, s.M * s.N * 4, "bench-c");
    const { firstMs, ms, cpuMs } = await timeProducts(
      gpu,
      (pass) => encodeMatmul(gpu, pass, { ...s, a, b, c }),
      reps,
    );
    const flops = 2 * s.M * s.N * s.K;
    const ours = flops / ms / 1e6;
    const theirs = peerBy.get(s.name);
    if (theirs !== undefined) {
      sumOurs += ms;
      sumPeer += flops / theirs / 1e6;
      flopsAll += flops;
    }
    rows.push([
      s.name,
      `${s.M}×${s.N}×${s.K}`,
      kernelName(gpu, s, prof),
      firstMs.toFixed(0),
      ours.toFixed(1),
      (flops / cpuMs / 1e6).toFixed(1),
      theirs === undefined ? "-" : theirs.toFixed(1),
      theirs === undefined ? "-" : (ours / theirs).toFixed(2),
    ]);
    for (const x of [a, b, c]) x.destroy();
  }
  if (flopsAll) {
    rows.push([
      "all (time-weighted)",
      "",
      "",
      "",
      (flopsAll / sumOurs / 1e6).toFixed(1),
      "",
      (flopsAll / sumPeer / 1e6).toFixed(1),
      (sumPeer / sumOurs).toFixed(2),
    ]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log("  " + r.map((x, i) => x.padEnd(widths[i])).join("  "));
  if (!peer) console.log("  (no peer figures: PyTorch unavailable)");
}

function kernelName(gpu: Gpu, s: Shape, prof: MatmulProfile): string {
  const kind = matmulKernelKind(s, gpu);
  if (kind === "scalar") return "scalar";
  const t = smallTiles(prof, s.M, !!s.transA) ?? vec4Tiles(prof, s.M, s.N, !!s.transB);
  const name = kind === "texture" ? "texture" : stagesTiles(t, !!s.transB) ? "shared" : "vec4";
  return `${name} ${t.tm}×${t.tn}`;
}

if (import.meta.main) await run();
