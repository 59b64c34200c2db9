/**
 * The trainer's view of safetensors files (lib/safetensors does the format):
 * f32 tensors by name, written atomically in the order given, read back whole
 * (adapters, prefixes and optimizer moments are small next to the base model).
 */
import { SafetensorsFile } from "../safetensors/read.ts";
import { writeSafetensors } from "../safetensors/write.ts";

export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function writeSafetensorsF32(
  path: string,
  tensors: ReadonlyMap<string, Tensor>,
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

/** Every tensor of a file as f32 (F32, F16 and BF16 accepted). */
export async function readSafetensorsF32(path: string): Promise<Map<string, Tensor>> {
  const f = await SafetensorsFile.open(path);
  const out = new Map<string, Tensor>();
  for (const name of f.names()) {
    out.set(name, { shape: f.info(name).shape, data: await f.f32(name) });
  }
  return out;
}
