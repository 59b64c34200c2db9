import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import {
  Checkpoint,
  f32ToF16Packed,
  fromF32,
  parseSize,
  SafetensorsFile,
  writeSafetensors,
  writeShardedSafetensors,
} from "../lib/safetensors/mod.ts";

const FIX = new URL("./fixtures/safetensors/", import.meta.url).pathname;

type Described = {
  metadata?: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[]; values: (number | string)[] }>;
};
const expected: Record<string, Described> = JSON.parse(
  await Deno.readTextFile(join(FIX, "expected.json")),
);
const roundtrip = JSON.parse(await Deno.readTextFile(join(FIX, "roundtrip.json")));

const TORCH_TO_ST: Record<string, string> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  int64: "I64",
};

function num(v: number | string): number {
  return typeof v === "number" ? v : v === "inf" ? Infinity : v === "-inf" ? -Infinity : NaN;
}

function sameValues(got: Float32Array, want: (number | string)[], what: string): void {
  assert.strictEqual(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    const w = num(want[i]);
    assert.ok(
      Object.is(got[i], Math.fround(w)) || (got[i] === 0 && w === 0),
      `${what}[${i}]: got ${got[i]}, want ${w}`,
    );
  }
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof UserError, `expected a UserError, got ${e}`);
    assert.match((e as Error).message, re);
    return;
  }
  assert.fail(`expected an error matching ${re}`);
}

