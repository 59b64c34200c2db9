/**
 * bitsandbytes' 4-bit quantization: lib/model/quant against the NumPy
 * reference's fixtures (tools/make_quant_fixtures.py), bit for bit — code
 * books, packed bytes, absmax (and its double quantization), dequantized values.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  dequantize4bit,
  dynamicMap,
  FP4_THRESHOLDS,
  FP4_VALUES,
  NF4_THRESHOLDS,
  NF4_VALUES,
  quant4Bytes,
  quant4Code,
  quant4Host,
  type Quant4Tensor,
  type Quant4Type,
  quantize4bit,
  quantizeBlockwise8,
  quantizeRaw,
} from "../lib/model/quant/mod.ts";
import type { DType } from "../lib/safetensors/dtype.ts";

const dir = new URL("./fixtures/quant/", import.meta.url);
const read = (name: string) => Deno.readFile(new URL(name, dir));
const bitsOf = (a: Float32Array) => [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
const f32 = (b: Uint8Array) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);

interface Case {
  name: string;
  input: string;
  dtype: "f16" | "bf16" | "f32";
  shape: number[];
  quant_type: Quant4Type;
  double_quant: boolean;
  blocksize: number;
  n: number;
  blocks: number;
  offset?: number;
  nested_blocks?: number;
  dequant_sha256: string;
}
const cases = (JSON.parse(await Deno.readTextFile(new URL("cases.json", dir))) as {
  cases: Case[];
}).cases;
const DTYPE: Record<Case["dtype"], DType> = { f16: "F16", bf16: "BF16", f32: "F32" };

async function sha256(a: Float32Array): Promise<string> {
  const h = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(a.buffer as ArrayBuffer, a.byteOffset, a.byteLength),
  );
  return [...new Uint8Array(h)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Index and values of the first differing 32-bit pattern, for the message. */
function firstDiff(got: ArrayLike<number>, want: ArrayLike<number>): string {
  for (let i = 0; i < Math.max(got.length, want.length); i++) {
    if (got[i] !== want[i]) return `first difference at ${i}: ${got[i]} against ${want[i]}`;
  }
  return "same";
}

Deno.test("quant: NF4 and FP4 tables, the kernels' pivots and the dynamic map equal the reference's bits", async () => {
  const codes = JSON.parse(await Deno.readTextFile(new URL("codes.json", dir)));
  assertEquals(bitsOf(NF4_VALUES), codes.nf4);
  assertEquals(bitsOf(FP4_VALUES), codes.fp4);
  assertEquals(bitsOf(NF4_THRESHOLDS), codes.nf4_thresholds);
  assertEquals(bitsOf(FP4_THRESHOLDS), codes.fp4_thresholds);
  assertEquals(bitsOf(dynamicMap()), codes.dynamic_map);
});

Deno.test("quant: the 8-bit blockwise step picks the reference's codes on every midpoint of the dynamic map", async () => {
  const values = f32(await read("blockwise8.input.bin"));
  const want = await read("blockwise8.codes.bin");
  const { codes, absmax } = quantizeBlockwise8(values, dynamicMap(), 256);
  assert(codes.every((q, i) => q === want[i]), firstDiff(codes, want));
  assertEquals(bitsOf(absmax), bitsOf(f32(await read("blockwise8.absmax.bin"))));
});

Deno.test("quant: the fixture cases cover what the issue asks for", () => {
  const has = (f: (c: Case) => boolean) => cases.some(f);
  for (const t of ["nf4", "fp4"] as const) {
    for (const dq of [false, true]) {
      assert(has((c) => c.quant_type === t && c.double_quant === dq), `${t} dq=${dq}`);
    }
  }
  assert(has((c) => c.n % 2 === 1), "an odd element count");
  assert(has((c) => c.n % c.blocksize !== 0), "a short last block");
  assert(has((c) => c.double_quant && c.blocks > 256 && c.blocks % 256 !== 0), "blocks % 256");
  assert(
    has((c) => c.shape.length === 2 && c.shape[1] % c.blocksize !== 0),
    "rows straddle blocks",
  );
});

