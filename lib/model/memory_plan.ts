/**
 * Device memory the WebGPU model and trainer need for a config, an adapter and
 * a micro-batch shape, by kind of buffer, computed without a device (so it
 * runs for the real chatglm3-6b config on any machine: `--dry-run`).
 *
 * The plan mirrors the buffers lib/model/ allocates (upload.ts, buffers.ts); docs/model.md
 * lists them one by one. Assumptions, in short:
 *  - frozen weight matrices f16 (2 bytes) when frozenF16, else f32; norm
 *    weights and biases f32; trainable tensors, their gradients and AdamW's
 *    two moments f32;
 *  - the residual stream entering every layer (and leaving the last) is kept,
 *    f32, in both modes; per-layer activations (norm outputs and their 1/rms,
 *    the fused qkv, the attention output, per-row softmax max and sum — the
 *    probabilities are recomputed in backward, never stored —, the post-
 *    attention sum, the MLP input, dense_h_to_4h output and SwiGLU output,
 *    LoRA's x·Aᵀ) are kept for every layer, or, with gradient checkpointing,
 *    for one layer that is recomputed in backward;
 *  - one set of backward scratch buffers shared by all layers;
 *  - attention goes through batched matmuls with a score block (rows × heads
 *    × seq × (prefix + seq) f32, and its gradient when training) shared by
 *    all layers, when that block fits min(binding, 256 MiB); otherwise the
 *    per-row kernels need no block;
 *  - logits are computed a chunk of rows at a time, as many rows as fit one
 *    storage binding, and their gradient overwrites them in place;
 *  - a micro-batch may be fed to the model `rowsPerPass` records at a time
 *    (gradients add up, the loss scale covers the whole micro-batch), so the
 *    activation buffers are sized for rowsPerPass·seq tokens;
 *  - with `quantization` (QLoRA), the frozen linear weights of every layer
 *    (query_key_value, dense, dense_h_to_4h, dense_4h_to_h) are 4-bit codes,
 *    half a byte per value, plus their block scales (lib/model/quant/device.ts);
 *    the embedding and output tables stay as without it (f16), as do norm
 *    weights and biases (f32): transformers' bitsandbytes integration replaces
 *    only nn.Linear modules and keeps the last one, chatglm3's output_layer,
 *    unquantized (docs/qlora.md).
 */
import { type AdapterSpec, LORA_TARGETS, type LoraTarget } from "./adapter.ts";
import { linearShape, type WidthFields, widthsOf } from "./dims.ts";
import type { GlmConfig } from "./config.ts";
import { scoreBytes } from "../gpu/kernels/attention.ts";
import { crossEntropyScratchBytes } from "../gpu/kernels/cross_entropy.ts";
import { operandTextureBytes } from "../gpu/kernels/matmul_texture.ts";
import { quant4Bytes } from "./quant/quantize.ts";

/** The fields of a GlmConfig the plan reads. */
export type PlanConfig = WidthFields & Pick<GlmConfig, "add_qkv_bias" | "seq_length">;

export interface PlanOptions {
  adapter: AdapterSpec;
  /** Records per optimizer micro-batch (per_device_train_batch_size). */
  batch: number;
  /** Padded sequence length. */
  seq: number;
  /** Records per forward/backward pass; the buffers are sized for this many rows. Default: batch. */
  rowsPerPass?: number;
  /** Frozen base weights stored as f16. Default: true unless full SFT. */
  frozenF16?: boolean;
  gradientCheckpointing: boolean;
  /** Largest storage binding in bytes (logit chunking). Default 1 GiB. */
  maxBindingBytes?: number;
  /** Tokens per generated sequence (prompt + new tokens) for the KV cache line. Default: seq. */
  generateLength?: number;
  /**
   * Attention through the per-row kernels, without a score block (the model's
   * GLM_ATTENTION=rows). Default: what that environment variable says.
   */
  rowAttention?: boolean;
  /** The device class the kernels are chosen for (its matmul scratch differs). Default "gpu". */
  deviceClass?: "cpu" | "gpu";
  /** Largest texture side (maxTextureDimension2D; llvmpipe's 16384 by default). */
  maxTextureSide?: number;
  /** A 4-bit frozen base (QLoRA): the layers' linear weights quantized; not with full SFT. */
  quantization?: PlanQuantization;
}

