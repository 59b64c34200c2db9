/**
 * Tokenizer throughput: our SentencePiece encoder vs the `sentencepiece`
 * library (tools/peers/tokenizer_peer.py) on the same few MB of mixed
 * Chinese/English text, line by line, in the same run. Prints tokens/s of
 * both, the ratio, and whether the ids agree.
 */
import { join } from "node:path";
import { SentencePieceModel } from "../lib/tokenizer/sentencepiece.ts";
import { runPeer } from "./peer.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const TARGET_BYTES = Number(Deno.env.get("TOKENIZER_BENCH_MB") ?? 3) * 1e6;

const CN = (
  "这款 连衣裙 直筒 廓形 利落 大方 卡其色 温柔 复古 韵味 十足 穿出 港风 上衣 显瘦 版型 修饰 身形 精致 " +
  "印花 点缀 其间 短款 设计 提高 腰线 上身 效果 很好 外套 针织 面料 柔软 舒适 白色 清爽 干净 文艺 气息 " +
  "我们 今天 天气 学习 工作 时间 问题 发展 经济 社会 国家 技术 科学 研究 数据 模型 训练 语言 计算机 程序"
).split(" ");
const EN = (
  "the of and to in is it that for you with on as have be at this from by not are model token " +
  "train learning rate batch size weather today search query result function tool call python " +
  "json value error hello world assistant user system answer question please thanks GPU adapter"
).split(" ");
const PUNCT = ["，", "。", "！", "？", "、", ", ", ". ", "! ", "? ", ": "];

/** Deterministic mixed text: Chinese runs without spaces, English sentences, digits, punctuation. */
function makeText(bytes: number): string {
  let s = 0x9e3779b9;
  const rand = (n: number) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
  const lines: string[] = [];
  let size = 0;
  while (size < bytes) {
    const parts: string[] = [];
    const n = 5 + rand(30);
    for (let i = 0; i < n; i++) {
      const r = rand(10);
      if (r < 5) parts.push(CN[rand(CN.length)]);
      else if (r < 8) parts.push(" " + EN[rand(EN.length)]);
      else if (r < 9) parts.push(PUNCT[rand(PUNCT.length)]);
      else parts.push(String(rand(10000)));
    }
    const line = parts.join("");
    lines.push(line);
    size += new TextEncoder().encode(line).length + 1;
  }
  return lines.join("\n");
}

function checksum(all: number[][]): number {
  let c = 0;
  for (const ids of all) for (let i = 0; i < ids.length; i++) c = (c + ids[i] * (i + 1)) >>> 0;
  return c;
}

async function benchModel(label: string, modelPath: string, textPath: string, lines: string[]) {
  const sp = await SentencePieceModel.load(modelPath);
  let best = Infinity;
  let out: number[][] = [];
  for (let rep = 0; rep < 3; rep++) {
    // A fresh model each round: the word cache must not carry over between rounds.
    const m = rep === 0 ? sp : await SentencePieceModel.load(modelPath);
    const t0 = performance.now();
    out = lines.map((l) => m.encode(l));
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  const tokens = out.reduce((s, x) => s + x.length, 0);
  const ours = tokens / best;
  console.log(
    `  ${label}: ours ${(ours / 1e6).toFixed(2)} M tokens/s (${tokens} tokens, ${
      best.toFixed(2)
    } s)`,
  );
  const peer = await runPeer("tokenizer_peer.py", { model: modelPath, text: textPath, repeat: 3 });
  if (!peer) return;
  const theirs = peer.tokens_per_s as number;
  const same = peer.tokens === tokens && peer.checksum === checksum(out);
  console.log(
    `  ${label}: sentencepiece ${(theirs / 1e6).toFixed(2)} M tokens/s; ratio ours/sentencepiece ${
      (ours / theirs).toFixed(2)
    }x; ids ${same ? "identical" : "DIFFER"}`,
  );
}

export async function run(): Promise<void> {
  const text = makeText(TARGET_BYTES);
  const dir = await Deno.makeTempDir();
  try {
    const textPath = join(dir, "text.txt");
    await Deno.writeTextFile(textPath, text);
    const lines = text.split("\n");
    console.log(
      `  text: ${(TARGET_BYTES / 1e6).toFixed(1)} MB, ${lines.length} lines, mixed Chinese/English`,
    );
    const models: [string, string][] = [[
      "fixture BPE (3k vocab)",
      join(ROOT, "tests/fixtures/tokenizer/glm_bpe.model"),
    ]];
    const demo = join(ROOT, "data/demo-model/tokenizer.model");
    try {
      await Deno.stat(demo);
      models.push(["demo model tokenizer", demo]);
    } catch {
      // The demo model is optional here.
    }
    for (const [label, path] of models) await benchModel(label, path, textPath, lines);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await run();
