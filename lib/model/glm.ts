/**
 * The ChatGLM3 model on WebGPU: frozen base weights uploaded once (f16 packed
 * when frozen, f32 when trained), a forward pass for inference and scoring,
 * and an explicit per-layer backward in the manner of llm.c for LoRA,
 * P-Tuning v2 and full SFT. A training micro-batch is one command encoder
 * and one compute pass with no wait: gradients are added into each
 * param.grad, the summed loss lands in a slot of the trainer's buffer.
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
  readF32,
  settleWrites,
  SplittablePass,
  uniforms,
  writeBuffer,
} from "../gpu/runtime.ts";
import { encodeMatmul, f32ToF16Packed, rawToF16Packed } from "../gpu/kernels/matmul.ts";
import { tableSliceRows } from "./memory_plan.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../gpu/kernels/rmsnorm.ts";
import { encodeRope, ropeTable } from "../gpu/kernels/rope.ts";
import {
  type AttentionLayout,
  encodeAttention,
  encodeAttentionBackward,
  encodeAttentionBackwardMaterialized,
  encodeAttentionMaterialized,
  scoreBytes,
} from "../gpu/kernels/attention.ts";
import { encodeSwiglu, encodeSwigluBackward } from "../gpu/kernels/swiglu.ts";
import {
  embeddingBackwardPlan,
  encodeEmbedding,
  encodeEmbeddingBackward,
} from "../gpu/kernels/embedding.ts";
import {
  crossEntropyScratchBytes,
  encodeCrossEntropy,
  encodeSum,
} from "../gpu/kernels/cross_entropy.ts";
import { encodeDropout } from "../gpu/kernels/dropout.ts";
import {
  encodeColSum,
  encodeCopy2d,
  encodeFill,
  encodeTanh,
  encodeTanhBackward,
} from "../gpu/kernels/elementwise.ts";
import { UserError } from "../errors.ts";
import type { DType } from "../safetensors/dtype.ts";
import type { GlmConfig } from "./config.ts";
import type {
  ForwardBackwardOptions,
  TrainableModel,
  TrainableParam,
  TrainBatch,
} from "./types.ts";
import {
  type AdapterSpec,
  EMBEDDING,
  FINAL_NORM,
  initAdapter,
  layerPrefix,
  LINEAR_PATH,
  LORA_TARGETS,
  loraName,
  type LoraTarget,
  OUTPUT_LAYER,
  PREFIX_DROPOUT,
  PREFIX_EMBEDDING,
  PREFIX_TRANS,
} from "./adapter.ts";
import { generate, type GenerateOptions } from "./generate.ts";

export type { AdapterSpec } from "./adapter.ts";

/** The config.json fields the model reads (HF chatglm3 spelling). */
export interface GlmConfigFields {
  num_layers: number;
  hidden_size: number;
  ffn_hidden_size: number;
  kv_channels: number;
  num_attention_heads: number;
  multi_query_attention?: boolean;
  multi_query_group_num: number;
  padded_vocab_size: number;
  layernorm_epsilon: number;
  rmsnorm?: boolean;
  add_qkv_bias?: boolean;
  add_bias_linear?: boolean;
  post_layer_norm?: boolean;
  seq_length?: number;
  rope_ratio?: number;
}

/** Read access to base weights (lib/model/weights.ts provides it for a model dir). */
export interface WeightSource {
  shape(name: string): number[];
  dtype(name: string): DType;
  f32(name: string): Float32Array | Promise<Float32Array>;
  raw(name: string): Uint8Array | Promise<Uint8Array>;
}

export interface GlmModelOptions {
  adapter: AdapterSpec;
  /** Store frozen base weights as f16 (packed u32, unpack2x16float). Default: true for LoRA/prefix/none, false for full. */
  frozenF16?: boolean;
  gradientCheckpointing?: boolean;
  /** Largest micro-batch shape the buffers are sized for. */
  maxBatch: number;
  maxSeq: number;
  /** Seed for adapter initialisation (LoRA A kaiming-uniform(a=√5), B = 0; prefix embedding N(0,1) as torch.nn.Embedding). */
  seed: number;
}

/** Model dimensions derived from the config. */
export interface Dims {
  L: number;
  hidden: number;
  ffn: number;
  D: number;
  H: number;
  G: number;
  V: number;
  eps: number;
  ropeBase: number;
  qkvBias: boolean;
  /** Fused qkv width (H + 2G)·D. */
  W: number;
  /** Attention output width H·D. */
  A: number;
  seqLength: number;
}

export function dimsOf(c: GlmConfigFields): Dims {
  if (c.rmsnorm === false) {
    throw new UserError("config.json: rmsnorm: only RMSNorm (chatglm3) is supported");
  }
  if (c.add_bias_linear) {
    throw new UserError("config.json: add_bias_linear: true is not supported (chatglm3 has false)");
  }
  if (c.post_layer_norm === false) {
    throw new UserError("config.json: post_layer_norm: false is not supported");
  }
  const H = c.num_attention_heads;
  const G = c.multi_query_attention === false ? H : c.multi_query_group_num;
  if (H % G !== 0) {
    throw new UserError(
      `config.json: num_attention_heads ${H} is not a multiple of multi_query_group_num ${G}`,
    );
  }
  if (c.kv_channels % 4 !== 0) {
    throw new UserError(`config.json: kv_channels ${c.kv_channels} must be a multiple of 4`);
  }
  const D = c.kv_channels;
  return {
    L: c.num_layers,
    hidden: c.hidden_size,
    ffn: c.ffn_hidden_size,
    D,
    H,
    G,
    V: c.padded_vocab_size,
    eps: c.layernorm_epsilon,
    ropeBase: 10000 * (c.rope_ratio ?? 1),
    qkvBias: c.add_qkv_bias ?? true,
    W: (H + 2 * G) * D,
    A: H * D,
    seqLength: c.seq_length ?? 8192,
  };
}

/** (in, out) features of each linear kind. */
export function linearShape(d: Dims, kind: LoraTarget): [number, number] {
  switch (kind) {
    case "query_key_value":
      return [d.hidden, d.W];
    case "dense":
      return [d.A, d.hidden];
    case "dense_h_to_4h":
      return [d.hidden, 2 * d.ffn];
    case "dense_4h_to_h":
      return [d.ffn, d.hidden];
  }
}

/**
 * A weight matrix [rows, cols] split by rows into slices that each fit one
 * binding: a buffer per slice (f16, frozen), or, when the table is trained,
 * ranges of one buffer, which the optimizer sees as one tensor.
 */