/** How the frozen linear weights are quantized (lib/config's QuantizationConfig carries these). */
export interface PlanQuantization {
  quantType: "nf4" | "fp4";
  doubleQuant: boolean;
  /** Values per block (64). */
  blocksize?: number;
}

export interface MemoryPlan {
  /** Bytes per kind. */
  frozenWeights: number;
  trainableWeights: number;
  gradients: number;
  optimizerMoments: number;
  activations: number;
  logits: number;
  /** Kernel scratch outside the model: the matmul's operand copies on a CPU adapter, uniforms. */
  scratch: number;
  /** Everything a training step holds at once. */
  total: number;
  /** Generation, not part of total: f32 keys and values of every layer for batch × generateLength. */
  kvCache: number;
  /** Rows of logits computed per chunk. */
  logitRows: number;
  /** Tokens per pass (rowsPerPass · seq). */
  tokensPerPass: number;
  /** The activation bytes split by buffer group, for the table. */
  activationParts: Record<string, number>;
  /** The frozen weight bytes by kind, when the base is quantized (else empty). */
  frozenParts: Record<string, number>;
}

const F32 = 4, F16 = 2, MiB = 2 ** 20;

export function memoryPlan(config: PlanConfig, opts: PlanOptions): MemoryPlan {
  const w = widthsOf(config);
  const { L, hidden: h, ffn: F, D, H, G, V, W, A } = w;
  const a = opts.adapter;
  const rows = opts.rowsPerPass ?? opts.batch;
  if (!(rows >= 1 && rows <= opts.batch)) {
    throw new Error(`rowsPerPass must be in 1..batch, got ${rows}`);
  }
  const T = rows * opts.seq;
  const frozenF16 = opts.frozenF16 ?? a.kind !== "full";

  // Base weights: matrices and vectors. Each layer linear's element count.
  const linears = LORA_TARGETS.map((k) => linearShape(w, k)).map(([i, o]) => i * o);
  const layerMatrices = linears.reduce((x, y) => x + y, 0);
  const matrices = 2 * V * h + L * layerMatrices;
  const vectors = L * (2 * h + (config.add_qkv_bias ? W : 0)) + h;
  const baseParams = matrices + vectors;

  let trainable = 0;
  let loraTargets = 0;
  if (a.kind === "lora") {
    for (const t of a.targetModules) {
      if (!(LORA_TARGETS as readonly string[]).includes(t)) {
        throw new Error(`unknown LoRA target module "${t}"`);
      }
      const [inF, outF] = linearShape(w, t as LoraTarget);
      trainable += L * a.r * (inF + outF);
      loraTargets++;
    }
  }
  const C = L * 2 * G * D;
  const P = a.kind === "prefix" ? a.preSeqLen : 0;
  const prefixHidden = a.kind === "prefix" && a.prefixProjection ? a.prefixHiddenSize ?? h : 0;
  if (a.kind === "prefix") {
    trainable += P * C;
    if (a.prefixProjection) trainable += prefixHidden * C + prefixHidden + C * prefixHidden + C;
  }
  if (a.kind === "full") trainable = baseParams;

  const q = opts.quantization;
  if (q && a.kind === "full") throw new Error("a quantized base cannot be fully fine-tuned");
  const matrixBytes = frozenF16 ? F16 : F32;
  const frozenParts: Record<string, number> = {};
  let frozenWeights = a.kind === "full" ? 0 : matrices * matrixBytes + vectors * F32;
  if (q && a.kind !== "full") {
    // Each of a layer's four linear weights is quantized on its own (its own padding to words).
    const qOpts = { type: q.quantType, doubleQuant: q.doubleQuant, blocksize: q.blocksize ?? 64 };
    const layerQuant = linears.reduce((sum, n) => sum + quant4Bytes(n, qOpts), 0);
    const codes = linears.reduce((sum, n) => sum + Math.ceil(n / 8) * 4, 0);
    const type = q.quantType.toUpperCase();
    frozenParts[`layer linear weights, 4-bit ${type} codes`] = L * codes;
    frozenParts[`their block scales${q.doubleQuant ? " (double-quantized)" : " (f32 absmax)"}`] =
      L * (layerQuant - codes) + (q.doubleQuant ? 256 * F32 : 0);
    frozenParts[`embedding and output tables (${frozenF16 ? "f16" : "f32"})`] = 2 * V * h *
      matrixBytes;
    frozenParts["norm weights and qkv biases (f32)"] = vectors * F32;
    frozenWeights = Object.values(frozenParts).reduce((x, y) => x + y, 0);
  }
  const trainableWeights = trainable * F32;
  const trains = a.kind !== "none";
  const gradients = trains ? trainable * F32 : 0;
  const optimizerMoments = trains ? 2 * trainable * F32 : 0;

  const loraR = a.kind === "lora" ? a.r : 0;
  const perLayer = T * (h + 1 + W + A + 2 * H + h + h + 1 + 2 * F + F + loraR * loraTargets);
  const layerSets = trains ? (opts.gradientCheckpointing ? 1 : L) : 1;
  // The LoRA input scratch is sized for the widest linear input of any kind, targeted or not.
  const maxIn = loraR ? Math.max(h, A, F) : 0;
  const parts: Record<string, number> = {
    "residual stream (L+1 layer inputs)": (L + 1) * T * h * F32,
    [`per-layer activations × ${layerSets}`]: layerSets * perLayer * F32,
    // Without training, 1-element placeholders stand in for the scratch buffers.
    "backward scratch": trains
      ? (T * (h + h + A + W + F + 2 * F + 2 * maxIn + loraR) +
        (loraR ? 0 : 3)) * F32
      : 6 * F32,
    "ids, targets, positions, final norm, row losses": (3 * T + 3 * T + 1 + T * h + T + T) * F32,
    "rotary table": Math.max(config.seq_length, opts.seq) * (D / 2) * F32,
    "prefix keys/values": P ? (2 * rows * P * C + P * C + 2 * P * prefixHidden) * F32 : 0,
  };
  const binding = opts.maxBindingBytes ?? 2 ** 30;
  // The block budget is the one lib/model/buffers.ts applies when it allocates.
  const scores = scoreBytes({ batch: rows, heads: H, seq: opts.seq, prefix: P });
  const rowAttention = opts.rowAttention ?? envRowAttention();
  parts["attention score block" + (trains ? " and its gradient" : "")] =
    !rowAttention && scores <= Math.min(binding, 256 * MiB) ? (trains ? 2 : 1) * scores : 0;
  const activations = Object.values(parts).reduce((x, y) => x + y, 0);

  const logitRows = Math.max(1, Math.min(T, Math.floor(binding / (V * F32))));
  const logits = logitRows * V * F32 + crossEntropyScratchBytes(logitRows, V);
  const kvCache = L * 2 * opts.batch * (opts.generateLength ?? opts.seq) * G * D * F32;
  const scratch = UNIFORM_ARENA +
    (opts.deviceClass === "cpu"
      ? cpuMatmulScratch(config, T, P + opts.seq, binding, opts.maxTextureSide ?? 16384, !!q)
      : 0);
  const total = frozenWeights + trainableWeights + gradients + optimizerMoments + activations +
    logits + scratch;
  return {
    frozenWeights,
    trainableWeights,
    gradients,
    optimizerMoments,
    activations,
    logits,
    scratch,
    total,
    kvCache,
    logitRows,
    tokensPerPass: T,
    activationParts: parts,
    frozenParts,
  };
}

