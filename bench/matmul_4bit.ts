/**
 * The 4-bit matmul (lib/gpu/kernels/matmul_4bit.ts, QLoRA's frozen linears)
 * beside the f16 one (encodeMatmul with bF16, the frozen weights of LoRA
 * today) on the bench model's linear layers, 1024 rows: the forward
 * x·Wᵀ (nt) and the input gradient dy·W (nn) of query_key_value, dense,
 * dense_h_to_4h and dense_4h_to_h. Weights are NF4 with double quantization
 * (LLaMA-Factory's quantization_bit: 4). The output layer stays f16 under
 * QLoRA and is not here.
 *
 * Timing as bench/matmul.ts: a warm-up dispatch (the pipeline build, or its
 * load from the shader cache), then MATMUL_BENCH_REPS (20) or more products
 * per wait, until a wait holds ≥ 0.25 s of work; GFLOP/s wall and per
 * CPU-second, the two kernels interleaved shape by shape. MATMUL_BENCH_ONLY=text
 * keeps the shapes whose name holds it.
 */
import { describeGpu } from "../lib/gpu/device.ts";
import { createBuffer, writeBuffer } from "../lib/gpu/runtime.ts";
import { encodeMatmul, f32ToF16Packed } from "../lib/gpu/kernels/matmul.ts";
import {
  encodeMatmul4bit,
  matmul4bitKernelKind,
  matmul4bitProfile,
} from "../lib/gpu/kernels/matmul_4bit.ts";
import { destroyQuant4, quantize4bit, uploadQuant4 } from "../lib/model/quant/mod.ts";
import { gpuForModel } from "../lib/model/load.ts";
import { rand } from "../tests/test_util.ts";
import { timeProducts } from "./matmul.ts";
import { BENCH_BATCH, BENCH_CONFIG, BENCH_SEQ } from "./model.ts";

const ROWS = BENCH_BATCH * BENCH_SEQ;
const c = BENCH_CONFIG;
/** [name, in, out] of each quantized linear. */
const LINEARS: [string, number, number][] = [
  ["qkv", c.hidden_size, (c.num_attention_heads + 2 * c.multi_query_group_num) * c.kv_channels],
  ["dense", c.num_attention_heads * c.kv_channels, c.hidden_size],
  ["h_to_4h", c.hidden_size, 2 * c.ffn_hidden_size],
  ["4h_to_h", c.ffn_hidden_size, c.hidden_size],
];

export async function run(): Promise<void> {
  const gpu = await gpuForModel(BENCH_CONFIG);
  const reps = Number(Deno.env.get("MATMUL_BENCH_REPS") ?? 20);
  const only = Deno.env.get("MATMUL_BENCH_ONLY");
  const p = matmul4bitProfile(gpu);
  console.log(
    `  ${describeGpu(gpu)}; 4-bit: NF4, double quantization, word kernel ${p.tm}×${p.tn} per ` +
      `invocation, ${p.wgM}×${p.wgN} invocations; f16: encodeMatmul with bF16 (its profile); ` +
      `${reps} or more products per wait; first dispatch includes the pipeline build`,
  );
  const rows: string[][] = [[
    "shape",
    "M×N×K",
    "4-bit first ms",
    "4-bit GFLOP/s",
    "per CPU-s",
    "f16 first ms",
    "f16 GFLOP/s",
    "per CPU-s",
    "4-bit/f16",
  ]];
  let t4 = 0, t16 = 0, flopsAll = 0;
  let seed = 1;
  for (const [name, inF, outF] of LINEARS) {
    const wValues = rand(outF * inF, seed++, 0.05);
    const q = quantize4bit(wValues, [outF, inF], { type: "nf4", doubleQuant: true });
    const w4 = uploadQuant4(gpu, q, `bench-${name}`);
    const f16 = f32ToF16Packed(wValues);
    const w16 = createBuffer(gpu, f16.byteLength, "bench-f16");
    writeBuffer(gpu, w16, 0, f16);
    for (const transW of [true, false]) {
      if (only && !`${name} ${transW ? "fwd nt" : "dX nn"}`.includes(only)) continue;
      // forward: x [rows, in] · Wᵀ → [rows, out]; input gradient: dy [rows, out] · W → [rows, in]
      const M = ROWS, K = transW ? inF : outF, N = transW ? outF : inF;
      const a = createBuffer(gpu, M * K * 4, "bench-a");
      writeBuffer(gpu, a, 0, rand(M * K, seed++, 1));
      const out = createBuffer(gpu, M * N * 4, "bench-c");
      const r4 = await timeProducts(
        gpu,
        (pass) => encodeMatmul4bit(gpu, pass, { M, N, K, a, w: w4, c: out, transW }),
        reps,
      );
      const r16 = await timeProducts(
        gpu,
        (pass) =>
          encodeMatmul(gpu, pass, { M, N, K, a, b: w16, c: out, transB: transW, bF16: true }),
        reps,
      );
      const flops = 2 * M * N * K;
      t4 += r4.ms;
      t16 += r16.ms;
      flopsAll += flops;
      const g = (ms: number) => (flops / ms / 1e6).toFixed(1);
      const kind = matmul4bitKernelKind({ M, N, K, transW });
      rows.push([
        `${name} ${transW ? "fwd nt" : "dX nn"}${kind === "word" ? "" : " (scalar)"}`,
        `${M}×${N}×${K}`,
        r4.firstMs.toFixed(0),
        g(r4.ms),
        g(r4.cpuMs),
        r16.firstMs.toFixed(0),
        g(r16.ms),
        g(r16.cpuMs),
        (r16.ms / r4.ms).toFixed(2),
      ]);
      a.destroy();
      out.destroy();
    }
    destroyQuant4(w4);
    w16.destroy();
  }
  rows.push([
    "all (time-weighted)",
    "",
    "",
    (flopsAll / t4 / 1e6).toFixed(1),
    "",
    "",
    (flopsAll / t16 / 1e6).toFixed(1),
    "",
    (t16 / t4).toFixed(2),
  ]);
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log("  " + r.map((x, i) => x.padEnd(widths[i])).join("  "));
}

if (import.meta.main) await run();
