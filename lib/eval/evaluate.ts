/**
 * Evaluation as the ChatGLM3 finetune_demo does it, over a JSONL of records:
 *  - `{input_ids, output_ids}` (mask --mode eval): generate from the prompt,
 *    decode prediction and label, score ROUGE-1/2/L and BLEU-4;
 *  - `{input_ids, labels}` (mask --mode train): teacher-forced loss per record;
 *  - `{prediction, label}` (text, `metricsOnly`): score without a model.
 * Predictions are appended as they are produced (to a `.partial` file renamed
 * when complete); metrics.json holds the means.
 */
import { join } from "node:path";
import { syncDir, writeJsonAtomic } from "../atomic.ts";
import { located, osError, UserError } from "../errors.ts";
import { checkNotInput, claimOutputDir, markOutputDir } from "../outdir.ts";
import { LOOP_BUDGET } from "../gpu/loop_budget.ts";
import { readJsonl } from "../jsonl.ts";
import {
  createScorer,
  loadSegmenter,
  MetricsAccumulator,
  pyStrip,
  type SegmenterName,
} from "../metrics/index.ts";
import type { PairScores } from "../metrics/index.ts";
import { formatDuration, StatusLine } from "../progress.ts";
import type { AdapterSpec } from "../model/adapter.ts";
import {
  type AdapterDir,
  adapterTensorsFor,
  isAdapterDir,
  readAdapterDir,
} from "../model/adapter_dir.ts";
import { createBuffer, readF32 } from "../gpu/runtime.ts";
import type { GlmModel } from "../model/glm.ts";
import type { PlanQuantization } from "../model/memory_plan.ts";
import { loadGlmConfig } from "../model/config.ts";
import { gpuForModel, loadGlmModel } from "../model/load.ts";
import { ChatGLMTokenizer } from "../tokenizer/chatglm.ts";

export interface GenerationSettings {
  maxNewTokens: number;
  doSample: boolean;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
}

export interface EvaluateOptions {
  /** Model dir; not needed with `metricsOnly`. */
  modelDir?: string;
  adapterDir?: string;
  input: string;
  outDir: string;
  limit?: number;
  batchSize: number;
  generation: GenerationSettings;
  segmenter: SegmenterName;
  metricsOnly?: boolean;
  /** Keep frozen weights in f32 instead of f16 (twice the memory; exact f32 math). */
  frozenF16?: boolean;
  /** QLoRA: hold the base's linear weights 4-bit, quantized at load as in training. */
  quantization?: PlanQuantization;
  /** Quiet mode for tests. */
  quiet?: boolean;
  /** Write into `outDir` even when it is a non-empty directory evaluate did not write. */
  force?: boolean;
}

/** The files evaluate writes into its output dir. */
const OUTPUT_FILES = ["predictions.jsonl", "predictions.partial.jsonl", "metrics.json"];

export interface EvaluateResult {
  [key: string]: number | string | null;
}

type Kind = "generate" | "score" | "text";

/** Scored records per readback (each is its own forward; one wait per group). */
const SCORE_GROUP = 64;

interface Item {
  index: number;
  line: number;
  kind: Kind;
  inputIds?: number[];
  outputIds?: number[];
  labels?: number[];
  prediction?: string;
  label?: string;
}

function intArray(v: unknown, file: string, line: number, field: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) {
    throw new UserError(located(file, line, field, "expected an array of integer token ids"));
  }
  return v as number[];
}

