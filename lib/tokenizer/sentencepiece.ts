/**
 * A SentencePiece BPE processor that gives the ids and texts of the
 * `sentencepiece` library (sentencepiece_processor.cc, bpe_model.cc,
 * model_interface.cc): normalization, BPE merges by a priority queue over a
 * linked list of symbols (highest score first, leftmost on ties), user-defined
 * symbols frozen, unknown characters as byte pieces `<0xAB>` with byte
 * fallback or as one `<unk>` per run without it; decoding with the dummy-prefix
 * rule, byte pieces reassembled into UTF-8 (U+FFFD per invalid byte), control
 * pieces invisible.
 *
 * Speed: when no vocabulary piece holds ▁ after another character, no merge
 * can cross the start of a ▁-word, so the normalized text is cut there and
 * each word is merged on its own, with a small queue. The result is the same
 * as merging the whole string, which is what the C++ does. (A per-word cache
 * was measured and dropped: mixed Chinese/English words are mostly unique, and
 * filling the cache cost more than the merges it saved.)
 */
import { UserError } from "../errors.ts";
import { Normalizer, PrefixMatcher, SPACE_SYMBOL } from "./normalizer.ts";
import { type ModelProto, ModelType, parseModelProto, type Piece, PieceType } from "./proto.ts";

const encoder = new TextEncoder();

export class SentencePieceModel {
  readonly pieces: readonly Piece[];
  readonly unkId: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly byteFallback: boolean;
  readonly proto: ModelProto;

  /** Normal, user-defined and unused pieces (what BPE may produce). */
  private readonly normal = new Map<string, number>();
  /** Control, unknown and byte pieces. */
  private readonly reserved = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly pieceByte: Int16Array;
  private readonly scores: Float32Array;
  private readonly unused: Uint8Array;
  private readonly hasUnused: boolean;
  /** Single characters: symbol id (a piece id, or an id past the vocabulary for characters only seen inside pieces). */
  private readonly charSym = new Map<string, number>();
  /** Symbols past the vocabulary: their character. */
  private readonly extraChars: string[] = [];
  /** (left symbol, right symbol) -> merged piece id. */
  private pairs!: PairTable;
  /** Symbol of each BMP code point (-1: none); astral ones in `astralSym`. */
  private readonly bmpSym = new Int32Array(0x10000).fill(-1);
  private readonly astralSym = new Map<number, number>();
  // Work buffers reused across calls (grown on demand): encoding allocates almost nothing.
  private wSym = new Int32Array(256);
  private wPrev = new Int32Array(256);
  private wNext = new Int32Array(256);
  private wStart = new Int32Array(256);
  private wLen = new Uint8Array(256);
  private wFrozen = new Uint8Array(256);
  private readonly heap = new PairHeap();
  private readonly unigram?: UnigramEncoder;
  /** Whether a control/unknown/byte piece is a single character (then an unknown character may be one). */
  private readonly singleCharReserved: boolean;
  private readonly normalizer: Normalizer;
  private readonly denormalizer?: Normalizer;
  private readonly userDefined: PrefixMatcher;
  private readonly segmentWords: boolean;