for (const c of cases) {
  Deno.test(`quant: ${c.name} (${c.quant_type}${c.double_quant ? ", double" : ""}, n ${c.n}) — quantize, dequantize bit for bit`, async () => {
    const raw = await read(c.input);
    const t = quantizeRaw(raw, DTYPE[c.dtype], c.shape, {
      type: c.quant_type,
      doubleQuant: c.double_quant,
      blocksize: c.blocksize,
    });
    const packed = await read(`${c.name}.packed.bin`);
    assertEquals(t.packed.length, packed.length);
    assert(t.packed.every((b, i) => b === packed[i]), `packed: ${firstDiff(t.packed, packed)}`);
    if (c.double_quant) {
      const q = await read(`${c.name}.qabsmax.bin`);
      const a2 = f32(await read(`${c.name}.absmax2.bin`));
      const n = t.nested!;
      assert(n.codes.every((b, i) => b === q[i]) && n.codes.length === q.length, "absmax codes");
      assertEquals(bitsOf(n.absmax), bitsOf(a2));
      assertEquals(bitsOf(new Float32Array([n.offset])), [c.offset]);
      assertEquals(n.absmax.length, c.nested_blocks);
    } else {
      assertEquals(bitsOf(t.absmax!), bitsOf(f32(await read(`${c.name}.absmax.bin`))));
    }
    // Decoded and quantized two blocks at a time (as a large tensor is, a chunk at a time):
    // the same bytes.
    const chunked = quantizeRaw(raw, DTYPE[c.dtype], c.shape, {
      type: c.quant_type,
      doubleQuant: c.double_quant,
      blocksize: c.blocksize,
    }, 2 * c.blocksize);
    assert(chunked.packed.every((b, i) => b === packed[i]), "packed, in chunks of two blocks");
    assertEquals(chunked.nested?.codes ?? chunked.absmax, t.nested?.codes ?? t.absmax);
    const deq = dequantize4bit(t);
    assertEquals(await sha256(deq), c.dequant_sha256, `${c.name}: dequantized values differ`);
    try {
      const want = f32(await read(`${c.name}.dequant.bin`));
      assert(
        bitsOf(deq).every((b, i) => b === bitsOf(want)[i]),
        firstDiff(bitsOf(deq), bitsOf(want)),
      );
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e; // large cases keep only the hash
    }
  });
}

Deno.test("quant: dequantizing the reference's own packed bytes and absmax gives its values", async () => {
  // Independent of our quantizer: the decoder alone against the fixture.
  for (const c of cases.filter((x) => !x.double_quant)) {
    const t: Quant4Tensor = {
      type: c.quant_type,
      shape: c.shape,
      n: c.n,
      blocksize: c.blocksize,
      packed: await read(`${c.name}.packed.bin`),
      absmax: f32(await read(`${c.name}.absmax.bin`)).slice(),
    };
    assertEquals(await sha256(dequantize4bit(t)), c.dequant_sha256, c.name);
  }
});

Deno.test("quant: FP4 code 1000 decodes to -0.0, a block of zeros to codes of NaN", async () => {
  const c = cases.find((x) => x.name === "fp4-bf16-tail")!;
  const t = quantizeRaw(await read(c.input), "BF16", c.shape, { type: "fp4" });
  const deq = dequantize4bit(t);
  assert(deq.some((v) => Object.is(v, -0)), "no -0.0 from the tiny negatives");
  // specials(): elements 64..127 are a block of zeros: 1/0 = ∞, 0·∞ = NaN, rank 0 (FP4 0000).
  assertEquals([...t.packed.slice(32, 64)].every((b) => b === 0), true);
  const nf = quantizeRaw(await read(c.input), "BF16", c.shape, { type: "nf4" });
  // NF4's rank 0 is -1.0: the zero block decodes to -1.0 · 0 = -0.0, as on the GPU.
  assert(nf.packed.slice(32, 64).every((b) => b === 0));
  assert(dequantize4bit(nf).slice(64, 128).every((v) => Object.is(v, -0)));
});