function toItem(
  value: unknown,
  index: number,
  line: number,
  file: string,
  metricsOnly: boolean,
): Item {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new UserError(located(file, line, undefined, "expected a JSON object"));
  }
  const r = value as Record<string, unknown>;
  if (metricsOnly) {
    if (typeof r.prediction !== "string") {
      throw new UserError(
        located(
          file,
          line,
          "prediction",
          "expected a string (--metrics-only reads {prediction, label} records)",
        ),
      );
    }
    if (typeof r.label !== "string") {
      throw new UserError(located(file, line, "label", "expected a string"));
    }
    return { index, line, kind: "text", prediction: r.prediction, label: r.label };
  }
  const inputIds = intArray(r.input_ids, file, line, "input_ids");
  if (inputIds.length === 0) throw new UserError(located(file, line, "input_ids", "is empty"));
  if (r.output_ids !== undefined) {
    return {
      index,
      line,
      kind: "generate",
      inputIds,
      outputIds: intArray(r.output_ids, file, line, "output_ids"),
    };
  }
  if (r.labels !== undefined) {
    const labels = intArray(r.labels, file, line, "labels");
    if (labels.length !== inputIds.length) {
      throw new UserError(
        located(
          file,
          line,
          "labels",
          `has ${labels.length} entries, input_ids has ${inputIds.length}`,
        ),
      );
    }
    return { index, line, kind: "score", inputIds, labels };
  }
  throw new UserError(
    located(
      file,
      line,
      undefined,
      "expected output_ids (an eval record from `mask --mode eval`) or labels (a train record)",
    ),
  );
}

/** Where records come from: `path` is read (twice); `name` is shown in messages. */
interface Source {
  path: string;
  name: string;
}

async function* readItems(o: EvaluateOptions, src: Source): AsyncGenerator<Item> {
  let index = 0;
  for await (const r of readJsonl(src.path)) {
    if (o.limit !== undefined && index >= o.limit) return;
    if (r.error !== undefined) throw new UserError(located(src.name, r.line, undefined, r.error));
    yield toItem(r.value, index++, r.line, src.name, !!o.metricsOnly);
  }
}

/** A first pass for the totals the progress line and the model's buffer sizes need. */
async function survey(
  o: EvaluateOptions,
  src: Source,
): Promise<{ count: number; maxLen: number; maxPrompt: number }> {
  let count = 0, maxLen = 0, maxPrompt = 0;
  for await (const it of readItems(o, src)) {
    count++;
    if (it.kind === "score") maxLen = Math.max(maxLen, it.inputIds!.length);
    if (it.kind === "generate") maxPrompt = Math.max(maxPrompt, it.inputIds!.length);
  }
  return { count, maxLen, maxPrompt };
}

/** Upstream decodes and `.strip()`s; the label's eos is a control piece and decodes to nothing. */
function stripStop(ids: number[], stop: Set<number>): number[] {
  let end = ids.length;
  while (end > 0 && stop.has(ids[end - 1])) end--;
  return ids.slice(0, end);
}

export async function evaluate(o: EvaluateOptions): Promise<EvaluateResult> {
  // Before any work: the out dir must be new, empty, or an earlier evaluate output (an
  // older one, written before markers, holds only evaluate's own files).
  await claimOutputDir(o.outDir, "evaluate", {
    force: o.force,
    legacy: (names) => names.every((n) => OUTPUT_FILES.includes(n)),
  });
  // Re-scoring OUT/predictions.jsonl into OUT would replace the records being read.
  for (const f of OUTPUT_FILES) {
    await checkNotInput(join(o.outDir, f), "evaluate's output", [["--in", o.input]]);
  }
  if (o.input !== "-") return await evaluateFrom(o, { path: o.input, name: o.input });
  // Records are read twice (sizes first), so standard input is kept in a temporary file.
  const tmp = await Deno.makeTempFile({ prefix: "evaluate-stdin-", suffix: ".jsonl" });
  try {
    const f = await Deno.open(tmp, { write: true, truncate: true });
    await Deno.stdin.readable.pipeTo(f.writable);
    return await evaluateFrom(o, { path: tmp, name: "<stdin>" });
  } finally {
    await Deno.remove(tmp).catch(() => {});
  }
}

/** What a model-backed evaluation needs. */
export interface Predictor {
  model: GlmModel;
  tokenizer: ChatGLMTokenizer;
  generation: GenerationSettings;
  /** Generated records per generate call. */
  batchSize: number;
}

/** One output record and what it adds to the totals. */
interface Produced {
  record: Record<string, unknown>;
  scores?: PairScores;
  lossSum?: number;
  lossTokens?: number;
  generated?: number;
}

/**
 * The core loop: items in, output records out, in input order. Generation
 * records are batched `batchSize` at a time, label records grouped so that
 * one readback serves SCORE_GROUP forwards; a change of kind flushes.
 */