  private constructor(proto: ModelProto, file: string) {
    this.proto = proto;
    const bad = (why: string) => new UserError(`${file}: invalid SentencePiece model: ${why}`);
    const t = proto.trainerSpec;
    if (t.modelType !== ModelType.BPE && t.modelType !== ModelType.UNIGRAM) {
      const name = ModelType[t.modelType] ?? String(t.modelType);
      throw new UserError(
        `${file}: SentencePiece model type ${name} is not supported (BPE, as ChatGLM3's tokenizer, and unigram are)`,
      );
    }
    this.pieces = proto.pieces;
    this.byteFallback = t.byteFallback;
    const n = proto.pieces.length;
    this.scores = new Float32Array(n);
    this.unused = new Uint8Array(n);
    this.pieceByte = new Int16Array(n).fill(-1);
    const userSymbols: string[] = [];
    let unk = -1;
    for (let i = 0; i < n; i++) {
      const p = proto.pieces[i];
      this.scores[i] = p.score;
      const isNormal = p.type === PieceType.NORMAL || p.type === PieceType.USER_DEFINED ||
        p.type === PieceType.UNUSED;
      const map = isNormal ? this.normal : this.reserved;
      if (map.has(p.piece)) throw bad(`piece "${p.piece}" is defined twice`);
      map.set(p.piece, i);
      if (p.type === PieceType.USER_DEFINED) userSymbols.push(p.piece);
      if (p.type === PieceType.UNUSED) this.unused[i] = 1;
      if (p.type === PieceType.UNKNOWN) {
        if (unk >= 0) throw bad("more than one unknown piece");
        unk = i;
      }
      if (p.type === PieceType.BYTE) {
        if (!t.byteFallback) {
          throw bad(`byte piece ${p.piece} found although byte_fallback is false`);
        }
        const m = /^<0x([0-9A-F]{2})>$/.exec(p.piece);
        if (!m) throw bad(`byte piece ${p.piece} is invalid`);
        const b = parseInt(m[1], 16);
        this.byteIds[b] = i;
        this.pieceByte[i] = b;
      }
    }
    if (unk < 0) throw bad("no unknown piece (<unk>) is defined");
    if (t.byteFallback && this.byteIds.some((v) => v < 0)) {
      throw bad("byte_fallback is set but the 256 byte pieces are not all present");
    }
    this.unkId = unk;
    this.bosId = t.bosId;
    this.eosId = t.eosId;
    this.padId = t.padId;
    this.hasUnused = this.unused.some((v) => v === 1);
    this.userDefined = new PrefixMatcher(userSymbols);
    this.normalizer = new Normalizer(
      proto.normalizerSpec,
      this.userDefined,
      t.treatWhitespaceAsSuffix,
      file,
    );
    if (proto.denormalizerSpec) {
      this.denormalizer = new Normalizer(proto.denormalizerSpec, undefined, false, file);
    }
    this.singleCharReserved = [...this.reserved.keys()].some((k) => [...k].length === 1);
    if (t.modelType === ModelType.UNIGRAM) {
      this.unigram = new UnigramEncoder(proto.pieces, this.normal, this.unkId);
    } else this.buildPairs();
    let crossing = false;
    for (const piece of this.normal.keys()) {
      const k = piece.indexOf(SPACE_SYMBOL, 1);
      if (k > 0 && /[^\u2581]\u2581/.test(piece)) {
        crossing = true;
        break;
      }
    }
    this.segmentWords = !crossing && !this.hasUnused && !t.treatWhitespaceAsSuffix;
  }

  static fromBytes(bytes: Uint8Array, file: string): SentencePieceModel {
    return new SentencePieceModel(parseModelProto(bytes, file), file);
  }