Deno.test("quant: the device layout keeps bitsandbytes' bytes; element g is word g>>3, nibble by byte order", async () => {
  const c = cases.find((x) => x.name === "nf4-dq-f16-rows")!;
  const t = quantizeRaw(await read(c.input), "F16", c.shape, { type: "nf4", doubleQuant: true });
  const h = quant4Host(t);
  const deq = dequantize4bit(t);
  const scales = new Float32Array(t.nested!.absmax.length * 256);
  // Decode as the kernel does, from the words alone.
  const codeWords = h.scales as Uint32Array;
  const map = dynamicMap();
  for (let g = 0; g < t.n; g++) {
    const w = h.packed[g >> 3];
    const shift = ((g & 6) << 2) + (g & 1 ? 0 : 4);
    const q = (w >>> shift) & 15;
    const b = g >> 6;
    const q8 = (codeWords[b >> 2] >>> ((b & 3) * 8)) & 255;
    const s = Math.fround(Math.fround(map[q8] * h.nestedAbsmax![b >> 8]) + h.offset!);
    scales[b] = s;
    const v = Math.fround(NF4_VALUES[q] * s);
    if (!Object.is(v, deq[g])) throw new Error(`element ${g}: ${v} against ${deq[g]}`);
  }
  // The bytes the device gets are the packed bytes, padded to a word.
  assertEquals(h.packed.byteLength, Math.ceil(t.packed.length / 4) * 4);
  const bytes = new Uint8Array(h.packed.buffer);
  assert(t.packed.every((b, i) => b === bytes[i]));
  assertEquals(
    quant4Bytes(t.n, { type: "nf4", doubleQuant: true }),
    h.packed.byteLength + h.scales.byteLength + h.nestedAbsmax!.byteLength,
  );
  const plain = quantizeRaw(await read(c.input), "F16", c.shape, { type: "nf4" });
  const hp = quant4Host(plain);
  assertEquals(quant4Bytes(t.n, { type: "nf4" }), hp.packed.byteLength + hp.scales.byteLength);
});

Deno.test("quant: the coder's cell table gives the comparison tree's code for every value", () => {
  // Values that probe the table: every pivot and 3 ulps either side, every cell edge and
  // its neighbours, ±1 and just past it, ±0, NaN, and normal draws; each scaled to a block
  // of 64 with a fixed absmax so that the coder sees x = v · (1 / absmax) as the tree does.
  const probes: number[] = [0, -0, 1, -1, NaN];
  const ulps = (x: number, k: number) => {
    const b = new Float32Array([x]), u = new Int32Array(b.buffer);
    const out: number[] = [];
    for (let d = -k; d <= k; d++) {
      u[0] = new Int32Array(new Float32Array([x]).buffer)[0] + d;
      out.push(b[0]);
    }
    return out;
  };
  for (const t of [...NF4_THRESHOLDS, ...FP4_THRESHOLDS]) {
    probes.push(...ulps(t, 3), ...ulps(-t, 3));
  }
  for (let c = 0; c <= 256; c++) probes.push(...ulps(-1 + c / 128, 2), ...ulps(c / 256, 2));
  probes.push(...ulps(1, 4), ...ulps(-1, 4));
  let s = 11;
  for (let i = 0; i < 20000; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u1 = s / 2 ** 32 + 1e-9;
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    probes.push(Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * s / 2 ** 32) / 3);
  }
  for (const absmax of [1, 0.0173, 1e-39 /* reciprocal overflows: the tree's own path */]) {
    const vals = new Float32Array(
      probes.map((p) => Number.isNaN(p) ? 0 : Math.max(-1, Math.min(1, p)) * absmax),
    );
    // Every block of 64 holds ±absmax, so each block's scale is `absmax` (rounded to f32).
    const n = Math.ceil(vals.length / 62) * 64 + 1; // an odd count: the padded last nibble too
    const v = new Float32Array(n);
    for (let b = 0, j = 0; b * 64 < n; b++) {
      const blk = v.subarray(b * 64, Math.min(n, b * 64 + 64));
      blk[0] = absmax;
      if (blk.length > 1) blk[1] = -absmax;
      for (let i = 2; i < blk.length && j < vals.length; i++) blk[i] = vals[j++];
    }
    for (const type of ["nf4", "fp4"] as const) {
      const t = quantize4bit(v, [n], { type });
      const inv = Math.fround(1 / Math.fround(absmax));
      for (let i = 0; i < n + 1; i++) {
        const x = Math.fround((i < n ? v[i] : 0) * inv);
        const got = i % 2 === 0 ? t.packed[i >> 1] >> 4 : t.packed[i >> 1] & 15;
        if (got !== quant4Code(x, type)) {
          throw new Error(`${type}, absmax ${absmax}: value ${v[i]} (x ${x}) coded ${got}`);
        }
      }
    }
  }
});
