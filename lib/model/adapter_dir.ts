/**
 * Adapter directories as they are found on disk, read into an AdapterSpec and
 * f32 tensors under the model's trainable names (lib/model/adapter.ts):
 *
 *  - PEFT LoRA: `adapter_config.json` (peft_type LORA) + `adapter_model.safetensors`,
 *    keys with or without the adapter name (`….lora_A.default.weight`);
 *  - P-Tuning v2 as this project's trainer writes it: `prefix_config.json` +
 *    `prefix_encoder.safetensors`;
 *  - P-Tuning v2 as PEFT writes it: `adapter_config.json` (peft_type
 *    PREFIX_TUNING) + `adapter_model.safetensors` holding `prompt_embeddings`;
 *  - P-Tuning v2 as ChatGLM's own code saves it: any `*.safetensors` holding
 *    `transformer.prefix_encoder.embedding.weight`, with `pre_seq_len` in a
 *    `config.json` beside it.
 *
 * And, for chat, the question "is this a model or an adapter, and where is
 * its base model".
 */
import { isAbsolute, join, resolve } from "node:path";
import { UserError } from "../errors.ts";
import { assertFiniteTensor } from "../finite.ts";
import { readSafetensorsF32 } from "../safetensors/read.ts";
import { checkWeightFiles, listBins } from "./weights.ts";
import {
  type AdapterSpec,
  LINEAR_PATH,
  LORA_TARGETS,
  type LoraTarget,
  PREFIX_EMBEDDING,
  PREFIX_TRANS,
} from "./adapter.ts";

export const PEFT_CONFIG = "adapter_config.json";
export const PEFT_WEIGHTS = "adapter_model.safetensors";
export const PREFIX_CONFIG = "prefix_config.json";
export const PREFIX_WEIGHTS = "prefix_encoder.safetensors";

export interface AdapterDir {
  dir: string;
  spec: Exclude<AdapterSpec, { kind: "full" } | { kind: "none" }>;
  /** Trainable tensors by the model's names (PEFT LoRA keys without `.default`; prefix_encoder names). */
  tensors: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
  /** `base_model_name_or_path` (or the trainer's equivalent), as written. */
  baseModel: string | null;
  /** The config file the spec and base model were read from. */
  configPath: string | null;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return false;
    throw e;
  }
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such file`);
    throw e;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new UserError(`${path}: expected a JSON object`);
  }
  return v as Record<string, unknown>;
}

function num(cfg: Record<string, unknown>, key: string, path: string, positive = true): number {
  const v = cfg[key];
  if (typeof v !== "number" || !Number.isFinite(v) || (positive && !(v > 0))) {
    throw new UserError(
      `${path}: ${key}: expected a ${positive ? "positive " : ""}number, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Base model path as written, or null. */
function baseOf(cfg: Record<string, unknown>): string | null {
  const b = cfg.base_model_name_or_path;
  return typeof b === "string" && b.length > 0 ? b : null;
}

/**
 * PEFT's target_modules: a list of module-name suffixes, or one string that is
 * either a name or a regular expression matched against full module paths.
 */
function loraTargets(v: unknown, path: string): LoraTarget[] {
  const known = LORA_TARGETS as readonly string[];
  const bad = (what: string) =>
    new UserError(
      `${path}: target_modules: ${what}; ChatGLM3 has ${known.join(", ")}`,
    );
  if (Array.isArray(v)) {
    const out: LoraTarget[] = [];
    for (const t of v) {
      if (typeof t !== "string") throw bad(`expected names, got ${JSON.stringify(t)}`);
      // PEFT matches a name against the end of the module path.
      const hit = LORA_TARGETS.filter((k) =>
        k === t || `${LINEAR_PATH[k]}` === t || LINEAR_PATH[k].endsWith("." + t)
      );
      if (hit.length === 0) throw bad(`"${t}" names no linear layer`);
      for (const h of hit) if (!out.includes(h)) out.push(h);
    }
    if (out.length === 0) throw bad("is empty");
    return LORA_TARGETS.filter((k) => out.includes(k));
  }
  if (typeof v === "string") {
    if (known.includes(v)) return [v as LoraTarget];
    let re: RegExp;
    try {
      re = new RegExp(`^(?:${v})$`);
    } catch {
      throw bad(`"${v}" is neither a module name nor a regular expression`);
    }
    const hit = LORA_TARGETS.filter((k) =>
      re.test(`transformer.encoder.layers.0.${LINEAR_PATH[k]}`) ||
      re.test(`base_model.model.transformer.encoder.layers.0.${LINEAR_PATH[k]}`)
    );
    if (hit.length === 0) throw bad(`the pattern "${v}" matches no linear layer`);
    return hit;
  }
  throw bad(`expected a list of names, got ${JSON.stringify(v)}`);
}