  static async load(path: string): Promise<SentencePieceModel> {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
      if (e instanceof Deno.errors.IsADirectory) {
        throw new UserError(`${path}: is a directory, expected tokenizer.model`);
      }
      throw e;
    }
    return SentencePieceModel.fromBytes(bytes, path);
  }

  /** Number of pieces (the SentencePiece vocabulary size). */
  get vocabSize(): number {
    return this.pieces.length;
  }

  /** As `PieceToId`: reserved pieces first, then normal ones, else the unknown id. */
  pieceToId(piece: string): number {
    return this.reserved.get(piece) ?? this.normal.get(piece) ?? this.unkId;
  }

  idToPiece(id: number): string {
    const p = this.pieces[id];
    if (!p) {
      throw new RangeError(
        `token id ${id} is outside the vocabulary (0..${this.pieces.length - 1})`,
      );
    }
    return p.piece;
  }

  isControl(id: number): boolean {
    return this.pieces[id]?.type === PieceType.CONTROL;
  }
  isUnknown(id: number): boolean {
    return this.pieces[id]?.type === PieceType.UNKNOWN;
  }
  isByte(id: number): boolean {
    return this.pieces[id]?.type === PieceType.BYTE;
  }

  /** The normalized text the encoder segments (spaces as ▁, dummy prefix). */
  normalize(text: string): string {
    return this.normalizer.normalize(text);
  }

  private buildPairs(): void {
    const symOf = (s: string): number | undefined => {
      const id = this.normal.get(s);
      if (id !== undefined) return id;
      const cp = s.codePointAt(0)!;
      if (s.length !== (cp > 0xffff ? 2 : 1)) return undefined;
      let sym = this.charSym.get(s);
      if (sym === undefined) {
        sym = this.pieces.length + this.extraChars.length;
        this.extraChars.push(s);
        this.charSym.set(s, sym);
      }
      return sym;
    };
    for (const [piece, id] of this.normal) {
      if (piece.length === 1 || (piece.length === 2 && piece.codePointAt(0)! > 0xffff)) {
        this.charSym.set(piece, id);
      }
    }
    const keysA: number[] = [];
    const keysB: number[] = [];
    const vals: number[] = [];
    for (const [piece, id] of this.normal) {
      let k = 0;
      for (const ch of piece) {
        k += ch.length;
        if (k >= piece.length) break;
        const a = symOf(piece.slice(0, k));
        if (a === undefined) continue;
        const b = symOf(piece.slice(k));
        if (b === undefined) continue;
        keysA.push(a);
        keysB.push(b);
        vals.push(id);
      }
    }
    this.pairs = new PairTable(keysA, keysB, vals);
    for (const [ch, sym] of this.charSym) {
      const cp = ch.codePointAt(0)!;
      if (cp < 0x10000) this.bmpSym[cp] = sym;
      else this.astralSym.set(cp, sym);
    }
  }

  /** Token ids of `text`, as `SentencePieceProcessor.encode(text)`. */
  encode(text: string): number[] {
    const normalized = this.normalizer.normalize(text);
    const out: number[] = [];
    if (normalized === "") return out;
    if (this.unigram) {
      this.unigram.encode(
        normalized,
        out,
        (bytes, start, end) => this.emitUnknownBytes(bytes, start, end, out),
      );
    } else if (!this.segmentWords) {
      this.encodeSegment(normalized, out);
    } else {
      let start = 0;
      for (let i = 1; i < normalized.length; i++) {
        if (normalized.charCodeAt(i) === 0x2581 && normalized.charCodeAt(i - 1) !== 0x2581) {
          this.encodeSegment(normalized.slice(start, i), out);
          start = i;
        }
      }
      this.encodeSegment(normalized.slice(start), out);
    }
    if (!this.byteFallback) return collapseUnknown(out, this.unkId);
    return out;
  }

  private ensureWork(n: number): void {
    if (this.wSym.length >= n) return;
    const cap = Math.max(n, this.wSym.length * 2);
    this.wSym = new Int32Array(cap);
    this.wPrev = new Int32Array(cap);
    this.wNext = new Int32Array(cap);
    this.wStart = new Int32Array(cap);
    this.wLen = new Uint8Array(cap);
    this.wFrozen = new Uint8Array(cap);
  }

  /** BPE over one stretch of normalized text, appending ids to `out`. */
  private encodeSegment(s: string, out: number[]): void {
    this.ensureWork(s.length + 1);
    const sym = this.wSym, prev = this.wPrev, next = this.wNext;
    const start = this.wStart, len = this.wLen, frozen = this.wFrozen;
    // Initial symbols: user-defined symbols (frozen) or single characters.
    let n = 0;
    const hasUser = !this.userDefined.empty;
    const bytes = hasUser ? encoder.encode(s) : undefined;
    let bytePos = 0;
    for (let i = 0; i < s.length;) {
      if (hasUser) {
        const m = this.userDefined.match(bytes!, bytePos, bytes!.length);
        if (m > 0) {
          const l = utf16LengthOfUtf8(bytes!, bytePos, m);
          sym[n] = this.normal.get(s.slice(i, i + l))!;
          start[n] = i;
          len[n] = l;
          frozen[n] = 1;
          n++;
          i += l;
          bytePos += m;
          continue;
        }
      }
      const c = s.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
        const cp = s.codePointAt(i)!;
        sym[n] = this.astralSym.get(cp) ?? -1;
        len[n] = 2;
        bytePos += 4;
      } else {
        sym[n] = this.bmpSym[c];
        len[n] = 1;
        bytePos += c < 0x80 ? 1 : c < 0x800 ? 2 : 3;
      }
      start[n] = i;
      frozen[n] = 0;
      i += len[n];
      n++;
    }
    if (n === 1) {
      this.emit(sym[0], s, start[0], len[0], out, undefined);
      return;
    }
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = this.heap;
    heap.size = 0;
    const revMerge = this.hasUnused ? new Map<number, [number, number]>() : undefined;
    const pairs = this.pairs;
    const scores = this.scores;
    const unused = this.unused;
    // A dead symbol (merged into its left neighbour) gets sym -2, which no queued pair names.
    const tryPair = (l: number, r: number) => {
      if (l < 0 || r < 0 || frozen[l] || frozen[r]) return;
      const a = sym[l];
      const b = sym[r];
      if (a < 0 || b < 0) return;
      const merged = pairs.get(a, b);
      if (merged < 0) return;
      heap.push(scores[merged], l, r, a, b, merged);
      if (revMerge && unused[merged]) revMerge.set(merged, [a, b]);
    };
    for (let i = 1; i < n; i++) tryPair(i - 1, i);
    while (heap.size > 0) {
      heap.pop();
      const l = heap.topLeft, r = heap.topRight;
      // A stale candidate: one side has merged since it was queued.
      if (sym[l] !== heap.topA || sym[r] !== heap.topB) continue;
      sym[l] = heap.topMerged;
      sym[r] = -2;
      const nr = next[r];
      next[l] = nr;
      if (nr >= 0) prev[nr] = l;
      tryPair(prev[l], l);
      tryPair(l, nr);
    }
    for (let i = 0; i !== -1; i = next[i]) this.emit(sym[i], s, start[i], len[i], out, revMerge);
  }

  /** Append the ids of one final symbol: a piece, or an unknown character at s[at, at+len). */
  private emit(
    sy: number,
    s: string,
    at: number,
    len: number,
    out: number[],
    revMerge: Map<number, [number, number]> | undefined,
  ): void {
    if (sy >= 0 && sy < this.pieces.length) {
      if (revMerge && this.unused[sy]) {
        const split = revMerge.get(sy);
        if (split) {
          this.emitSym(split[0], out, revMerge);
          this.emitSym(split[1], out, revMerge);
          return;
        }
      }
      out.push(sy);
      return;
    }
    // Only single characters get here (merged symbols are always pieces).
    let id = this.unkId;
    if (this.singleCharReserved) id = this.reserved.get(s.slice(at, at + len)) ?? this.unkId;
    if (id === this.unkId && this.byteFallback) {
      const cp = len === 2 ? s.codePointAt(at)! : s.charCodeAt(at);
      const bi = this.byteIds;
      if (cp < 0x80) out.push(bi[cp]);
      else if (cp < 0x800) out.push(bi[0xc0 | (cp >> 6)], bi[0x80 | (cp & 63)]);
      else if (cp < 0x10000) {
        out.push(bi[0xe0 | (cp >> 12)], bi[0x80 | ((cp >> 6) & 63)], bi[0x80 | (cp & 63)]);
      } else {
        out.push(
          bi[0xf0 | (cp >> 18)],
          bi[0x80 | ((cp >> 12) & 63)],
          bi[0x80 | ((cp >> 6) & 63)],
          bi[0x80 | (cp & 63)],
        );
      }
    } else out.push(id);
  }

  private emitSym(sy: number, out: number[], revMerge: Map<number, [number, number]>): void {
    const np = this.pieces.length;
    const ch = sy < np ? this.pieces[sy].piece : this.extraChars[sy - np];
    this.emit(sy < np ? sy : -1, ch, 0, ch.length, out, revMerge);
  }

  /** An unknown piece (UTF-8 bytes[start, end)): its byte pieces, or `<unk>`. */
  private emitUnknownBytes(bytes: Uint8Array, start: number, end: number, out: number[]): void {
    if (!this.byteFallback) {
      out.push(this.unkId);
      return;
    }
    for (let i = start; i < end; i++) out.push(this.byteIds[bytes[i]]);
  }

  /** Text of `ids`, as `SentencePieceProcessor.decode(ids)`. */
  decode(ids: readonly number[]): string {
    const pieces = new Array<string>(ids.length);
    for (let i = 0; i < ids.length; i++) pieces[i] = this.idToPiece(ids[i]);
    return this.decodePieces(pieces);
  }

  /** Text of `pieces`, as `SentencePieceProcessor.decode_pieces` (unknown strings are copied through). */
  decodePieces(pieces: readonly string[]): string {
    const spec = this.proto.normalizerSpec;
    const stripBos = spec.addDummyPrefix || spec.removeExtraWhitespaces;
    let text = "";
    let isBosWs = true;
    let bosWsSeen = false;
    const bytes: number[] = [];
    const flush = () => {
      if (bytes.length) {
        text += decodeBytesLikeSentencePiece(bytes);
        bytes.length = 0;
      }
    };
    for (const piece of pieces) {
      const id = this.pieceToId(piece);
      const b = this.pieceByte[id];
      if (b >= 0) {
        bytes.push(b);
        continue;
      }
      flush();
      if (bosWsSeen || text.length > 0) isBosWs = false;
      bosWsSeen = false;
      const type = this.pieces[id].type;
      if (type === PieceType.CONTROL) continue;
      if (type === PieceType.UNKNOWN) {
        text += piece === this.pieces[id].piece ? this.proto.trainerSpec.unkSurface : piece;
        continue;
      }
      let p = piece;
      if (isBosWs && stripBos && p.startsWith(SPACE_SYMBOL)) {
        p = p.slice(1);
        bosWsSeen = !spec.removeExtraWhitespaces;
      }
      text += p.replaceAll(SPACE_SYMBOL, " ");
    }
    flush();
    return this.denormalizer ? this.denormalizer.normalize(text) : text;
  }
}