async function* produce(
  items: AsyncIterable<Item>,
  p: Predictor | undefined,
  score: (prediction: string, label: string) => PairScores,
  sourceName: string,
): AsyncGenerator<Produced> {
  const stopIds = p?.tokenizer.stopIds ?? [];
  const stopSet = new Set([...stopIds, 2]);
  const text = (it: Item, prediction: string, label: string, extra: Record<string, unknown>) => {
    const scores = score(prediction, label);
    return { record: { index: it.index, ...extra, prediction, label, scores }, scores };
  };
  const checkVocab = (it: Item) => {
    const V = p!.model.dims.V;
    const fields = [
      ["input_ids", it.inputIds],
      ["output_ids", it.outputIds],
      ["labels", it.labels],
    ] as const;
    for (const [field, ids] of fields) {
      const bad = (ids ?? []).findIndex((id) =>
        id >= V || (id < 0 && !(field === "labels" && id === -100))
      );
      if (bad >= 0) {
        throw new UserError(
          located(
            sourceName,
            it.line,
            `${field}[${bad}]`,
            `token id ${ids![bad]} is outside the model's vocabulary (0..${V - 1}); ` +
              `was the data tokenized for another model?`,
          ),
        );
      }
    }
  };
  const generate = async (batch: Item[]): Promise<Produced[]> => {
    if (!batch.length) return [];
    const g = p!.generation, tok = p!.tokenizer;
    const stoppedBy: (number | undefined)[] = [];
    const outs = await p!.model.generate(batch.map((b) => b.inputIds!), {
      onStop: (row, id) => void (stoppedBy[row] = id),
      maxNewTokens: g.maxNewTokens,
      stopIds,
      doSample: g.doSample,
      temperature: g.temperature,
      topP: g.topP,
      topK: g.topK,
      seed: g.seed + batch[0].index,
    });
    return batch.map((it, i) => {
      const predIds = outs[i];
      const labelIds = stripStop(it.outputIds!, stopSet);
      // Upstream's prediction is the generated ids with the one that stopped them, decoded: a
      // stop at <|user|> or <|observation|> is part of its text (eos decodes to nothing).
      const stop = stoppedBy[i];
      const predText = tok.decode(stop === undefined ? predIds : [...predIds, stop]);
      return {
        ...text(it, pyStrip(predText), pyStrip(tok.decode(labelIds)), {
          prompt: tok.decode(it.inputIds!),
          prediction_ids: predIds,
          n_prompt_tokens: it.inputIds!.length,
          n_prediction_tokens: predIds.length,
          n_label_tokens: labelIds.length,
        }),
        generated: predIds.length,
      };
    });
  };
  let gpuLoss: GPUBuffer | undefined;
  const scoreLoss = async (batch: Item[]): Promise<Produced[]> => {
    if (!batch.length) return [];
    const m = p!.model;
    gpuLoss ??= createBuffer(m.gpu, 4 * SCORE_GROUP, "eval-loss");
    // One record per forward so each gets its own loss; one readback per group.
    const counts = batch.map((it) => it.labels!.slice(1).filter((x) => x !== -100).length);
    batch.forEach((it, slot) => {
      m.forwardLoss(
        {
          batch: 1,
          seq: it.inputIds!.length,
          inputIds: Int32Array.from(it.inputIds!),
          labels: Int32Array.from(it.labels!),
        },
        gpuLoss!,
        slot,
      );
    });
    const sums = await readF32(m.gpu, gpuLoss, batch.length);
    return batch.map((it, i) => {
      const n = counts[i];
      return {
        record: { index: it.index, loss: n ? sums[i] / n : null, n_tokens: n },
        lossSum: n ? sums[i] : 0,
        lossTokens: n,
      };
    });
  };

  try {
    let gen: Item[] = [], sc: Item[] = [];
    for await (const it of items) {
      if (it.kind === "text") {
        yield text(it, pyStrip(it.prediction!), pyStrip(it.label!), {});
        continue;
      }
      if (!p) throw new Error("a model is needed for token-id records");
      checkVocab(it);
      if (it.kind === "generate") {
        if (sc.length) {
          yield* await scoreLoss(sc);
          sc = [];
        }
        gen.push(it);
        if (gen.length === p.batchSize) {
          yield* await generate(gen);
          gen = [];
        }
      } else {
        if (gen.length) {
          yield* await generate(gen);
          gen = [];
        }
        sc.push(it);
        if (sc.length === SCORE_GROUP) {
          yield* await scoreLoss(sc);
          sc = [];
        }
      }
    }
    yield* await generate(gen);
    yield* await scoreLoss(sc);
  } finally {
    gpuLoss?.destroy();
  }
}

