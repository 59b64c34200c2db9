/**
 * The ChatGLM3 model on WebGPU: frozen base weights uploaded once (f16 packed
 * when frozen, f32 when trained, the layers' linears 4-bit for QLoRA), a
 * forward pass for inference and scoring,
 * and an explicit per-layer backward in the manner of llm.c for LoRA,
 * P-Tuning v2 and full SFT. A training micro-batch is one command encoder
 * and one compute pass with no wait: gradients are added into each
 * param.grad, the summed loss lands in a slot of the trainer's buffer.
 *
 * This file composes the blocks (./blocks/: embedding, the attention and MLP
 * blocks of each layer, LoRA, the prefix encoder, output and loss), each with
 * its forward and backward side by side. The sequence of dispatches of a
 * step is recorded the first time a shape is seen and replayed after that
 * (lib/gpu/recording.ts): the dropout seed, loss scale and loss slot are its
 * Knobs.
 *
 * Semantics (DESIGN §5, and lib/model/cpu/glm.ts, the CPU reference): right
 * padded batches, positions 0..seq-1 per record, pre-norm layers with
 * RMSNorm, fused qkv (with bias), ChatGLM's half-dim interleaved rotary on q
 * and k, causal multi-query attention over the prefix and the past, dense,
 * residual, RMSNorm, SwiGLU MLP, residual; final RMSNorm and an untied
 * output layer; loss = cross-entropy of logits at i against labels at i+1.
 */
import type { Gpu } from "../gpu/device.ts";
import {
  type ComputePass,
  createBuffer,
  Knob,
  objectId,
  readF32,
  writeBuffer,
} from "../gpu/runtime.ts";
import { Recording, submitPass } from "../gpu/recording.ts";
import { ropeTable } from "../gpu/kernels/rope.ts";
import { embeddingBackwardPlan } from "../gpu/kernels/embedding.ts";
import { encodeSum } from "../gpu/kernels/cross_entropy.ts";
import { UserError } from "../errors.ts";
import type { GlmConfig } from "./config.ts";
import type {
  ForwardBackwardOptions,
  TrainableModel,
  TrainableParam,
  TrainBatch,
} from "./types.ts";
import { type AdapterSpec, initAdapter, LORA_TARGETS } from "./adapter.ts";
import { type Dims, dimsOf, type GlmConfigFields, type WeightSource } from "./dims.ts";
import { DeviceStore } from "./store.ts";
import { fullParams, loraParams, prefixParams, uploadBase } from "./upload.ts";
import { allocateStep } from "./buffers.ts";
import type { PlanQuantization } from "./memory_plan.ts";
import { uploadBatch } from "./batch.ts";
import { actsFor, type Core, type Step } from "./blocks/core.ts";
import { embeddingBackward, embeddingForward } from "./blocks/embedding.ts";
import { attentionBackward, attentionForward, ownLayout } from "./blocks/attention.ts";
import { mlpBackward, mlpForward } from "./blocks/mlp.ts";
import { prefixBackward, prefixForward } from "./blocks/prefix.ts";
import {
  finalNormBackward,
  finalNormForward,
  headForwardBackward,
  outputForward,
} from "./blocks/head.ts";
import { type Decoder, generate, type GenerateOptions } from "./generate.ts";

export type { AdapterSpec } from "./adapter.ts";
export { type Dims, dimsOf, type GlmConfigFields, linearShape, type WeightSource } from "./dims.ts";
export type { Layer as GlmLayer, Linear as GlmLinear, Table as GlmTable } from "./blocks/core.ts";

export interface GlmModelOptions {
  adapter: AdapterSpec;
  /** Store frozen base weights as f16 (packed u32, unpack2x16float). Default: true for LoRA/prefix/none, false for full. */
  frozenF16?: boolean;
  /**
   * Hold the layers' linear weights 4-bit (QLoRA: NF4 or FP4, bitsandbytes'
   * algorithm), quantized as they load; not with full SFT. The embedding and
   * output tables stay as `frozenF16` says.
   */
  quantization?: PlanQuantization;
  gradientCheckpointing?: boolean;
  /** Largest micro-batch shape the buffers are sized for. */
  maxBatch: number;
  maxSeq: number;
  /** Seed for adapter initialisation (LoRA A kaiming-uniform(a=√5), B = 0; prefix embedding N(0,1) as torch.nn.Embedding). */
  seed: number;
}

/** A recorded step and the Knobs its replays set. */
interface StepRecording {
  recording: Recording;
  seed: Knob;
  gradScale: Knob;
  lossSlot: Knob;
}