/** Without byte fallback, the C++ joins each run of unknown pieces into one `<unk>`. */
function collapseUnknown(ids: number[], unk: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] === unk && i > 0 && ids[i - 1] === unk) continue;
    out.push(ids[i]);
  }
  return out;
}

/** UTF-16 length of `n` UTF-8 bytes at `pos` (valid UTF-8). */
function utf16LengthOfUtf8(b: Uint8Array, pos: number, n: number): number {
  let len = 0;
  for (let i = pos; i < pos + n; i++) {
    const c = b[i];
    if ((c & 0xc0) !== 0x80) len += c >= 0xf0 ? 2 : 1;
  }
  return len;
}

/** Bytes to text with one U+FFFD per byte that does not start a valid UTF-8 character. */
export function decodeBytesLikeSentencePiece(bytes: readonly number[]): string {
  const b = Uint8Array.from(bytes);
  let out = "";
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    if (c < 0x80) {
      out += String.fromCharCode(c);
      i++;
      continue;
    }
    let cp = -1;
    let len = 0;
    const rest = b.length - i;
    const t = (k: number) => (b[i + k] & 0xc0) === 0x80;
    if (rest >= 2 && (c & 0xe0) === 0xc0 && t(1)) {
      cp = ((c & 0x1f) << 6) | (b[i + 1] & 0x3f);
      len = 2;
      if (cp < 0x80) cp = -1;
    } else if (rest >= 3 && (c & 0xf0) === 0xe0 && t(1) && t(2)) {
      cp = ((c & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f);
      len = 3;
      if (cp < 0x800) cp = -1;
    } else if (rest >= 4 && (c & 0xf8) === 0xf0 && t(1) && t(2) && t(3)) {
      cp = ((c & 0x07) << 18) | ((b[i + 1] & 0x3f) << 12) | ((b[i + 2] & 0x3f) << 6) |
        (b[i + 3] & 0x3f);
      len = 4;
      if (cp < 0x10000) cp = -1;
    }
    if (cp < 0 || (cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff) {
      out += "\ufffd";
      i++;
    } else {
      out += String.fromCodePoint(cp);
      i += len;
    }
  }
  return out;
}

/**
 * A binary max-heap of merge candidates keyed by (score desc, left asc), in
 * typed arrays: encoding long texts queues many candidates and objects would
 * dominate the time.
 */
class PairHeap {
  size = 0;
  private cap = 64;
  private score = new Float64Array(this.cap);
  private left = new Int32Array(this.cap);
  private right = new Int32Array(this.cap);
  private a = new Int32Array(this.cap);
  private b = new Int32Array(this.cap);
  private merged = new Int32Array(this.cap);
  topLeft = 0;
  topRight = 0;
  topA = 0;
  topB = 0;
  topMerged = 0;

  private before(i: number, j: number): boolean {
    const si = this.score[i], sj = this.score[j];
    return si > sj || (si === sj && this.left[i] < this.left[j]);
  }
  private swap(i: number, j: number): void {
    let t = this.score[i];
    this.score[i] = this.score[j];
    this.score[j] = t;
    t = this.left[i];
    this.left[i] = this.left[j];
    this.left[j] = t;
    t = this.right[i];
    this.right[i] = this.right[j];
    this.right[j] = t;
    t = this.a[i];
    this.a[i] = this.a[j];
    this.a[j] = t;
    t = this.b[i];
    this.b[i] = this.b[j];
    this.b[j] = t;
    t = this.merged[i];
    this.merged[i] = this.merged[j];
    this.merged[j] = t;
  }
  private grow(): void {
    this.cap *= 2;
    const g = <T extends Float64Array | Int32Array>(x: T, C: new (n: number) => T): T => {
      const y = new C(this.cap);
      y.set(x);
      return y;
    };
    this.score = g(this.score, Float64Array);
    this.left = g(this.left, Int32Array);
    this.right = g(this.right, Int32Array);
    this.a = g(this.a, Int32Array);
    this.b = g(this.b, Int32Array);
    this.merged = g(this.merged, Int32Array);
  }
  push(score: number, l: number, r: number, a: number, b: number, merged: number): void {
    if (this.size === this.cap) this.grow();
    let i = this.size++;
    this.score[i] = score;
    this.left[i] = l;
    this.right[i] = r;
    this.a[i] = a;
    this.b[i] = b;
    this.merged[i] = merged;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }
  /** Remove the best candidate into the top* fields. */
  pop(): void {
    this.topLeft = this.left[0];
    this.topRight = this.right[0];
    this.topA = this.a[0];
    this.topB = this.b[0];
    this.topMerged = this.merged[0];
    const last = --this.size;
    if (last > 0) {
      this.swap(0, last);
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < last && this.before(l, m)) m = l;
        if (r < last && this.before(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
  }
}

/** An open-addressing hash map from a pair of symbol ids to the merged piece id. */
class PairTable {
  private readonly keyA: Int32Array;
  private readonly keyB: Int32Array;
  private readonly value: Int32Array;
  private readonly mask: number;

  constructor(a: number[], b: number[], v: number[]) {
    let cap = 16;
    while (cap < a.length * 2) cap *= 2;
    this.mask = cap - 1;
    this.keyA = new Int32Array(cap);
    this.keyB = new Int32Array(cap);
    this.value = new Int32Array(cap).fill(-1);
    for (let i = 0; i < a.length; i++) {
      let h = this.hash(a[i], b[i]);
      while (this.value[h] >= 0 && !(this.keyA[h] === a[i] && this.keyB[h] === b[i])) {
        h = (h + 1) & this.mask;
      }
      this.keyA[h] = a[i];
      this.keyB[h] = b[i];
      this.value[h] = v[i];
    }
  }

  private hash(a: number, b: number): number {
    const h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b + 0x7f4a7c15, 0x85ebca77);
    return (h ^ (h >>> 15)) & this.mask;
  }

  /** The merged piece id, or -1. */
  get(a: number, b: number): number {
    let h = this.hash(a, b);
    for (;;) {
      const v = this.value[h];
      if (v < 0) return -1;
      if (this.keyA[h] === a && this.keyB[h] === b) return v;
      h = (h + 1) & this.mask;
    }
  }
}

/**
 * Unigram Viterbi as sentencepiece's optimized encoder (unigram_model.cc
 * EncodeOptimized): over UTF-8 positions, the best path ending at each
 * position, scores accumulated in float32 as the C++ does; user-defined
 * pieces get the bonus length * max_score - 0.1; a character with no piece
 * of its own is an unknown node scored min_score - 10.
 */
class UnigramEncoder {
  /** Byte trie: child maps and the piece id ending at each node (-1: none). */
  private readonly children: Map<number, number>[] = [new Map()];
  private readonly values: number[] = [-1];
  private readonly scores: Float32Array;
  private readonly userDefined: Uint8Array;
  private readonly unused: Uint8Array;
  private readonly minScore: number;
  private readonly maxScore: number;

  constructor(
    pieces: readonly Piece[],
    normal: Map<string, number>,
    private readonly unkId: number,
  ) {
    this.scores = new Float32Array(pieces.length);
    this.userDefined = new Uint8Array(pieces.length);
    this.unused = new Uint8Array(pieces.length);
    let min = 3.4028234663852886e38; // FLT_MAX
    let max = 1.1754943508222875e-38; // FLT_MIN
    pieces.forEach((p, i) => {
      this.scores[i] = p.score;
      if (p.type === PieceType.USER_DEFINED) this.userDefined[i] = 1;
      if (p.type === PieceType.UNUSED) this.unused[i] = 1;
      if (p.type === PieceType.NORMAL) {
        min = Math.min(min, this.scores[i]);
        max = Math.max(max, this.scores[i]);
      }
    });
    this.minScore = min;
    this.maxScore = max;
    for (const [piece, id] of normal) {
      let node = 0;
      for (const b of encoder.encode(piece)) {
        let next = this.children[node].get(b);
        if (next === undefined) {
          next = this.values.length;
          this.children.push(new Map());
          this.values.push(-1);
          this.children[node].set(b, next);
        }
        node = next;
      }
      this.values[node] = id;
    }
  }

  encode(
    normalized: string,
    out: number[],
    unknown: (bytes: Uint8Array, start: number, end: number) => void,
  ): void {
    const bytes = encoder.encode(normalized);
    const size = bytes.length;
    const unkScore = Math.fround(this.minScore - 10);
    const best = new Float32Array(size + 1);
    const startsAt = new Int32Array(size + 1).fill(-1);
    const ids = new Int32Array(size + 1).fill(-1);
    let start = 0;
    while (start < size) {
      const here = best[start];
      const lead = bytes[start];
      const mblen = Math.min(lead < 0xc0 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4, size - start);
      let hasSingle = false;
      let node = 0;
      for (let k = start; k < size; k++) {
        const next = this.children[node].get(bytes[k]);
        if (next === undefined) break;
        node = next;
        const id = this.values[node];
        if (id < 0 || this.unused[id]) continue;
        const end = k + 1;
        const length = end - start;
        // A user-defined bonus is computed in double, as in the C++; other sums in float.
        const cand = this.userDefined[id]
          ? Math.fround(length * this.maxScore) - 0.1 + here
          : Math.fround(this.scores[id] + here);
        if (startsAt[end] === -1 || cand > best[end]) {
          best[end] = cand;
          startsAt[end] = start;
          ids[end] = id;
        }
        if (!hasSingle && length === mblen) hasSingle = true;
      }
      if (!hasSingle) {
        const end = start + mblen;
        const cand = Math.fround(unkScore + here);
        if (startsAt[end] === -1 || cand > best[end]) {
          best[end] = cand;
          startsAt[end] = start;
          ids[end] = this.unkId;
        }
      }
      start += mblen;
    }
    const path: number[] = [];
    for (let end = size; end > 0; end = startsAt[end]) path.push(end);
    for (let i = path.length - 1; i >= 0; i--) {
      const end = path[i];
      const id = ids[end];
      if (id === this.unkId) unknown(bytes, startsAt[end], end);
      else out.push(id);
    }
  }
}
