/**
 * Autoregressive generation with a KV cache on the GPU model.
 *
 * Each prompt is prefilled on its own (its tokens at positions 0..len-1, keys
 * and values written to its rows of the cache), so prompts of different
 * lengths need no padding and a row's output does not depend on its batch.
 * Then every step decodes one token for all rows at once: row b's new token
 * sits at position len_b + step and attends to cache positions 0..that. One
 * wait per step: the chosen ids (argmax, or a sample with temperature /
 * top-k / top-p) are the only readback. Finished rows keep decoding a
 * placeholder until every row is done (their output is ignored).
 */
import {
  type ComputePass,
  createBuffer,
  readBuffer,
  SplittablePass,
  uniforms,
  writeBuffer,
} from "../gpu/runtime.ts";
import { encodeMatmul } from "../gpu/kernels/matmul.ts";
import { encodeRmsnorm } from "../gpu/kernels/rmsnorm.ts";
import { encodeRope } from "../gpu/kernels/rope.ts";
import { type AttentionLayout, encodeAttention } from "../gpu/kernels/attention.ts";
import { encodeSwiglu } from "../gpu/kernels/swiglu.ts";
import { encodeEmbedding } from "../gpu/kernels/embedding.ts";
import { encodeCopy2d } from "../gpu/kernels/elementwise.ts";
import { encodeArgmax, encodeSample } from "../gpu/kernels/sampling.ts";
import { UserError } from "../errors.ts";
import type { GlmModel } from "./glm.ts";

export interface GenerateOptions {
  maxNewTokens: number;
  /** Generation of a row ends at any of these ids (not included in the output). */
  stopIds: number[];
  doSample?: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Called for every generated token (stop tokens excluded), as soon as it is known. */
  onToken?: (row: number, id: number) => void;
}

