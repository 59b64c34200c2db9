/**
 * config.json of a ChatGLM (chatglm3) model directory: the fields of
 * transformers' ChatGLMConfig (THUDM's configuration_chatglm.py), checked and
 * with that class's defaults for the optional ones, plus the shapes derived
 * from them.
 *
 * The architecture dimensions are required (a config without them is not a
 * chatglm checkpoint's). Options that change the math away from chatglm3's
 * (LayerNorm instead of RMSNorm, biases on every linear, quantized weights, a
 * residual taken after the norm, ...) are reported as unsupported rather than
 * silently computed the chatglm3 way.
 */
import { join } from "node:path";
import { located, UserError } from "../errors.ts";

export interface GlmConfig {
  model_type?: string;
  num_layers: number;
  hidden_size: number;
  ffn_hidden_size: number;
  kv_channels: number;
  num_attention_heads: number;
  multi_query_attention: boolean;
  multi_query_group_num: number;
  padded_vocab_size: number;
  layernorm_epsilon: number;
  rmsnorm: boolean;
  add_qkv_bias: boolean;
  add_bias_linear: boolean;
  post_layer_norm: boolean;
  apply_residual_connection_post_layernorm: boolean;
  seq_length: number;
  /** RoPE base multiplier: θ base = 10000·rope_ratio (chatglm3-6b-32k uses 50). */
  rope_ratio: number;
  original_rope: boolean;
  /** P-Tuning v2 prefix length, or null. */
  pre_seq_len: number | null;
  prefix_projection: boolean;
  torch_dtype: string;
  hidden_dropout: number;
  attention_dropout: number;
  quantization_bit: number;
  tie_word_embeddings: boolean;
  eos_token_id?: number | number[];
  pad_token_id?: number;
  /** Every field of the file, unknown ones included (written back unchanged by full-model saves). */
  raw: Record<string, unknown>;
}

type Kind = "posint" | "nonnegint" | "posnum" | "nonnegnum" | "bool" | "string";

/**
 * Upper bounds on the sizes a config.json may give, far above any ChatGLM
 * (chatglm3-6b: 28 layers, hidden 4096, ffn 13696, 32 heads, vocab 65024,
 * seq 8192; the 128k variant 131072) but low enough that a corrupt or hostile
 * file (`num_layers: 1000000000`) is refused by name before any table of
 * layers or buffers is sized from it.
 */
export const GLM_CONFIG_LIMITS: Partial<Record<keyof GlmConfig, number>> = {
  num_layers: 4096,
  hidden_size: 1 << 17,
  ffn_hidden_size: 1 << 19,
  kv_channels: 1 << 14,
  num_attention_heads: 1 << 12,
  multi_query_group_num: 1 << 12,
  padded_vocab_size: 1 << 24,
  seq_length: 1 << 24,
  pre_seq_len: 1 << 16,
};

const REQUIRED: [keyof GlmConfig, Kind][] = [
  ["num_layers", "posint"],
  ["hidden_size", "posint"],
  ["ffn_hidden_size", "posint"],
  ["kv_channels", "posint"],
  ["num_attention_heads", "posint"],
  ["padded_vocab_size", "posint"],
];

/** ChatGLMConfig's defaults for fields a config.json may leave out. */
const OPTIONAL: [keyof GlmConfig, Kind, unknown][] = [
  ["multi_query_attention", "bool", false],
  ["multi_query_group_num", "posint", 1],
  ["layernorm_epsilon", "posnum", 1e-5],
  ["rmsnorm", "bool", true],
  ["add_qkv_bias", "bool", false],
  ["add_bias_linear", "bool", false],
  ["post_layer_norm", "bool", true],
  ["apply_residual_connection_post_layernorm", "bool", false],
  ["seq_length", "posint", 2048],
  ["rope_ratio", "posnum", 1],
  ["original_rope", "bool", true],
  ["prefix_projection", "bool", false],
  ["torch_dtype", "string", "float32"],
  ["hidden_dropout", "nonnegnum", 0],
  ["attention_dropout", "nonnegnum", 0],
  ["quantization_bit", "nonnegint", 0],
  ["tie_word_embeddings", "bool", false],
];

function check(v: unknown, kind: Kind): string | undefined {
  switch (kind) {
    case "posint":
      return Number.isInteger(v) && (v as number) > 0 ? undefined : "a positive integer";
    case "nonnegint":
      return Number.isInteger(v) && (v as number) >= 0 ? undefined : "a non-negative integer";
    case "posnum":
      return typeof v === "number" && v > 0 && Number.isFinite(v) ? undefined : "a positive number";
    case "nonnegnum":
      return typeof v === "number" && v >= 0 && Number.isFinite(v)
        ? undefined
        : "a non-negative number";
    case "bool":
      return typeof v === "boolean" ? undefined : "true or false";
    case "string":
      return typeof v === "string" ? undefined : "a string";
  }
}

/** The line of a top-level `"key":` in a JSON text, if it is on a line of its own. */
function lineOfJsonKey(text: string | undefined, key: string): number | undefined {
  if (text === undefined) return undefined;
  const lines = text.split("\n");
  const re = new RegExp(`^\\s*${JSON.stringify(key).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\s*:`);
  const i = lines.findIndex((l) => re.test(l));
  return i >= 0 ? i + 1 : undefined;
}

/**
 * Validate a parsed config.json (`path` names it in messages; `text`, its
 * source, gives the lines). Throws a UserError with every problem, each as
 * `FILE:LINE: field: message`.
 */