/** LoRA options PEFT knows but this model does not apply: refuse rather than compute something else. */
function rejectUnsupportedLora(cfg: Record<string, unknown>, path: string): void {
  const set = (k: string) => {
    const v = cfg[k];
    if (v === undefined || v === null || v === false) return false;
    if (typeof v === "object" && Object.keys(v as object).length === 0) return false;
    return !(Array.isArray(v) && v.length === 0);
  };
  if (cfg.bias !== undefined && cfg.bias !== "none") {
    throw new UserError(
      `${path}: bias is "${cfg.bias}"; only "none" (PEFT's default) is supported`,
    );
  }
  for (
    const k of [
      "use_dora",
      "fan_in_fan_out",
      "modules_to_save",
      "rank_pattern",
      "alpha_pattern",
      "layers_to_transform",
      "layer_replication",
      "lora_bias",
      "trainable_token_indices",
    ]
  ) {
    if (set(k)) {
      throw new UserError(
        `${path}: ${k} is ${JSON.stringify(cfg[k])}; this toolkit supports plain LoRA ` +
          `(${k} unset), as the ChatGLM3 finetune demo trains it`,
      );
    }
  }
}

function stripAdapterName(key: string): string {
  return key.replace(/\.default\.weight$/, ".weight");
}

async function readLora(dir: string, cfgPath: string, cfg: Record<string, unknown>) {
  rejectUnsupportedLora(cfg, cfgPath);
  const r = num(cfg, "r", cfgPath);
  if (!Number.isInteger(r)) throw new UserError(`${cfgPath}: r: expected an integer, got ${r}`);
  const alpha = cfg.lora_alpha === undefined ? 8 : num(cfg, "lora_alpha", cfgPath);
  const useRslora = cfg.use_rslora === true;
  const dropout = cfg.lora_dropout === undefined ? 0 : num(cfg, "lora_dropout", cfgPath, false);
  const targetModules = loraTargets(cfg.target_modules ?? ["query_key_value"], cfgPath);
  const wpath = join(dir, PEFT_WEIGHTS);
  if (!(await exists(wpath))) {
    throw new UserError(
      (await exists(join(dir, "adapter_model.bin")))
        ? `${dir}: holds adapter_model.bin only; convert it to ${PEFT_WEIGHTS} first ` +
          `(python -c "import torch, safetensors.torch as s; s.save_file(torch.load('adapter_model.bin'), '${PEFT_WEIGHTS}')")`
        : `${wpath}: no such file (a PEFT LoRA adapter dir holds ${PEFT_CONFIG} and ${PEFT_WEIGHTS})`,
    );
  }
  const tensors = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const [key, t] of await readSafetensorsF32(wpath)) {
    const name = stripAdapterName(key);
    const m = name.match(/\.lora_([AB])\.weight$/);
    if (!m) {
      throw new UserError(
        `${wpath}: unexpected tensor "${key}" (a LoRA adapter holds only lora_A / lora_B weights)`,
      );
    }
    const rows = t.shape[0], cols = t.shape[1];
    if (t.shape.length !== 2 || (m[1] === "A" ? rows !== r : cols !== r)) {
      throw new UserError(
        `${wpath}: ${key} has shape [${t.shape}], which does not fit r = ${r} from ${cfgPath}`,
      );
    }
    tensors.set(name, t.data);
    shapes.set(name, t.shape);
  }
  if (tensors.size === 0) throw new UserError(`${wpath}: holds no LoRA tensors`);
  const spec: AdapterSpec = {
    kind: "lora",
    r,
    alpha,
    dropout,
    targetModules,
    ...(useRslora ? { useRslora } : {}),
  };
  return { spec, tensors, shapes };
}