/**
 * The library form of evaluate over records in memory or streamed: each
 * input record (`{input_ids, output_ids}`, `{input_ids, labels}`, or with
 * `metricsOnly` `{prediction, label}`) gives one output record, in order, as
 * soon as its batch is done. Problems are reported against `sourceName` and
 * the record's position (1-based).
 */
export async function* evaluateRecords(
  records: AsyncIterable<unknown> | Iterable<unknown>,
  opts: {
    predictor?: Predictor;
    segmenter?: SegmenterName;
    metricsOnly?: boolean;
    sourceName?: string;
  },
): AsyncGenerator<Record<string, unknown>> {
  const name = opts.sourceName ?? "records";
  const metricsOnly = !!opts.metricsOnly;
  if (!metricsOnly && !opts.predictor) {
    throw new UserError("evaluate: a model is needed unless metricsOnly is set");
  }
  const score = createScorer(await loadSegmenter(opts.segmenter ?? "jieba"));
  async function* items(): AsyncGenerator<Item> {
    let i = 0;
    for await (const r of records) yield toItem(r, i, i + 1, name, metricsOnly), i++;
  }
  for await (const p of produce(items(), opts.predictor, score, name)) yield p.record;
}

/** `--model` names a model directory: not a missing path, not an adapter. */
async function checkModelDir(dir: string): Promise<void> {
  const st = await Deno.stat(dir).catch(() => undefined);
  if (!st) throw new UserError(`--model ${dir}: no such model directory`);
  if (!st.isDirectory) {
    throw new UserError(
      `--model ${dir}: a file, not a model directory (give the directory that holds config.json)`,
    );
  }
  if (await isAdapterDir(dir)) {
    throw new UserError(
      `--model ${dir} is an adapter directory; pass it as --adapter, with its base model as --model`,
    );
  }
}

