/**
 * Sentence BLEU as NLTK's `sentence_bleu(references, hypothesis,
 * smoothing_function=SmoothingFunction().method3)` computes it with the
 * default weights (0.25, 0.25, 0.25, 0.25):
 *
 * - modified n-gram precision: hypothesis n-gram counts clipped by the largest
 *   count in any reference; denominator max(1, number of hypothesis n-grams);
 * - no matching unigram at all → 0, before any smoothing;
 * - method 3 (NIST geometric sequence): the k-th precision with no match
 *   (k = 1, 2, ...) becomes 1 / (2^k · denominator);
 * - brevity penalty against the closest reference length (ties → shorter):
 *   1 if the hypothesis is longer, 0 if empty, else exp(1 − r/h);
 * - score = BP · exp(fsum(w_n · log p_n)), on a 0–1 scale.
 */

export const BLEU4_WEIGHTS = [0.25, 0.25, 0.25, 0.25] as const;

function ngramCounts(tokens: string[], n: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (let i = 0; i + n <= tokens.length; i++) {
    // JSON keeps tokens apart whatever characters they hold.
    const key = JSON.stringify(tokens.slice(i, i + n));
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

/** Clipped match count and denominator of NLTK's `modified_precision`. */
export function modifiedPrecision(
  references: string[][],
  hypothesis: string[],
  n: number,
): { numerator: number; denominator: number } {
  const counts = ngramCounts(hypothesis, n);
  const maxRef = new Map<string, number>();
  for (const ref of references) {
    const refCounts = ngramCounts(ref, n);
    for (const g of counts.keys()) {
      maxRef.set(g, Math.max(maxRef.get(g) ?? 0, refCounts.get(g) ?? 0));
    }
  }
  let numerator = 0;
  let total = 0;
  for (const [g, c] of counts) {
    numerator += Math.min(c, maxRef.get(g) ?? 0);
    total += c;
  }
  return { numerator, denominator: Math.max(1, total) };
}

export function closestRefLength(references: string[][], hypLen: number): number {
  let best = references[0].length;
  for (const ref of references) {
    const d = Math.abs(ref.length - hypLen);
    const bd = Math.abs(best - hypLen);
    if (d < bd || (d === bd && ref.length < best)) best = ref.length;
  }
  return best;
}

export function brevityPenalty(closestRefLen: number, hypLen: number): number {
  if (hypLen > closestRefLen) return 1;
  if (hypLen === 0) return 0;
  return Math.exp(1 - closestRefLen / hypLen);
}

/**
 * Correctly rounded sum of floats (Shewchuk's algorithm, as Python's
 * `math.fsum`), so the log-sum matches NLTK's bit for bit.
 */
export function fsum(values: Iterable<number>): number {
  const partials: number[] = [];
  for (let x of values) {
    let i = 0;
    for (let y of partials) {
      if (Math.abs(x) < Math.abs(y)) [x, y] = [y, x];
      const hi = x + y;
      const lo = y - (hi - x);
      if (lo !== 0) partials[i++] = lo;
      x = hi;
    }
    partials.length = i;
    if (x !== 0) partials.push(x);
  }
  // Sum the partials from the top, then correct the final rounding the way
  // Python does (round-half-even across the remaining partials).
  let n = partials.length;
  if (n === 0) return 0;
  let hi = partials[--n];
  let lo = 0;
  while (n > 0) {
    const x = hi;
    const y = partials[--n];
    hi = x + y;
    const yr = hi - x;
    lo = y - yr;
    if (lo !== 0) break;
  }
  if (n > 0 && ((lo < 0 && partials[n - 1] < 0) || (lo > 0 && partials[n - 1] > 0))) {
    const y = lo * 2;
    const x = hi + y;
    const yr = x - hi;
    if (y === yr) hi = x;
  }
  return hi;
}

/** NLTK `sentence_bleu` with BLEU-4 weights and smoothing method 3. */
export function sentenceBleu(
  references: string[][],
  hypothesis: string[],
  weights: readonly number[] = BLEU4_WEIGHTS,
): number {
  if (references.length === 0) throw new Error("sentenceBleu needs at least one reference");
  const precisions = weights.map((_, i) => modifiedPrecision(references, hypothesis, i + 1));
  if (precisions[0].numerator === 0) return 0;
  const bp = brevityPenalty(closestRefLength(references, hypothesis.length), hypothesis.length);
  let k = 1;
  const p = precisions.map(({ numerator, denominator }) => {
    if (numerator !== 0) return numerator / denominator;
    return 1 / (2 ** k++ * denominator);
  });
  return bp * Math.exp(fsum(weights.map((w, i) => w * Math.log(p[i]))));
}
