/**
 * A character diff of a prediction against its label, for the report page's
 * sample predictions: which characters the two share (in order), which the
 * prediction adds, and which of the label's it misses. Characters, not
 * words: the demo's text is Chinese, where a character is the natural unit
 * (and jieba's words are what the metrics count, not what a reader scans).
 *
 * A longest common subsequence by dynamic programming, O(n·m) in time and
 * memory; texts longer than `MAX_CHARS` are compared on their first
 * `MAX_CHARS` characters, the rest shown as added or missing.
 */

export type DiffOp = "same" | "added" | "missing";

/** A run of characters: in both texts, only in the prediction, or only in the label. */
export interface DiffPart {
  op: DiffOp;
  text: string;
}

export const MAX_CHARS = 2000;

/** The diff of `prediction` against `label`, as runs in reading order. */
export function diffText(label: string, prediction: string): DiffPart[] {
  const a = [...label];
  const b = [...prediction];
  const n = Math.min(a.length, MAX_CHARS);
  const m = Math.min(b.length, MAX_CHARS);
  // lcs[i][j]: the LCS length of a[i..n) and b[j..m), in one flat array.
  const w = m + 1;
  const lcs = new Uint16Array((n + 1) * w);
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i * w + j] = a[i] === b[j]
        ? lcs[(i + 1) * w + j + 1] + 1
        : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
    }
  }
  const parts: DiffPart[] = [];
  const push = (op: DiffOp, ch: string) => {
    const last = parts[parts.length - 1];
    if (last?.op === op) last.text += ch;
    else parts.push({ op, text: ch });
  };
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) {
      push("same", a[i]);
      i++;
      j++;
    } else if (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) push("missing", a[i++]);
    else push("added", b[j++]);
  }
  while (i < a.length) push("missing", a[i++]);
  while (j < b.length) push("added", b[j++]);
  return parts;
}
