/**
 * Generation throughput: new tokens/s of greedy KV-cache generation (64-token
 * prompts, 64 new tokens, no stop token, prefill included) at batch 1 and 8
 * for the bench model (hidden 512, 8 layers, 8 heads, kv_channels 64, 2
 * groups, ffn 1368, vocab 8192; random weights, frozen in f16 as inference
 * keeps them), against transformers' GlmForCausalLM.generate with its KV
 * cache on the CPU with 2 threads (tools/peers/generate_peer.py), as ratios.
 */
import { createGlmModel, memoryWeights } from "../lib/model/glm.ts";
import { gpuForModel } from "../lib/model/load.ts";
import { BENCH_CONFIG, benchWeights } from "./model.ts";
import { runPeer } from "./peer.ts";
import { results } from "./results.ts";

const PROMPT = 64;
const NEW = 64;
const BATCHES = [1, 8];
const RUNS = 3;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function prompts(batch: number, seed: number): number[][] {
  let s = seed >>> 0;
  return Array.from({ length: batch }, () =>
    Array.from({ length: PROMPT }, () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return 3 + (s % (BENCH_CONFIG.padded_vocab_size - 3));
    }));
}

export async function run(): Promise<void> {
  const gpu = await gpuForModel(BENCH_CONFIG);
  const model = await createGlmModel(
    gpu,
    BENCH_CONFIG,
    memoryWeights(benchWeights()),
    {
      adapter: { kind: "none" },
      maxBatch: Math.max(...BATCHES),
      maxSeq: PROMPT,
      seed: 1,
      gradientCheckpointing: true,
    },
  );
  const ours: Record<number, number> = {};
  try {
    for (const B of BATCHES) {
      const ps = prompts(B, B);
      const times: number[] = [];
      for (let i = 0; i <= RUNS; i++) {
        const t0 = performance.now();
        const out = await model.generate(ps, { maxNewTokens: NEW, stopIds: [] });
        const s = (performance.now() - t0) / 1000;
        if (out.some((o) => o.length !== NEW)) throw new Error("generation ended early");
        // The first run compiles the pipelines.
        if (i > 0) times.push(s);
      }
      ours[B] = median(times);
      console.log(
        `  ours  batch ${B}: ${
          ours[B].toFixed(3)
        } s for ${B}×${NEW} new tokens (prompt ${PROMPT}), ${
          (B * NEW / ours[B]).toFixed(1)
        } tokens/s`,
      );
    }
  } finally {
    model.destroy();
  }
  const peer = await runPeer("generate_peer.py", {
    config: BENCH_CONFIG,
    batches: BATCHES,
    prompt: PROMPT,
    new: NEW,
    runs: RUNS,
  });
  results.generate = Object.fromEntries(
    BATCHES.map((B) => [B, { ours: (B * NEW) / ours[B] }]),
  );
  if (!peer) return;
  for (const B of BATCHES) {
    const p = peer[String(B)] as { seconds: number; tokens_per_s: number };
    results.generate[B].peer = p.tokens_per_s;
    console.log(
      `  PyTorch CPU (${peer.threads} threads) batch ${B}: ${p.seconds.toFixed(3)} s, ${
        p.tokens_per_s.toFixed(1)
      } tokens/s; ratio (ours / PyTorch tokens/s) ${(p.seconds / ours[B]).toFixed(2)}×`,
    );
  }
}

if (import.meta.main) await run();