export function parseGlmConfig(raw: unknown, path = "config.json", text?: string): GlmConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new UserError(located(path, undefined, undefined, "expected a JSON object"));
  }
  const o = raw as Record<string, unknown>;
  const problems: string[] = [];
  const invalid = new Set<string>();
  const fail = (field: string, msg: string): void => {
    invalid.add(field);
    problems.push(located(path, lineOfJsonKey(text, field), field, msg));
  };
  const done = () => {
    if (problems.length > 0) throw new UserError(problems.join("\n"));
  };
  if (o.model_type !== undefined && o.model_type !== "chatglm") {
    fail("model_type", `expected "chatglm", got ${JSON.stringify(o.model_type)}`);
  }
  const c: Record<string, unknown> = { raw: o, model_type: o.model_type };
  for (const [k, kind] of REQUIRED) {
    const want = check(o[k], kind);
    if (o[k] === undefined || o[k] === null) fail(k, `missing (expected ${want})`);
    else if (want) fail(k, `expected ${want}, got ${JSON.stringify(o[k])}`);
    c[k] = o[k];
  }
  for (const [k, kind, dflt] of OPTIONAL) {
    const v = o[k] ?? dflt;
    const want = check(v, kind);
    if (want) fail(k, `expected ${want}, got ${JSON.stringify(o[k])}`);
    c[k] = v;
  }
  const psl = o.pre_seq_len ?? null;
  if (psl !== null && !(Number.isInteger(psl) && (psl as number) > 0)) {
    fail("pre_seq_len", `expected null or a positive integer, got ${JSON.stringify(psl)}`);
  }
  c.pre_seq_len = psl;
  for (const [k, max] of Object.entries(GLM_CONFIG_LIMITS)) {
    const v = c[k];
    if (typeof v === "number" && v > max!) {
      fail(k, `${v} is out of range (at most ${max}); is this a chatglm config.json?`);
    }
  }
  const cfg = c as unknown as GlmConfig;
  const unsupported: [keyof GlmConfig, boolean, string][] = [
    ["rmsnorm", !cfg.rmsnorm, "false (LayerNorm) is not supported; chatglm3 uses RMSNorm"],
    [
      "add_bias_linear",
      cfg.add_bias_linear,
      "true is not supported; chatglm3 has no linear biases besides query_key_value",
    ],
    [
      "post_layer_norm",
      !cfg.post_layer_norm,
      "false is not supported; chatglm3 has a final RMSNorm",
    ],
    [
      "apply_residual_connection_post_layernorm",
      cfg.apply_residual_connection_post_layernorm,
      "true is not supported; chatglm3 adds the residual before the norm",
    ],
    [
      "quantization_bit",
      cfg.quantization_bit !== 0,
      "quantized checkpoints are not supported; use the f16/bf16 weights",
    ],
    [
      "original_rope",
      !cfg.original_rope,
      "false is not supported; chatglm3 uses the original rotary embedding",
    ],
  ];
  for (const [k, bad, msg] of unsupported) if (bad && !invalid.has(k)) fail(k, msg);
  // What follows relates fields to each other: only once each is valid on its own.
  done();
  if (o.eos_token_id !== undefined) c.eos_token_id = o.eos_token_id as number | number[];
  if (o.pad_token_id !== undefined) c.pad_token_id = o.pad_token_id as number;
  const H = cfg.num_attention_heads, G = glmGroups(cfg);
  if (H % G !== 0) {
    fail(
      "multi_query_group_num",
      `${G} does not divide num_attention_heads ${H} (each key/value group serves heads/groups query heads)`,
    );
  }
  if (cfg.kv_channels % 2 !== 0) {
    fail("kv_channels", `must be even (rotary embedding rotates pairs), got ${cfg.kv_channels}`);
  }
  done();
  return cfg;
}

/** Read and validate `dir/config.json`. */
export async function loadGlmConfig(dir: string): Promise<GlmConfig> {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UserError(`${path}: not found (expected a chatglm3 model directory)`);
    }
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UserError(
        `${dir}: a file, not a model directory (give the directory that holds config.json)`,
      );
    }
    throw e;
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UserError(
      located(path, undefined, undefined, `not valid JSON: ${(e as Error).message}`),
    );
  }
  return parseGlmConfig(raw, path, text);
}

/**
 * Key/value groups: multi_query_group_num with multi-query attention, else one
 * per head (also when the field is absent: ChatGLMConfig's default is false).
 */
export function glmGroups(
  c: Pick<GlmConfig, "multi_query_group_num" | "num_attention_heads"> & {
    multi_query_attention?: boolean;
  },
): number {
  return c.multi_query_attention ? c.multi_query_group_num : c.num_attention_heads;
}

/** Output width of the fused query_key_value projection: (heads + 2·groups)·kv_channels. */
export function glmQkvWidth(c: GlmConfig): number {
  return (c.num_attention_heads + 2 * glmGroups(c)) * c.kv_channels;
}

/** Input width of self_attention.dense: heads·kv_channels. */
export function glmAttentionWidth(c: GlmConfig): number {
  return c.num_attention_heads * c.kv_channels;
}

/** Width of one layer's P-Tuning v2 past key/values: 2·groups·kv_channels. */
export function glmKvWidth(c: GlmConfig): number {
  return 2 * glmGroups(c) * c.kv_channels;
}

/** Number of base-model parameters (the tensors of glmWeightShapes). */
export function glmParameterCount(c: GlmConfig): number {
  const h = c.hidden_size, L = c.num_layers, v = c.padded_vocab_size;
  const perLayer = 2 * h + glmQkvWidth(c) * h + (c.add_qkv_bias ? glmQkvWidth(c) : 0) +
    glmAttentionWidth(c) * h + 2 * c.ffn_hidden_size * h + c.ffn_hidden_size * h;
  return L * perLayer + 2 * v * h + h;
}