function prefixSpec(
  cfg: Record<string, unknown>,
  path: string,
  tensors: Map<string, Float32Array>,
  shapes: Map<string, number[]>,
): Extract<AdapterSpec, { kind: "prefix" }> {
  const emb = shapes.get(PREFIX_EMBEDDING)!;
  const declared = cfg.pre_seq_len ?? cfg.num_virtual_tokens;
  if (declared !== undefined && declared !== null && declared !== emb[0]) {
    throw new UserError(
      `${path}: pre_seq_len is ${declared}, but ${PREFIX_EMBEDDING} has ${emb[0]} rows`,
    );
  }
  const hasTrans = PREFIX_TRANS.every((n) => tensors.has(n));
  if (cfg.prefix_projection === true && !hasTrans) {
    throw new UserError(
      `${path}: prefix_projection is true but the weights lack ${
        PREFIX_TRANS[0]
      } and the rest of the projection`,
    );
  }
  return {
    kind: "prefix",
    preSeqLen: emb[0],
    prefixProjection: hasTrans,
    ...(hasTrans ? { prefixHiddenSize: shapes.get(PREFIX_TRANS[0])![0] } : {}),
  };
}

async function readPrefixFile(path: string) {
  const tensors = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const [key, t] of await readSafetensorsF32(path)) {
    // ChatGLM saves the whole model's state; a prefix checkpoint keeps only the encoder.
    if (!key.startsWith("transformer.prefix_encoder.")) continue;
    tensors.set(key, t.data);
    shapes.set(key, t.shape);
  }
  return { tensors, shapes };
}

async function readPeftPrefix(dir: string, cfgPath: string, cfg: Record<string, unknown>) {
  const wpath = join(dir, PEFT_WEIGHTS);
  if (!(await exists(wpath))) throw new UserError(`${wpath}: no such file`);
  const file = await readSafetensorsF32(wpath);
  const t = file.get("prompt_embeddings") ?? file.get("prompt_embeddings.default");
  if (!t) {
    throw new UserError(`${wpath}: no prompt_embeddings tensor (PEFT's prefix-tuning weights)`);
  }
  if (t.shape.length !== 2) {
    throw new UserError(`${wpath}: prompt_embeddings has shape [${t.shape}], expected 2-D`);
  }
  // PEFT saves the encoder's output (projected, when projecting): the key/value table itself.
  const tensors = new Map([[PREFIX_EMBEDDING, t.data]]);
  const shapes = new Map([[PREFIX_EMBEDDING, t.shape]]);
  const spec = prefixSpec({ ...cfg, prefix_projection: false }, cfgPath, tensors, shapes);
  return { spec, tensors, shapes };
}

/**
 * Read an adapter dir (LoRA or P-Tuning v2; see the module comment for the
 * layouts). `fallback`, a LoRA spec, stands in for a missing
 * adapter_config.json: a dir holding only adapter_model.safetensors is then
 * read with the fallback's r, alpha, dropout and target modules (the trainer's
 * --init-adapter takes them from the training config).
 */
export async function readAdapterDir(dir: string, fallback?: AdapterSpec): Promise<AdapterDir> {
  const a = await readAdapterFiles(dir, fallback);
  // A diverged run's NaN adapter is refused here, by tensor, for evaluate, chat,
  // merge-adapter and --init-adapter alike (it would only ever give NaN logits).
  for (const [name, data] of a.tensors) assertFiniteTensor(dir, name, data);
  return a;
}

