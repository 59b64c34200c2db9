/**
 * ROUGE-1/2/L as the `rouge_chinese` package (1.0.3) computes them in
 * `Rouge().get_scores(hyp, ref)`, for one hypothesis/reference pair of
 * space-joined tokens. `rouge_chinese` is pltrdy's `rouge` with a Chinese
 * sentence splitter; the details that change scores, all reproduced here:
 *
 * - Text is cut into sentences after 。！？? (and ...... / …… / closing quotes),
 *   each sentence's whitespace runs collapse to one space, and the words are
 *   the sentences' space-separated pieces flattened into one list. No case
 *   folding and no punctuation removal: "。" is a word like any other.
 * - ROUGE-1/2 count DISTINCT n-grams (the package's default `exclusive=True`
 *   keeps n-grams in a set), and n-grams run across sentence boundaries.
 * - ROUGE-L is the LCS of the two flattened word lists (the package calls it
 *   summary level, but no union-LCS is involved).
 * - F = 2·P·R / (P + R + 1e-8), the package's smoothing of the denominator.
 *
 * Where the package raises ("Hypothesis is empty."), `rougeScores` returns
 * null; the caller decides what an empty text scores.
 */
import { pyRstrip, pySplit } from "./pywhitespace.ts";

export interface Prf {
  f: number;
  p: number;
  r: number;
}

export interface RougeScores {
  "rouge-1": Prf;
  "rouge-2": Prf;
  "rouge-l": Prf;
}

/** `Rouge.cut_sent`: the Chinese sentence splitter. */
export function cutSentences(para: string): string[] {
  para = para.replace(/([。！？?])([^”’])/gu, "$1\n$2");
  para = para.replace(/(\.{6})([^”’])/gu, "$1\n$2");
  para = para.replace(/(…{2})([^”’])/gu, "$1\n$2");
  para = para.replace(/([。！？?][”’])([^，。！？?])/gu, "$1\n$2");
  para = pyRstrip(para);
  return para.split("\n");
}

/**
 * The flattened word list the scorers see, or null when the text has no
 * sentence at all. A sentence made only of whitespace survives the package's
 * length filter (it filters before collapsing whitespace) and contributes one
 * empty word; that quirk is kept.
 */
export function rougeWords(text: string): string[] | null {
  const sentences = cutSentences(text).filter((s) => s.length > 0).map((s) => pySplit(s).join(" "));
  if (sentences.length === 0) return null;
  return sentences.flatMap((s) => s.split(" "));
}

function ngramSet(words: string[], n: number): Set<string> {
  const set = new Set<string>();
  // Words never contain a space, so joining n of them with one is unambiguous.
  for (let i = 0; i + n <= words.length; i++) set.add(words.slice(i, i + n).join(" "));
  return set;
}

function prf(evaluated: number, reference: number, overlap: number): Prf {
  const p = evaluated === 0 ? 0 : overlap / evaluated;
  const r = reference === 0 ? 0 : overlap / reference;
  return { f: 2.0 * ((p * r) / (p + r + 1e-8)), p, r };
}

export function rougeN(hyp: string[], ref: string[], n: number): Prf {
  const h = ngramSet(hyp, n);
  const r = ngramSet(ref, n);
  let overlap = 0;
  for (const g of h) if (r.has(g)) overlap++;
  return prf(h.size, r.size, overlap);
}

/** Length of the longest common subsequence, two rows of the DP table. */
export function lcsLength(x: string[], y: string[]): number {
  let prev = new Int32Array(y.length + 1);
  let cur = new Int32Array(y.length + 1);
  for (let i = 1; i <= x.length; i++) {
    for (let j = 1; j <= y.length; j++) {
      cur[j] = x[i - 1] === y[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[y.length];
}

export function rougeL(hyp: string[], ref: string[]): Prf {
  const llcs = lcsLength(ref, hyp);
  const r = llcs / ref.length;
  const p = llcs / hyp.length;
  return { f: 2.0 * ((p * r) / (p + r + 1e-8)), p, r };
}

/** Scores of a space-joined hypothesis against a space-joined reference; null if either is empty. */
export function rougeScores(hypothesis: string, reference: string): RougeScores | null {
  const hyp = rougeWords(hypothesis);
  const ref = rougeWords(reference);
  if (hyp === null || ref === null) return null;
  return {
    "rouge-1": rougeN(hyp, ref, 1),
    "rouge-2": rougeN(hyp, ref, 2),
    "rouge-l": rougeL(hyp, ref),
  };
}