/** Recorded step shapes kept per model (training pads each batch to its longest record). */
const RECORDINGS = 16;

export class GlmModel implements TrainableModel {
  /** The config as given (a full GlmConfig from lib/model/config.ts when loaded from a dir). */
  readonly config: GlmConfigFields & Partial<GlmConfig>;
  readonly dims: Dims;
  readonly adapter: AdapterSpec;
  readonly params: TrainableParam[];
  readonly maxBatch: number;
  readonly maxSeq: number;
  readonly gpu: Gpu;
  private readonly opts: GlmModelOptions;
  private readonly store: DeviceStore;
  private core!: Core;
  /** What loading took that a user may want to know (benchmarks report it). */
  loadStats = { quantizeSeconds: 0 };
  private readonly recordings = new Map<string, StepRecording>();

  constructor(gpu: Gpu, config: GlmConfigFields & Partial<GlmConfig>, opts: GlmModelOptions) {
    this.gpu = gpu;
    this.config = config;
    this.dims = dimsOf(config);
    this.adapter = opts.adapter;
    this.opts = opts;
    this.maxBatch = opts.maxBatch;
    this.maxSeq = opts.maxSeq;
    this.store = new DeviceStore(gpu);
    this.params = this.store.params;
    const a = opts.adapter;
    if (a.kind === "lora") {
      for (const t of a.targetModules) {
        if (!(LORA_TARGETS as readonly string[]).includes(t)) {
          throw new UserError(
            `peft_config.target_modules: unknown module "${t}" (expected ${
              LORA_TARGETS.join(", ")
            })`,
          );
        }
      }
      if (!(a.r > 0)) throw new UserError(`peft_config.r: must be positive, got ${a.r}`);
    }
    if (!(opts.maxBatch > 0 && opts.maxSeq > 0)) {
      throw new Error("maxBatch and maxSeq must be positive");
    }
  }

  /** Upload every base weight, create the adapter's params, and size the activations. */
  async init(w: WeightSource): Promise<void> {
    const d = this.dims, a = this.adapter, store = this.store;
    const full = a.kind === "full";
    const f16 = this.opts.frozenF16 ?? !full;
    if (full && f16) {
      throw new UserError("full SFT trains every weight in f32: frozenF16 cannot be set");
    }
    const base = await uploadBase(store, d, w, { full, f16, quant: this.opts.quantization });
    this.loadStats = { quantizeSeconds: base.quantizeSeconds };
    const finalNormParam = full ? fullParams(store, d, base).finalNormParam : undefined;
    if (a.kind === "lora") loraParams(store, base, a);
    const prefix = a.kind === "prefix" ? prefixParams(store, d, a) : undefined;
    if (!full) {
      const shapes = new Map(this.params.map((p) => [p.name, p.shape]));
      this.setParams(initAdapter(shapes, this.opts.seed));
    }
    const maxPos = Math.max(d.seqLength, this.maxSeq);
    const rope = { table: store.up(ropeTable(maxPos, d.D, d.ropeBase), "rope"), maxPos };
    const gradientCheckpointing = !!this.opts.gradientCheckpointing;
    const step = allocateStep(store, this.gpu, d, {
      adapter: a,
      maxBatch: this.maxBatch,
      maxSeq: this.maxSeq,
      gradientCheckpointing,
      prefix,
    });
    this.core = {
      gpu: this.gpu,
      dims: d,
      adapter: a,
      ...base,
      finalNormParam,
      byName: store.byName,
      rope,
      prefix,
      ...step,
      gradientCheckpointing,
    };
  }

  // ---------------------------------------------------------------- params

  setParams(tensors: Map<string, Float32Array>): void {
    for (const [name, t] of tensors) {
      const p = this.store.byName.get(name);
      if (!p) {
        throw new UserError(
          `"${name}" is not a trainable tensor of this model (${this.adapter.kind})`,
        );
      }
      if (t.length !== p.size) {
        throw new UserError(
          `"${name}" has ${t.length} values, expected shape [${p.shape}] (${p.size} values)`,
        );
      }
      if (p.size > 0) writeBuffer(this.gpu, p.weight, 0, t);
    }
  }