async function readAdapterFiles(dir: string, fallback?: AdapterSpec): Promise<AdapterDir> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${dir}: no such adapter directory`);
    throw e;
  }
  if (!st.isDirectory) throw new UserError(`${dir}: expected an adapter directory`);

  const peftPath = join(dir, PEFT_CONFIG);
  if (await exists(peftPath)) {
    const cfg = await readJson(peftPath);
    const type = cfg.peft_type;
    if (type === "LORA") {
      // Both kinds in one dir: which one was meant cannot be told.
      for (const f of [PREFIX_CONFIG, PREFIX_WEIGHTS]) {
        if (await exists(join(dir, f))) {
          throw new UserError(
            `${dir}: holds a LoRA adapter (${PEFT_CONFIG}) and a P-Tuning v2 prefix (${f}); ` +
              `keep one kind per directory`,
          );
        }
      }
      return {
        dir,
        ...(await readLora(dir, peftPath, cfg)),
        baseModel: baseOf(cfg),
        configPath: peftPath,
      };
    }
    if (type === "PREFIX_TUNING" || type === "P_TUNING_V2") {
      return {
        dir,
        ...(await readPeftPrefix(dir, peftPath, cfg)),
        baseModel: baseOf(cfg),
        configPath: peftPath,
      };
    }
    throw new UserError(
      `${peftPath}: peft_type is ${
        JSON.stringify(type)
      }; LORA and PREFIX_TUNING adapters are supported`,
    );
  }

  if (fallback?.kind === "lora" && !(await exists(join(dir, PREFIX_WEIGHTS)))) {
    const cfg = {
      r: fallback.r,
      lora_alpha: fallback.alpha,
      lora_dropout: fallback.dropout,
      target_modules: fallback.targetModules,
      use_rslora: fallback.useRslora ?? false,
    };
    const from = `${dir} (no ${PEFT_CONFIG}: the training config's LoRA settings)`;
    return { dir, ...(await readLora(dir, from, cfg)), baseModel: null, configPath: null };
  }

  // P-Tuning v2: our own files, or any safetensors with the prefix encoder.
  const files: string[] = [];
  if (await exists(join(dir, PREFIX_WEIGHTS))) files.push(join(dir, PREFIX_WEIGHTS));
  else {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.endsWith(".safetensors")) files.push(join(dir, e.name));
    }
    files.sort();
  }
  const tensors = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  for (const f of files) {
    const got = await readPrefixFile(f);
    for (const [k, v] of got.tensors) tensors.set(k, v);
    for (const [k, v] of got.shapes) shapes.set(k, v);
  }
  if (!tensors.has(PREFIX_EMBEDDING)) {
    throw new UserError(
      `${dir}: not an adapter directory: expected ${PEFT_CONFIG} + ${PEFT_WEIGHTS} (PEFT LoRA), ` +
        `${PREFIX_CONFIG} + ${PREFIX_WEIGHTS} (P-Tuning v2), or a .safetensors file holding ${PREFIX_EMBEDDING}`,
    );
  }
  let cfg: Record<string, unknown> = {};
  let configPath: string | null = null;
  for (const name of [PREFIX_CONFIG, "config.json"]) {
    if (await exists(join(dir, name))) {
      configPath = join(dir, name);
      cfg = await readJson(configPath);
      break;
    }
  }
  const spec = prefixSpec(cfg, configPath ?? dir, tensors, shapes);
  // A ChatGLM config.json beside the prefix names no base model; the trainer's prefix_config does.
  return { dir, spec, tensors, shapes, baseModel: baseOf(cfg), configPath };
}

/**
 * Whether `dir` holds model weights (config.json + safetensors, or PyTorch
 * .bin files — one, an index, or shards `pytorch_model-00001-of-00007.bin`
 * as chatglm3-6b ships them) rather than an adapter.
 */
export async function isModelDir(dir: string): Promise<boolean> {
  if (!(await exists(join(dir, "config.json")))) return false;
  for (const f of ["model.safetensors", "model.safetensors.index.json"]) {
    if (await exists(join(dir, f))) return true;
  }
  return (await listBins(dir).catch(() => [])).length > 0;
}

/** Whether `dir` looks like an adapter dir (without reading its tensors). */
export async function isAdapterDir(dir: string): Promise<boolean> {
  if (await exists(join(dir, PEFT_CONFIG))) return true;
  if (await exists(join(dir, PREFIX_WEIGHTS))) return true;
  return !(await isModelDir(dir)) && (await exists(join(dir, PREFIX_CONFIG)));
}

