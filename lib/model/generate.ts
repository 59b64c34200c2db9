/**
 * Autoregressive generation with a KV cache on the GPU model.
 *
 * Each prompt is prefilled on its own (its tokens at positions 0..len-1, keys
 * and values written to its rows of the cache), so prompts of different
 * lengths need no padding and a row's output does not depend on its batch.
 * Then every step decodes one token for all rows at once: row b's new token
 * sits at position len_b + step and attends to cache positions 0..that.
 *
 * No wait per token: the chosen ids (argmax, or a sample with temperature /
 * top-k / top-p) stay on the device as the next step's input, positions and
 * a token counter advance there too (lib/gpu/kernels/kv_cache.ts), so a
 * step's dispatches never change: they are recorded once and replayed
 * (lib/gpu/recording.ts). The host submits steps in chunks (4 tokens, then
 * 8, then TOKENS_PER_READ) and reads their tokens back from a ring, one wait
 * per chunk, on a GPU with the next chunk already queued behind it; it stops
 * at the first read that finds every row done (so at most a chunk, or two on
 * a GPU, runs past the end). Finished rows keep decoding (their output is
 * ignored); rows never interact, so the tokens are those of a token-by-token
 * loop.
 */
import { createBuffer, type InterruptiblePass, writeBuffer } from "../gpu/runtime.ts";
import { Recording, submitPass } from "../gpu/recording.ts";
import { encodeCopy2d } from "../gpu/kernels/elementwise.ts";
import { encodeArgmax, encodeSample } from "../gpu/kernels/sampling.ts";
import { encodeAdvance, encodeKvStore } from "../gpu/kernels/kv_cache.ts";
import { UserError } from "../errors.ts";
import type { Acts, Core, Step } from "./blocks/core.ts";
import { embeddingForward } from "./blocks/embedding.ts";
import { attentionForward, type AttentionSite, ownLayout } from "./blocks/attention.ts";
import { mlpForward } from "./blocks/mlp.ts";
import { prefixForInference } from "./blocks/prefix.ts";
import { finalNormForward, outputForward } from "./blocks/head.ts";

export interface GenerateOptions {
  maxNewTokens: number;
  /** Generation of a row ends at any of these ids (not included in the output). */
  stopIds: number[];
  doSample?: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Called for every generated token (stop tokens excluded), in order, as tokens are read back. */
  onToken?: (row: number, id: number) => void;
  /** Called when a row ends at one of stopIds, with that id. */
  onStop?: (row: number, id: number) => void;
  /** The most tokens decoded per readback (default TOKENS_PER_READ). */
  tokensPerRead?: number;
  /** Chunks of steps queued ahead of the read (default: 2 on a GPU, 1 on a CPU adapter). */
  inFlight?: number;
}

/** What generation needs of the model (lib/model/glm.ts provides it). */
export interface Decoder {
  core: Core;
  /** Rows the model's LoRA scratch holds (maxBatch × maxSeq). */
  maxTokens: number;
  /** Make the rotary table cover positions below maxPos. */
  ropeFor(maxPos: number): void;
}

/**
 * The most steps between readbacks. A wait costs ~11 ms wherever Deno polls
 * the device; a token of the bench model costs a GPU a few ms and llvmpipe
 * tens.
 */
export const TOKENS_PER_READ = 16;