  async readParams(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const p of this.params) out.set(p.name, await readF32(this.gpu, p.weight, p.size));
    return out;
  }

  zeroGrads(encoder: GPUCommandEncoder): void {
    for (const p of this.params) encoder.clearBuffer(p.grad);
  }

  // ---------------------------------------------------------------- a step

  /** Upload ids, shifted targets and positions of a batch; returns the step shape. */
  private prepare(batch: TrainBatch, training: boolean, seed: number): Step {
    return uploadBatch(this.core, batch, { maxBatch: this.maxBatch, maxSeq: this.maxSeq }, {
      training,
      seed,
    });
  }

  /** Layer i's forward over the step's own tokens: x[i] → x[i+1]. */
  private layerForward(pass: ComputePass, st: Step, i: number): void {
    const c = this.core, a = actsFor(c, i);
    attentionForward(c, pass, st, i, c.xs[i], a, {
      layout: ownLayout(c, st, i, a.qkv, a.stats),
      scores: c.s.scores,
    });
    mlpForward(c, pass, st, i, a, c.xs[i + 1]);
  }

  /** Embedding, prefix, every layer and the final norm into s.nf. */
  private encodeForward(pass: ComputePass, st: Step): void {
    const c = this.core;
    embeddingForward(c, pass, c.s.ids, st.T, c.xs[0]);
    prefixForward(c, pass, st);
    for (let i = 0; i < this.dims.L; i++) this.layerForward(pass, st, i);
    finalNormForward(c, pass, c.xs[this.dims.L], st.T, c.s.nf, c.s.rstdF);
  }

  /** From dLoss/dnf in s.dn back through every layer (recomputing one under checkpointing). */
  private encodeBackward(pass: ComputePass, st: Step): void {
    const c = this.core;
    finalNormBackward(c, pass, st);
    for (let i = this.dims.L - 1; i >= 0; i--) {
      if (c.gradientCheckpointing && c.acts.length === 1) this.layerForward(pass, st, i);
      mlpBackward(c, pass, st, i);
      attentionBackward(c, pass, st, i);
    }
    prefixBackward(c, pass, st);
  }

  /** Forward, loss into lossBuffer[lossSlot], and with gradScale the whole backward. */
  private encodeStep(
    pass: ComputePass,
    st: Step,
    gradScale: number | Knob | undefined,
    lossBuffer: GPUBuffer,
    lossSlot: number | Knob,
  ): void {
    this.encodeForward(pass, st);
    headForwardBackward(this.core, pass, st, gradScale);
    encodeSum(this.gpu, pass, this.core.s.rowLoss, st.T, lossBuffer, lossSlot);
    if (gradScale !== undefined) this.encodeBackward(pass, st);
  }

  /**
   * Encode the step into `pass`: replayed when a step of this shape was
   * recorded before, else encoded and recorded.
   */
  private recordedStep(
    pass: ComputePass,
    st: Step,
    o: { gradScale?: number; lossBuffer: GPUBuffer; lossSlot: number },
  ): void {
    const key = [
      st.B,
      st.S,
      st.training,
      st.prefixPerBatch,
      o.gradScale !== undefined,
      objectId(o.lossBuffer),
    ].join(" ");
    const r = this.recordings.get(key);
    if (r) {
      this.recordings.delete(key);
      this.recordings.set(key, r);
      r.seed.value = st.seed as number;
      r.gradScale.value = o.gradScale ?? 0;
      r.lossSlot.value = o.lossSlot;
      r.recording.replay(pass);
      return;
    }
    const knobs = {
      seed: new Knob(st.seed as number),
      gradScale: new Knob(o.gradScale ?? 0),
      lossSlot: new Knob(o.lossSlot),
    };
    const recording = Recording.record(this.gpu, pass, (p) =>
      this.encodeStep(
        p,
        { ...st, seed: knobs.seed },
        o.gradScale === undefined ? undefined : knobs.gradScale,
        o.lossBuffer,
        knobs.lossSlot,
      ));
    this.recordings.set(key, { recording, ...knobs });
    if (this.recordings.size > RECORDINGS) {
      const [oldest, old] = this.recordings.entries().next().value!;
      this.recordings.delete(oldest);
      old.recording.destroy();
    }
  }

  /** Drop every recording (a buffer they bind was replaced). */
  private forgetRecordings(): void {
    for (const r of this.recordings.values()) r.recording.destroy();
    this.recordings.clear();
  }

  forwardBackward(batch: TrainBatch, opts: ForwardBackwardOptions): void {
    if (this.adapter.kind === "none") {
      throw new Error("forwardBackward needs an adapter (lora, prefix or full)");
    }
    const st = this.prepare(batch, opts.training, opts.dropoutSeed);
    const plan = this.embeddingPlan(batch);
    submitPass(this.gpu, (pass) => {
      this.recordedStep(pass, st, opts);
      // The embedding's gradient depends on the batch's ids: encoded each time.
      if (plan) embeddingBackward(this.core, pass, st.T, plan.unique);
    });
  }

  /** Full SFT: the embedding backward's plan for the batch's ids, uploaded. */
  private embeddingPlan(batch: TrainBatch): { unique: number } | undefined {
    if (this.adapter.kind !== "full") return undefined;
    const p = embeddingBackwardPlan(batch.inputIds);
    writeBuffer(this.gpu, this.core.s.plan, 0, p.plan);
    return { unique: p.unique };
  }

  /**
   * Upload the batch and encode forward + backward into `pass`, without
   * recording; the caller submits (a profiler replaying the dispatches).
   */
  encodeForwardBackward(
    pass: ComputePass,
    batch: TrainBatch,
    opts: ForwardBackwardOptions,
  ): void {
    if (this.adapter.kind === "none") {
      throw new Error("forwardBackward needs an adapter (lora, prefix or full)");
    }
    const st = this.prepare(batch, opts.training, opts.dropoutSeed);
    const plan = this.embeddingPlan(batch);
    this.encodeStep(pass, st, opts.gradScale, opts.lossBuffer, opts.lossSlot);
    if (plan) embeddingBackward(this.core, pass, st.T, plan.unique);
  }

  forwardLoss(batch: TrainBatch, lossBuffer: GPUBuffer, lossSlot: number): void {
    const st = this.prepare(batch, false, 0);
    submitPass(this.gpu, (pass) => this.recordedStep(pass, st, { lossBuffer, lossSlot }));
  }

  /** Upload the batch and encode the forward and its loss into `pass`; the caller submits. */
  encodeForwardLoss(
    pass: ComputePass,
    batch: TrainBatch,
    lossBuffer: GPUBuffer,
    lossSlot: number,
  ): void {
    const st = this.prepare(batch, false, 0);
    this.encodeStep(pass, st, undefined, lossBuffer, lossSlot);
  }

  /** Logits [batch·seq, padded_vocab] (f32) for a batch. */
  async logits(inputIds: Int32Array, batch: number, seq: number): Promise<Float32Array> {
    const st = this.prepare({ batch, seq, inputIds, labels: new Int32Array(0) }, false, 0);
    const d = this.dims;
    const out = createBuffer(this.gpu, st.T * d.V * 4, "logits-out");
    submitPass(this.gpu, (pass) => {
      this.encodeForward(pass, st);
      outputForward(this.core, pass, this.core.s.nf, 0, st.T, out);
    });
    const r = await readF32(this.gpu, out, st.T * d.V);
    out.destroy();
    return r;
  }

  // ---------------------------------------------------------------- generation

  generate(prompts: number[][], opts: GenerateOptions): Promise<number[][]> {
    return generate(this.decoder(), prompts, opts);
  }

  /** What lib/model/generate.ts needs of the model. */
  private decoder(): Decoder {
    return {
      core: this.core,
      maxTokens: this.maxBatch * this.maxSeq,
      ropeFor: (maxPos) => this.ropeFor(maxPos),
    };
  }

  /** The embedding and output tables as stored (tests check how they were split). */
  decoderParts(): Pick<Core, "embed" | "output"> {
    return { embed: this.core.embed, output: this.core.output };
  }

  /** Grow the rotary table (to at least twice its size) when generation runs past it. */
  private ropeFor(maxPos: number): void {
    const c = this.core;
    if (maxPos <= c.rope.maxPos) return;
    const n = Math.max(maxPos, 2 * c.rope.maxPos);
    // Work already submitted keeps the old table alive until it has run.
    c.rope.table.destroy();
    c.rope = {
      table: this.store.up(ropeTable(n, this.dims.D, this.dims.ropeBase), "rope"),
      maxPos: n,
    };
    this.forgetRecordings();
  }

  destroy(): void {
    this.forgetRecordings();
    this.store.destroy();
  }
}

/** Build a model from a config and a weight source (a model dir, or tensors in memory for benchmarks). */
export async function createGlmModel(
  gpu: Gpu,
  config: GlmConfigFields,
  weights: WeightSource,
  opts: GlmModelOptions,
): Promise<GlmModel> {
  const m = new GlmModel(gpu, config, opts);
  try {
    await m.init(weights);
  } catch (e) {
    m.destroy();
    throw e;
  }
  return m;
}

/** A WeightSource over f32 tensors held in memory. */
export function memoryWeights(
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
): WeightSource {
  const get = (name: string) => {
    const t = tensors.get(name);
    if (!t) throw new Error(`no tensor ${name}`);
    return t;
  };
  return {
    shape: (n) => get(n).shape,
    dtype: () => "F32",
    f32: (n) => get(n).data,
    raw: (n) => new Uint8Array(get(n).data.buffer, get(n).data.byteOffset, get(n).data.byteLength),
  };
}
