/**
 * f32 safetensors files for what the trainer itself writes and reads back
 * (adapters, prefix, optimizer moments): 8-byte little-endian header length,
 * JSON header {name: {dtype, shape, data_offsets}, __metadata__}, raw data.
 * Tensors are written in the order given.
 */
import { writeFileAtomic } from "../atomic.ts";
import { UserError } from "../errors.ts";

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function encodeSafetensors(
  tensors: ReadonlyMap<string, Tensor>,
  metadata: Record<string, string> = { format: "pt" },
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const [name, t] of tensors) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) {
      throw new Error(`${name}: shape [${t.shape}] holds ${n} values, data has ${t.data.length}`);
    }
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + n * 4] };
    off += n * 4;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned (as the reference writer does).
  json += " ".repeat((8 - ((8 + new TextEncoder().encode(json).length) % 8)) % 8);
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let pos = 8 + hbytes.length;
  for (const t of tensors.values()) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  }
  return out;
}

export function writeSafetensorsF32(
  path: string,
  tensors: ReadonlyMap<string, Tensor>,
): Promise<void> {
  return writeFileAtomic(path, encodeSafetensors(tensors));
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Read every tensor of a safetensors file as f32 (F32, F16 and BF16 accepted). */
export async function readSafetensorsF32(path: string): Promise<Map<string, Tensor>> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    throw e;
  }
  const bad = (msg: string) => new UserError(`${path}: not a valid safetensors file: ${msg}`);
  if (bytes.length < 8) throw bad("shorter than its 8-byte header length");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hlen = Number(dv.getBigUint64(0, true));
  if (8 + hlen > bytes.length) throw bad("header runs past the end of the file");
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  } catch {
    throw bad("header is not JSON");
  }
  const base = 8 + hlen;
  const out = new Map<string, Tensor>();
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = info.data_offsets;
    if (!(a >= 0 && b >= a && base + b <= bytes.length)) throw bad(`${name}: data out of range`);
    const n = info.shape.reduce((x, y) => x * y, 1);
    const raw = bytes.slice(base + a, base + b);
    const data = new Float32Array(n);
    const rv = new DataView(raw.buffer);
    if (info.dtype === "F32" && raw.length === n * 4) {
      for (let i = 0; i < n; i++) data[i] = rv.getFloat32(i * 4, true);
    } else if (info.dtype === "F16" && raw.length === n * 2) {
      for (let i = 0; i < n; i++) data[i] = f16ToF32(rv.getUint16(i * 2, true));
    } else if (info.dtype === "BF16" && raw.length === n * 2) {
      const u = new Uint32Array(1);
      const f = new Float32Array(u.buffer);
      for (let i = 0; i < n; i++) {
        u[0] = rv.getUint16(i * 2, true) << 16;
        data[i] = f[0];
      }
    } else {
      throw bad(`${name}: dtype ${info.dtype} with ${raw.length} bytes for shape [${info.shape}]`);
    }
    out.set(name, { shape: info.shape, data });
  }
  return out;
}

interface Entry {
  file: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Lazy access to the tensors of a model dir (`model.safetensors`, or shards
 * named by `model.safetensors.index.json`): headers are read up front, each
 * tensor's bytes only when asked, so base weights are never all in memory.
 */
export class SafetensorsDir {
  private constructor(private entries: Map<string, Entry>) {}

  static async open(dir: string): Promise<SafetensorsDir> {
    const index = `${dir}/model.safetensors.index.json`;
    let files: string[];
    try {
      const idx = JSON.parse(await Deno.readTextFile(index));
      files = [...new Set(Object.values(idx.weight_map ?? {}) as string[])].map((f) =>
        `${dir}/${f}`
      );
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        throw new UserError(`${index}: ${(e as Error).message}`);
      }
      files = [`${dir}/model.safetensors`];
    }
    const entries = new Map<string, Entry>();
    for (const file of files) {
      let f: Deno.FsFile;
      try {
        f = await Deno.open(file);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) {
          let hasBin = false;
          try {
            await Deno.stat(`${dir}/pytorch_model.bin`);
            hasBin = true;
          } catch { /* none */ }
          throw new UserError(
            hasBin
              ? `${dir}: holds only PyTorch .bin weights; convert them to safetensors first (e.g. with transformers: model.save_pretrained(dir, safe_serialization=True))`
              : `${file}: no such file`,
          );
        }
        throw e;
      }
      try {
        const lenBuf = new Uint8Array(8);
        if ((await f.read(lenBuf)) !== 8) throw new UserError(`${file}: truncated header`);
        const hlen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
        const size = (await f.stat()).size;
        if (8 + hlen > size) throw new UserError(`${file}: header runs past the end of the file`);
        const hb = new Uint8Array(hlen);
        let off = 0;
        while (off < hlen) {
          const n = await f.read(hb.subarray(off));
          if (!n) throw new UserError(`${file}: truncated header`);
          off += n;
        }
        const header = JSON.parse(new TextDecoder().decode(hb));
        for (const [name, info] of Object.entries(header)) {
          if (name === "__metadata__") continue;
          const i = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
          const begin = 8 + hlen + i.data_offsets[0];
          const end = 8 + hlen + i.data_offsets[1];
          if (end > size) throw new UserError(`${file}: ${name} runs past the end of the file`);
          entries.set(name, { file, dtype: i.dtype, shape: i.shape, begin, end });
        }
      } finally {
        f.close();
      }
    }
    return new SafetensorsDir(entries);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }
  private get(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new UserError(`model weights: no tensor ${name}`);
    return e;
  }
  shape(name: string): number[] {
    return this.get(name).shape;
  }
  dtype(name: string): "F32" | "F16" | "BF16" {
    const d = this.get(name).dtype;
    if (d !== "F32" && d !== "F16" && d !== "BF16") {
      throw new UserError(`model weights: ${name} has dtype ${d}; F32, F16 and BF16 are supported`);
    }
    return d;
  }
  async raw(name: string): Promise<Uint8Array> {
    const e = this.get(name);
    const f = await Deno.open(e.file);
    try {
      await f.seek(e.begin, Deno.SeekMode.Start);
      const out = new Uint8Array(e.end - e.begin);
      let off = 0;
      while (off < out.length) {
        const n = await f.read(out.subarray(off));
        if (!n) throw new UserError(`${e.file}: truncated while reading ${name}`);
        off += n;
      }
      return out;
    } finally {
      f.close();
    }
  }
  async f32(name: string): Promise<Float32Array> {
    const dt = this.dtype(name);
    const raw = await this.raw(name);
    const n = this.shape(name).reduce((a, b) => a * b, 1);
    const dv = new DataView(raw.buffer);
    const out = new Float32Array(n);
    if (dt === "F32") { for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true); }
    else if (dt === "F16") {
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
    } else {
      const u = new Uint32Array(1);
      const fl = new Float32Array(u.buffer);
      for (let i = 0; i < n; i++) {
        u[0] = dv.getUint16(i * 2, true) << 16;
        out[i] = fl[0];
      }
    }
    return out;
  }
}
