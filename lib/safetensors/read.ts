/**
 * Reading safetensors files: an 8-byte little-endian header length, a JSON
 * header mapping tensor names to {dtype, shape, data_offsets} (offsets relative
 * to the end of the header) plus an optional `__metadata__` of strings, then
 * the raw little-endian data.
 *
 * Only the header is read when a file is opened; each tensor's bytes are read
 * with a seek when asked for, so a 12 GB checkpoint can be loaded tensor by
 * tensor without holding the file (let alone two copies of it) in memory.
 */
import { UserError } from "../errors.ts";
import { type DType, isDType, toF32 } from "./dtype.ts";

/** Bytes per element of every dtype the format defines; F32/F16/BF16 can be decoded. */
export const SAFETENSORS_DTYPE_BYTES: Record<string, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/** The safetensors library refuses headers above this size; so do we. */
const MAX_HEADER = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    readonly metadata: Record<string, string> | undefined,
    private readonly infos: Map<string, TensorInfo>,
  ) {}

  /** Open `path` and validate its header (no tensor data is read). */
  static async open(path: string): Promise<SafetensorsFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: file not found`);
      throw e;
    }
    try {
      const size = (await file.stat()).size;
      if (size < 8) {
        throw new UserError(
          `${path}: truncated safetensors file (${size} bytes, no header length)`,
        );
      }
      const lenBytes = await readAt(file, 0, 8, path);
      const headerLen = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
      if (headerLen > MAX_HEADER) {
        throw new UserError(
          `${path}: not a safetensors file (header length ${headerLen} exceeds ${MAX_HEADER})`,
        );
      }
      if (8 + headerLen > size) {
        throw new UserError(
          `${path}: truncated safetensors file (header of ${headerLen} bytes, file of ${size})`,
        );
      }
      const headerBytes = await readAt(file, 8, headerLen, path);
      return parseHeader(path, headerBytes, size);
    } finally {
      file.close();
    }
  }

  /** Validate a header in memory (`fileSize` = total bytes of the file). */
  static fromHeader(path: string, headerBytes: Uint8Array, fileSize: number): SafetensorsFile {
    return parseHeader(path, headerBytes, fileSize);
  }

  /** Build from validated parts (used by the header parser). */
  static of(
    path: string,
    metadata: Record<string, string> | undefined,
    infos: Map<string, TensorInfo>,
  ): SafetensorsFile {
    return new SafetensorsFile(path, metadata, infos);
  }

  /** Tensor names in file order (by data offset). */
  names(): string[] {
    return [...this.infos.keys()];
  }

  has(name: string): boolean {
    return this.infos.has(name);
  }

  info(name: string): TensorInfo {
    const i = this.infos.get(name);
    if (!i) throw new UserError(`${this.path}: no tensor named "${name}"`);
    return i;
  }

  /** The tensor's raw little-endian bytes, read from disk now. */
  async raw(name: string): Promise<Uint8Array> {
    const i = this.info(name);
    const file = await Deno.open(this.path, { read: true });
    try {
      return await readAt(file, i.begin, i.end - i.begin, this.path);
    } finally {
      file.close();
    }
  }

  /** The tensor decoded to f32 (F32, F16, BF16). */
  async f32(name: string): Promise<Float32Array> {
    const i = this.info(name);
    return toF32(await this.raw(name), decodable(this.path, i));
  }
}

/** A tensor decoded to f32, with its shape. */
export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

/**
 * Every tensor of a file as f32 (F32, F16 and BF16 accepted), in file order.
 * For small files only (adapters, prefixes, optimizer moments): a base model
 * is read tensor by tensor through `SafetensorsFile` or `Checkpoint` instead.
 */
export async function readSafetensorsF32(path: string): Promise<Map<string, F32Tensor>> {
  const f = await SafetensorsFile.open(path);
  const out = new Map<string, F32Tensor>();
  for (const name of f.names()) {
    out.set(name, { shape: f.info(name).shape, data: await f.f32(name) });
  }
  return out;
}

/** The tensor's dtype if we can decode it, else a clear error. */
export function decodable(path: string, i: TensorInfo): DType {
  if (!isDType(i.dtype)) {
    throw new UserError(
      `${path}: tensor "${i.name}" has dtype ${i.dtype}; only F32, F16 and BF16 tensors can be used`,
    );
  }
  return i.dtype;
}

async function readAt(
  file: Deno.FsFile,
  offset: number,
  length: number,
  path: string,
): Promise<Uint8Array> {
  await file.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  let got = 0;
  while (got < length) {
    const n = await file.read(out.subarray(got));
    if (n === null) {
      throw new UserError(
        `${path}: truncated safetensors file (wanted bytes ${offset}..${
          offset + length
        }, file ends at ${offset + got})`,
      );
    }
    got += n;
  }
  return out;
}

function parseHeader(path: string, bytes: Uint8Array, fileSize: number): SafetensorsFile {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new UserError(
      `${path}: bad safetensors header (not UTF-8 JSON: ${(e as Error).message})`,
    );
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new UserError(`${path}: bad safetensors header (expected a JSON object)`);
  }
  const dataStart = 8 + bytes.byteLength;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | undefined;
  const infos: TensorInfo[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    const bad = (msg: string): never => {
      throw new UserError(`${path}: bad safetensors header: "${name}": ${msg}`);
    };
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) bad("must be an object");
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== "string") bad(`value of "${k}" must be a string`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) bad("must be an object");
    const t = v as Record<string, unknown>;
    if (typeof t.dtype !== "string") bad("dtype must be a string");
    const dtype = t.dtype as string;
    const elem = SAFETENSORS_DTYPE_BYTES[dtype];
    if (elem === undefined) {
      bad(`unknown dtype ${dtype} (known: ${Object.keys(SAFETENSORS_DTYPE_BYTES).join(", ")})`);
    }
    const shape = t.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      bad("shape must be an array of non-negative integers");
    }
    const off = t.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 ||
      !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[1] < off[0]
    ) {
      bad("data_offsets must be [begin, end] with 0 <= begin <= end");
    }
    const [b, e] = off as [number, number];
    const want = numel(shape as number[]) * elem;
    if (e - b !== want) {
      bad(
        `data_offsets [${b}, ${e}] hold ${
          e - b
        } bytes but shape [${shape}] of ${dtype} needs ${want}`,
      );
    }
    if (e > dataSize) {
      throw new UserError(
        `${path}: truncated safetensors file: tensor "${name}" ends at data byte ${e} but the file holds ${dataSize} data bytes`,
      );
    }
    infos.push({
      name,
      dtype,
      shape: shape as number[],
      begin: dataStart + b,
      end: dataStart + e,
    });
  }
  infos.sort((x, y) => x.begin - y.begin || x.end - y.end);
  for (let i = 1; i < infos.length; i++) {
    const p = infos[i - 1], q = infos[i];
    if (q.begin < p.end && q.end > q.begin && p.end > p.begin) {
      throw new UserError(
        `${path}: bad safetensors header: tensors "${p.name}" and "${q.name}" overlap`,
      );
    }
  }
  return SafetensorsFile.of(path, metadata, new Map(infos.map((i) => [i.name, i])));
}
