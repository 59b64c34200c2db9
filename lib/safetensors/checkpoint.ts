/**
 * A checkpoint directory as transformers lays it out: a single
 * `model.safetensors`, or shards listed by `model.safetensors.index.json`
 * (`weight_map`: tensor name → shard file). Tensors are read lazily from
 * whichever shard holds them.
 */
import { join } from "node:path";
import { located, UserError } from "../errors.ts";
import { SafetensorsFile, type TensorInfo } from "./read.ts";

export class Checkpoint {
  private constructor(
    readonly dir: string,
    /** The file a user would name in a message: the index, or the single file. */
    readonly source: string,
    private readonly where: Map<string, SafetensorsFile>,
    readonly files: SafetensorsFile[],
  ) {}

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  raw(name: string): Promise<Uint8Array> {
    return this.file(name).raw(name);
  }

  f32(name: string): Promise<Float32Array> {
    return this.file(name).f32(name);
  }

  /** `__metadata__` of the first file. */
  get metadata(): Record<string, string> | undefined {
    return this.files[0]?.metadata;
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new UserError(`${this.source}: no tensor named "${name}"`);
    return f;
  }

  /**
   * Open `dir`'s `<prefix>.safetensors.index.json` if present, else
   * `<prefix>.safetensors`; undefined when neither exists.
   */
  static async open(dir: string, prefix = "model"): Promise<Checkpoint | undefined> {
    const indexPath = join(dir, `${prefix}.safetensors.index.json`);
    const singlePath = join(dir, `${prefix}.safetensors`);
    if (await exists(indexPath)) return await openIndex(dir, indexPath);
    if (await exists(singlePath)) {
      const f = await SafetensorsFile.open(singlePath);
      return new Checkpoint(dir, singlePath, new Map(f.names().map((n) => [n, f])), [f]);
    }
    return undefined;
  }

  /** Internal constructor for the index reader. */
  static of(
    dir: string,
    source: string,
    where: Map<string, SafetensorsFile>,
    files: SafetensorsFile[],
  ): Checkpoint {
    return new Checkpoint(dir, source, where, files);
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    return (await Deno.stat(p)).isFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

async function openIndex(dir: string, indexPath: string): Promise<Checkpoint> {
  let index: unknown;
  try {
    index = JSON.parse(await Deno.readTextFile(indexPath));
  } catch (e) {
    throw new UserError(
      located(indexPath, undefined, undefined, `not valid JSON: ${(e as Error).message}`),
    );
  }
  const wm = (index as { weight_map?: unknown })?.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm)) {
    throw new UserError(located(indexPath, undefined, "weight_map", "missing or not an object"));
  }
  const shardNames = new Set<string>();
  for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\")) {
      throw new UserError(
        located(
          indexPath,
          undefined,
          `weight_map.${name}`,
          "must be a shard file name in the same directory",
        ),
      );
    }
    shardNames.add(shard);
  }
  const shards = new Map<string, SafetensorsFile>();
  for (const s of shardNames) {
    const p = join(dir, s);
    if (!(await exists(p))) {
      throw new UserError(
        located(indexPath, undefined, "weight_map", `missing shard ${s} (expected at ${p})`),
      );
    }
    shards.set(s, await SafetensorsFile.open(p));
  }
  const where = new Map<string, SafetensorsFile>();
  for (const [name, shard] of Object.entries(wm as Record<string, string>)) {
    const f = shards.get(shard)!;
    if (!f.has(name)) {
      throw new UserError(
        located(
          indexPath,
          undefined,
          `weight_map.${name}`,
          `shard ${shard} holds no tensor of that name`,
        ),
      );
    }
    where.set(name, f);
  }
  return Checkpoint.of(dir, indexPath, where, [...shards.values()]);
}