async function sha256(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test("safetensors: files written by the reference library read back exactly (f32, f16, bf16)", async () => {
  for (const kind of ["f32", "f16", "bf16"]) {
    const f = await SafetensorsFile.open(join(FIX, `${kind}.safetensors`));
    const want = expected[kind];
    assert.deepStrictEqual(f.metadata, want.metadata);
    assert.deepStrictEqual(f.names().sort(), Object.keys(want.tensors).sort());
    for (const [name, t] of Object.entries(want.tensors)) {
      const info = f.info(name);
      assert.strictEqual(info.dtype, TORCH_TO_ST[t.dtype]);
      assert.deepStrictEqual(info.shape, t.shape);
      sameValues(await f.f32(name), t.values, `${kind} ${name}`);
    }
  }
});

Deno.test("safetensors: our f32 → f16/bf16 rounding is torch's, bit for bit", async () => {
  const f32 = await SafetensorsFile.open(join(FIX, "f32.safetensors"));
  for (const kind of ["F16", "BF16"] as const) {
    const other = await SafetensorsFile.open(join(FIX, `${kind.toLowerCase()}.safetensors`));
    for (const name of f32.names()) {
      const ours = fromF32(await f32.f32(name), kind);
      assert.deepStrictEqual(ours, await other.raw(name), `${kind} ${name}`);
    }
  }
  // Packed for the GPU: the same halves, two per u32, low half first.
  const edge = await f32.f32("edge");
  const packed = f32ToF16Packed(edge);
  const raw = await (await SafetensorsFile.open(join(FIX, "f16.safetensors"))).raw("edge");
  assert.deepStrictEqual(new Uint8Array(packed.buffer).subarray(0, raw.length), raw);
});

Deno.test("safetensors: non-float tensors are listed but reading them as f32 is a clear error", async () => {
  const f = await SafetensorsFile.open(join(FIX, "mixed.safetensors"));
  assert.deepStrictEqual(f.info("ids").shape, [2, 3]);
  assert.strictEqual(f.info("ids").dtype, "I64");
  sameValues(await f.f32("w"), expected.mixed.tensors.w.values, "w");
  await rejects(f.f32("ids"), /"ids" has dtype I64; only F32, F16 and BF16/);
  await rejects(f.raw("nope").then(() => {}), /no tensor named "nope"/);
});

Deno.test("safetensors: sharded checkpoints from the index", async () => {
  const ck = await Checkpoint.open(join(FIX, "sharded"));
  assert.ok(ck);
  const want = expected.sharded.tensors;
  assert.deepStrictEqual(ck.names().sort(), Object.keys(want).sort());
  for (const [name, t] of Object.entries(want)) {
    assert.deepStrictEqual(ck.info(name).shape, t.shape);
    sameValues(await ck.f32(name), t.values, name);
  }
  assert.strictEqual(await Checkpoint.open(FIX + "/nothing-here"), undefined);
});

Deno.test("safetensors: a file our writer makes is the one Python's safetensors read back", async () => {
  const py = roundtrip.python_read;
  assert.strictEqual(py.rounding_matches_torch, true);
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "ours.safetensors");
    const inputs = roundtrip.inputs.tensors as {
      name: string;
      dtype: "F32" | "F16" | "BF16";
      shape: number[];
      values: number[];
    }[];
    await writeSafetensors(
      path,
      inputs.map((t) => ({ ...t, data: new Float32Array(t.values) })),
      roundtrip.inputs.metadata,
    );
    const bytes = await Deno.readFile(path);
    assert.strictEqual(
      await sha256(bytes),
      py.sha256,
      "bytes differ from the file Python validated",
    );
    const f = await SafetensorsFile.open(path);
    assert.deepStrictEqual(f.names(), inputs.map((t) => t.name), "tensors in the order given");
    assert.deepStrictEqual(f.metadata, py.metadata);
    for (const [name, t] of Object.entries(py.tensors as Described["tensors"])) {
      assert.deepStrictEqual(f.info(name).shape, t.shape);
      sameValues(await f.f32(name), t.values, name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors: sharded writing splits at the shard size and reads back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ts = [0, 1, 2, 3, 4].map((i) => ({
      name: `t${i}`,
      dtype: (i % 2 ? "BF16" : "F32") as "F32" | "BF16",
      shape: [10, 10],
      data: () => new Float32Array(100).map((_, k) => i + k / 16),
    }));
    // 400-byte F32 and 200-byte BF16 tensors into 700-byte shards: [t0 t1] [t2 t3] [t4].
    const files = await writeShardedSafetensors(join(dir, "m"), ts, { shardSize: 700 });
    assert.deepStrictEqual(files, [
      "model-00001-of-00003.safetensors",
      "model-00002-of-00003.safetensors",
      "model-00003-of-00003.safetensors",
      "model.safetensors.index.json",
    ]);
    const index = JSON.parse(await Deno.readTextFile(join(dir, "m", files[3])));
    assert.strictEqual(index.metadata.total_size, 3 * 400 + 2 * 200);
    assert.strictEqual(index.weight_map.t3, files[1]);
    const ck = (await Checkpoint.open(join(dir, "m")))!;
    for (let i = 0; i < 5; i++) {
      const v = await ck.f32(`t${i}`);
      assert.strictEqual(v[99], i + 99 / 16); // exact in bf16 too
    }
    // Everything in one shard: a plain model.safetensors, no index.
    assert.deepStrictEqual(await writeShardedSafetensors(join(dir, "one"), ts), [
      "model.safetensors",
    ]);
    assert.deepStrictEqual(
      (await Checkpoint.open(join(dir, "one")))!.names(),
      ts.map((t) => t.name),
    );
    // A missing shard names the index and the file.
    await Deno.remove(join(dir, "m", files[1]));
    await rejects(
      Checkpoint.open(join(dir, "m")),
      /index\.json: weight_map: missing shard model-00002-of-00003/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.strictEqual(parseSize("2GB"), 2e9);
  assert.strictEqual(parseSize("10MiB"), 10 * 2 ** 20);
});

Deno.test("safetensors: broken files give clear errors", async () => {
  const dir = await Deno.makeTempDir();
  const good = await Deno.readFile(join(FIX, "f32.safetensors"));
  const headerLen = Number(new DataView(good.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(good.subarray(8, 8 + headerLen)));
  const withHeader = (h: unknown, data = good.subarray(8 + headerLen)) => {
    const json = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(8 + json.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(json, 8);
    out.set(data, 8 + json.length);
    return out;
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty", new Uint8Array(3), /truncated safetensors file \(3 bytes/],
    ["cut header", good.subarray(0, 20), /truncated safetensors file \(header of/],
    ["cut data", good.subarray(0, good.length - 7), /truncated safetensors file: tensor/],
    [
      "huge header",
      (() => {
        const b = good.slice();
        new DataView(b.buffer).setBigUint64(0, 1n << 40n, true);
        return b;
      })(),
      /not a safetensors file/,
    ],
    [
      "not json",
      withHeader("x").map((b, i) => (i === 8 ? 0x7b : b)),
      /bad safetensors header \(not UTF-8 JSON/,
    ],
    ["array", withHeader([1, 2]), /expected a JSON object/],
    [
      "unknown dtype",
      withHeader({ ...header, bias: { ...header.bias, dtype: "Q4" } }),
      /"bias": unknown dtype Q4/,
    ],
    [
      "bad shape",
      withHeader({ ...header, bias: { ...header.bias, shape: [-1] } }),
      /"bias": shape must be/,
    ],
    [
      "size mismatch",
      withHeader({ ...header, bias: { ...header.bias, shape: [8] } }),
      /hold 28 bytes but shape \[8\] of F32 needs 32/,
    ],
    [
      "overlap",
      withHeader({
        ...header,
        bias: {
          ...header.bias,
          data_offsets: header.edge.data_offsets.map((x: number) => x + 4).map((
            x: number,
            i: number,
          ) => i ? x - 12 : x),
        },
      }),
      /overlap/,
    ],
    [
      "bad metadata",
      withHeader({ ...header, __metadata__: { format: 1 } }),
      /"__metadata__": value of "format" must be a string/,
    ],
  ];
  try {
    for (const [what, bytes, re] of cases) {
      const p = join(dir, `${what}.safetensors`);
      await Deno.writeFile(p, bytes);
      await rejects(SafetensorsFile.open(p), re);
    }
    await rejects(SafetensorsFile.open(join(dir, "absent.safetensors")), /file not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
