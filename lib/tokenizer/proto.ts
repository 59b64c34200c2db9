/**
 * Reading a SentencePiece `tokenizer.model`: the protobuf wire format of
 * sentencepiece_model.proto (ModelProto), decoded by hand for the fields the
 * encoder needs. Unknown fields are skipped, as protobuf requires.
 */
import { UserError } from "../errors.ts";

export enum PieceType {
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export enum ModelType {
  UNIGRAM = 1,
  BPE = 2,
  WORD = 3,
  CHAR = 4,
}

export interface Piece {
  piece: string;
  score: number;
  type: PieceType;
}

export interface TrainerSpec {
  modelType: ModelType;
  vocabSize: number;
  byteFallback: boolean;
  treatWhitespaceAsSuffix: boolean;
  unkId: number;
  bosId: number;
  eosId: number;
  padId: number;
  unkSurface: string;
}

export interface NormalizerSpec {
  name: string;
  precompiledCharsmap: Uint8Array;
  addDummyPrefix: boolean;
  removeExtraWhitespaces: boolean;
  escapeWhitespaces: boolean;
}

export interface ModelProto {
  pieces: Piece[];
  trainerSpec: TrainerSpec;
  normalizerSpec: NormalizerSpec;
  /** Present when the model has denormalization rules (applied after decoding). */
  denormalizerSpec?: NormalizerSpec;
}

class Truncated extends Error {}
class Malformed extends Error {}

/** A cursor over protobuf wire-format bytes. */
class Reader {
  pos: number;
  constructor(readonly buf: Uint8Array, start = 0, readonly end = buf.length) {
    this.pos = start;
  }
  done(): boolean {
    return this.pos >= this.end;
  }
  varint(): number {
    let result = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new Truncated();
      const b = this.buf[this.pos++];
      result += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) return result;
      mul *= 128;
    }
    throw new Malformed("varint longer than 10 bytes");
  }
  /**
   * A varint read as a signed 32-bit value. A negative int32 is written
   * sign-extended to 64 bits (ten bytes); its low 32 bits are the value. (Read
   * as one double, 2^64 - 1 rounds to 2^64 and pad_id -1 came out as 0; the
   * check against protobufjs in tests/sentencepiece_proto_test.ts found it.)
   */
  int32(): number {
    let low = 0;
    for (let i = 0, shift = 0; i < 10; i++, shift += 7) {
      if (this.pos >= this.end) throw new Truncated();
      const b = this.buf[this.pos++];
      if (shift < 32) low |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) return low | 0;
    }
    throw new Malformed("varint longer than 10 bytes");
  }
  fixed32Float(): number {
    if (this.pos + 4 > this.end) throw new Truncated();
    const v = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return v;
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (this.pos + n > this.end) throw new Truncated();
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  sub(): Reader {
    const b = this.bytes();
    return new Reader(
      this.buf,
      b.byteOffset - this.buf.byteOffset,
      b.byteOffset - this.buf.byteOffset + b.length,
    );
  }
  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.bytes();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new Malformed(`unsupported wire type ${wire}`);
    }
    if (this.pos > this.end) throw new Truncated();
  }
  /** Next field: [field number, wire type]. */
  tag(): [number, number] {
    const t = this.varint();
    const field = Math.floor(t / 8);
    if (field === 0) throw new Malformed("field number 0");
    return [field, t & 7];
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function str(r: Reader): string {
  try {
    return utf8.decode(r.bytes());
  } catch (e) {
    if (e instanceof Truncated) throw e;
    throw new Malformed("a string field is not valid UTF-8");
  }
}

function expectWire(wire: number, want: number, what: string): void {
  if (wire !== want) throw new Malformed(`${what} has wire type ${wire}, expected ${want}`);
}

function readPiece(r: Reader): Piece {
  const p: Piece = { piece: "", score: 0, type: PieceType.NORMAL };
  while (!r.done()) {
    const [f, w] = r.tag();
    if (f === 1) {
      expectWire(w, 2, "piece");
      p.piece = str(r);
    } else if (f === 2) {
      expectWire(w, 5, "score");
      p.score = r.fixed32Float();
    } else if (f === 3) {
      expectWire(w, 0, "type");
      p.type = r.varint() as PieceType;
    } else r.skip(w);
  }
  return p;
}

function readTrainerSpec(r: Reader): TrainerSpec {
  const t: TrainerSpec = {
    modelType: ModelType.UNIGRAM,
    vocabSize: 8000,
    byteFallback: false,
    treatWhitespaceAsSuffix: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
    unkSurface: " \u2047 ",
  };
  while (!r.done()) {
    const [f, w] = r.tag();
    switch (f) {
      case 3:
        t.modelType = r.varint() as ModelType;
        break;
      case 4:
        t.vocabSize = r.int32();
        break;
      case 24:
        t.treatWhitespaceAsSuffix = r.varint() !== 0;
        break;
      case 35:
        t.byteFallback = r.varint() !== 0;
        break;
      case 40:
        t.unkId = r.int32();
        break;
      case 41:
        t.bosId = r.int32();
        break;
      case 42:
        t.eosId = r.int32();
        break;
      case 43:
        t.padId = r.int32();
        break;
      case 44:
        expectWire(w, 2, "unk_surface");
        t.unkSurface = str(r);
        break;
      default:
        r.skip(w);
    }
  }
  return t;
}

function readNormalizerSpec(r: Reader): NormalizerSpec {
  const n: NormalizerSpec = {
    name: "",
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  while (!r.done()) {
    const [f, w] = r.tag();
    switch (f) {
      case 1:
        expectWire(w, 2, "name");
        n.name = str(r);
        break;
      case 2:
        expectWire(w, 2, "precompiled_charsmap");
        n.precompiledCharsmap = r.bytes();
        break;
      case 3:
        n.addDummyPrefix = r.varint() !== 0;
        break;
      case 4:
        n.removeExtraWhitespaces = r.varint() !== 0;
        break;
      case 5:
        n.escapeWhitespaces = r.varint() !== 0;
        break;
      default:
        r.skip(w);
    }
  }
  return n;
}

/** Parse ModelProto bytes; `file` names the source in error messages. */
export function parseModelProto(bytes: Uint8Array, file: string): ModelProto {
  const pieces: Piece[] = [];
  let trainerSpec: TrainerSpec | undefined;
  let normalizerSpec: NormalizerSpec | undefined;
  let denormalizerSpec: NormalizerSpec | undefined;
  const notModel = (why: string) =>
    new UserError(`${file}: not a SentencePiece model (tokenizer.model): ${why}`);
  try {
    const r = new Reader(bytes);
    while (!r.done()) {
      const [f, w] = r.tag();
      if (f === 1) {
        expectWire(w, 2, "pieces");
        pieces.push(readPiece(r.sub()));
      } else if (f === 2) {
        expectWire(w, 2, "trainer_spec");
        trainerSpec = readTrainerSpec(r.sub());
      } else if (f === 3) {
        expectWire(w, 2, "normalizer_spec");
        normalizerSpec = readNormalizerSpec(r.sub());
      } else if (f === 5) {
        expectWire(w, 2, "denormalizer_spec");
        denormalizerSpec = readNormalizerSpec(r.sub());
      } else r.skip(w);
    }
  } catch (e) {
    if (e instanceof Truncated) {
      throw new UserError(
        `${file}: the SentencePiece model is truncated (${bytes.length} bytes; the file ends inside a field)`,
      );
    }
    if (e instanceof Malformed) throw notModel(e.message);
    throw e;
  }
  if (pieces.length === 0) throw notModel("it holds no vocabulary pieces");
  if (!trainerSpec) throw notModel("it has no trainer_spec");
  for (let i = 0; i < pieces.length; i++) {
    const p = pieces[i];
    if (p.piece === "") throw notModel(`piece ${i} is empty`);
    if (!(p.type in PieceType)) throw notModel(`piece ${i} has unknown type ${p.type}`);
  }
  return {
    pieces,
    trainerSpec,
    normalizerSpec: normalizerSpec ?? readNormalizerSpec(new Reader(new Uint8Array(0))),
    denormalizerSpec: denormalizerSpec && denormalizerSpec.precompiledCharsmap.length > 0
      ? denormalizerSpec
      : undefined,
  };
}
