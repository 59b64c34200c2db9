/**
 * Writing safetensors files, single or sharded, atomically. Tensors are
 * written in the order given (the header lists them in that order too, with
 * contiguous data offsets), each converted to its target dtype when it is
 * written, so a large model can be streamed tensor by tensor.
 */
import { join } from "node:path";
import { AtomicFile, writeJsonAtomic } from "../atomic.ts";
import { type DType, DTYPE_BYTES, fromF32 } from "./dtype.ts";
import { type F32Tensor, numel } from "./read.ts";

export type TensorData = Float32Array | Uint8Array;

export interface TensorToWrite {
  name: string;
  /** Stored dtype. */
  dtype: DType;
  shape: number[];
  /**
   * f32 values (converted to `dtype`, rounding to nearest even), or raw
   * little-endian bytes already in `dtype`; or a function producing either
   * when the tensor's turn comes (to stream large models).
   */
  data: TensorData | (() => Promise<TensorData> | TensorData);
}

/** `{"format": "pt"}` is what torch-based loaders (transformers, PEFT) expect. */
export const PT_METADATA: Record<string, string> = { format: "pt" };

function byteLength(t: TensorToWrite): number {
  return numel(t.shape) * DTYPE_BYTES[t.dtype];
}

/** The header bytes (length prefix included), padded with spaces to 8 bytes as the reference writer does. */
function headerBytes(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === "__metadata__" || seen.has(t.name)) {
      throw new Error(`safetensors: duplicate or reserved tensor name "${t.name}"`);
    }
    seen.add(t.name);
    const n = byteLength(t);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

async function tensorBytes(t: TensorToWrite): Promise<Uint8Array> {
  const d = typeof t.data === "function" ? await t.data() : t.data;
  const want = byteLength(t);
  if (d instanceof Float32Array) {
    if (d.length !== numel(t.shape)) {
      throw new Error(
        `safetensors: tensor "${t.name}" has ${d.length} values but shape [${t.shape}] needs ${
          numel(t.shape)
        }`,
      );
    }
    return fromF32(d, t.dtype);
  }
  if (d.byteLength !== want) {
    throw new Error(
      `safetensors: tensor "${t.name}" has ${d.byteLength} bytes but shape [${t.shape}] of ${t.dtype} needs ${want}`,
    );
  }
  return d;
}

/** Write one safetensors file atomically. */
export async function writeSafetensors(
  path: string,
  tensors: TensorToWrite[],
  metadata: Record<string, string> | undefined = PT_METADATA,
): Promise<void> {
  const f = await AtomicFile.create(path);
  try {
    await f.write(headerBytes(tensors, metadata));
    for (const t of tensors) await f.write(await tensorBytes(t));
    await f.commit();
  } catch (e) {
    await f.abort();
    throw e;
  }
}

/** Write f32 tensors by name, as F32, atomically, in the map's order. */
export function writeSafetensorsF32(
  path: string,
  tensors: ReadonlyMap<string, F32Tensor>,
): Promise<void> {
  return writeSafetensors(
    path,
    [...tensors].map(([name, t]) => ({
      name,
      dtype: "F32" as const,
      shape: t.shape,
      data: t.data,
    })),
  );
}

export const INDEX_NAME = "model.safetensors.index.json";
export const SINGLE_NAME = "model.safetensors";

/** Parse "2GB", "500MB", "10KiB", "123" (bytes) as transformers' max_shard_size does. */
export function parseSize(s: string | number): number {
  if (typeof s === "number") return s;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$/i.exec(s);
  if (!m) throw new Error(`cannot read size "${s}" (expected e.g. 2GB, 500MB, 10GiB)`);
  const unit = (m[2] ?? "B").toUpperCase();
  const mult: Record<string, number> = {
    B: 1,
    KB: 1e3,
    MB: 1e6,
    GB: 1e9,
    TB: 1e12,
    KIB: 2 ** 10,
    MIB: 2 ** 20,
    GIB: 2 ** 30,
    TIB: 2 ** 40,
  };
  return Math.floor(Number(m[1]) * mult[unit]);
}

/**
 * Write `tensors` into `dir` as transformers does: `model.safetensors` when
 * everything fits in one shard of `shardSize` bytes, else
 * `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`
 * (`metadata.total_size`, `weight_map`). A tensor larger than a shard gets a
 * shard of its own. Returns the file names written.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: TensorToWrite[],
  opts: { shardSize?: number | string; metadata?: Record<string, string>; prefix?: string } = {},
): Promise<string[]> {
  const shardSize = parseSize(opts.shardSize ?? "5GB");
  const prefix = opts.prefix ?? "model";
  const shards: TensorToWrite[][] = [];
  let cur: TensorToWrite[] = [];
  let curBytes = 0;
  for (const t of tensors) {
    const n = byteLength(t);
    if (cur.length && curBytes + n > shardSize) {
      shards.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(t);
    curBytes += n;
  }
  if (cur.length || !shards.length) shards.push(cur);
  const metadata = opts.metadata ?? PT_METADATA;
  if (shards.length === 1) {
    const name = `${prefix}.safetensors`;
    await writeSafetensors(join(dir, name), shards[0], metadata);
    return [name];
  }
  const pad = (i: number) => String(i).padStart(5, "0");
  const names = shards.map((_, i) =>
    `${prefix}-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`
  );
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < shards.length; i++) {
    await writeSafetensors(join(dir, names[i]), shards[i], metadata);
    for (const t of shards[i]) {
      weightMap[t.name] = names[i];
      total += byteLength(t);
    }
  }
  const indexName = `${prefix}.safetensors.index.json`;
  await writeJsonAtomic(join(dir, indexName), {
    metadata: { total_size: total },
    weight_map: weightMap,
  });
  return [...names, indexName];
}