/** The uniform arena's first chunk (lib/gpu/runtime.ts). */
const UNIFORM_ARENA = MiB;

/**
 * The matmul's operand textures on a CPU adapter (lib/gpu/kernels/
 * matmul_texture.ts): one texture per distinct stored operand, kept for the
 * run. Chiefly a copy of each frozen weight shape (qkv, dense, h→4h in the
 * halves a binding takes, 4h→h: 352 MiB for chatglm3-6b whatever its layer
 * count), then the activations fed to them and attention's q and k blocks.
 * Operands a texture cannot hold take the storage-buffer kernel and add nothing.
 */
function cpuMatmulScratch(
  c: PlanConfig,
  T: number,
  keys: number,
  binding: number,
  maxSide: number,
  /** 4-bit linears: the 4-bit kernel reads them from their buffers, no texture copies. */
  quantized = false,
): number {
  const w = widthsOf(c);
  const { hidden: h, ffn: F, D, W, A } = w;
  const fits = (width: number, rows: number) =>
    Math.max(2 ** Math.ceil(Math.log2(width / 4)), 2 ** Math.ceil(Math.log2(rows))) <= maxSide;
  const seen = new Set<string>();
  let bytes = 0;
  const add = (width: number, rows: number, f16: boolean) => {
    const key = `${width}x${rows}${f16}`;
    if (seen.has(key) || !fits(width, rows)) return;
    seen.add(key);
    bytes += operandTextureBytes(width, rows, 1, f16);
  };
  // Frozen weights [out, in], split in halves along `out` until a piece fits a binding.
  for (const [inF, out] of quantized ? [] : LORA_TARGETS.map((k) => linearShape(w, k))) {
    let rows = out;
    while (rows * Math.ceil((inF * 2) / 256) * 256 > binding && rows > 1) {
      rows = Math.ceil(rows / 2);
    }
    add(inF, rows, true);
  }
  // The output layer, in the slices a binding takes (lib/model/upload.ts), and the logits
  // fed back through it.
  const per = tableSliceRows(c.padded_vocab_size, h * 2, binding);
  for (const rows of new Set([per, c.padded_vocab_size % per || per])) {
    add(h, rows, true);
    add(rows, T, false);
  }
  // Inputs of the forward products and of the backward input gradients, [T, width].
  for (const width of [h, A, F, W]) add(width, T, false);
  // Attention's q and k blocks.
  add(D, T, false);
  add(D, keys, false);
  return bytes;
}

