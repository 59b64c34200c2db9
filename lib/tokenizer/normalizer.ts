/**
 * The SentencePiece normalizer (sentencepiece normalizer.cc): user-defined
 * symbols kept verbatim, the precompiled charsmap (a darts-clone double-array
 * trie over UTF-8 bytes mapping to NUL-terminated replacement strings, longest
 * match wins), extra-whitespace removal, the dummy prefix and ▁ escaping.
 * Everything works on UTF-8 bytes, as the C++ does, so that longest matches
 * and whitespace rules agree byte for byte.
 */
import { UserError } from "../errors.ts";
import type { NormalizerSpec } from "./proto.ts";

export const SPACE_SYMBOL = "\u2581";
const SPACE_BYTES = new Uint8Array([0xe2, 0x96, 0x81]);
const REPLACEMENT = new Uint8Array([0xef, 0xbf, 0xbd]);
/** normalizer.h kMaxTrieResultsSize: matches beyond this many are not considered. */
const MAX_TRIE_RESULTS = 32;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Length of the UTF-8 character at `pos` if it is valid (sentencepiece DecodeUTF8), else 0. */
export function validUtf8Len(b: Uint8Array, pos: number, end: number): number {
  const c = b[pos];
  const len = end - pos;
  if (c < 0x80) return 1;
  const trail = (i: number) => (b[pos + i] & 0xc0) === 0x80;
  const valid = (cp: number) => cp < 0xd800 || (cp >= 0xe000 && cp <= 0x10ffff);
  if (len >= 2 && (c & 0xe0) === 0xc0) {
    const cp = ((c & 0x1f) << 6) | (b[pos + 1] & 0x3f);
    return trail(1) && cp >= 0x80 && valid(cp) ? 2 : 0;
  }
  if (len >= 3 && (c & 0xf0) === 0xe0) {
    const cp = ((c & 0x0f) << 12) | ((b[pos + 1] & 0x3f) << 6) | (b[pos + 2] & 0x3f);
    return trail(1) && trail(2) && cp >= 0x800 && valid(cp) ? 3 : 0;
  }
  if (len >= 4 && (c & 0xf8) === 0xf0) {
    const cp = ((c & 0x07) << 18) | ((b[pos + 1] & 0x3f) << 12) | ((b[pos + 2] & 0x3f) << 6) |
      (b[pos + 3] & 0x3f);
    return trail(1) && trail(2) && trail(3) && cp >= 0x10000 && valid(cp) ? 4 : 0;
  }
  return 0;
}

/** A darts-clone double array, read-only: only common-prefix search is needed. */
export class DoubleArray {
  constructor(private readonly units: Uint32Array) {}

  /**
   * The longest key that is a prefix of `key[pos..end)` (among the first
   * MAX_TRIE_RESULTS matches, as the C++ caller sees them): [length, value], or
   * [0, 0] when none matches.
   */
  longestPrefix(key: Uint8Array, pos: number, end: number): [number, number] {
    const a = this.units;
    let unit = a[0];
    let node = offset(unit);
    let bestLen = 0;
    let bestValue = 0;
    let found = 0;
    for (let i = pos; i < end; i++) {
      const c = key[i];
      node ^= c;
      if (node >= a.length) break;
      unit = a[node];
      // label(): the low byte plus the leaf flag bit 31, which must be clear.
      if ((unit & 0x800000ff) >>> 0 !== c) break;
      node ^= offset(unit);
      if ((unit >>> 8) & 1) {
        if (found < MAX_TRIE_RESULTS) {
          bestLen = i + 1 - pos;
          bestValue = a[node] & 0x7fffffff;
        }
        found++;
      }
    }
    return [bestLen, bestValue];
  }
}

function offset(unit: number): number {
  return (unit >>> 10) << ((unit & (1 << 9)) >>> 6);
}

/** Longest-match over a small set of byte strings (user-defined symbols). */
export class PrefixMatcher {
  private root = new Map<number, TrieNode>();
  readonly empty: boolean;
  constructor(symbols: Iterable<string>) {
    let n = 0;
    for (const s of symbols) {
      const b = encoder.encode(s);
      let level = this.root;
      let node: TrieNode | undefined;
      for (const c of b) {
        node = level.get(c);
        if (!node) {
          node = { end: false, next: new Map() };
          level.set(c, node);
        }
        level = node.next;
      }
      if (node) node.end = true;
      n++;
    }
    this.empty = n === 0;
  }
  /** Byte length of the longest symbol at `pos`, or 0. */
  match(b: Uint8Array, pos: number, end: number): number {
    let level = this.root;
    let best = 0;
    for (let i = pos; i < end; i++) {
      const node = level.get(b[i]);
      if (!node) break;
      if (node.end) best = i + 1 - pos;
      level = node.next;
    }
    return best;
  }
}

interface TrieNode {
  end: boolean;
  next: Map<number, TrieNode>;
}

