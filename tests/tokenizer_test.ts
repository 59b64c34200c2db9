/**
 * The SentencePiece encoder/decoder against ids and texts produced by the
 * `sentencepiece` library (tools/make_tokenizer_fixtures.py).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { SentencePieceModel } from "../lib/tokenizer/sentencepiece.ts";
import { fixtureModel, longText, readGzipJson, userError } from "./fixtures/tokenizer/load.ts";

interface ModelCases {
  model: string;
  vocab_size: number;
  ids: number[][];
  decoded: Record<string, string>;
  id_decodes: [number[], string][];
  long: { seed: number; chars: number; ids: number[]; decoded_fnv1a: number }[];
}

interface EncodeFixture {
  units: string[];
  strings: string[];
  models: ModelCases[];
}

const fixture = await readGzipJson<EncodeFixture>("encode.json.gz");

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

function firstDiff(a: number[], b: number[]): string {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return `first difference at ${i}: got ${JSON.stringify(a.slice(i, i + 8))}, expected ${
    JSON.stringify(b.slice(i, i + 8))
  }`;
}

for (const m of fixture.models) {
  Deno.test(`${m.model}: ids equal sentencepiece's on ${m.ids.length} strings`, async () => {
    const sp = await fixtureModel(m.model);
    assertEquals(sp.vocabSize, m.vocab_size);
    let bad = 0;
    const report: string[] = [];
    m.ids.forEach((expected, i) => {
      const got = sp.encode(fixture.strings[i]);
      if (got.length !== expected.length || got.some((v, k) => v !== expected[k])) {
        bad++;
        if (report.length < 5) {
          report.push(`${JSON.stringify(fixture.strings[i])}: ${firstDiff(got, expected)}`);
        }
      }
    });
    assertEquals(bad, 0, report.join("\n"));
  });

  Deno.test(`${m.model}: decode(ids) equals sentencepiece's decode`, async () => {
    const sp = await fixtureModel(m.model);
    m.ids.forEach((ids, i) => {
      const expected = m.decoded[String(i)] ?? fixture.strings[i];
      assertEquals(sp.decode(ids), expected, `string ${i}: ${JSON.stringify(fixture.strings[i])}`);
    });
    for (const [ids, expected] of m.id_decodes) {
      assertEquals(sp.decode(ids), expected, JSON.stringify(ids));
    }
  });

  Deno.test(`${m.model}: long generated texts`, async () => {
    const sp = await fixtureModel(m.model);
    for (const l of m.long) {
      const text = longText(l.seed, l.chars, fixture.units);
      const got = sp.encode(text);
      assertEquals(got.length, l.ids.length, `seed ${l.seed}: ${firstDiff(got, l.ids)}`);
      assert(got.every((v, k) => v === l.ids[k]), `seed ${l.seed}: ${firstDiff(got, l.ids)}`);
      assertEquals(fnv1a(sp.decode(got)), l.decoded_fnv1a, `seed ${l.seed}: decoded text differs`);
    }
  });
}

Deno.test("the fixture set covers at least 2,000 strings", () => {
  const n = fixture.models[0].ids.length + fixture.models[0].long.length;
  assert(n >= 2000, `only ${n}`);
});

Deno.test("byte fallback, dummy prefix and whitespace pieces behave as in sentencepiece", async () => {
  const sp = await fixtureModel("glm_bpe.model");
  // "\n" is not in the vocabulary: the dummy prefix piece, then the byte piece <0x0A>.
  assertEquals(sp.encode("\n").map((id) => sp.idToPiece(id)), ["▁", "<0x0A>"]);
  assertEquals(sp.encode(""), []);
  assertEquals(sp.decode(sp.encode("  two leading")), "  two leading");
});

Deno.test("a truncated model file is a UserError naming the file", async () => {
  const bytes = await Deno.readFile(new URL("./fixtures/tokenizer/glm_bpe.model", import.meta.url));
  for (const cut of [7, 100, bytes.length - 3]) {
    const e = await userError(() =>
      SentencePieceModel.fromBytes(bytes.subarray(0, cut), "dir/tokenizer.model")
    );
    assert(e.message.includes("dir/tokenizer.model"), e.message);
    assert(/truncated|not a SentencePiece model/.test(e.message), e.message);
  }
});

Deno.test("a file that is not a SentencePiece model is a UserError", async () => {
  const texts = ['{"model": {"type": "BPE"}}', "PK\x03\x04 zip", "\x00\x00\x00\x00", ""];
  for (const t of texts) {
    const e = await userError(() =>
      SentencePieceModel.fromBytes(new TextEncoder().encode(t), "x/tokenizer.model")
    );
    assert(e.message.startsWith("x/tokenizer.model"), e.message);
  }
  const dir = await Deno.makeTempDir();
  try {
    const e = await userError(() => SentencePieceModel.load(`${dir}/missing.model`));
    assert(e.message.includes("no such file"), e.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