/** Rows of an embedding or output table per buffer: as many as a binding holds, a multiple of 4. */
export function tableSliceRows(rows: number, rowBytes: number, binding: number): number {
  let per = Math.max(1, Math.floor((binding - 4096) / rowBytes));
  if (per >= 4) per -= per % 4;
  return Math.min(rows, per);
}

function envRowAttention(): boolean {
  try {
    return Deno.env.get("GLM_ATTENTION") === "rows";
  } catch {
    return false; // no permission to read the environment: the default, matmul attention
  }
}

/** The plan as a fixed-width table in MiB. */
export function formatMemoryPlan(plan: MemoryPlan, title = "memory plan"): string {
  const row = (name: string, bytes: number) =>
    `  ${name.padEnd(52)}${(bytes / MiB).toFixed(1).padStart(12)} MiB`;
  const lines = [
    `${title} (${plan.tokensPerPass} tokens per pass, logits in chunks of ${plan.logitRows} rows)`,
    row("frozen base weights", plan.frozenWeights),
    ...Object.entries(plan.frozenParts).map(([n, b]) => row(`  ${n}`, b)),
    row("trainable weights (f32)", plan.trainableWeights),
    row("gradients (f32)", plan.gradients),
    row("AdamW moments m, v (f32)", plan.optimizerMoments),
    row("activations kept for backward + scratch", plan.activations),
    ...Object.entries(plan.activationParts).filter(([, b]) => b > 0).map(([n, b]) =>
      row(`  ${n}`, b)
    ),
    row("logits chunk (gradient in place), loss partials", plan.logits),
    row("kernel scratch (uniforms; matmul textures on a CPU)", plan.scratch),
    row("total", plan.total),
    row("KV cache for generation (not in total)", plan.kvCache),
  ];
  return lines.join("\n");
}

/**
 * The most records per pass (≤ batch) whose plan fits `budgetBytes`, or 0 if
 * even one record does not fit. Splitting a micro-batch into passes changes
 * nothing in the result: gradients add up and the loss scale covers the
 * whole micro-batch.
 */
