/**
 * The ChatGLM3 model on the CPU, in plain TypeScript on Float32Arrays, built
 * from the reference operators in ops.ts: forward logits and loss for a
 * right-padded batch, backward to every trainable kind (LoRA on any of the
 * four linear kinds, the P-Tuning v2 prefix with or without its projection
 * MLP, full SFT), and greedy generation. It states the semantics the WebGPU
 * model (lib/model/glm.ts) must reproduce and is checked against PyTorch in
 * tests/reference_model_test.ts; it is for tests, not for speed.
 *
 * Positions are the token's index within its record (0..len-1 with right
 * padding), so a row's result does not depend on what it is batched with.
 * Pad tokens sit after every real token: causality alone keeps real tokens
 * from seeing them, and their labels are -100.
 */
import { UserError } from "../../errors.ts";
import {
  type AdapterSpec,
  initAdapter,
  layerPrefix,
  LINEAR_PATH,
  LORA_TARGETS,
  loraName,
  loraScale,
  type LoraTarget,
  PREFIX_EMBEDDING,
  PREFIX_TRANS,
} from "../adapter.ts";
import {
  glmAttentionWidth,
  type GlmConfig,
  glmGroups,
  glmQkvWidth,
  loadGlmConfig,
} from "../config.ts";
import { glmWeightShapes, openWeights } from "../weights.ts";
import * as ops from "./ops.ts";
import { accumulate, checkIds, joinQkv, scatterPrefix, splitQkv } from "./tensors.ts";

function linearDims(c: GlmConfig, kind: LoraTarget): [number, number] {
  const H = c.hidden_size;
  switch (kind) {
    case "query_key_value":
      return [H, glmQkvWidth(c)];
    case "dense":
      return [glmAttentionWidth(c), H];
    case "dense_h_to_4h":
      return [H, 2 * c.ffn_hidden_size];
    case "dense_4h_to_h":
      return [c.ffn_hidden_size, H];
  }
}

/** Names and shapes of the trainable tensors of an adapter, in a stable order. */
export function trainableShapes(c: GlmConfig, adapter: AdapterSpec): Map<string, number[]> {
  const m = new Map<string, number[]>();
  if (adapter.kind === "lora") {
    for (const t of adapter.targetModules) {
      if (!(LORA_TARGETS as readonly string[]).includes(t)) {
        throw new UserError(
          `unknown LoRA target module "${t}" (expected ${LORA_TARGETS.join(", ")})`,
        );
      }
    }
    for (let i = 0; i < c.num_layers; i++) {
      for (const kind of LORA_TARGETS) {
        if (!adapter.targetModules.includes(kind)) continue;
        const [inF, outF] = linearDims(c, kind);
        m.set(loraName(i, kind, "A"), [adapter.r, inF]);
        m.set(loraName(i, kind, "B"), [outF, adapter.r]);
      }
    }
  } else if (adapter.kind === "prefix") {
    const kv = prefixWidth(c);
    m.set(PREFIX_EMBEDDING, [adapter.preSeqLen, kv]);
    if (adapter.prefixProjection) {
      const h = adapter.prefixHiddenSize ?? c.hidden_size;
      m.set(PREFIX_TRANS[0], [h, kv]);
      m.set(PREFIX_TRANS[1], [h]);
      m.set(PREFIX_TRANS[2], [kv, h]);
      m.set(PREFIX_TRANS[3], [kv]);
    }
  } else if (adapter.kind === "full") {
    return glmWeightShapes(c);
  }
  return m;
}

