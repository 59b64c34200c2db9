import assert from "node:assert";
import {
  createScorer,
  cutSentences,
  fsum,
  jiebaCut,
  loadJieba,
  loadSegmenter,
  METRIC_NAMES,
  MetricsAccumulator,
  type PairScores,
  type RougeScores,
  rougeScores,
  scorePair,
  scoreTokens,
  sentenceBleu,
} from "../lib/metrics/index.ts";

interface FixturePair {
  prediction: string;
  label: string;
  pred_tokens: string[];
  label_tokens: string[];
  rouge: RougeScores | null;
  scores: PairScores;
}

const dir = new URL("./fixtures/metrics/", import.meta.url);
const pairsFile = JSON.parse(await Deno.readTextFile(new URL("pairs.json", dir))) as {
  count: number;
  means: PairScores;
  pairs: FixturePair[];
};
const segmentsFile = JSON.parse(await Deno.readTextFile(new URL("segments.json", dir))) as {
  segments: { text: string; tokens: string[] }[];
};

/**
 * Sentences where jieba-rs and Python jieba 0.42.1 disagree, excluded by
 * text with the reason. Empty: every fixture sentence segments identically.
 */
const JIEBA_KNOWN_DIFFERENCES: Record<string, string> = {};

Deno.test("fixtures are large enough to mean something", () => {
  assert.ok(pairsFile.pairs.length >= 200, `only ${pairsFile.pairs.length} pairs`);
  assert.strictEqual(pairsFile.pairs.length, pairsFile.count);
  assert.ok(segmentsFile.segments.length >= 100);
  assert.ok(pairsFile.pairs.some((p) => p.rouge === null), "no empty-text case");
  assert.ok(pairsFile.pairs.some((p) => p.scores["bleu-4"] > 0.99), "no perfect match");
});

Deno.test("jieba segmentation equals Python jieba 0.42.1 (cut, HMM on)", async () => {
  const jieba = await loadJieba();
  const bad: string[] = [];
  let compared = 0;
  for (const { text, tokens } of segmentsFile.segments) {
    if (text in JIEBA_KNOWN_DIFFERENCES) continue;
    compared++;
    const got = jieba.cut(text);
    if (JSON.stringify(got) !== JSON.stringify(tokens)) {
      bad.push(
        `${JSON.stringify(text)}: got ${JSON.stringify(got)}, want ${JSON.stringify(tokens)}`,
      );
    }
  }
  assert.deepStrictEqual(bad, [], `${bad.length}/${compared} differ:\n${bad.join("\n")}`);
  assert.deepStrictEqual(await jiebaCut(""), []);
});

Deno.test("ROUGE equals rouge_chinese to 1e-6 (f, p and r)", () => {
  let checked = 0;
  for (const p of pairsFile.pairs) {
    const got = rougeScores(p.pred_tokens.join(" "), p.label_tokens.join(" "));
    if (p.rouge === null) {
      // Only texts that are empty after stripping make rouge_chinese raise.
      assert.ok(p.pred_tokens.length === 0 || p.label_tokens.length === 0);
      continue;
    }
    assert.ok(got !== null, `null for ${JSON.stringify(p.prediction)}`);
    for (const m of ["rouge-1", "rouge-2", "rouge-l"] as const) {
      for (const s of ["f", "p", "r"] as const) {
        const d = Math.abs(got[m][s] - p.rouge[m][s]);
        assert.ok(d <= 1e-6, `${m}.${s} ${got[m][s]} vs ${p.rouge[m][s]} for ${JSON.stringify(p)}`);
      }
    }
    checked++;
  }
  assert.ok(checked >= 200, `only ${checked} scored pairs`);
});

Deno.test("BLEU-4 equals NLTK sentence_bleu (method3) to 1e-9", () => {
  let worst = 0;
  for (const p of pairsFile.pairs) {
    if (p.pred_tokens.length === 0 || p.label_tokens.length === 0) continue;
    const got = sentenceBleu([p.label_tokens], p.pred_tokens);
    worst = Math.max(worst, Math.abs(got - p.scores["bleu-4"]));
    assert.ok(
      Math.abs(got - p.scores["bleu-4"]) <= 1e-9,
      `${got} vs ${p.scores["bleu-4"]}: ${JSON.stringify(p)}`,
    );
  }
  assert.ok(worst <= 1e-9);
});