export function largestRowsPerPass(
  config: PlanConfig,
  opts: PlanOptions,
  budgetBytes: number,
): number {
  for (let rows = opts.batch; rows >= 1; rows--) {
    if (memoryPlan(config, { ...opts, rowsPerPass: rows }).total <= budgetBytes) return rows;
  }
  return 0;
}

// ---- the torch engine: per GPU, by sharding strategy and number of GPUs ----

/**
 * How the torch engine spreads the training state over data-parallel GPUs:
 * replicated (DDP), ZeRO stage 2 / FSDP SHARD_GRAD_OP (gradients and optimizer
 * state sharded), ZeRO stage 3 / FSDP FULL_SHARD (weights too).
 */
export type Sharding = "ddp" | "zero2" | "zero3";

export interface TorchPlanOptions {
  adapter: AdapterSpec;
  /** Records per device per micro-batch (per_device_train_batch_size). */
  batch: number;
  seq: number;
  gradientCheckpointing: boolean;
  /** Data-parallel processes (GPUs) in all. */
  gpus: number;
  sharding: Sharding;
  /** bf16 / fp16 mixed precision (activations and DeepSpeed's working copies in 2 bytes). */
  half: boolean;
  /** Frozen base weights in 2 bytes (LoRA / P-Tuning v2 with half precision, or an f16 checkpoint on a GPU). */
  frozenHalf: boolean;
  /** ZeRO-3 offload (upstream's ds_zero_3.json): weights, gradients and optimizer state in host memory. */
  offload?: boolean;
}

export interface TorchMemoryPlan {
  /** Bytes per GPU, by kind. */
  frozenWeights: number;
  /** Trainable weights: f32; under ZeRO with half precision, 2-byte weights plus the f32 master copy. */
  trainableWeights: number;
  gradients: number;
  optimizerStates: number;
  /** ZeRO-3: the layers' weights gathered for the computation in flight. */
  gatheredWeights: number;
  activations: number;
  logits: number;
  total: number;
  /** Offloaded to host memory per GPU (ZeRO-3 offload), not in total. */
  host: number;
  tokensPerDevice: number;
}

/**
 * The memory one GPU of a torch-engine run holds, by the ZeRO paper's
 * accounting: AdamW takes 16 bytes per trainable parameter — replicated, f32
 * weight 4, gradient 4, moments 8 (PyTorch autocast keeps f32 parameters);
 * under ZeRO with half precision, weight 2, gradient 2, f32 master 4, moments
 * 8 — of which ZeRO-2 shards all but the weights and ZeRO-3 everything across
 * `gpus` (FSDP SHARD_GRAD_OP / FULL_SHARD within a few percent); frozen
 * weights are replicated except under ZeRO-3. Activations are
 * PyTorch's for this model: with gradient checkpointing the input of every
 * layer plus one layer recomputed in backward, otherwise every layer's; SDPA
 * keeps no score matrix. Logits: the half-precision output, its f32 copy and
 * the f32 log-softmax cross-entropy keeps. Not counted: the CUDA context and
 * the caching allocator's reserve (typically 1–3 GiB), DeepSpeed's buckets.
 */