interface Table {
  f16: boolean;
  rows: number;
  cols: number;
  slices: {
    buf: GPUBuffer;
    /** Element offset of the slice's first row in `buf`. */
    off: number;
    /** The slice's bytes of `buf`, for kernels that bind it directly. */
    range: GPUBufferBinding;
    start: number;
    end: number;
  }[];
}

interface Linear {
  kind: LoraTarget;
  in: number;
  out: number;
  w: GPUBuffer;
  f16: boolean;
  bias?: GPUBuffer;
  wParam?: TrainableParam;
  bParam?: TrainableParam;
  lora?: { A: TrainableParam; B: TrainableParam };
}

interface Layer {
  ln1: GPUBuffer;
  ln2: GPUBuffer;
  ln1Param?: TrainableParam;
  ln2Param?: TrainableParam;
  lin: Record<LoraTarget, Linear>;
}

/** Per-layer activations kept for backward (one set, reused, under gradient checkpointing). */
interface Acts {
  n1: GPUBuffer;
  rstd1: GPUBuffer;
  qkv: GPUBuffer;
  attn: GPUBuffer;
  stats: GPUBuffer;
  h1: GPUBuffer;
  n2: GPUBuffer;
  rstd2: GPUBuffer;
  ff: GPUBuffer;
  sw: GPUBuffer;
  /** LoRA: A·dropout(x) [T, r] per target. */
  lora: Partial<Record<LoraTarget, GPUBuffer>>;
}

/** The shape of the work being encoded. */
interface Step {
  B: number;
  S: number;
  T: number;
  training: boolean;
  seed: number;
  /** Prefix keys/values per batch row (dropout) rather than shared. */
  prefixPerBatch: boolean;
}

const f32Bytes = (n: number) => n * 4;

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** HF Trainer: no weight decay for biases and norm weights. */
function decays(name: string): boolean {
  return !/bias|layernorm|norm\.weight/.test(name);
}

export class GlmModel implements TrainableModel {
  /** The config as given (a full GlmConfig from lib/model/config.ts when loaded from a dir). */
  readonly config: GlmConfigFields & Partial<GlmConfig>;
  readonly dims: Dims;
  readonly adapter: AdapterSpec;
  readonly params: TrainableParam[] = [];
  readonly maxBatch: number;
  readonly maxSeq: number;
  readonly gpu: Gpu;
  private readonly opts: GlmModelOptions;
  private readonly byName = new Map<string, TrainableParam>();
  private readonly owned: GPUBuffer[] = [];
  private embed!: Table;
  private output!: Table;
  private finalNorm!: GPUBuffer;
  private finalNormParam?: TrainableParam;
  private layers: Layer[] = [];
  private rope!: { table: GPUBuffer; maxPos: number };
  // Prefix encoder.
  private readonly P: number;
  private readonly C: number;
  private prefixEmb?: TrainableParam;
  private prefixTrans?: TrainableParam[];
  private readonly prefixHidden: number;
  // Activations and scratch, sized for maxBatch × maxSeq.
  private xs: GPUBuffer[] = [];
  private acts: Acts[] = [];
  private s!: {
    ids: GPUBuffer;
    targets: GPUBuffer;
    pos: GPUBuffer;
    plan: GPUBuffer;
    dres: GPUBuffer;
    dn: GPUBuffer;
    dattn: GPUBuffer;
    dqkv: GPUBuffer;
    dsw: GPUBuffer;
    dff: GPUBuffer;
    xd: GPUBuffer;
    dxl: GPUBuffer;
    da: GPUBuffer;
    nf: GPUBuffer;
    rstdF: GPUBuffer;
    logits: GPUBuffer;
    logitRows: number;
    /** Scratch of the cross-entropy's per-chunk partials (lib/gpu/kernels/cross_entropy.ts). */
    ceParts: GPUBuffer;
    rowLoss: GPUBuffer;
    /** Score blocks for the matmul attention path (absent: the per-row flash kernels). */
    scores?: GPUBuffer;
    dscores?: GPUBuffer;
    pkv?: GPUBuffer;
    dpkv?: GPUBuffer;
    kvSum?: GPUBuffer;
    ph?: GPUBuffer;
    dph?: GPUBuffer;
  };