function prefixWidth(c: GlmConfig): number {
  return c.num_layers * 2 * glmGroups(c) * c.kv_channels;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

interface LinearSaved {
  x: Float32Array;
  /** x·Aᵀ for LoRA, kept for backward. */
  a?: Float32Array;
}

interface LayerSaved {
  x: Float32Array;
  n1: Float32Array;
  rstd1: Float32Array;
  qkv: LinearSaved;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  probs: Float32Array;
  pk?: Float32Array;
  pv?: Float32Array;
  dense: LinearSaved;
  h: Float32Array;
  n2: Float32Array;
  rstd2: Float32Array;
  up: LinearSaved;
  f: Float32Array;
  down: LinearSaved;
}

interface ForwardState {
  batch: number;
  seq: number;
  ids: Int32Array;
  layers: LayerSaved[];
  xFinal: Float32Array;
  nf: Float32Array;
  rstdF: Float32Array;
  logits: Float32Array;
  prefix?: { emb: Float32Array; hid?: Float32Array; table: Float32Array };
}

export interface CpuLossResult {
  /** Summed cross-entropy over the valid (shifted, non -100) targets. */
  lossSum: number;
  count: number;
}

export class CpuGlm {
  readonly config: GlmConfig;
  readonly adapter: AdapterSpec;
  /** Base weights by HF name (shared, never modified except under full SFT). */
  readonly weights: Map<string, Float32Array>;
  /** Trainable tensors by saved name. */
  readonly params: Map<string, Float32Array>;
  readonly shapes: Map<string, number[]>;

  constructor(
    config: GlmConfig,
    weights: Map<string, Float32Array>,
    adapter: AdapterSpec,
    seed = 42,
  ) {
    this.config = config;
    this.adapter = adapter;
    this.weights = weights;
    if (!config.rmsnorm || config.add_bias_linear || !config.post_layer_norm) {
      throw new UserError(
        "config.json: only the chatglm3 layout is supported (rmsnorm, no linear biases, final norm)",
      );
    }
    for (const [name, shape] of glmWeightShapes(config)) {
      const w = weights.get(name);
      if (!w) throw new UserError(`missing weight ${name}`);
      if (w.length !== numel(shape)) {
        throw new Error(`weight ${name} has ${w.length} elements, expected [${shape}]`);
      }
    }
    this.shapes = trainableShapes(config, adapter);
    this.params = adapter.kind === "full"
      ? weights
      : initAdapter(trainableShapes(config, adapter), seed);
  }

  /** Replace trainable tensors by name; unknown or mis-shaped names throw. */
  setParams(tensors: Map<string, Float32Array>): void {
    for (const [name, t] of tensors) {
      const shape = this.shapes.get(name);
      if (!shape) throw new UserError(`"${name}" is not a trainable tensor of this model`);
      if (t.length !== numel(shape)) {
        throw new UserError(`"${name}" has ${t.length} elements, expected [${shape}]`);
      }
      this.params.get(name)!.set(t);
    }
  }

  private w(name: string): Float32Array {
    return this.params.get(name) ?? this.weights.get(name)!;
  }

  private loraOf(layer: number, kind: LoraTarget): { A: Float32Array; B: Float32Array } | null {
    if (this.adapter.kind !== "lora" || !this.adapter.targetModules.includes(kind)) return null;
    return {
      A: this.params.get(loraName(layer, kind, "A"))!,
      B: this.params.get(loraName(layer, kind, "B"))!,
    };
  }

  private loraScale(): number {
    return loraScale(this.adapter);
  }

  private linearFwd(
    layer: number,
    kind: LoraTarget,
    x: Float32Array,
    rows: number,
  ): { y: Float32Array; saved: LinearSaved } {
    const [K, N] = linearDims(this.config, kind);
    const p = layerPrefix(layer) + LINEAR_PATH[kind];
    const y = ops.linear(
      x,
      this.w(p + ".weight"),
      this.weights.get(p + ".bias") ?? null,
      rows,
      K,
      N,
    );
    const lora = this.loraOf(layer, kind);
    if (!lora) return { y, saved: { x } };
    const r = (this.adapter as { r: number }).r, s = this.loraScale();
    const a = ops.linear(x, lora.A, null, rows, K, r);
    const u = ops.linear(a, lora.B, null, rows, r, N);
    for (let i = 0; i < y.length; i++) y[i] += s * u[i];
    return { y, saved: { x, a } };
  }

  private linearBwd(
    layer: number,
    kind: LoraTarget,
    saved: LinearSaved,
    dy: Float32Array,
    rows: number,
    grads: Map<string, Float32Array>,
  ): Float32Array {
    const [K, N] = linearDims(this.config, kind);
    const p = layerPrefix(layer) + LINEAR_PATH[kind];
    const { dx, dw, db } = ops.linearBackward(saved.x, this.w(p + ".weight"), dy, rows, K, N);
    accumulate(grads, p + ".weight", dw);
    if (this.weights.has(p + ".bias")) accumulate(grads, p + ".bias", db);
    const lora = this.loraOf(layer, kind);
    if (lora && saved.a) {
      const r = (this.adapter as { r: number }).r, s = this.loraScale();
      const dyS = new Float32Array(dy.length);
      for (let i = 0; i < dy.length; i++) dyS[i] = s * dy[i];
      const bB = ops.linearBackward(saved.a, lora.B, dyS, rows, r, N);
      const bA = ops.linearBackward(saved.x, lora.A, bB.dx, rows, K, r);
      accumulate(grads, loraName(layer, kind, "B"), bB.dw);
      accumulate(grads, loraName(layer, kind, "A"), bA.dw);
      for (let i = 0; i < dx.length; i++) dx[i] += bA.dx[i];
    }
    return dx;
  }

  /** The prefix key/value table [P, L·2·G·D] (through the projection MLP when configured). */
  private prefixTable(): ForwardState["prefix"] | undefined {
    const a = this.adapter;
    if (a.kind !== "prefix") return undefined;
    const P = a.preSeqLen, kv = prefixWidth(this.config);
    const emb = this.params.get(PREFIX_EMBEDDING)!;
    if (!a.prefixProjection) return { emb, table: emb };
    const h = a.prefixHiddenSize ?? this.config.hidden_size;
    const pre = ops.linear(emb, this.w(PREFIX_TRANS[0]), this.w(PREFIX_TRANS[1]), P, kv, h);
    const hid = pre.map(Math.tanh);
    const table = ops.linear(hid, this.w(PREFIX_TRANS[2]), this.w(PREFIX_TRANS[3]), P, h, kv);
    return { emb, hid, table };
  }

  /** Layer l's prefix keys or values [P, G, D]: chunk 2l (keys) or 2l+1 (values) of the table. */
  private prefixSlice(table: Float32Array, layer: number, which: 0 | 1): Float32Array {
    const c = this.config, P = (this.adapter as { preSeqLen: number }).preSeqLen;
    const GD = glmGroups(c) * c.kv_channels, row = prefixWidth(c);
    const out = new Float32Array(P * GD);
    for (let p = 0; p < P; p++) {
      const o = p * row + (2 * layer + which) * GD;
      out.set(table.subarray(o, o + GD), p * GD);
    }
    return out;
  }

  private forward(ids: Int32Array, batch: number, seq: number): ForwardState {
    const c = this.config;
    const Hd = c.hidden_size, T = batch * seq, H = c.num_attention_heads;
    const G = glmGroups(c), D = c.kv_channels, F = c.ffn_hidden_size;
    const base = 10000 * c.rope_ratio;
    const positions = new Int32Array(T);
    for (let t = 0; t < T; t++) positions[t] = t % seq;
    const prefix = this.prefixTable();
    const P = prefix ? (this.adapter as { preSeqLen: number }).preSeqLen : 0;
    const shape = {
      batch,
      seq,
      heads: H,
      groups: G,
      headDim: D,
      prefix: P,
      scale: 1 / Math.sqrt(D),
    };
    let x = ops.embedding(ids, this.w("transformer.embedding.word_embeddings.weight"), Hd);
    const layers: LayerSaved[] = [];
    for (let l = 0; l < c.num_layers; l++) {
      const p = layerPrefix(l);
      const { y: n1, rstd: rstd1 } = ops.rmsnorm(
        x,
        this.w(p + "input_layernorm.weight"),
        T,
        Hd,
        c.layernorm_epsilon,
      );
      const qkvOut = this.linearFwd(l, "query_key_value", n1, T);
      const { q, k, v } = splitQkv(qkvOut.y, T, H, G, D);
      const qr = ops.rope(q, T, H, D, positions, base);
      const kr = ops.rope(k, T, G, D, positions, base);
      const pk = prefix ? this.prefixSlice(prefix.table, l, 0) : undefined;
      const pv = prefix ? this.prefixSlice(prefix.table, l, 1) : undefined;
      const { out: ctx, probs } = ops.attention(qr, kr, v, shape, pk, pv);
      const denseOut = this.linearFwd(l, "dense", ctx, T);
      const h = ops.add(x, denseOut.y);
      const { y: n2, rstd: rstd2 } = ops.rmsnorm(
        h,
        this.w(p + "post_attention_layernorm.weight"),
        T,
        Hd,
        c.layernorm_epsilon,
      );
      const upOut = this.linearFwd(l, "dense_h_to_4h", n2, T);
      const g = ops.swiglu(upOut.y, T, F);
      const downOut = this.linearFwd(l, "dense_4h_to_h", g, T);
      layers.push({
        x,
        n1,
        rstd1,
        qkv: qkvOut.saved,
        q: qr,
        k: kr,
        v,
        probs,
        pk,
        pv,
        dense: denseOut.saved,
        h,
        n2,
        rstd2,
        up: upOut.saved,
        f: upOut.y,
        down: downOut.saved,
      });
      x = ops.add(h, downOut.y);
    }
    const { y: nf, rstd: rstdF } = ops.rmsnorm(
      x,
      this.w("transformer.encoder.final_layernorm.weight"),
      T,
      Hd,
      c.layernorm_epsilon,
    );
    const logits = ops.linear(
      nf,
      this.w("transformer.output_layer.weight"),
      null,
      T,
      Hd,
      c.padded_vocab_size,
    );
    return { batch, seq, ids, layers, xFinal: x, nf, rstdF, logits, prefix };
  }

  /** Logits [batch·seq, padded_vocab] for right-padded input ids. */
  logits(inputIds: Int32Array, batch: number, seq: number): Float32Array {
    checkIds(inputIds, batch, seq, this.config.padded_vocab_size);
    return this.forward(inputIds, batch, seq).logits;
  }

  /** Summed loss and count of valid targets (labels shifted inside, as ChatGLM's forward). */
  loss(inputIds: Int32Array, labels: Int32Array, batch: number, seq: number): CpuLossResult {
    const st = this.forward(inputIds, batch, seq);
    const targets = ops.shiftLabels(labels, batch, seq);
    const { lossSum, count } = ops.crossEntropy(
      st.logits,
      targets,
      batch * seq,
      this.config.padded_vocab_size,
    );
    return { lossSum, count };
  }

  /**
   * Forward and backward. `gradScale` seeds dLoss/dlogit per valid target; by
   * default 1/count, i.e. gradients of the mean loss. Returns gradients of
   * every trainable tensor by saved name.
   */
  forwardBackward(
    inputIds: Int32Array,
    labels: Int32Array,
    batch: number,
    seq: number,
    gradScale?: number,
  ): CpuLossResult & { grads: Map<string, Float32Array> } {
    checkIds(inputIds, batch, seq, this.config.padded_vocab_size);
    const c = this.config;
    const Hd = c.hidden_size, T = batch * seq, H = c.num_attention_heads, V = c.padded_vocab_size;
    const G = glmGroups(c), D = c.kv_channels, F = c.ffn_hidden_size;
    const st = this.forward(inputIds, batch, seq);
    const targets = ops.shiftLabels(labels, batch, seq);
    let count = 0;
    for (const t of targets) if (t !== -100) count++;
    const scale = gradScale ?? (count ? 1 / count : 0);
    const ce = ops.crossEntropy(st.logits, targets, T, V, scale);
    const grads = new Map<string, Float32Array>();

    const out = ops.linearBackward(
      st.nf,
      this.w("transformer.output_layer.weight"),
      ce.dlogits,
      T,
      Hd,
      V,
    );
    accumulate(grads, "transformer.output_layer.weight", out.dw);
    const fin = ops.rmsnormBackward(
      st.xFinal,
      this.w("transformer.encoder.final_layernorm.weight"),
      st.rstdF,
      out.dx,
      T,
      Hd,
    );
    accumulate(grads, "transformer.encoder.final_layernorm.weight", fin.dw);
    let dx = fin.dx;
    const P = st.prefix ? (this.adapter as { preSeqLen: number }).preSeqLen : 0;
    const dTable = st.prefix ? new Float32Array(st.prefix.table.length) : undefined;
    const shape = {
      batch,
      seq,
      heads: H,
      groups: G,
      headDim: D,
      prefix: P,
      scale: 1 / Math.sqrt(D),
    };
    const base = 10000 * c.rope_ratio;
    const positions = new Int32Array(T);
    for (let t = 0; t < T; t++) positions[t] = t % seq;

    for (let l = c.num_layers - 1; l >= 0; l--) {
      const s = st.layers[l], p = layerPrefix(l);
      // x_next = h + down(swiglu(up(norm2(h))))
      const dg = this.linearBwd(l, "dense_4h_to_h", s.down, dx, T, grads);
      const df = ops.swigluBackward(s.f, dg, T, F);
      const dn2 = this.linearBwd(l, "dense_h_to_4h", s.up, df, T, grads);
      const nb2 = ops.rmsnormBackward(
        s.h,
        this.w(p + "post_attention_layernorm.weight"),
        s.rstd2,
        dn2,
        T,
        Hd,
      );
      accumulate(grads, p + "post_attention_layernorm.weight", nb2.dw);
      const dh = ops.add(dx, nb2.dx);
      // h = x + dense(attention(rope(q), rope(k), v))
      const dctx = this.linearBwd(l, "dense", s.dense, dh, T, grads);
      const ab = ops.attentionBackward(s.q, s.k, s.v, s.probs, dctx, shape, s.pk, s.pv);
      const dq = ops.rope(ab.dq, T, H, D, positions, base, true);
      const dk = ops.rope(ab.dk, T, G, D, positions, base, true);
      const dqkv = joinQkv(dq, dk, ab.dv, T, H, G, D);
      const dn1 = this.linearBwd(l, "query_key_value", s.qkv, dqkv, T, grads);
      const nb1 = ops.rmsnormBackward(
        s.x,
        this.w(p + "input_layernorm.weight"),
        s.rstd1,
        dn1,
        T,
        Hd,
      );
      accumulate(grads, p + "input_layernorm.weight", nb1.dw);
      dx = ops.add(dh, nb1.dx);
      if (dTable) {
        scatterPrefix(dTable, ab.dpk, l, 0, P, G * D, prefixWidth(c));
        scatterPrefix(dTable, ab.dpv, l, 1, P, G * D, prefixWidth(c));
      }
    }
    accumulate(
      grads,
      "transformer.embedding.word_embeddings.weight",
      ops.embeddingBackward(st.ids, dx, V, Hd),
    );
    if (st.prefix && dTable) this.prefixBackward(st.prefix, dTable, grads);

    const result = new Map<string, Float32Array>();
    for (const name of this.shapes.keys()) {
      result.set(name, grads.get(name) ?? new Float32Array(numel(this.shapes.get(name)!)));
    }
    return { lossSum: ce.lossSum, count: ce.count, grads: result };
  }

  private prefixBackward(
    prefix: NonNullable<ForwardState["prefix"]>,
    dTable: Float32Array,
    grads: Map<string, Float32Array>,
  ): void {
    const a = this.adapter as Extract<AdapterSpec, { kind: "prefix" }>;
    if (!a.prefixProjection || !prefix.hid) {
      accumulate(grads, PREFIX_EMBEDDING, dTable);
      return;
    }
    const P = a.preSeqLen,
      kv = prefixWidth(this.config),
      h = a.prefixHiddenSize ?? this.config.hidden_size;
    const b2 = ops.linearBackward(prefix.hid, this.w(PREFIX_TRANS[2]), dTable, P, h, kv);
    accumulate(grads, PREFIX_TRANS[2], b2.dw);
    accumulate(grads, PREFIX_TRANS[3], b2.db);
    const dpre = new Float32Array(b2.dx.length);
    for (let i = 0; i < dpre.length; i++) dpre[i] = b2.dx[i] * (1 - prefix.hid[i] * prefix.hid[i]);
    const b0 = ops.linearBackward(prefix.emb, this.w(PREFIX_TRANS[0]), dpre, P, kv, h);
    accumulate(grads, PREFIX_TRANS[0], b0.dw);
    accumulate(grads, PREFIX_TRANS[1], b0.db);
    accumulate(grads, PREFIX_EMBEDDING, b0.dx);
  }

  /**
   * Greedy generation by re-forwarding each prompt; stops at any stop id
   * (not included in the output) or after maxNewTokens. Ties go to the lowest
   * id, as torch.argmax.
   */
  generate(prompts: number[][], opts: { maxNewTokens: number; stopIds: number[] }): number[][] {
    const V = this.config.padded_vocab_size;
    return prompts.map((prompt) => {
      const ids = [...prompt], out: number[] = [];
      for (let n = 0; n < opts.maxNewTokens; n++) {
        const logits = this.logits(Int32Array.from(ids), 1, ids.length);
        const row = logits.subarray((ids.length - 1) * V, ids.length * V);
        let best = 0;
        for (let i = 1; i < V; i++) if (row[i] > row[best]) best = i;
        if (opts.stopIds.includes(best)) break;
        out.push(best);
        ids.push(best);
      }
      return out;
    });
  }
}

/** A CpuGlm for a model directory (config.json + safetensors, any of f32/f16/bf16, sharded or not). */
export async function loadCpuGlm(dir: string, adapter: AdapterSpec, seed = 42): Promise<CpuGlm> {
  const config = await loadGlmConfig(dir);
  const source = await openWeights(dir, config);
  const weights = new Map<string, Float32Array>();
  for (const name of source.expected().keys()) weights.set(name, await source.f32(name));
  return new CpuGlm(config, weights, adapter, seed);
}