export function torchMemoryPlan(config: PlanConfig, o: TorchPlanOptions): TorchMemoryPlan {
  const w = widthsOf(config);
  const { L, hidden: h, ffn: F, D, H, G, V, W, A } = w;
  if (!(o.gpus >= 1) || !(o.batch >= 1)) throw new Error("gpus and batch must be ≥ 1");
  // Parameter counts from the WebGPU plan (the same model).
  const base = memoryPlan(config, {
    adapter: { kind: "none" },
    batch: 1,
    seq: 1,
    frozenF16: false,
    gradientCheckpointing: false,
  }).frozenWeights / F32;
  const adapterPlan = memoryPlan(config, {
    adapter: o.adapter,
    batch: 1,
    seq: 1,
    gradientCheckpointing: false,
  });
  const trainable = adapterPlan.trainableWeights / F32;
  const frozen = o.adapter.kind === "full" ? 0 : base;
  const N = o.gpus;
  const z3 = o.sharding === "zero3", z2 = o.sharding === "zero2";
  const half = o.half ? 2 : 4;
  // Hidden states take the dtype of the weights they pass through: 2 bytes with mixed precision,
  // or when LoRA / P-Tuning v2 keep a half-precision base without autocast (upstream's way).
  const act = o.half || (o.frozenHalf && o.adapter.kind !== "full") ? 2 : 4;

  const shardW = z3 ? N : 1, shardOpt = z2 || z3 ? N : 1;
  let frozenWeights = frozen * (o.frozenHalf ? F16 : F32) / shardW;
  let trainableWeights: number, gradients: number;
  if (o.half && o.sharding !== "ddp") {
    // ZeRO with mixed precision: 2-byte weights and gradients; the f32 master copy is optimizer state.
    trainableWeights = trainable * F16 / shardW + trainable * F32 / shardOpt;
    gradients = trainable * F16 / shardOpt;
  } else {
    // f32 weights and gradients (PyTorch autocast keeps f32 parameters and casts per operation).
    trainableWeights = trainable * F32 / shardW;
    gradients = trainable * F32 / shardOpt;
  }
  let optimizerStates = 2 * trainable * F32 / shardOpt;
  let host = 0;
  if (z3 && o.offload) {
    host = frozenWeights + trainableWeights + gradients + optimizerStates;
    frozenWeights =
      trainableWeights =
      gradients =
      optimizerStates =
        0;
  }
  // ZeRO-3 gathers a unit's weights for its computation: the root unit (embedding, output
  // layer, final norm) and, with prefetch, two layers at a time.
  const layerParams =
    LORA_TARGETS.reduce((n, k) => n + linearShape(w, k).reduce((i, o) => i * o), 0) +
    (config.add_qkv_bias ? W : 0) + 2 * h;
  const gatheredWeights = z3 && N > 1 ? (2 * V * h + h + 2 * layerParams) * half : 0;

  const T = o.batch * o.seq;
  const P = o.adapter.kind === "prefix" ? o.adapter.preSeqLen : 0;
  // One layer's tensors autograd keeps (elements): norm output, qkv, rotated q and k, the
  // prefix's keys/values, attention output, residual, second norm, h_to_4h, gate and product.
  const loraR = o.adapter.kind === "lora" ? o.adapter.r * o.adapter.targetModules.length : 0;
  const layerElems = T * (h + W + (H + G) * D + A + h + h + 2 * F + 2 * F + loraR) +
    2 * o.batch * P * G * D;
  const layerBytes = layerElems * act + T * H * F32; // + SDPA's f32 log-sum-exp per head
  const activations = o.gradientCheckpointing ? L * T * h * act + layerBytes : L * layerBytes;
  // the model's output (in half precision, then copied to f32) and the f32 log-softmax
  const logits = T * V * ((act === 2 ? F16 : 0) + F32 + F32);
  const total = frozenWeights + trainableWeights + gradients + optimizerStates + gatheredWeights +
    activations + logits;
  return {
    frozenWeights,
    trainableWeights,
    gradients,
    optimizerStates,
    gatheredWeights,
    activations,
    logits,
    total,
    host,
    tokensPerDevice: T,
  };
}

/** The torch plan as a fixed-width table in MiB. */
export function formatTorchMemoryPlan(plan: TorchMemoryPlan, title: string): string {
  const row = (name: string, bytes: number) =>
    `  ${name.padEnd(52)}${(bytes / MiB).toFixed(1).padStart(12)} MiB`;
  return [
    `${title} (per GPU, ${plan.tokensPerDevice} tokens per micro-batch)`,
    row("frozen base weights", plan.frozenWeights),
    row("trainable weights", plan.trainableWeights),
    row("gradients", plan.gradients),
    row("AdamW state (f32 moments)", plan.optimizerStates),
    row("gathered weights (ZeRO-3 working set)", plan.gatheredWeights),
    row("activations kept for backward", plan.activations),
    row("logits and their f32 log-softmax", plan.logits),
    row("total", plan.total),
    row("offloaded to host memory (not in total)", plan.host),
    "  (plus the CUDA context and allocator reserve, typically 1-3 GiB)",
  ].join("\n");
}