export async function generate(
  model: GlmModel,
  prompts: number[][],
  opts: GenerateOptions,
): Promise<number[][]> {
  const parts = model.decoderParts();
  const { gpu, dims: d } = parts;
  const B = prompts.length;
  if (B === 0) return [];
  prompts.forEach((p, b) => {
    if (p.length === 0) throw new UserError(`prompt ${b} is empty`);
    for (const id of p) {
      if (!Number.isInteger(id) || id < 0 || id >= d.V) {
        throw new UserError(`prompt ${b}: token ${id} is outside the vocabulary (0..${d.V - 1})`);
      }
    }
  });
  if (!(opts.maxNewTokens >= 0)) {
    throw new UserError(`maxNewTokens must be ≥ 0, got ${opts.maxNewTokens}`);
  }
  const out: number[][] = prompts.map(() => []);
  if (opts.maxNewTokens === 0) return out;
  const lens = prompts.map((p) => p.length);
  const maxPrompt = Math.max(...lens);
  // LoRA's low-rank products use the model's training scratch, sized maxBatch × maxSeq rows.
  if (model.adapter.kind === "lora" && Math.max(maxPrompt, B) > model.maxBatch * model.maxSeq) {
    throw new UserError(
      `${
        maxPrompt > B ? `a prompt of ${maxPrompt} tokens` : `${B} prompts`
      } exceed the model's buffers (${model.maxBatch}×${model.maxSeq} tokens)`,
    );
  }
  const maxLen = maxPrompt + opts.maxNewTokens;
  const rope = parts.ropeTable(maxLen);
  const Tmax = Math.max(maxPrompt, B);
  const GD = d.G * d.D;
  const owned: GPUBuffer[] = [];
  const buf = (n: number, label: string) => {
    const b = createBuffer(gpu, n * 4, label);
    owned.push(b);
    return b;
  };
  const w = {
    x: buf(Tmax * d.hidden, "gen-x"),
    y: buf(Tmax * d.hidden, "gen-y"),
    n: buf(Tmax * d.hidden, "gen-n"),
    rstd: buf(Tmax, "gen-rstd"),
    qkv: buf(Tmax * d.W, "gen-qkv"),
    attn: buf(Tmax * d.A, "gen-attn"),
    h1: buf(Tmax * d.hidden, "gen-h1"),
    ff: buf(Tmax * 2 * d.ffn, "gen-ff"),
    sw: buf(Tmax * d.ffn, "gen-sw"),
    stats: buf(2 * Tmax * d.H, "gen-stats"),
    ids: buf(Tmax, "gen-ids"),
    pos: buf(Tmax, "gen-pos"),
    last: buf(B * d.hidden, "gen-last"),
    logits: buf(B * d.V, "gen-logits"),
    next: buf(B, "gen-next"),
    state: buf(6 * B, "gen-sample-state"),
    cache: Array.from({ length: d.L }, (_, l) => buf(B * maxLen * 2 * GD, `kv-cache-${l}`)),
  };
  const sample = opts.doSample
    ? {
      temperature: opts.temperature ?? 1,
      topK: opts.topK ?? 0,
      topP: opts.topP ?? 1,
      seed: (opts.seed ?? 0) >>> 0,
    }
    : undefined;

  /** Layers over T rows in w.x; keys/values go to the cache. */
  const layers = (
    pass: ComputePass,
    T: number,
    attnOf: (l: number) => AttentionLayout,
    store: (l: number) => void,
  ) => {
    let x = w.x, y = w.y;
    for (let l = 0; l < d.L; l++) {
      const ly = parts.layers[l];
      encodeRmsnorm(gpu, pass, {
        x,
        w: ly.ln1,
        y: w.n,
        rstd: w.rstd,
        rows: T,
        dim: d.hidden,
        eps: d.eps,
      });
      parts.linear(pass, ly.lin.query_key_value, w.n, w.qkv, T, false);
      encodeRope(gpu, pass, {
        x: w.qkv,
        rows: T,
        rowStride: d.W,
        colOff: 0,
        heads: d.H + d.G,
        headDim: d.D,
        table: rope,
        positions: w.pos,
      });
      store(l);
      encodeAttention(gpu, pass, attnOf(l), { buffer: w.attn, off: 0, row: d.A });
      encodeCopy2d(gpu, pass, { rows: 1, width: T * d.hidden, src: x, dst: w.h1 });
      parts.linear(pass, ly.lin.dense, w.attn, w.h1, T, true);
      encodeRmsnorm(gpu, pass, {
        x: w.h1,
        w: ly.ln2,
        y: w.n,
        rstd: w.rstd,
        rows: T,
        dim: d.hidden,
        eps: d.eps,
      });
      parts.linear(pass, ly.lin.dense_h_to_4h, w.n, w.ff, T, false);
      encodeSwiglu(gpu, pass, w.ff, w.sw, T, d.ffn);
      encodeCopy2d(gpu, pass, { rows: 1, width: T * d.hidden, src: w.h1, dst: y });
      parts.linear(pass, ly.lin.dense_4h_to_h, w.sw, y, T, true);
      [x, y] = [y, x];
    }
    return x;
  };
  const embed = (pass: ComputePass, T: number) => {
    for (const sl of parts.embed.slices) {
      encodeEmbedding(gpu, pass, {
        ids: w.ids,
        tokens: T,
        dim: d.hidden,
        table: sl.range,
        f16: parts.embed.f16,
        rowStart: sl.start,
        rowEnd: sl.end,
        y: w.x,
      });
    }
  };
  const prefix = (l: number): Partial<AttentionLayout> =>
    parts.prefix > 0 ? parts.prefixBinding(l) : {};
  const base = {
    heads: d.H,
    groups: d.G,
    headDim: d.D,
    prefix: parts.prefix,
    scale: 1 / Math.sqrt(d.D),
    stats: w.stats,
    pos: w.pos,
    keys: maxLen,
  };

  /** Final norm of the B rows in w.last, logits, and the next id per row: one wait. */
  const choose = async (
    pass: SplittablePass,
    enc: GPUCommandEncoder,
    step: number,
  ): Promise<Uint32Array> => {
    encodeRmsnorm(gpu, pass, {
      x: w.last,
      w: parts.finalNorm,
      y: w.n,
      rstd: w.rstd,
      rows: B,
      dim: d.hidden,
      eps: d.eps,
    });
    for (const sl of parts.output.slices) {
      encodeMatmul(gpu, pass, {
        M: B,
        N: sl.end - sl.start,
        K: d.hidden,
        a: w.n,
        b: sl.buf,
        bOffset: sl.off,
        transB: true,
        bF16: parts.output.f16,
        c: w.logits,
        cOffset: sl.start,
        ldc: d.V,
      });
    }
    if (sample) {
      encodeSample(gpu, pass, { logits: w.logits, rows: B, V: d.V, ids: w.next, state: w.state }, {
        ...sample,
        stream: step,
      });
    } else {
      encodeArgmax(gpu, pass, { logits: w.logits, rows: B, V: d.V, ids: w.next });
    }
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    uniforms(gpu).reset();
    return new Uint32Array(await readBuffer(gpu, w.next, B * 4));
  };

  let next: Uint32Array = new Uint32Array(B);
  try {
    // Prefill, one prompt per submit (no wait between them).
    for (let b = 0; b < B; b++) {
      const T = lens[b];
      writeBuffer(gpu, w.ids, 0, Int32Array.from(prompts[b]));
      writeBuffer(gpu, w.pos, 0, Int32Array.from({ length: T }, (_, t) => t));
      const enc = gpu.device.createCommandEncoder();
      const pass = new SplittablePass(enc);
      if (b === 0) parts.prefixTable(pass);
      embed(pass, T);
      const x = layers(
        pass,
        T,
        (l) => ({
          ...base,
          batch: 1,
          seq: T,
          q: w.qkv,
          qOff: 0,
          qRow: d.W,
          kv: w.qkv,
          kOff: d.A,
          vOff: d.A + GD,
          kvRow: d.W,
          kvBatch: T * d.W,
          ...prefix(l),
        }),
        (l) =>
          encodeCopy2d(gpu, pass, {
            rows: T,
            width: 2 * GD,
            src: w.qkv,
            srcOff: d.A,
            srcStride: d.W,
            dst: w.cache[l],
            dstOff: b * maxLen * 2 * GD,
            dstStride: 2 * GD,
          }),
      );
      encodeCopy2d(gpu, pass, {
        rows: 1,
        width: d.hidden,
        src: x,
        srcOff: (T - 1) * d.hidden,
        dst: w.last,
        dstOff: b * d.hidden,
      });
      if (b < B - 1) {
        pass.end();
        gpu.device.queue.submit([enc.finish()]);
        uniforms(gpu).reset();
        continue;
      }
      next = await choose(pass, enc, 0);
    }
    const done = new Array(B).fill(false);
    const stop = new Set(opts.stopIds);
    const tokens = new Int32Array(B);
    for (let step = 0;; step++) {
      for (let b = 0; b < B; b++) {
        if (done[b]) continue;
        const id = next[b];
        if (stop.has(id)) {
          done[b] = true;
          continue;
        }
        out[b].push(id);
        opts.onToken?.(b, id);
        tokens[b] = id;
        if (out[b].length >= opts.maxNewTokens) done[b] = true;
      }
      if (done.every(Boolean)) break;
      // Decode one token per row at position len_b + step.
      const pos = Int32Array.from(lens, (n) => n + step);
      writeBuffer(gpu, w.ids, 0, tokens);
      writeBuffer(gpu, w.pos, 0, pos);
      const enc = gpu.device.createCommandEncoder();
      const pass = new SplittablePass(enc);
      embed(pass, B);
      const x = layers(
        pass,
        B,
        (l) => ({
          ...base,
          batch: B,
          seq: 1,
          q: w.qkv,
          qOff: 0,
          qRow: d.W,
          kv: w.cache[l],
          kOff: 0,
          vOff: GD,
          kvRow: 2 * GD,
          kvBatch: maxLen * 2 * GD,
          ...prefix(l),
        }),
        (l) => {
          for (let b = 0; b < B; b++) {
            encodeCopy2d(gpu, pass, {
              rows: 1,
              width: 2 * GD,
              src: w.qkv,
              srcOff: b * d.W + d.A,
              dst: w.cache[l],
              dstOff: (b * maxLen + pos[b]) * 2 * GD,
            });
          }
        },
      );
      encodeCopy2d(gpu, pass, { rows: 1, width: B * d.hidden, src: x, dst: w.last });
      next = await choose(pass, enc, step + 1);
    }
    return out;
  } finally {
    for (const b of owned) b.destroy();
  }
}