  constructor(gpu: Gpu, config: GlmConfigFields & Partial<GlmConfig>, opts: GlmModelOptions) {
    this.gpu = gpu;
    this.config = config;
    this.dims = dimsOf(config);
    this.adapter = opts.adapter;
    this.opts = opts;
    this.maxBatch = opts.maxBatch;
    this.maxSeq = opts.maxSeq;
    const a = opts.adapter;
    this.P = a.kind === "prefix" ? a.preSeqLen : 0;
    this.C = this.dims.L * 2 * this.dims.G * this.dims.D;
    this.prefixHidden = a.kind === "prefix" ? a.prefixHiddenSize ?? this.dims.hidden : 0;
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

  private buf(bytes: number, label: string): GPUBuffer {
    const b = createBuffer(this.gpu, bytes, label);
    this.owned.push(b);
    return b;
  }

  private up(data: Float32Array | Uint32Array, label: string): GPUBuffer {
    const b = this.buf(data.byteLength, label);
    if (data.byteLength > 0) writeBuffer(this.gpu, b, 0, data);
    return b;
  }

  private addParam(name: string, shape: number[], weight?: GPUBuffer): TrainableParam {
    const size = numel(shape);
    const p: TrainableParam = {
      name,
      shape,
      size,
      weight: weight ?? this.buf(f32Bytes(size), name),
      grad: this.buf(f32Bytes(size), name + ".grad"),
      decay: decays(name),
    };
    this.params.push(p);
    this.byName.set(name, p);
    return p;
  }

  /** Upload every base weight, create the adapter's params, and size the activations. */
  async init(w: WeightSource): Promise<void> {
    const d = this.dims, a = this.adapter;
    const full = a.kind === "full";
    const f16 = this.opts.frozenF16 ?? !full;
    if (full && f16) {
      throw new UserError("full SFT trains every weight in f32: frozenF16 cannot be set");
    }
    const check = (name: string, shape: number[]) => {
      let got: number[];
      try {
        got = w.shape(name);
      } catch (e) {
        throw new UserError(`model weights: missing tensor ${name} (${(e as Error).message})`);
      }
      if (got.join(",") !== shape.join(",")) {
        throw new UserError(
          `model weights: ${name} has shape [${got}], the config implies [${shape}]`,
        );
      }
    };
    const f32Of = async (name: string, shape: number[]) => {
      check(name, shape);
      return await w.f32(name);
    };
    const matrix = async (name: string, shape: number[], asF16: boolean) => {
      check(name, shape);
      const dt = w.dtype(name);
      const data = !asF16
        ? await w.f32(name)
        : dt === "F32"
        ? f32ToF16Packed(await w.f32(name))
        : rawToF16Packed(await w.raw(name), dt);
      const b = this.up(data, name);
      // Staging copies of the writes go once submitted: without this a model is held twice.
      await settleWrites(this.gpu);
      return b;
    };
    const table = async (
      name: string,
      rows: number,
      cols: number,
      asF16: boolean,
    ): Promise<Table> => {
      check(name, [rows, cols]);
      const limit = Math.min(
        this.gpu.limits.maxStorageBufferBindingSize,
        this.gpu.limits.maxBufferSize,
      );
      const rowBytes = cols * (asF16 ? 2 : 4);
      // Slices of a multiple of 4 rows keep the output layer's products on the
      // vec4 kernels (a 16,383-row slice of chatglm3-6b's went to the scalar one).
      let per = tableSliceRows(rows, rowBytes, limit);
      if (asF16 && (per * cols) % 2 === 1) per -= 1;
      if (per < 1) {
        throw new UserError(
          `${name}: one row of ${rowBytes} bytes exceeds the adapter's binding limit`,
        );
      }
      const slices: Table["slices"] = [];
      const dt = w.dtype(name);
      const raw = asF16 && dt !== "F32" ? await w.raw(name) : undefined;
      const all = raw ? undefined : await w.f32(name);
      // A trained table is one buffer (up to maxBufferSize) bound a slice at a time.
      const whole = full ? this.buf(rows * rowBytes, name) : undefined;
      for (let start = 0; start < rows; start += per) {
        const end = Math.min(rows, start + per);
        let data: Float32Array | Uint32Array;
        if (raw) data = rawToF16Packed(raw.subarray(start * cols * 2, end * cols * 2), dt);
        else {
          const part = all!.subarray(start * cols, end * cols);
          data = asF16 ? f32ToF16Packed(part) : part;
        }
        const size = (end - start) * rowBytes;
        if (whole) {
          const offset = start * rowBytes;
          if (offset % this.gpu.limits.minStorageBufferOffsetAlignment !== 0) {
            throw new UserError(
              `${name}: rows of ${rowBytes} bytes do not start its slices at the adapter's binding alignment`,
            );
          }
          writeBuffer(this.gpu, whole, offset, data);
          slices.push({
            buf: whole,
            off: start * cols,
            range: { buffer: whole, offset, size },
            start,
            end,
          });
        } else {
          const buf = this.up(data, `${name}[${start}:${end}]`);
          slices.push({ buf, off: 0, range: { buffer: buf, offset: 0, size }, start, end });
        }
        await settleWrites(this.gpu);
      }
      return { f16: asF16, rows, cols, slices };
    };

    this.embed = await table(EMBEDDING, d.V, d.hidden, f16);
    if (full) this.addParam(EMBEDDING, [d.V, d.hidden], this.embed.slices[0].buf);
    for (let i = 0; i < d.L; i++) {
      const p = layerPrefix(i);
      const ln1 = this.up(
        await f32Of(p + "input_layernorm.weight", [d.hidden]),
        p + "input_layernorm.weight",
      );
      const ln2 = this.up(
        await f32Of(p + "post_attention_layernorm.weight", [d.hidden]),
        p + "post_attention_layernorm.weight",
      );
      const lin = {} as Record<LoraTarget, Linear>;
      for (const kind of LORA_TARGETS) {
        const [inF, outF] = linearShape(d, kind);
        const name = p + LINEAR_PATH[kind] + ".weight";
        const l: Linear = {
          kind,
          in: inF,
          out: outF,
          w: await matrix(name, [outF, inF], f16),
          f16,
        };
        if (kind === "query_key_value" && d.qkvBias) {
          const bn = p + LINEAR_PATH[kind] + ".bias";
          l.bias = this.up(await f32Of(bn, [outF]), bn);
        }
        lin[kind] = l;
      }
      this.layers.push({ ln1, ln2, lin });
    }
    this.finalNorm = this.up(await f32Of(FINAL_NORM, [d.hidden]), FINAL_NORM);
    this.output = await table(OUTPUT_LAYER, d.V, d.hidden, f16);
    if (full) {
      // Params in HF state-dict order.
      for (let i = 0; i < d.L; i++) {
        const p = layerPrefix(i), ly = this.layers[i];
        ly.ln1Param = this.addParam(p + "input_layernorm.weight", [d.hidden], ly.ln1);
        for (const kind of LORA_TARGETS) {
          const l = ly.lin[kind];
          if (kind === "dense_h_to_4h") {
            ly.ln2Param = this.addParam(p + "post_attention_layernorm.weight", [d.hidden], ly.ln2);
          }
          l.wParam = this.addParam(p + LINEAR_PATH[kind] + ".weight", [l.out, l.in], l.w);
          if (l.bias) l.bParam = this.addParam(p + LINEAR_PATH[kind] + ".bias", [l.out], l.bias);
        }
      }
      this.finalNormParam = this.addParam(FINAL_NORM, [d.hidden], this.finalNorm);
      this.addParam(OUTPUT_LAYER, [d.V, d.hidden], this.output.slices[0].buf);
    } else if (a.kind === "lora") {
      for (let i = 0; i < d.L; i++) {
        for (const kind of LORA_TARGETS) {
          if (!a.targetModules.includes(kind)) continue;
          const l = this.layers[i].lin[kind];
          l.lora = {
            A: this.addParam(loraName(i, kind, "A"), [a.r, l.in]),
            B: this.addParam(loraName(i, kind, "B"), [l.out, a.r]),
          };
        }
      }
    } else if (a.kind === "prefix") {
      this.prefixEmb = this.addParam(PREFIX_EMBEDDING, [this.P, this.C]);
      if (a.prefixProjection) {
        const h = this.prefixHidden;
        this.prefixTrans = [
          this.addParam(PREFIX_TRANS[0], [h, this.C]),
          this.addParam(PREFIX_TRANS[1], [h]),
          this.addParam(PREFIX_TRANS[2], [this.C, h]),
          this.addParam(PREFIX_TRANS[3], [this.C]),
        ];
      }
    }
    if (!full) {
      const shapes = new Map(this.params.map((p) => [p.name, p.shape]));
      this.setParams(initAdapter(shapes, this.opts.seed));
    }
    this.rope = {
      table: this.up(ropeTable(Math.max(d.seqLength, this.maxSeq), d.D, d.ropeBase), "rope"),
      maxPos: Math.max(d.seqLength, this.maxSeq),
    };
    this.allocActivations();
  }

  private allocActivations(): void {
    const d = this.dims;
    const T = this.maxBatch * this.maxSeq;
    const nActs = this.opts.gradientCheckpointing ? 1 : d.L;
    const trains = this.adapter.kind !== "none";
    const loraR = this.adapter.kind === "lora" ? this.adapter.r : 0;
    // Row and element kernels bind whole activation buffers: the widest one must fit a binding.
    const widest = f32Bytes(T * Math.max(2 * d.ffn, d.W, d.hidden, d.A));
    const bindLimit = this.gpu.limits.maxStorageBufferBindingSize;
    if (widest > bindLimit) {
      throw new UserError(
        `a micro-batch of ${this.maxBatch}×${this.maxSeq} tokens needs ${widest}-byte activation buffers, ` +
          `but this adapter binds at most ${bindLimit} bytes: lower the batch size or the maximum length ` +
          `(at most ${
            Math.floor(bindLimit / f32Bytes(Math.max(2 * d.ffn, d.W, d.hidden, d.A)))
          } tokens per micro-batch)`,
      );
    }
    for (let i = 0; i <= d.L; i++) this.xs.push(this.buf(f32Bytes(T * d.hidden), `x${i}`));
    for (let i = 0; i < (trains ? nActs : 1); i++) {
      const lora: Acts["lora"] = {};
      if (this.adapter.kind === "lora") {
        for (const k of this.adapter.targetModules as LoraTarget[]) {
          lora[k] = this.buf(f32Bytes(T * loraR), `lora-a-${k}`);
        }
      }
      this.acts.push({
        n1: this.buf(f32Bytes(T * d.hidden), "n1"),
        rstd1: this.buf(f32Bytes(T), "rstd1"),
        qkv: this.buf(f32Bytes(T * d.W), "qkv"),
        attn: this.buf(f32Bytes(T * d.A), "attn"),
        stats: this.buf(f32Bytes(2 * T * d.H), "stats"),
        h1: this.buf(f32Bytes(T * d.hidden), "h1"),
        n2: this.buf(f32Bytes(T * d.hidden), "n2"),
        rstd2: this.buf(f32Bytes(T), "rstd2"),
        ff: this.buf(f32Bytes(T * 2 * d.ffn), "ff"),
        sw: this.buf(f32Bytes(T * d.ffn), "sw"),
        lora,
      });
    }
    const maxIn = Math.max(d.hidden, d.A, d.ffn);
    const limit = Math.min(
      this.gpu.limits.maxStorageBufferBindingSize,
      this.gpu.limits.maxBufferSize,
    );
    const logitRows = Math.max(1, Math.min(T, Math.floor(limit / f32Bytes(d.V))));
    const small = trains ? 1 : 0;
    this.s = {
      ids: this.buf(f32Bytes(T), "ids"),
      targets: this.buf(f32Bytes(T), "targets"),
      pos: this.buf(f32Bytes(T), "pos"),
      plan: this.buf(f32Bytes(3 * T + 1), "embedding-plan"),
      dres: this.buf(f32Bytes(trains ? T * d.hidden : 1), "dres"),
      dn: this.buf(f32Bytes(trains ? T * d.hidden : 1), "dn"),
      dattn: this.buf(f32Bytes(trains ? T * d.A : 1), "dattn"),
      dqkv: this.buf(f32Bytes(trains ? T * d.W : 1), "dqkv"),
      dsw: this.buf(f32Bytes(trains ? T * d.ffn : 1), "dsw"),
      dff: this.buf(f32Bytes(trains ? T * 2 * d.ffn : 1), "dff"),
      xd: this.buf(f32Bytes(loraR ? T * maxIn : small), "lora-xd"),
      dxl: this.buf(f32Bytes(loraR ? T * maxIn : small), "lora-dx"),
      da: this.buf(f32Bytes(loraR ? T * loraR : small), "lora-da"),
      nf: this.buf(f32Bytes(T * d.hidden), "nf"),
      rstdF: this.buf(f32Bytes(T), "rstdF"),
      logits: this.buf(f32Bytes(logitRows * d.V), "logits"),
      logitRows,
      ceParts: this.buf(crossEntropyScratchBytes(logitRows, d.V), "cross-entropy-partials"),
      rowLoss: this.buf(f32Bytes(T), "row-loss"),
    };
    // Attention through matmuls when the score blocks fit (see lib/gpu/kernels/attention.ts);
    // GLM_ATTENTION=rows forces the per-row kernels.
    const sb = scoreBytes({ batch: this.maxBatch, heads: d.H, seq: this.maxSeq, prefix: this.P });
    const budget = Math.min(limit, 256 * 2 ** 20);
    if (sb <= budget && Deno.env.get("GLM_ATTENTION") !== "rows") {
      this.s.scores = this.buf(sb, "attention-scores");
      if (trains) this.s.dscores = this.buf(sb, "attention-dscores");
    }
    if (this.P > 0) {
      this.s.pkv = this.buf(f32Bytes(this.maxBatch * this.P * this.C), "prefix-kv");
      this.s.dpkv = this.buf(f32Bytes(this.maxBatch * this.P * this.C), "prefix-dkv");
      this.s.kvSum = this.buf(f32Bytes(this.P * this.C), "prefix-dkv-sum");
      if (this.prefixTrans) {
        this.s.ph = this.buf(f32Bytes(this.P * this.prefixHidden), "prefix-hidden");
        this.s.dph = this.buf(f32Bytes(this.P * this.prefixHidden), "prefix-dhidden");
      }
    }
  }

  // ---------------------------------------------------------------- params

  setParams(tensors: Map<string, Float32Array>): void {
    for (const [name, t] of tensors) {
      const p = this.byName.get(name);
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

  // ---------------------------------------------------------------- encoding helpers

  private mm(pass: ComputePass, args: Parameters<typeof encodeMatmul>[2]): void {
    encodeMatmul(this.gpu, pass, args);
  }

  private loraScale(): number {
    return this.adapter.kind === "lora" ? this.adapter.alpha / this.adapter.r : 0;
  }

  private loraDropout(st: Step): number {
    return this.adapter.kind === "lora" && st.training ? this.adapter.dropout : 0;
  }

  /**
   * What a LoRA site's A sees: x, or dropout(x) in this.s.xd while training.
   * Backward draws the same mask again (same seed and stream) instead of keeping it.
   */
  private loraInput(
    pass: ComputePass,
    st: Step,
    layer: number,
    l: Linear,
    x: GPUBuffer,
  ): GPUBuffer {
    const p = this.loraDropout(st);
    if (p === 0) return x;
    encodeDropout(this.gpu, pass, {
      x,
      y: this.s.xd,
      n: st.T * l.in,
      p,
      seed: st.seed,
      stream: GlmModel.stream(layer, l.kind),
    });
    return this.s.xd;
  }

  /** Dropout stream of a LoRA site: distinct per layer and linear kind. */
  private static stream(layer: number, kind: LoraTarget): number {
    return layer * 8 + LORA_TARGETS.indexOf(kind) + 1;
  }

  /** y = x·Wᵀ (+b) (+ y when accumulate) (+ s·B·A·dropout(x)); saves A·dropout(x) for backward. */
  private linearFwd(
    pass: ComputePass,
    st: Step,
    layer: number,
    l: Linear,
    x: GPUBuffer,
    y: GPUBuffer,
    accumulate: boolean,
    loraSave?: GPUBuffer,
  ): void {
    const T = st.T;
    this.mm(pass, {
      M: T,
      N: l.out,
      K: l.in,
      a: x,
      b: l.w,
      c: y,
      transB: true,
      bF16: l.f16,
      bias: l.bias,
      accumulate,
    });
    if (!l.lora) return;
    const r = l.lora.A.shape[0];
    const xin = this.loraInput(pass, st, layer, l, x);
    const a = loraSave ?? this.s.da;
    this.mm(pass, { M: T, N: r, K: l.in, a: xin, b: l.lora.A.weight, c: a, transB: true });
    this.mm(pass, {
      M: T,
      N: l.out,
      K: r,
      a,
      b: l.lora.B.weight,
      c: y,
      transB: true,
      alpha: this.loraScale(),
      accumulate: true,
    });
  }

  /** Gradients of linearFwd: dx (written, or added when dxAccumulate), and into every trainable grad. */
  private linearBwd(
    pass: ComputePass,
    st: Step,
    layer: number,
    l: Linear,
    x: GPUBuffer,
    dy: GPUBuffer,
    dx: GPUBuffer | undefined,
    loraSaved?: GPUBuffer,
  ): void {
    const T = st.T;
    if (dx) this.mm(pass, { M: T, N: l.in, K: l.out, a: dy, b: l.w, c: dx, bF16: l.f16 });
    if (l.wParam) {
      this.mm(pass, {
        M: l.out,
        N: l.in,
        K: T,
        a: dy,
        transA: true,
        b: x,
        c: l.wParam.grad,
        accumulate: true,
      });
    }
    if (l.bParam) {
      encodeColSum(this.gpu, pass, { rows: T, cols: l.out, src: dy, dst: l.bParam.grad, beta: 1 });
    }
    if (!l.lora || !loraSaved) return;
    const r = l.lora.A.shape[0], s = this.loraScale();
    const p = this.loraDropout(st);
    // dB += s·dyᵀ·a ; da = s·dy·B ; dA += daᵀ·dropout(x) ; dx += dropout(da·A)
    this.mm(pass, {
      M: l.out,
      N: r,
      K: T,
      a: dy,
      transA: true,
      b: loraSaved,
      c: l.lora.B.grad,
      alpha: s,
      accumulate: true,
    });
    this.mm(pass, { M: T, N: r, K: l.out, a: dy, b: l.lora.B.weight, c: this.s.da, alpha: s });
    const xin = this.loraInput(pass, st, layer, l, x);
    this.mm(pass, {
      M: r,
      N: l.in,
      K: T,
      a: this.s.da,
      transA: true,
      b: xin,
      c: l.lora.A.grad,
      accumulate: true,
    });
    if (!dx) return;
    if (p > 0) {
      this.mm(pass, { M: T, N: l.in, K: r, a: this.s.da, b: l.lora.A.weight, c: this.s.dxl });
      encodeDropout(this.gpu, pass, {
        x: this.s.dxl,
        y: dx,
        n: T * l.in,
        p,
        seed: st.seed,
        stream: GlmModel.stream(layer, l.kind),
        beta: 1,
      });
    } else {
      this.mm(pass, {
        M: T,
        N: l.in,
        K: r,
        a: this.s.da,
        b: l.lora.A.weight,
        c: dx,
        accumulate: true,
      });
    }
  }

  /** The attention layout of layer i over fused qkv rows (training / scoring). */
  private attnLayout(st: Step, layer: number, acts: Acts): AttentionLayout {
    const d = this.dims;
    const l: AttentionLayout = {
      batch: st.B,
      seq: st.S,
      heads: d.H,
      groups: d.G,
      headDim: d.D,
      prefix: this.P,
      scale: 1 / Math.sqrt(d.D),
      q: acts.qkv,
      qOff: 0,
      qRow: d.W,
      kv: acts.qkv,
      kOff: d.A,
      vOff: d.A + d.G * d.D,
      kvRow: d.W,
      kvBatch: st.S * d.W,
      pos: this.s.pos,
      stats: acts.stats,
    };
    if (this.P > 0) Object.assign(l, this.prefixBinding(layer, st.prefixPerBatch));
    return l;
  }

  /** Where layer i's prefix keys/values live: the shared table, or the per-batch dropout copies. */
  prefixBinding(layer: number, perBatch: boolean): Partial<AttentionLayout> {
    const GD = this.dims.G * this.dims.D;
    const shared = !perBatch && !this.prefixTrans;
    return {
      pkv: shared ? this.prefixEmb!.weight : this.s.pkv!,
      pkOff: 2 * layer * GD,
      pvOff: (2 * layer + 1) * GD,
      pRow: this.C,
      pBatch: perBatch ? this.P * this.C : 0,
    };
  }

  /** Prefix keys/values for this step: projection (if any), then dropout per batch row when training. */
  private prefixForward(pass: ComputePass, st: Step): void {
    if (this.P === 0) return;
    const PC = this.P * this.C;
    let src = this.prefixEmb!.weight;
    if (this.prefixTrans) {
      const [w0, b0, w2, b2] = this.prefixTrans;
      const h = this.prefixHidden;
      this.mm(pass, {
        M: this.P,
        N: h,
        K: this.C,
        a: src,
        b: w0.weight,
        c: this.s.ph!,
        transB: true,
        bias: b0.weight,
      });
      encodeTanh(this.gpu, pass, this.s.ph!, this.P * h);
      // With dropout the projected table goes to kvSum first, then one dropped copy per batch row.
      const dst = st.prefixPerBatch ? this.s.kvSum! : this.s.pkv!;
      this.mm(pass, {
        M: this.P,
        N: this.C,
        K: h,
        a: this.s.ph!,
        b: w2.weight,
        c: dst,
        transB: true,
        bias: b2.weight,
      });
      src = dst;
    }
    if (st.prefixPerBatch) {
      const p = this.prefixDropout();
      for (let b = 0; b < st.B; b++) {
        encodeDropout(this.gpu, pass, {
          x: src,
          y: this.s.pkv!,
          yOff: b * PC,
          n: PC,
          p,
          seed: st.seed,
          stream: 0x7f000000 + b,
        });
      }
    }
  }

  private prefixDropout(): number {
    return this.adapter.kind === "prefix" ? this.adapter.dropout ?? PREFIX_DROPOUT : 0;
  }

  /** Gradients of prefixForward from the attention's dpkv. */
  private prefixBackward(pass: ComputePass, st: Step): void {
    if (this.P === 0) return;
    const PC = this.P * this.C;
    let dkv = this.s.dpkv!;
    if (st.prefixPerBatch) {
      const p = this.prefixDropout();
      encodeFill(this.gpu, pass, this.s.kvSum!, PC, 0);
      for (let b = 0; b < st.B; b++) {
        encodeDropout(this.gpu, pass, {
          x: this.s.dpkv!,
          xOff: b * PC,
          y: this.s.kvSum!,
          n: PC,
          p,
          seed: st.seed,
          stream: 0x7f000000 + b,
          beta: 1,
        });
      }
      dkv = this.s.kvSum!;
    }
    const E = this.prefixEmb!;
    if (!this.prefixTrans) {
      encodeCopy2d(this.gpu, pass, { rows: 1, width: PC, src: dkv, dst: E.grad, beta: 1 });
      return;
    }
    const [w0, b0, w2, b2] = this.prefixTrans;
    const h = this.prefixHidden;
    this.mm(pass, {
      M: this.C,
      N: h,
      K: this.P,
      a: dkv,
      transA: true,
      b: this.s.ph!,
      c: w2.grad,
      accumulate: true,
    });
    encodeColSum(this.gpu, pass, { rows: this.P, cols: this.C, src: dkv, dst: b2.grad, beta: 1 });
    this.mm(pass, { M: this.P, N: h, K: this.C, a: dkv, b: w2.weight, c: this.s.dph! });
    encodeTanhBackward(this.gpu, pass, this.s.ph!, this.s.dph!, this.P * h);
    this.mm(pass, {
      M: h,
      N: this.C,
      K: this.P,
      a: this.s.dph!,
      transA: true,
      b: E.weight,
      c: w0.grad,
      accumulate: true,
    });
    encodeColSum(this.gpu, pass, {
      rows: this.P,
      cols: h,
      src: this.s.dph!,
      dst: b0.grad,
      beta: 1,
    });
    this.mm(pass, {
      M: this.P,
      N: this.C,
      K: h,
      a: this.s.dph!,
      b: w0.weight,
      c: E.grad,
      accumulate: true,
    });
  }

  private actsFor(layer: number): Acts {
    return this.acts.length === 1 ? this.acts[0] : this.acts[layer];
  }

  /** One transformer layer: xs[i] → xs[i+1]. */
  private layerForward(pass: ComputePass, st: Step, i: number): void {
    const d = this.dims, ly = this.layers[i], a = this.actsFor(i), T = st.T;
    const x = this.xs[i], y = this.xs[i + 1];
    encodeRmsnorm(this.gpu, pass, {
      x,
      w: ly.ln1,
      y: a.n1,
      rstd: a.rstd1,
      rows: T,
      dim: d.hidden,
      eps: d.eps,
    });
    this.linearFwd(pass, st, i, ly.lin.query_key_value, a.n1, a.qkv, false, a.lora.query_key_value);
    encodeRope(this.gpu, pass, {
      x: a.qkv,
      rows: T,
      rowStride: d.W,
      colOff: 0,
      heads: d.H + d.G,
      headDim: d.D,
      table: this.rope.table,
      positions: this.s.pos,
    });
    const out = { buffer: a.attn, off: 0, row: d.A };
    if (this.s.scores) {
      encodeAttentionMaterialized(this.gpu, pass, this.attnLayout(st, i, a), out, this.s.scores);
    } else encodeAttention(this.gpu, pass, this.attnLayout(st, i, a), out);
    encodeCopy2d(this.gpu, pass, { rows: 1, width: T * d.hidden, src: x, dst: a.h1 });
    this.linearFwd(pass, st, i, ly.lin.dense, a.attn, a.h1, true, a.lora.dense);
    encodeRmsnorm(this.gpu, pass, {
      x: a.h1,
      w: ly.ln2,
      y: a.n2,
      rstd: a.rstd2,
      rows: T,
      dim: d.hidden,
      eps: d.eps,
    });
    this.linearFwd(pass, st, i, ly.lin.dense_h_to_4h, a.n2, a.ff, false, a.lora.dense_h_to_4h);
    encodeSwiglu(this.gpu, pass, a.ff, a.sw, T, d.ffn);
    encodeCopy2d(this.gpu, pass, { rows: 1, width: T * d.hidden, src: a.h1, dst: y });
    this.linearFwd(pass, st, i, ly.lin.dense_4h_to_h, a.sw, y, true, a.lora.dense_4h_to_h);
  }

  /** Backward of layer i: dres holds dLoss/dxs[i+1] on entry and dLoss/dxs[i] on exit. */
  private layerBackward(pass: ComputePass, st: Step, i: number): void {
    const d = this.dims, ly = this.layers[i], a = this.actsFor(i), T = st.T, s = this.s;
    // Layer 0's input gradient only matters to a trainable embedding.
    const needDx = i > 0 || this.adapter.kind === "full";
    this.linearBwd(pass, st, i, ly.lin.dense_4h_to_h, a.sw, s.dres, s.dsw, a.lora.dense_4h_to_h);
    encodeSwigluBackward(this.gpu, pass, a.ff, s.dsw, s.dff, T, d.ffn);
    this.linearBwd(pass, st, i, ly.lin.dense_h_to_4h, a.n2, s.dff, s.dn, a.lora.dense_h_to_4h);
    encodeRmsnormBackward(this.gpu, pass, {
      x: a.h1,
      w: ly.ln2,
      rstd: a.rstd2,
      dy: s.dn,
      dx: s.dres,
      rows: T,
      dim: d.hidden,
      beta: 1,
      dw: ly.ln2Param?.grad,
    });
    this.linearBwd(pass, st, i, ly.lin.dense, a.attn, s.dres, s.dattn, a.lora.dense);
    const layout = this.attnLayout(st, i, a);
    const GD = d.G * d.D;
    const grads = {
      out: a.attn,
      dOut: s.dattn,
      oOff: 0,
      oRow: d.A,
      dqkv: s.dqkv,
      dqOff: 0,
      dkOff: d.A,
      dvOff: d.A + GD,
      dRow: d.W,
      dpkv: s.dpkv,
      dpkOff: 2 * i * GD,
      dpvOff: (2 * i + 1) * GD,
      dpRow: this.C,
      dpBatch: st.prefixPerBatch ? this.P * this.C : 0,
    };
    if (s.scores && s.dscores) {
      encodeAttentionBackwardMaterialized(this.gpu, pass, layout, grads, s.scores, s.dscores);
    } else encodeAttentionBackward(this.gpu, pass, layout, grads);
    encodeRope(this.gpu, pass, {
      x: s.dqkv,
      rows: T,
      rowStride: d.W,
      colOff: 0,
      heads: d.H + d.G,
      headDim: d.D,
      table: this.rope.table,
      positions: s.pos,
      inverse: true,
    });
    this.linearBwd(
      pass,
      st,
      i,
      ly.lin.query_key_value,
      a.n1,
      s.dqkv,
      needDx ? s.dn : undefined,
      a.lora.query_key_value,
    );
    if (needDx) {
      encodeRmsnormBackward(this.gpu, pass, {
        x: this.xs[i],
        w: ly.ln1,
        rstd: a.rstd1,
        dy: s.dn,
        dx: s.dres,
        rows: T,
        dim: d.hidden,
        beta: 1,
        dw: ly.ln1Param?.grad,
      });
    }
  }

  /** Upload ids, shifted targets and positions of a batch; returns the step shape. */
  private prepare(batch: TrainBatch, training: boolean, seed: number): Step {
    const { batch: B, seq: S } = batch;
    if (!(B > 0 && S > 0)) throw new UserError(`empty batch (${B}×${S})`);
    if (B > this.maxBatch || S > this.maxSeq) {
      throw new UserError(
        `batch ${B}×${S} exceeds the model's buffers (${this.maxBatch}×${this.maxSeq}); raise maxBatch/maxSeq`,
      );
    }
    const T = B * S;
    if (batch.inputIds.length !== T) {
      throw new UserError(`inputIds has ${batch.inputIds.length} ids, expected ${T}`);
    }
    for (let t = 0; t < T; t++) {
      const id = batch.inputIds[t];
      if (!(id >= 0 && id < this.dims.V)) {
        throw new UserError(
          `input_ids: token ${id} at position ${t} is outside the vocabulary (0..${
            this.dims.V - 1
          })`,
        );
      }
    }
    const pos = new Int32Array(T);
    for (let t = 0; t < T; t++) pos[t] = t % S;
    writeBuffer(this.gpu, this.s.ids, 0, batch.inputIds);
    writeBuffer(this.gpu, this.s.pos, 0, pos);
    if (batch.labels.length !== 0 && batch.labels.length !== T) {
      throw new UserError(`labels has ${batch.labels.length} values, expected ${T}`);
    }
    if (batch.labels.length) {
      const targets = new Int32Array(T).fill(-100);
      for (let b = 0; b < B; b++) {
        for (let s = 0; s + 1 < S; s++) {
          const l = batch.labels[b * S + s + 1];
          if (l !== -100 && !(l >= 0 && l < this.dims.V)) {
            throw new UserError(
              `labels: ${l} at position ${b * S + s + 1} is neither -100 nor a token id`,
            );
          }
          targets[b * S + s] = l;
        }
      }
      writeBuffer(this.gpu, this.s.targets, 0, targets);
    }
    const perBatch = training && this.P > 0 && this.prefixDropout() > 0;
    return { B, S, T, training, seed: seed >>> 0, prefixPerBatch: perBatch };
  }

  private embedForward(pass: ComputePass, st: Step): void {
    for (const sl of this.embed.slices) {
      encodeEmbedding(this.gpu, pass, {
        ids: this.s.ids,
        tokens: st.T,
        dim: this.dims.hidden,
        table: sl.range,
        f16: this.embed.f16,
        rowStart: sl.start,
        rowEnd: sl.end,
        y: this.xs[0],
      });
    }
  }

  /** Every layer, the final norm, and for each chunk of rows: logits, loss (and dlogits, dnf when backward). */
  private encodeForward(pass: ComputePass, st: Step): void {
    this.embedForward(pass, st);
    this.prefixForward(pass, st);
    for (let i = 0; i < this.dims.L; i++) this.layerForward(pass, st, i);
    const d = this.dims;
    encodeRmsnorm(this.gpu, pass, {
      x: this.xs[d.L],
      w: this.finalNorm,
      y: this.s.nf,
      rstd: this.s.rstdF,
      rows: st.T,
      dim: d.hidden,
      eps: d.eps,
    });
  }

  private encodeHead(pass: ComputePass, st: Step, gradScale?: number): void {
    const d = this.dims, s = this.s;
    const full = this.adapter.kind === "full";
    const outGrad = full ? this.byName.get(OUTPUT_LAYER)!.grad : undefined;
    for (let r0 = 0; r0 < st.T; r0 += s.logitRows) {
      const rows = Math.min(s.logitRows, st.T - r0);
      for (const sl of this.output.slices) {
        this.mm(pass, {
          M: rows,
          N: sl.end - sl.start,
          K: d.hidden,
          a: s.nf,
          aOffset: r0 * d.hidden,
          b: sl.buf,
          bOffset: sl.off,
          transB: true,
          bF16: this.output.f16,
          c: s.logits,
          cOffset: sl.start,
          ldc: d.V,
        });
      }
      encodeCrossEntropy(this.gpu, pass, {
        logits: s.logits,
        rows,
        V: d.V,
        targets: s.targets,
        targetOff: r0,
        rowLoss: s.rowLoss,
        lossOff: r0,
        partials: s.ceParts,
        gradScale,
      });
      if (gradScale === undefined) continue;
      this.output.slices.forEach((sl, k) => {
        this.mm(pass, {
          M: rows,
          N: d.hidden,
          K: sl.end - sl.start,
          a: s.logits,
          aOffset: sl.start,
          lda: d.V,
          b: sl.buf,
          bOffset: sl.off,
          bF16: this.output.f16,
          c: s.dn,
          cOffset: r0 * d.hidden,
          accumulate: k > 0,
        });
      });
      if (outGrad) {
        this.mm(pass, {
          M: d.V,
          N: d.hidden,
          K: rows,
          a: s.logits,
          transA: true,
          lda: d.V,
          b: s.nf,
          bOffset: r0 * d.hidden,
          c: outGrad,
          accumulate: true,
        });
      }
    }
  }

  private encodeBackward(pass: ComputePass, st: Step, plan?: { unique: number }): void {
    const d = this.dims, s = this.s;
    encodeRmsnormBackward(this.gpu, pass, {
      x: this.xs[d.L],
      w: this.finalNorm,
      rstd: s.rstdF,
      dy: s.dn,
      dx: s.dres,
      rows: st.T,
      dim: d.hidden,
      dw: this.finalNormParam?.grad,
    });
    for (let i = d.L - 1; i >= 0; i--) {
      if (this.opts.gradientCheckpointing && this.acts.length === 1) this.layerForward(pass, st, i);
      this.layerBackward(pass, st, i);
    }
    this.prefixBackward(pass, st);
    if (plan) {
      // The gradient has the table's slices (one binding each).
      const grad = this.byName.get(EMBEDDING)!.grad;
      for (const sl of this.embed.slices) {
        encodeEmbeddingBackward(this.gpu, pass, {
          plan: s.plan,
          unique: plan.unique,
          tokens: st.T,
          dim: d.hidden,
          dy: s.dres,
          dtable: { buffer: grad, offset: sl.range.offset, size: sl.range.size },
          rowStart: sl.start,
          rowEnd: sl.end,
        });
      }
    }
  }

  forwardBackward(batch: TrainBatch, opts: ForwardBackwardOptions): void {
    this.submitPass((pass) => this.encodeForwardBackward(pass, batch, opts));
  }

  /** One compute pass encoded by `fill`, submitted without waiting. */
  private submitPass(fill: (pass: ComputePass) => void): void {
    const enc = this.gpu.device.createCommandEncoder();
    const pass = new SplittablePass(enc);
    fill(pass);
    pass.end();
    this.gpu.device.queue.submit([enc.finish()]);
    uniforms(this.gpu).reset();
  }

  /**
   * Upload the batch and encode forward + backward into `pass`; the caller
   * submits (forwardBackward, or a profiler replaying the dispatches).
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
    let plan: { unique: number } | undefined;
    if (this.adapter.kind === "full") {
      const p = embeddingBackwardPlan(batch.inputIds);
      writeBuffer(this.gpu, this.s.plan, 0, p.plan);
      plan = { unique: p.unique };
    }
    this.encodeForward(pass, st);
    this.encodeHead(pass, st, opts.gradScale);
    encodeSum(this.gpu, pass, this.s.rowLoss, st.T, opts.lossBuffer, opts.lossSlot);
    this.encodeBackward(pass, st, plan);
  }

  forwardLoss(batch: TrainBatch, lossBuffer: GPUBuffer, lossSlot: number): void {
    this.submitPass((pass) => this.encodeForwardLoss(pass, batch, lossBuffer, lossSlot));
  }

  /** Upload the batch and encode the forward and its loss into `pass`; the caller submits. */
  encodeForwardLoss(
    pass: ComputePass,
    batch: TrainBatch,
    lossBuffer: GPUBuffer,
    lossSlot: number,
  ): void {
    const st = this.prepare(batch, false, 0);
    this.encodeForward(pass, st);
    this.encodeHead(pass, st);
    encodeSum(this.gpu, pass, this.s.rowLoss, st.T, lossBuffer, lossSlot);
  }

  /** Logits [batch·seq, padded_vocab] (f32) for a batch. */
  async logits(inputIds: Int32Array, batch: number, seq: number): Promise<Float32Array> {
    const st = this.prepare({ batch, seq, inputIds, labels: new Int32Array(0) }, false, 0);
    const d = this.dims;
    const out = createBuffer(this.gpu, f32Bytes(st.T * d.V), "logits-out");
    this.submitPass((pass) => {
      this.encodeForward(pass, st);
      for (const sl of this.output.slices) {
        this.mm(pass, {
          M: st.T,
          N: sl.end - sl.start,
          K: d.hidden,
          a: this.s.nf,
          b: sl.buf,
          bOffset: sl.off,
          transB: true,
          bF16: this.output.f16,
          c: out,
          cOffset: sl.start,
          ldc: d.V,
        });
      }
    });
    const r = await readF32(this.gpu, out, st.T * d.V);
    out.destroy();
    return r;
  }

  generate(
    prompts: number[][],
    opts: GenerateOptions,
  ): Promise<number[][]> {
    return generate(this, prompts, opts);
  }

  // ---------------------------------------------------------------- generation support (lib/model/generate.ts)

  /** Internals the decoder needs; not part of the public API. */
  decoderParts() {
    return {
      gpu: this.gpu,
      dims: this.dims,
      layers: this.layers,
      embed: this.embed,
      output: this.output,
      finalNorm: this.finalNorm,
      prefix: this.P,
      prefixWidth: this.C,
      prefixTable: (pass: ComputePass) => this.prefixTableForInference(pass),
      prefixBinding: (layer: number) => this.prefixBinding(layer, false),
      ropeTable: (maxPos: number) => this.ropeFor(maxPos),
      linear: (
        pass: ComputePass,
        l: Linear,
        x: GPUBuffer,
        y: GPUBuffer,
        rows: number,
        accumulate: boolean,
      ) =>
        this.linearFwd(
          pass,
          { B: 1, S: rows, T: rows, training: false, seed: 0, prefixPerBatch: false },
          0,
          l,
          x,
          y,
          accumulate,
        ),
    };
  }

  /** Encode the projected prefix table into pkv when there is a projection (the raw table is used directly otherwise). */
  private prefixTableForInference(pass: ComputePass): void {
    if (this.P > 0 && this.prefixTrans) {
      this.prefixForward(pass, {
        B: 1,
        S: 1,
        T: 1,
        training: false,
        seed: 0,
        prefixPerBatch: false,
      });
    }
  }

  /** The rotary table, grown (to at least twice its size) when generation runs past it. */
  private ropeFor(maxPos: number): GPUBuffer {
    if (maxPos > this.rope.maxPos) {
      const n = Math.max(maxPos, 2 * this.rope.maxPos);
      // Work already submitted keeps the old table alive until it has run.
      this.rope.table.destroy();
      this.rope = {
        table: this.up(ropeTable(n, this.dims.D, this.dims.ropeBase), "rope"),
        maxPos: n,
      };
    }
    return this.rope.table;
  }

  destroy(): void {
    for (const b of this.owned) b.destroy();
    this.owned.length = 0;
  }
}

export type { Layer as GlmLayer, Linear as GlmLinear, Table as GlmTable };

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