export async function generate(
  m: Decoder,
  prompts: number[][],
  opts: GenerateOptions,
): Promise<number[][]> {
  const c = m.core, gpu = c.gpu, d = c.dims;
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
  if (c.adapter.kind === "lora" && Math.max(maxPrompt, B) > m.maxTokens) {
    throw new UserError(
      `${
        maxPrompt > B ? `a prompt of ${maxPrompt} tokens` : `${B} prompts`
      } exceed the model's buffers (${m.maxTokens} tokens)`,
    );
  }
  const maxLen = maxPrompt + opts.maxNewTokens;
  m.ropeFor(maxLen);
  const k = Math.max(1, Math.floor(opts.tokensPerRead ?? TOKENS_PER_READ));
  // Chunks in flight: on a GPU the next one runs while the host reads the last; on a CPU
  // adapter (Mesa's GL driver runs a submit's work before the submit returns) nothing would
  // overlap, and a second chunk would only run past the end.
  const inFlight = Math.max(1, Math.floor(opts.inFlight ?? (gpu.deviceClass === "cpu" ? 1 : 2)));
  const slots = (inFlight + 1) * k;
  const Tmax = Math.max(maxPrompt, B);
  const GD = d.G * d.D;
  const owned: GPUBuffer[] = [];
  const buf = (n: number, label: string) => {
    const b = createBuffer(gpu, n * 4, label);
    owned.push(b);
    return b;
  };
  const n = buf(Tmax * d.hidden, "gen-n"), rstd = buf(Tmax, "gen-rstd");
  const acts: Acts = {
    n1: n,
    rstd1: rstd,
    qkv: buf(Tmax * d.W, "gen-qkv"),
    attn: buf(Tmax * d.A, "gen-attn"),
    stats: buf(2 * Tmax * d.H, "gen-stats"),
    h1: buf(Tmax * d.hidden, "gen-h1"),
    n2: n,
    rstd2: rstd,
    ff: buf(Tmax * 2 * d.ffn, "gen-ff"),
    sw: buf(Tmax * d.ffn, "gen-sw"),
    lora: {},
  };
  const w = {
    x: buf(Tmax * d.hidden, "gen-x"),
    y: buf(Tmax * d.hidden, "gen-y"),
    /** A prompt's ids and positions during its prefill. */
    ids: buf(Tmax, "gen-ids"),
    pos: buf(Tmax, "gen-pos"),
    last: buf(B * d.hidden, "gen-last"),
    logits: buf(B * d.V, "gen-logits"),
    /** Decoding: each row's current token and its position, the chosen tokens, the counter. */
    tok: buf(B, "gen-tokens"),
    tokPos: buf(B, "gen-positions"),
    ring: buf(slots * B, "gen-ring"),
    counter: buf(1, "gen-counter"),
    state: buf(6 * B, "gen-sample-state"),
    cache: Array.from({ length: d.L }, (_, l) => buf(B * maxLen * 2 * GD, `kv-cache-${l}`)),
  };
  const staging = Array.from({ length: inFlight }, (_, i) => {
    const b = gpu.device.createBuffer({
      size: k * B * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: `gen-read-${i}`,
    });
    return b;
  });
  const sample = opts.doSample
    ? {
      temperature: opts.temperature ?? 1,
      topK: opts.topK ?? 0,
      topP: opts.topP ?? 1,
      seed: (opts.seed ?? 0) >>> 0,
      stream: 0,
    }
    : undefined;
  const inference = (T: number, pos: GPUBuffer): Step => ({
    B: 1,
    S: T,
    T,
    training: false,
    seed: 0,
    prefixPerBatch: false,
    pos,
  });

  /** Every layer over T rows from w.x; returns the buffer holding the last layer's output. */
  const layers = (
    pass: InterruptiblePass,
    st: Step,
    site: (l: number) => AttentionSite,
  ): GPUBuffer => {
    let x = w.x, y = w.y;
    for (let l = 0; l < d.L; l++) {
      attentionForward(c, pass, st, l, x, acts, site(l));
      mlpForward(c, pass, st, l, acts, y);
      [x, y] = [y, x];
    }
    return x;
  };

  /** Final norm of the B rows of `x`, logits, the next token per row into w.tok, then advance. */
  const choose = (pass: InterruptiblePass, x: GPUBuffer) => {
    finalNormForward(c, pass, x, B, n, rstd);
    outputForward(c, pass, n, 0, B, w.logits);
    const rows = { logits: w.logits, rows: B, V: d.V, ids: w.tok };
    if (sample) encodeSample(gpu, pass, { ...rows, state: w.state, counter: w.counter }, sample);
    else encodeArgmax(gpu, pass, rows);
    encodeAdvance(gpu, pass, {
      rows: B,
      ids: w.tok,
      ring: w.ring,
      slots,
      pos: w.tokPos,
      counter: w.counter,
    });
  };

  /** One decode step: every row's token in w.tok at its position in w.tokPos. */
  const decodeStep = (pass: InterruptiblePass) => {
    embeddingForward(c, pass, w.tok, B, w.x);
    const st = { ...inference(B, w.tokPos), B, S: 1 };
    const x = layers(pass, st, (l) => ({
      // the step's own query; keys and values from the cache, up to each row's position
      layout: {
        ...ownLayout(c, st, l, acts.qkv, acts.stats),
        kv: w.cache[l],
        kOff: 0,
        vOff: GD,
        kvRow: 2 * GD,
        kvBatch: maxLen * 2 * GD,
        keys: maxLen,
      },
      store: (p) =>
        encodeKvStore(gpu, p, {
          rows: B,
          width: 2 * GD,
          src: acts.qkv,
          srcOff: d.A,
          srcRow: d.W,
          pos: w.tokPos,
          dst: w.cache[l],
          dstBatch: maxLen * 2 * GD,
          dstRow: 2 * GD,
        }),
    }));
    choose(pass, x);
  };

  /** Prompt b's prefill: its keys and values into the cache, its last hidden row into w.last. */
  const prefill = (pass: InterruptiblePass, b: number) => {
    const T = lens[b];
    const st = inference(T, w.pos);
    if (b === 0) prefixForInference(c, pass);
    embeddingForward(c, pass, w.ids, T, w.x);
    const x = layers(pass, st, (l) => ({
      layout: ownLayout(c, st, l, acts.qkv, acts.stats),
      store: (p) =>
        encodeCopy2d(gpu, p, {
          rows: T,
          width: 2 * GD,
          src: acts.qkv,
          srcOff: d.A,
          srcStride: d.W,
          dst: w.cache[l],
          dstOff: b * maxLen * 2 * GD,
          dstStride: 2 * GD,
        }),
    }));
    encodeCopy2d(gpu, pass, {
      rows: 1,
      width: d.hidden,
      src: x,
      srcOff: (T - 1) * d.hidden,
      dst: w.last,
      dstOff: b * d.hidden,
    });
  };

  let step: Recording | undefined;
  try {
    // Row b's first generated token sits at position len_b; the advance after each choice moves it.
    writeBuffer(gpu, w.tokPos, 0, Int32Array.from(lens, (len) => len - 1));
    for (let b = 0; b < B; b++) {
      writeBuffer(gpu, w.ids, 0, Int32Array.from(prompts[b]));
      writeBuffer(gpu, w.pos, 0, Int32Array.from({ length: lens[b] }, (_, t) => t));
      submitPass(gpu, (pass) => prefill(pass, b));
    }
    /** Queue the steps that choose tokens [from, from + count) and the copy of them to staging. */
    const submitted: Array<
      { from: number; count: number; target: GPUBuffer; read: Promise<void> }
    > = [];
    let chunks = 0;
    const queue = (from: number, count: number) => {
      const target = staging[chunks++ % inFlight];
      submitPass(gpu, (pass) => {
        for (let t = from; t < from + count; t++) {
          if (t === 0) choose(pass, w.last);
          else if (step) step.replay(pass);
          else step = Recording.record(gpu, pass, decodeStep);
        }
      }, (enc) => {
        // Token t sits in ring slot t mod slots: the chunk's tokens, in one or two runs.
        const start = from % slots, first = Math.min(count, slots - start);
        enc.copyBufferToBuffer(w.ring, start * B * 4, target, 0, first * B * 4);
        if (first < count) {
          enc.copyBufferToBuffer(w.ring, 0, target, first * B * 4, (count - first) * B * 4);
        }
      });
      const read = target.mapAsync(GPUMapMode.READ, 0, count * B * 4);
      // A read still pending when generation ends is dropped with its buffer.
      read.catch(() => {});
      submitted.push({ from, count, target, read });
    };
    const done = new Array(B).fill(false);
    const stop = new Set(opts.stopIds);
    const total = opts.maxNewTokens;
    let next = 0;
    // Chunks grow from 4 tokens to k: a short answer overruns its end by few steps, a long one
    // waits once per k tokens.
    let size = Math.min(4, k);
    const more = () => {
      if (next >= total) return;
      const count = Math.min(size, total - next);
      size = Math.min(k, 2 * size);
      queue(next, count);
      next += count;
    };
    for (let i = 0; i < inFlight; i++) more();
    while (submitted.length > 0) {
      const s = submitted.shift()!;
      await s.read;
      const target = s.target;
      const ids = new Uint32Array(target.getMappedRange(0, s.count * B * 4).slice(0));
      target.unmap();
      for (let t = 0; t < s.count && !done.every(Boolean); t++) {
        for (let b = 0; b < B; b++) {
          if (done[b]) continue;
          const id = ids[t * B + b];
          if (stop.has(id)) {
            done[b] = true;
            opts.onStop?.(b, id);
            continue;
          }
          out[b].push(id);
          opts.onToken?.(b, id);
          if (out[b].length >= opts.maxNewTokens) done[b] = true;
        }
      }
      if (done.every(Boolean)) break;
      more();
    }
    return out;
  } finally {
    step?.destroy();
    for (const b of owned) b.destroy();
    for (const b of staging) b.destroy();
  }
}