Deno.test("per-pair scores and the data-set mean equal the demo's compute_metrics", async () => {
  const score = createScorer(await loadSegmenter("jieba"));
  const acc = new MetricsAccumulator();
  for (const p of pairsFile.pairs) {
    const got = score(p.prediction, p.label);
    for (const k of METRIC_NAMES) {
      const tol = k === "bleu-4" ? 1e-9 : 1e-6;
      assert.ok(
        Math.abs(got[k] - p.scores[k]) <= tol,
        `${k}: ${got[k]} vs ${p.scores[k]} for ${JSON.stringify(p)}`,
      );
    }
    acc.add(got);
  }
  const mean = acc.mean();
  assert.strictEqual(mean.count, pairsFile.pairs.length);
  for (const k of METRIC_NAMES) {
    assert.ok(
      Math.abs(mean[k] - pairsFile.means[k]) <= 1e-6,
      `${k}: ${mean[k]} vs ${pairsFile.means[k]}`,
    );
  }
  assert.ok(Math.abs(mean["bleu-4 (x100)"] - 100 * pairsFile.means["bleu-4"]) <= 1e-6);
});

Deno.test("empty prediction or label scores 0 instead of raising", async () => {
  const zero = { "rouge-1": 0, "rouge-2": 0, "rouge-l": 0, "bleu-4": 0 };
  assert.deepStrictEqual(await scorePair("", "这款连衣裙很好看"), zero);
  assert.deepStrictEqual(await scorePair(" \n\t ", "这款连衣裙很好看"), zero);
  assert.deepStrictEqual(await scorePair("这款连衣裙很好看", ""), zero);
  assert.deepStrictEqual(scoreTokens([], []), zero);
  assert.strictEqual(rougeScores("", "a b"), null);
  assert.deepStrictEqual(new MetricsAccumulator().mean(), {
    ...zero,
    "bleu-4 (x100)": 0,
    count: 0,
  });
});

Deno.test("identical texts score 100 / 1, and the scale is upstream's", async () => {
  const s = await scorePair(
    "这款连衣裙采用印花设计，显瘦又文艺。",
    "这款连衣裙采用印花设计，显瘦又文艺。",
  );
  assert.strictEqual(s["rouge-1"], 100);
  assert.strictEqual(s["rouge-2"], 100);
  assert.strictEqual(s["rouge-l"], 100);
  assert.ok(Math.abs(s["bleu-4"] - 1) < 1e-12);
});

Deno.test("space and char segmenters", async () => {
  const space = await loadSegmenter("space");
  const char = await loadSegmenter("char");
  assert.deepStrictEqual(space(" the  cat\u3000sat\n"), ["the", "cat", "sat"]);
  assert.deepStrictEqual(char("显瘦 裙🙂"), ["显", "瘦", "裙", "🙂"]);
  const s = await scorePair("the cat is on the mat", "the cat is on the mat", "space");
  assert.strictEqual(s["rouge-l"], 100);
  await assert.rejects(() => loadSegmenter("nope" as "space"), /unknown segmenter/);
});

Deno.test("rouge_chinese sentence splitter rules", () => {
  assert.deepStrictEqual(cutSentences("好 。 我 来 了 ！ 走 吧"), [
    "好 。",
    " 我 来 了 ！",
    " 走 吧",
  ]);
  assert.deepStrictEqual(cutSentences("他 说 ： “ 好 。 ” 我"), ["他 说 ： “ 好 。", " ” 我"]);
  assert.deepStrictEqual(cutSentences("好。”我"), ["好。”", "我"]);
  assert.deepStrictEqual(cutSentences("等......好"), ["等......", "好"]);
  assert.deepStrictEqual(cutSentences("a \n \n b  "), ["a ", " ", " b"]);
});

Deno.test("ROUGE-1/2 count distinct n-grams, ROUGE-L uses the full sequences", () => {
  // Distinct unigrams {a} vs {a, b}: p = 1, r = 1/2.
  const s = rougeScores("a a a", "a b")!;
  assert.strictEqual(s["rouge-1"].p, 1);
  assert.strictEqual(s["rouge-1"].r, 0.5);
  // LCS 1 over 3 hypothesis words.
  assert.strictEqual(s["rouge-l"].p, 1 / 3);
});

Deno.test("fsum is correctly rounded", () => {
  assert.strictEqual(fsum([1e100, 1, -1e100]), 1);
  assert.strictEqual(fsum([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]), 1);
  assert.strictEqual(fsum([]), 0);
  assert.strictEqual(fsum([1, 1e-16, 1e-16]), 1.0000000000000002);
});

Deno.test("BLEU: NLTK's documented values", () => {
  const hyp1 =
    "It is a guide to action which ensures that the military always obeys the commands of the party"
      .split(" ");
  const ref1 =
    "It is a guide to action that ensures that the military will forever heed Party commands".split(
      " ",
    );
  const ref2 =
    "It is the guiding principle which guarantees the military forces always being under the command of the Party"
      .split(" ");
  const ref3 = "It is the practical guide for the army always to heed the directions of the party"
    .split(" ");
  // sentence_bleu([ref1, ref2, ref3], hyp1) = 0.5045... in NLTK's docstring (no smoothing needed).
  assert.strictEqual(sentenceBleu([ref1, ref2, ref3], hyp1).toFixed(4), "0.5046");
  assert.strictEqual(sentenceBleu([ref1], []), 0);
});
