/**
 * Generation metrics as the ChatGLM3 finetune demo's `compute_metrics`
 * reports them: per example, strip both texts, segment them with jieba,
 * ROUGE-1/2/L F-scores ×100 rounded to 4 decimals (rouge_chinese on the
 * space-joined tokens) and sentence BLEU-4 with smoothing method 3 on a 0–1
 * scale (NLTK); the data set's value is the mean over examples.
 *
 * One deliberate difference: upstream raises on an empty prediction or label
 * (rouge_chinese: "Hypothesis is empty."), which kills an evaluation run; here
 * such an example scores 0 on every metric and still counts in the mean.
 */
import { sentenceBleu } from "./bleu.ts";
import { loadJieba } from "./jieba.ts";
import { pySplit, pyStrip } from "./pywhitespace.ts";
import { rougeScores } from "./rouge.ts";

export { cutSentences, lcsLength, rougeL, rougeN, rougeScores, rougeWords } from "./rouge.ts";
export type { Prf, RougeScores } from "./rouge.ts";
export { brevityPenalty, closestRefLength, fsum, modifiedPrecision, sentenceBleu } from "./bleu.ts";
export { jiebaCut, loadJieba } from "./jieba.ts";
export type { Jieba } from "./jieba.ts";
export { pySplit, pyStrip } from "./pywhitespace.ts";

/** How texts are cut into tokens before scoring. */
export type SegmenterName = "jieba" | "space" | "char";
export const SEGMENTERS: readonly SegmenterName[] = ["jieba", "space", "char"];

export type Segment = (text: string) => string[];

/** The metric names, in upstream's order. */
export const METRIC_NAMES = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

/** One example's scores: ROUGE ×100 rounded to 4 decimals, BLEU-4 on 0–1. */
export type PairScores = Record<MetricName, number>;

/** Means over a data set, with BLEU-4 also shown ×100 under its own label. */
export type MetricsSummary = PairScores & { "bleu-4 (x100)": number; count: number };

/**
 * A segmenter by name. "jieba" is upstream's; "space" splits on whitespace
 * (for languages written with spaces); "char" makes every non-space
 * character a token (a cheap, dictionary-free approximation for Chinese).
 */
export async function loadSegmenter(name: SegmenterName = "jieba"): Promise<Segment> {
  switch (name) {
    case "jieba": {
      const jieba = await loadJieba();
      return (text) => jieba.cut(text);
    }
    case "space":
      return pySplit;
    case "char":
      return (text) => pySplit(text).flatMap((w) => Array.from(w));
    default:
      throw new Error(
        `unknown segmenter ${JSON.stringify(name)}; expected one of ${SEGMENTERS.join(", ")}`,
      );
  }
}

/** Python's `round(x, 4)`; toFixed rounds the exact binary value, and no double sits on a tie at 4 decimals. */
function round4(x: number): number {
  return Number(x.toFixed(4));
}

function zeros(): PairScores {
  return { "rouge-1": 0, "rouge-2": 0, "rouge-l": 0, "bleu-4": 0 };
}

/** Scores of already segmented texts (upstream's `pred_tokens`, `label_tokens`). */
export function scoreTokens(predTokens: string[], labelTokens: string[]): PairScores {
  if (predTokens.length === 0 || labelTokens.length === 0) return zeros();
  const rouge = rougeScores(predTokens.join(" "), labelTokens.join(" "));
  if (rouge === null) return zeros();
  return {
    "rouge-1": round4(rouge["rouge-1"].f * 100),
    "rouge-2": round4(rouge["rouge-2"].f * 100),
    "rouge-l": round4(rouge["rouge-l"].f * 100),
    "bleu-4": sentenceBleu([labelTokens], predTokens),
  };
}

/** A synchronous scorer over raw texts, for streaming loops. */
export function createScorer(segment: Segment): (prediction: string, label: string) => PairScores {
  return (prediction, label) => scoreTokens(segment(pyStrip(prediction)), segment(pyStrip(label)));
}

/** Score one prediction against its label. */
export async function scorePair(
  prediction: string,
  label: string,
  segmenter: SegmenterName = "jieba",
): Promise<PairScores> {
  return createScorer(await loadSegmenter(segmenter))(prediction, label);
}

/** Streaming mean of per-example scores; holds sums, never the examples. */
export class MetricsAccumulator {
  #sums = zeros();
  #count = 0;

  add(scores: PairScores): void {
    for (const k of METRIC_NAMES) this.#sums[k] += scores[k];
    this.#count++;
  }

  get count(): number {
    return this.#count;
  }

  /** Means so far; all zero (with count 0) before the first example. */
  mean(): MetricsSummary {
    const n = this.#count;
    const m = zeros();
    if (n > 0) { for (const k of METRIC_NAMES) m[k] = this.#sums[k] / n; }
    return { ...m, "bleu-4 (x100)": m["bleu-4"] * 100, count: n };
  }
}