async function evaluateFrom(o: EvaluateOptions, src: Source): Promise<EvaluateResult> {
  const started = performance.now();
  const { count, maxLen, maxPrompt } = await survey(o, src);
  const status = new StatusLine(
    o.quiet ? { writeSync: (b) => b.length, isTerminal: () => false } : Deno.stderr,
  );
  const scorer = createScorer(await loadSegmenter(o.segmenter));
  const acc = new MetricsAccumulator();

  let predictor: Predictor | undefined;
  // A wrong --model is said even when there is nothing to generate.
  if (!o.metricsOnly && o.modelDir) await checkModelDir(o.modelDir);
  if (!o.metricsOnly && count > 0) {
    if (!o.modelDir) {
      throw new UserError(
        "evaluate: --model is required (or --metrics-only for {prediction, label} records)",
      );
    }
    const tokenizer = await ChatGLMTokenizer.load(o.modelDir);
    let spec: AdapterSpec = { kind: "none" };
    let adapter: AdapterDir | undefined;
    if (o.adapterDir) {
      adapter = await readAdapterDir(o.adapterDir);
      spec = adapter.spec;
    }
    // A generated row walks its prompt, the prefix and every new token: the attention kernels
    // take at most LOOP_BUDGET positions a row (lib/gpu/loop_budget.ts).
    const prefix = spec.kind === "prefix" ? spec.preSeqLen : 0;
    const reach = prefix + maxPrompt + o.generation.maxNewTokens;
    if (maxPrompt > 0 && reach > LOOP_BUDGET) {
      throw new UserError(
        `max_new_tokens ${o.generation.maxNewTokens}: with prompts of up to ${maxPrompt} tokens${
          prefix ? ` and ${prefix} prefix positions` : ""
        }, generation would reach ${reach} positions; at most ${LOOP_BUDGET} are supported`,
      );
    }
    // No batch is larger than the records.
    const batchSize = Math.max(1, Math.min(o.batchSize, count));
    // Generation keeps its own KV cache; the model's buffers serve prefill and scoring.
    const glmConfig = await loadGlmConfig(o.modelDir);
    tokenizer.assertFits(glmConfig.padded_vocab_size, o.modelDir);
    const gpu = await gpuForModel(glmConfig);
    const model = await loadGlmModel(gpu, o.modelDir, {
      adapter: spec,
      maxBatch: batchSize,
      maxSeq: Math.max(maxLen, maxPrompt, 1),
      seed: o.generation.seed,
      // Inference keeps no per-layer activations for a backward pass.
      gradientCheckpointing: true,
      ...(o.frozenF16 === undefined ? {} : { frozenF16: o.frozenF16 }),
      ...(o.quantization ? { quantization: o.quantization } : {}),
    });
    predictor = { model, tokenizer, generation: o.generation, batchSize };
    try {
      if (adapter) model.setParams(adapterTensorsFor(model.params, adapter));
    } catch (e) {
      model.destroy();
      throw e;
    }
  }

  let done = 0, lossSum = 0, lossTokens = 0, generatedTokens = 0;
  const show = (force = false) => {
    const el = (performance.now() - started) / 1000;
    const rate = done / Math.max(el, 1e-9);
    const m = acc.count
      ? `  rouge-l ${acc.mean()["rouge-l"].toFixed(2)}  bleu-4 ${acc.mean()["bleu-4"].toFixed(4)}`
      : "";
    const l = lossTokens ? `  loss ${(lossSum / lossTokens).toFixed(4)}` : "";
    status.update(
      `evaluate ${done}/${count}  ${rate.toFixed(2)} ex/s  ETA ${
        formatDuration((count - done) / rate)
      }${m}${l}`,
      force,
    );
  };

  let out: Deno.FsFile | undefined;
  try {
    const finalPath = join(o.outDir, "predictions.jsonl");
    const partialPath = join(o.outDir, "predictions.partial.jsonl");
    try {
      await Deno.mkdir(o.outDir, { recursive: true });
      await markOutputDir(o.outDir, "evaluate");
      out = await Deno.open(partialPath, { write: true, create: true, truncate: true });
    } catch (e) {
      throw osError(e, partialPath, "write");
    }
    const enc = new TextEncoder();
    for await (const r of produce(readItems(o, src), predictor, scorer, src.name)) {
      const b = enc.encode(JSON.stringify(r.record) + "\n");
      let off = 0;
      try {
        while (off < b.length) off += await out.write(b.subarray(off));
      } catch (e) {
        throw osError(e, partialPath, "write");
      }
      if (r.scores) acc.add(r.scores);
      lossSum += r.lossSum ?? 0;
      lossTokens += r.lossTokens ?? 0;
      generatedTokens += r.generated ?? 0;
      done++;
      show();
    }
    try {
      await out.sync();
      out.close();
      out = undefined;
      await Deno.rename(partialPath, finalPath);
      await syncDir(o.outDir);
    } catch (e) {
      throw osError(e, finalPath, "write");
    }
    show(true);
  } finally {
    try {
      out?.close();
    } catch { /* closed */ }
    status.end();
    predictor?.model.destroy();
  }

  const wall = (performance.now() - started) / 1000;
  const m = acc.mean();
  const result: EvaluateResult = {
    ...(acc.count ? m : {}),
    examples: done,
    eval_loss: lossTokens ? lossSum / lossTokens : null,
    eval_tokens: lossTokens,
    wall_seconds: wall,
    examples_per_second: done / wall,
    generated_tokens: generatedTokens,
    generated_tokens_per_second: generatedTokens / wall,
  };
  if (!acc.count) delete result.count;
  await writeJsonAtomic(join(o.outDir, "metrics.json"), result);
  return result;
}
