/**
 * The hand-written SentencePiece reader (lib/tokenizer/proto.ts) against
 * protobufjs decoding the same files from sentencepiece_model.proto's schema:
 * every piece, score and type, and the trainer and normalizer specs, field
 * for field. (The tokenizer keeps its own reader because a process that loads
 * one tokenizer is faster with it; docs/tokenizer.md, "Reading
 * tokenizer.model".)
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { gunzipSync } from "node:zlib";
import protobuf from "protobufjs";
import { parseModelProto } from "../lib/tokenizer/proto.ts";

/** sentencepiece_model.proto, the fields the tokenizer reads (numbers and defaults as upstream). */
const SCHEMA = `
syntax = "proto2";
package sentencepiece;
message TrainerSpec {
  enum ModelType { UNIGRAM = 1; BPE = 2; WORD = 3; CHAR = 4; }
  optional ModelType model_type = 3 [default = UNIGRAM];
  optional int32 vocab_size = 4 [default = 8000];
  optional bool treat_whitespace_as_suffix = 24 [default = false];
  optional bool byte_fallback = 35 [default = false];
  optional int32 unk_id = 40 [default = 0];
  optional int32 bos_id = 41 [default = 1];
  optional int32 eos_id = 42 [default = 2];
  optional int32 pad_id = 43 [default = -1];
  optional string unk_surface = 44 [default = " \u2047 "];
  extensions 200 to max;
}
message NormalizerSpec {
  optional string name = 1;
  optional bytes precompiled_charsmap = 2;
  optional bool add_dummy_prefix = 3 [default = true];
  optional bool remove_extra_whitespaces = 4 [default = true];
  optional bool escape_whitespaces = 5 [default = true];
  extensions 200 to max;
}
message ModelProto {
  message SentencePiece {
    enum Type { NORMAL = 1; UNKNOWN = 2; CONTROL = 3; USER_DEFINED = 4; BYTE = 6; UNUSED = 5; }
    optional string piece = 1;
    optional float score = 2;
    optional Type type = 3 [default = NORMAL];
    extensions 200 to max;
  }
  repeated SentencePiece pieces = 1;
  optional TrainerSpec trainer_spec = 2;
  optional NormalizerSpec normalizer_spec = 3;
  optional NormalizerSpec denormalizer_spec = 5;
  extensions 200 to max;
}`;

const root = protobuf.parse(SCHEMA, { keepCase: true }).root;
const MODEL_PROTO = root.lookupType("sentencepiece.ModelProto");

const FILES = [
  "tests/fixtures/tokenizer/glm_bpe.model",
  "tests/fixtures/tokenizer/plain_bpe.model",
  "tests/fixtures/tokenizer/unigram.model",
  "tests/fixtures/tokenizer/nfkc_bpe.model.gz",
  "tests/fixtures/tiny/tokenizer.model",
  "data/demo-model/tokenizer.model",
];

// deno-lint-ignore no-explicit-any
function spec(n: any) {
  return {
    name: n.name,
    precompiledCharsmap: new Uint8Array(n.precompiled_charsmap ?? []),
    addDummyPrefix: n.add_dummy_prefix,
    removeExtraWhitespaces: n.remove_extra_whitespaces,
    escapeWhitespaces: n.escape_whitespaces,
  };
}

Deno.test("tokenizer.model: the hand-written reader reads what protobufjs reads", async () => {
  for (const file of FILES) {
    let bytes = await Deno.readFile(file);
    if (file.endsWith(".gz")) bytes = new Uint8Array(gunzipSync(bytes));
    const ours = parseModelProto(bytes, file);
    // deno-lint-ignore no-explicit-any
    const m = MODEL_PROTO.decode(bytes) as any;
    assert(m.pieces.length > 100, file);
    assertEquals(
      ours.pieces,
      // deno-lint-ignore no-explicit-any
      m.pieces.map((p: any) => ({ piece: p.piece, score: p.score, type: p.type })),
      file,
    );
    const t = m.trainer_spec;
    assertEquals(ours.trainerSpec, {
      modelType: t.model_type,
      vocabSize: t.vocab_size,
      byteFallback: t.byte_fallback,
      treatWhitespaceAsSuffix: t.treat_whitespace_as_suffix,
      unkId: t.unk_id,
      bosId: t.bos_id,
      eosId: t.eos_id,
      padId: t.pad_id,
      unkSurface: t.unk_surface,
    }, file);
    assertEquals(ours.normalizerSpec, spec(m.normalizer_spec), file);
    const den = m.denormalizer_spec ? spec(m.denormalizer_spec) : undefined;
    assertEquals(ours.denormalizerSpec, den && den.precompiledCharsmap.length ? den : undefined);
  }
});