/** A growable byte buffer. */
class ByteBuilder {
  buf = new Uint8Array(256);
  len = 0;
  push(b: number): void {
    if (this.len === this.buf.length) this.grow(1);
    this.buf[this.len++] = b;
  }
  append(src: Uint8Array, start = 0, end = src.length): void {
    const n = end - start;
    if (this.len + n > this.buf.length) this.grow(n);
    this.buf.set(src.subarray(start, end), this.len);
    this.len += n;
  }
  endsWith(s: Uint8Array): boolean {
    if (this.len < s.length) return false;
    for (let i = 0; i < s.length; i++) if (this.buf[this.len - s.length + i] !== s[i]) return false;
    return true;
  }
  private grow(n: number): void {
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
}

export class Normalizer {
  private trie?: DoubleArray;
  private normalized?: Uint8Array;
  private readonly fast: boolean;

  constructor(
    private readonly spec: NormalizerSpec,
    private readonly userDefined: PrefixMatcher | undefined,
    private readonly treatWhitespaceAsSuffix: boolean,
    file: string,
  ) {
    const blob = spec.precompiledCharsmap;
    if (blob.length > 0) {
      if (blob.length <= 4) throw new UserError(`${file}: the normalization charsmap is broken`);
      const dv = new DataView(blob.buffer, blob.byteOffset, blob.length);
      const trieSize = dv.getUint32(0, true);
      if (trieSize >= blob.length || trieSize % 4 !== 0) {
        throw new UserError(`${file}: the normalization charsmap's trie exceeds the blob`);
      }
      const units = new Uint32Array(trieSize / 4);
      for (let i = 0; i < units.length; i++) units[i] = dv.getUint32(4 + 4 * i, true);
      this.trie = new DoubleArray(units);
      this.normalized = blob.subarray(4 + trieSize);
    }
    this.fast = !this.trie && (!userDefined || userDefined.empty) && spec.escapeWhitespaces &&
      !treatWhitespaceAsSuffix;
  }

  normalize(text: string): string {
    if (text === "") return "";
    text = text.toWellFormed();
    if (this.fast) return this.normalizeIdentity(text);
    return decoder.decode(this.normalizeBytes(encoder.encode(text)));
  }

  /** Identity rules without charsmap or user symbols: only whitespace handling. */
  private normalizeIdentity(text: string): string {
    const remove = this.spec.removeExtraWhitespaces;
    if (remove) {
      text = text.replace(/^ +/, "").replace(/ {2,}/g, " ");
      if (text === "") return "";
    }
    const body = text.replaceAll(" ", SPACE_SYMBOL);
    const out = this.spec.addDummyPrefix ? SPACE_SYMBOL + body : body;
    // The C++ strips trailing ▁ after escaping, so literal ▁ characters go too.
    return remove ? out.replace(/\u2581+$/, "") : out;
  }

  /** One normalization step at `pos`: [replacement bytes, bytes consumed]. */
  private prefix(b: Uint8Array, pos: number, end: number): [Uint8Array, number] {
    if (this.userDefined && !this.userDefined.empty) {
      const n = this.userDefined.match(b, pos, end);
      if (n > 0) return [b.subarray(pos, pos + n), n];
    }
    if (this.trie) {
      const [len, value] = this.trie.longestPrefix(b, pos, end);
      if (len > 0) {
        const norm = this.normalized!;
        let e = value;
        while (e < norm.length && norm[e] !== 0) e++;
        return [norm.subarray(value, e), len];
      }
    }
    const n = validUtf8Len(b, pos, end);
    if (n === 0) return [REPLACEMENT, 1];
    return [b.subarray(pos, pos + n), n];
  }

  normalizeBytes(input: Uint8Array): Uint8Array {
    const spec = this.spec;
    const end = input.length;
    let pos = 0;
    if (spec.removeExtraWhitespaces) {
      while (pos < end) {
        const [sp, n] = this.prefix(input, pos, end);
        if (!(sp.length === 1 && sp[0] === 0x20)) break;
        pos += n;
      }
    }
    if (pos >= end) return new Uint8Array(0);
    const out = new ByteBuilder();
    const addWs = () => spec.escapeWhitespaces ? out.append(SPACE_BYTES) : out.push(0x20);
    if (!this.treatWhitespaceAsSuffix && spec.addDummyPrefix) addWs();
    let isPrevSpace = spec.removeExtraWhitespaces;
    while (pos < end) {
      const [sp, n] = this.prefix(input, pos, end);
      let s = 0;
      if (isPrevSpace) { while (s < sp.length && sp[s] === 0x20) s++; }
      if (s < sp.length) {
        for (let k = s; k < sp.length; k++) {
          if (spec.escapeWhitespaces && sp[k] === 0x20) out.append(SPACE_BYTES);
          else out.push(sp[k]);
        }
        isPrevSpace = sp[sp.length - 1] === 0x20;
      }
      pos += n;
      if (!spec.removeExtraWhitespaces) isPrevSpace = false;
    }
    if (spec.removeExtraWhitespaces) {
      const space = spec.escapeWhitespaces ? SPACE_BYTES : new Uint8Array([0x20]);
      while (out.endsWith(space)) out.len -= space.length;
    }
    if (this.treatWhitespaceAsSuffix && spec.addDummyPrefix) addWs();
    return out.buf.slice(0, out.len);
  }
}