export interface ResolvedModel {
  modelDir: string;
  /** The adapter to apply on top, if `dir` was an adapter dir. */
  adapter: AdapterDir | null;
}

/**
 * What chat was pointed at: a base model dir, or an adapter dir whose config
 * names its base model. `overrideBase` (`--model`) replaces the recorded base.
 * A relative base path is tried from the working directory (as transformers
 * does) and then from the adapter dir.
 */
export async function resolveModelOrAdapter(
  dir: string,
  overrideBase?: string,
): Promise<ResolvedModel> {
  if (!(await exists(dir))) throw new UserError(`${dir}: no such model or adapter directory`);
  if (!(await isAdapterDir(dir))) {
    if (await isModelDir(dir)) {
      if (overrideBase) {
        throw new UserError(
          `${dir} is a model directory; --model applies to an adapter directory only`,
        );
      }
      // PyTorch weights only: the conversion hint now, not after the GPU is acquired.
      await checkWeightFiles(dir);
      return { modelDir: dir, adapter: null };
    }
    throw new UserError(
      `${dir}: neither a model directory (config.json + model.safetensors) nor an adapter directory ` +
        `(${PEFT_CONFIG} + ${PEFT_WEIGHTS}, or ${PREFIX_CONFIG} + ${PREFIX_WEIGHTS})`,
    );
  }
  const adapter = await readAdapterDir(dir);
  if (overrideBase) {
    if (!(await isModelDir(overrideBase))) {
      throw new UserError(
        `--model ${overrideBase}: not a model directory (expected config.json and model.safetensors)`,
      );
    }
    await checkWeightFiles(overrideBase);
    return { modelDir: overrideBase, adapter };
  }
  const field =
    adapter.configPath?.endsWith(PEFT_CONFIG) || adapter.configPath?.endsWith(PREFIX_CONFIG)
      ? "base_model_name_or_path"
      : null;
  const where = adapter.configPath ?? dir;
  if (!adapter.baseModel) {
    throw new UserError(
      `${dir}: the adapter does not name its base model` +
        (field ? ` (${field} in ${where} is empty)` : ` (no ${PREFIX_CONFIG})`) +
        `; pass --model BASE_MODEL_DIR`,
    );
  }
  const candidates = isAbsolute(adapter.baseModel)
    ? [adapter.baseModel]
    : [adapter.baseModel, resolve(dir, adapter.baseModel)];
  for (const c of candidates) {
    if (await isModelDir(c)) {
      await checkWeightFiles(c);
      return { modelDir: c, adapter };
    }
  }
  throw new UserError(
    `${where}: base_model_name_or_path is "${adapter.baseModel}", which is not a model directory ` +
      `here (no config.json with model.safetensors there). Edit base_model_name_or_path in ${where} ` +
      `to point at the base model, or pass --model BASE_MODEL_DIR`,
  );
}

/**
 * The adapter's tensors checked against what a model built with its spec
 * expects (every trainable tensor present, with its shape), so an adapter
 * trained on another model, or with missing layers, is caught by name.
 */
export function adapterTensorsFor(
  params: readonly { name: string; shape: number[] }[],
  a: AdapterDir,
): Map<string, Float32Array> {
  const where = a.configPath ?? a.dir;
  for (const p of params) {
    const shape = a.shapes.get(p.name);
    if (!shape) {
      throw new UserError(
        `${a.dir}: the adapter has no ${p.name}; was it trained on a model with another layout?`,
      );
    }
    if (shape.join(",") !== p.shape.join(",")) {
      throw new UserError(
        `${a.dir}: ${p.name} has shape [${shape}], this model expects [${p.shape}] ` +
          `(the adapter (${where}) was trained on a model of another size)`,
      );
    }
  }
  const known = new Set(params.map((p) => p.name));
  const extra = [...a.tensors.keys()].filter((k) => !known.has(k));
  if (extra.length) {
    throw new UserError(
      `${a.dir}: ${extra.length} tensor(s) this model does not have, e.g. ${extra[0]} ` +
        `(the adapter was trained on a model with more layers or other target modules)`,
    );
  }
  return a.tensors;
}
