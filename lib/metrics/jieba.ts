/**
 * Chinese word segmentation with jieba, as the ChatGLM3 finetune demo does it
 * (`list(jieba.cut(text))`: precise mode, HMM on for unknown words), matching
 * Python jieba 0.42.1 token for token.
 *
 * The dictionary lookup, DAG and HMM run in jieba-rs compiled to WebAssembly
 * (npm `jieba-wasm`, which embeds Python jieba's default dictionary and needs
 * nothing beyond the npm registry). jieba-rs differs from Python jieba in two
 * places, both corrected here:
 *
 * 1. Its "Han block" character class also covers CJK Extension A and
 *    U+9FD6..U+9FFF (and more), which Python treats as symbols emitted one
 *    character at a time. So the text is cut into blocks here, with Python's
 *    class `[\u4E00-\u9FD5a-zA-Z0-9+#&._%-]`, and only those blocks go to jieba-rs.
 * 2. Its HMM fallback splits Latin runs with `[a-zA-Z0-9]+(?:.\d+)?%?` where
 *    Python has `\.`: "ChatGLM3-6B" came out as "ChatGLM3-6" + "B" instead of
 *    "ChatGLM3" + "-" + "6B". Tokens bearing that mark are re-split with
 *    Python's expression.
 *
 * The module is loaded on first use: 4 MB of wasm plus a dictionary that takes
 * ~0.5 s to build, a cost only evaluation should pay.
 */
import { UserError } from "../errors.ts";

type CutFn = (text: string, hmm?: boolean | null) => string[];

let loading: Promise<CutFn> | undefined;

async function load(): Promise<CutFn> {
  try {
    const mod = await import("jieba-wasm");
    return mod.cut as CutFn;
  } catch (e) {
    loading = undefined; // let a later call try again
    throw new UserError(
      `jieba could not be loaded (npm:jieba-wasm@2.4.0 — is the npm registry or Deno's cache reachable?): ` +
        `${e instanceof Error ? e.message : e}; --segmenter char scores without it`,
    );
  }
}

/** Python jieba's `re_han_default`. */
const HAN_BLOCK = /([\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+)/u;
const HAN_BLOCK_WHOLE = /^[\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+$/u;
/** Characters of a Han block that are not Han: the part the HMM fallback splits with a regex. */
const LATIN_PIECE = /^[a-zA-Z0-9+#&._%\-]+$/;
/** What only jieba-rs's unescaped `.` can produce: letters/digits, one non-dot symbol, digits. */
const BUG_MARK = /^[a-zA-Z0-9]+[^.a-zA-Z0-9]\d+%?$/;
/** Python jieba finalseg's `re_skip`. */
const FINALSEG_SKIP = /[a-zA-Z0-9]+(?:\.\d+)?%?/g;
/** The Latin-only words of jieba's dictionary; they end an HMM buffer like any dictionary word. */
const LATIN_DICT_WORDS = new Set(["AT&T", "c#", "C#", "c++", "C++"]);

/** `re_skip.split(s)` keeping the non-empty pieces, as finalseg does. */
function finalsegSplit(s: string): string[] {
  const out: string[] = [];
  let last = 0;
  for (const m of s.matchAll(FINALSEG_SKIP)) {
    if (m.index > last) out.push(s.slice(last, m.index));
    out.push(m[0]);
    last = m.index + m[0].length;
  }
  if (last < s.length) out.push(s.slice(last));
  return out;
}

/** Undo the unescaped-dot split on runs of Latin tokens that carry its mark. */
function fixLatinRuns(tokens: string[]): string[] {
  if (!tokens.some((t) => BUG_MARK.test(t))) return tokens;
  const out: string[] = [];
  let run: string[] = [];
  const flush = () => {
    if (run.some((t) => BUG_MARK.test(t))) out.push(...finalsegSplit(run.join("")));
    else out.push(...run);
    run = [];
  };
  for (const t of tokens) {
    if (LATIN_PIECE.test(t) && !LATIN_DICT_WORDS.has(t)) {
      run.push(t);
    } else {
      flush();
      out.push(t);
    }
  }
  flush();
  return out;
}

/** Python jieba's handling of a non-Han block: `\r\n` and each whitespace char whole, anything else char by char. */
function cutSymbols(block: string, out: string[]): void {
  const chars = Array.from(block);
  for (let i = 0; i < chars.length; i++) {
    if (chars[i] === "\r" && chars[i + 1] === "\n") {
      out.push("\r\n");
      i++;
    } else {
      out.push(chars[i]);
    }
  }
}

/** A loaded jieba: `cut(text)` segments synchronously. */
export interface Jieba {
  cut(text: string): string[];
}

/** Load (once per process) and return the segmenter. */
export async function loadJieba(): Promise<Jieba> {
  loading ??= load();
  const rsCut = await loading;
  return {
    cut(text: string): string[] {
      const out: string[] = [];
      for (const block of text.split(HAN_BLOCK)) {
        if (block.length === 0) continue;
        if (HAN_BLOCK_WHOLE.test(block)) out.push(...fixLatinRuns(rsCut(block, true)));
        else cutSymbols(block, out);
      }
      return out;
    },
  };
}

/** `list(jieba.cut(text))`. */
export async function jiebaCut(text: string): Promise<string[]> {
  return (await loadJieba()).cut(text);
}
