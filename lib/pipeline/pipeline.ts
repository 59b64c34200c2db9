/**
 * Pipeline files: `params` and an ordered list of `steps`, each naming a stage,
 * its inputs, outputs and flags. `${...}` references are resolved here, and
 * every problem is reported with the file and line it comes from.
 *
 * References: `${name}` (the pipeline's name), `${run}` (the run directory),
 * `${params.X}`, `${config.a.b}` (a value of the validated training config named
 * by the `config` param), `${steps.S.outputs.K}` and `${steps.S.inputs.K}` (of an
 * earlier step). A value that is exactly one reference keeps the referenced
 * value's type (a list param becomes a repeated flag, null drops the flag).
 */
import { basename, extname, isAbsolute, join, resolve } from "node:path";
import { located, UserError } from "../errors.ts";
import { lineOfKey, parseYaml } from "../yaml.ts";
import { isObject } from "../data/schema.ts";

export type Scalar = string | number | boolean | null;
export type ParamValue = Scalar | Scalar[];

export interface RawStep {
  name: string;
  stage: string;
  line: number;
  /** flag name → path; `_` holds positional paths */
  inputs: Record<string, unknown>;
  outputs: Record<string, unknown>;
  args: Record<string, unknown>;
  /** `inputs` was written as a list: positional arguments */
  positional: boolean;
}

export interface PipelineFile {
  path: string;
  name: string;
  description?: string;
  params: Record<string, ParamValue>;
  steps: RawStep[];
  /** dotted key → line, for messages */
  lines: Map<string, number>;
}

export interface ResolvedStep {
  name: string;
  stage: string;
  line: number;
  /** [flag or "" for positional, path] in argv order */
  inputs: [string, string][];
  outputs: [string, string][];
  argv: string[];
  /** names of earlier steps whose outputs this step reads */
  upstream: string[];
}

const STEP_KEYS = ["name", "stage", "inputs", "outputs", "args", "description"];

/**
 * Flags through which a stage writes. They belong under `outputs`, where they
 * are relative to the run folder; in `args` they would write anywhere.
 */
const OUTPUT_FLAGS: Record<string, readonly string[]> = { report: ["summary", "report", "html"] };

/** Whether `flag` is one through which `stage` writes (`out`, for every stage). */
export function isOutputFlag(stage: string, flag: string): boolean {
  return flag === "out" || (OUTPUT_FLAGS[stage] ?? []).includes(flag);
}

/**
 * Flags through which a stage reads a file or folder (its FILE, DIR, CFG and
 * RAW flags that are not outputs; tests/pipeline_test.ts checks this against the
 * stages' flags). Given under `args`, or by `--set steps.S.args.FLAG=path`, they are
 * inputs all the same: hashed, so an edit to the file reruns the step, and
 * checked to exist before anything runs.
 */
export const INPUT_FLAGS: Record<string, readonly string[]> = {
  validate: [],
  convert: ["in"],
  tokenize: ["model", "in"],
  mask: ["in", "config", "model"],
  train: ["model", "config", "train", "eval", "init-adapter"],
  evaluate: ["model", "adapter", "in", "config"],
  "merge-adapter": ["model", "adapter"],
  // not --run: it is the run folder, read for the steps' times, and holds the report itself
  report: ["train", "before", "after", "config", "train-data"],
};

/**
 * Keys of a config input that a stage does not read: left out of that input's
 * hash, so a change to them reruns only the steps that read them. Train takes
 * neither the generation settings (its eval loss is teacher-forced) nor the
 * lengths (mask applies those, and its records change when they do; only
 * train's --dry-run memory plan reads them, which a pipeline does not run).
 */
export const UNREAD_KEYS: Record<string, Record<string, string[][]>> = {
  train: {
    config: [["training_args", "generation_config"], ["max_input_length"], ["max_output_length"]],
  },
};

/** Whether `flag` is one through which `stage` reads a file or folder. */
export function isInputFlag(stage: string, flag: string): boolean {
  return (INPUT_FLAGS[stage] ?? []).includes(flag);
}

/**
 * Why an output path may not be used, or undefined: outputs are relative to
 * the run folder and stay inside it, so a pipeline file (perhaps someone
 * else's) cannot write over anything outside the folder it was given.
 */
export function outputPathProblem(p: string): string | undefined {
  if (isAbsolute(p) || /^[A-Za-z]:[\\/]/.test(p) || p.startsWith("~")) {
    return `"${p}" is an absolute path; outputs are relative to the run folder`;
  }
  const parts = p.split(/[\\/]/).filter((x) => x !== "" && x !== ".");
  if (p.split(/[\\/]/).includes("..")) {
    return `"${p}" goes up with ".."; outputs stay inside the run folder`;
  }
  if (parts.length === 0) return `"${p}" is the run folder itself; name a file or folder inside it`;
  // The runner's own files: a step writing one would break the lock, the marker or the record of
  // what ran.
  if (RUNNER_FILES.includes(parts[0])) {
    return `"${p}" is the runner's own ${parts[0]}; choose another name`;
  }
  return undefined;
}

/** What the runner itself keeps at the top of a run folder. */
const RUNNER_FILES = [
  ".glm-finetune.lock",
  ".glm-finetune-output.json",
  ".manifests",
  "config.yaml",
];
const TOP_KEYS = ["name", "description", "params", "steps"];
const STEP_NAME_RE = /^[A-Za-z0-9_-]+$/;
const REF_RE = /\$\{([^}]*)\}/g;

export async function readPipeline(path: string): Promise<PipelineFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UserError(`${path}: no such pipeline file`);
    throw e;
  }
  return parsePipeline(text, path);
}

export function parsePipeline(text: string, path: string): PipelineFile {
  const { value, lines } = parseYaml(text, path);
  const at: (key: string, msg: string) => never = (key, msg) => {
    throw new UserError(located(path, lineOfKey(lines, key), key, msg));
  };

  // Every problem of the file is reported at once: each check below throws its first, and
  // `collect` keeps it and goes on with the next key, param or step.
  const problems: string[] = [];
  const collect = (check: () => void) => {
    try {
      check();
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      problems.push(e.message);
    }
  };
  const tree = value;
  if (!isObject(tree)) at("steps", "a pipeline file is a mapping with params and steps");
  for (const k of Object.keys(tree)) {
    collect(() => {
      if (!TOP_KEYS.includes(k)) at(k, `unknown key; expected one of ${TOP_KEYS.join(", ")}`);
    });
  }
  const name = tree.name ?? basename(path, extname(path));
  collect(() => {
    if (typeof name !== "string" || !name) at("name", "expected a string");
  });

  const params: Record<string, ParamValue> = {};
  if (tree.params !== undefined && tree.params !== null) {
    collect(() => {
      if (!isObject(tree.params)) at("params", "expected a mapping of name: value");
    });
    for (const [k, v] of Object.entries(isObject(tree.params) ? tree.params : {})) {
      collect(() => {
        if (!STEP_NAME_RE.test(k)) at(`params.${k}`, "param names use letters, digits, _ and -");
        if (!isParamValue(v)) at(`params.${k}`, "expected a scalar or a list of scalars");
        params[k] = v as ParamValue;
      });
    }
  }

  if (!Array.isArray(tree.steps) || tree.steps.length === 0) {
    problems.push(
      located(path, lineOfKey(lines, "steps"), "steps", "expected a non-empty list of steps"),
    );
    throw new UserError(problems.join("\n"));
  }
  const steps: RawStep[] = [];
  const seen = new Set<string>();
  (tree.steps as unknown[]).forEach((s, i) =>
    collect(() => {
      const key = `steps.${i}`;
      if (!isObject(s)) at(key, "a step is a mapping with name, stage, inputs, outputs, args");
      for (const k of Object.keys(s)) {
        if (!STEP_KEYS.includes(k)) {
          at(`${key}.${k}`, `unknown key; expected one of ${STEP_KEYS.join(", ")}`);
        }
      }
      if (typeof s.name !== "string" || !STEP_NAME_RE.test(s.name)) {
        at(`${key}.name`, "required: letters, digits, _ and - only");
      }
      if (seen.has(s.name as string)) at(`${key}.name`, `duplicate step name "${s.name}"`);
      seen.add(s.name as string);
      if (typeof s.stage !== "string" || !s.stage) at(`${key}.stage`, "required: the stage to run");
      let positional = false;
      let inputs: Record<string, unknown> = {};
      if (Array.isArray(s.inputs)) {
        positional = true;
        inputs = { _: s.inputs };
      } else if (s.inputs !== undefined && s.inputs !== null) {
        if (!isObject(s.inputs)) {
          at(`${key}.inputs`, "expected a mapping of flag: path, or a list of paths");
        }
        inputs = s.inputs;
      }
      const map = (field: "outputs" | "args"): Record<string, unknown> => {
        const v = s[field];
        if (v === undefined || v === null) return {};
        if (!isObject(v)) at(`${key}.${field}`, "expected a mapping of flag: value");
        return v;
      };
      const outputs = map("outputs");
      const args = map("args");
      const flags = new Set<string>();
      for (
        const [field, m] of [["inputs", inputs], ["outputs", outputs], ["args", args]] as const
      ) {
        for (const [k, v] of Object.entries(m)) {
          if (k !== "_" && flags.has(k)) at(`${key}.${field}.${k}`, `flag --${k} is given twice`);
          flags.add(k);
          if (field !== "args" && !isPathValue(v)) at(`${key}.${field}.${k}`, "expected a path");
          if (field === "outputs") {
            // Literal text is checked here; what references make of it, when they resolve.
            for (const p of [v].flat() as string[]) {
              const bad = outputPathProblem(p.replace(REF_RE, "x"));
              if (bad) at(`${key}.outputs.${k}`, `step "${s.name}": ${bad}`);
            }
          }
          if (field === "args" && typeof s.stage === "string" && isOutputFlag(s.stage, k)) {
            at(
              `${key}.args.${k}`,
              `step "${s.name}": --${k} is where the stage writes; give it under outputs, ` +
                `relative to the run folder`,
            );
          }
          if (field === "args" && !isParamValue(v)) {
            at(`${key}.${field}.${k}`, "expected a scalar or a list of scalars");
          }
        }
      }
      steps.push({
        name: s.name as string,
        stage: s.stage as string,
        line: lines.get(key) ?? 1,
        inputs,
        outputs,
        args,
        positional,
      });
    })
  );
  if (problems.length > 0) throw new UserError(problems.join("\n"));
  return {
    path,
    name: name as string,
    description: typeof tree.description === "string" ? tree.description : undefined,
    params,
    steps,
    lines,
  };
}

export interface ResolveContext {
  file: PipelineFile;
  params: Record<string, ParamValue>;
  runDir: string;
  /** the validated training config, for `${config.*}` */
  config?: unknown;
}

/** Resolve `${...}` inside params themselves (params may refer to each other and to `${name}`). */
export function resolveParams(
  file: PipelineFile,
  params: Record<string, ParamValue>,
  origin: (key: string) => string,
): Record<string, ParamValue> {
  const out: Record<string, ParamValue> = {};
  const busy = new Set<string>();
  const get = (k: string): ParamValue => {
    if (k in out) return out[k];
    if (!(k in params)) throw new UserError(`unknown param "${k}"`);
    if (busy.has(k)) throw new UserError(`${origin(k)}: param "${k}" refers to itself`);
    busy.add(k);
    const v = params[k];
    const sub = (x: Scalar): ParamValue =>
      typeof x === "string"
        ? substitute(x, (ref) => {
          if (ref === "name") return file.name;
          if (ref.startsWith("params.")) {
            const p = ref.slice(7);
            if (!(p in params)) {
              throw new UserError(`${origin(k)}: unknown param "${p}" in \${${ref}}`);
            }
            return get(p);
          }
          throw new UserError(
            `${origin(k)}: \${${ref}} cannot be used in params (only \${name} and \${params.X})`,
          );
        }, origin(k))
        : x;
    const r = Array.isArray(v) ? v.flatMap((x) => asList(sub(x))) : sub(v);
    busy.delete(k);
    out[k] = r;
    return r;
  };
  for (const k of Object.keys(params)) get(k);
  return out;
}

/** Turn each step into paths and an argv, in file order. */
export function resolveSteps(ctx: ResolveContext): ResolvedStep[] {
  const { file } = ctx;
  const done = new Map<string, ResolvedStep>();
  const writers = new Map<string, string>();
  const out: ResolvedStep[] = [];
  file.steps.forEach((s, i) => {
    const where = (field: string) => {
      const key = `steps.${i}.${field}`;
      let k = key;
      let line = file.lines.get(k);
      while (line === undefined && k.includes(".")) {
        k = k.slice(0, k.lastIndexOf("."));
        line = file.lines.get(k);
      }
      return located(file.path, line, key, "").replace(/: $/, "");
    };
    const upstream = new Set<string>();
    const refValue = (field: string) => (ref: string): ParamValue => {
      if (ref === "name") return file.name;
      if (ref === "run") return ctx.runDir;
      const parts = ref.split(".");
      if (parts[0] === "params") {
        const p = parts.slice(1).join(".");
        if (!(p in ctx.params)) {
          throw new UserError(
            `${where(field)}: unknown param "${p}"; params are: ${
              Object.keys(ctx.params).join(", ")
            }`,
          );
        }
        return ctx.params[p];
      }
      if (parts[0] === "config") {
        if (ctx.config === undefined) {
          throw new UserError(
            `${where(field)}: \${${ref}} needs a "config" param naming a training config`,
          );
        }
        let v: unknown = ctx.config;
        for (const p of parts.slice(1)) v = isObject(v) ? v[p] : undefined;
        if (v === undefined || (!isParamValue(v))) {
          throw new UserError(`${where(field)}: \${${ref}}: the config has no such value`);
        }
        return v as ParamValue;
      }
      if (
        parts[0] === "steps" && parts.length === 4 &&
        (parts[2] === "outputs" || parts[2] === "inputs")
      ) {
        const [, name, kind, key] = parts;
        const prev = done.get(name);
        if (!prev) {
          const later = file.steps.some((t) => t.name === name);
          throw new UserError(
            `${where(field)}: \${${ref}}: ${
              later
                ? `step "${name}" comes later; a step can only use earlier steps`
                : `no step named "${name}"`
            }`,
          );
        }
        const list = kind === "outputs" ? prev.outputs : prev.inputs;
        const hit = list.find(([k]) => k === key || (key === "_" && k === ""));
        if (!hit) {
          throw new UserError(
            `${where(field)}: \${${ref}}: step "${name}" has no ${
              kind.slice(0, -1)
            } "${key}" (it has: ${list.map(([k]) => k || "_").join(", ") || "none"})`,
          );
        }
        upstream.add(name);
        return hit[1];
      }
      throw new UserError(
        `${
          where(field)
        }: unknown reference \${${ref}}; use \${params.X}, \${config.X}, \${steps.S.outputs.K}, \${name} or \${run}`,
      );
    };
    const resolveValue = (field: string, v: unknown): ParamValue => {
      if (typeof v !== "string") return v as ParamValue;
      return substitute(v, refValue(field), where(field));
    };
    const pathOf = (field: string, v: unknown, isOutput: boolean): string[] => {
      const r = resolveValue(field, v);
      const list = asList(r);
      if (list.length === 0 || list.some((x) => x === null || x === "")) {
        throw new UserError(`${where(field)}: expected a path, got ${JSON.stringify(r)}`);
      }
      return list.map((x) => {
        const p = String(x);
        if (!isOutput) return p;
        const bad = outputPathProblem(p);
        if (bad) throw new UserError(`${where(field)}: step "${s.name}": ${bad}`);
        return join(ctx.runDir, p);
      });
    };

    const inputs: [string, string][] = [];
    const argv: string[] = [];
    for (const [k, v] of Object.entries(s.inputs)) {
      if (k === "_") {
        (v as unknown[]).forEach((x, j) => {
          for (const p of pathOf(`inputs.${j}`, x, false)) {
            inputs.push(["", p]);
            argv.push(p);
          }
        });
      } else {
        for (const p of pathOf(`inputs.${k}`, v, false)) {
          inputs.push([k, p]);
          argv.push(`--${k}`, p);
        }
      }
    }
    const outputs: [string, string][] = [];
    for (const [k, v] of Object.entries(s.outputs)) {
      const paths = pathOf(`outputs.${k}`, v, true);
      if (paths.length !== 1) throw new UserError(`${where(`outputs.${k}`)}: expected one path`);
      outputs.push([k, paths[0]]);
      argv.push(`--${k}`, paths[0]);
    }
    for (const [k, v] of Object.entries(s.args)) {
      const r = Array.isArray(v)
        ? v.flatMap((x) => asList(resolveValue(`args.${k}`, x)))
        : resolveValue(`args.${k}`, v);
      for (const x of asList(r)) {
        if (x === null || x === false) continue;
        if (x === true) argv.push(`--${k}`);
        // a value that starts with "-" would read as a flag: joined to its flag instead
        else if (String(x).startsWith("-")) argv.push(`--${k}=${x}`);
        else argv.push(`--${k}`, String(x));
        // a file read through an arg is an input like those under `inputs`
        if (typeof x === "string" && x !== "" && isInputFlag(s.stage, k)) inputs.push([k, x]);
      }
    }
    for (const [k, p] of outputs) {
      const other = writers.get(resolve(p));
      if (other) {
        throw new UserError(`${where(`outputs.${k}`)}: ${p} is also written by step "${other}"`);
      }
      writers.set(resolve(p), s.name);
    }
    const step: ResolvedStep = {
      name: s.name,
      stage: s.stage,
      line: s.line,
      inputs,
      outputs,
      argv,
      upstream: [...upstream],
    };
    done.set(s.name, step);
    out.push(step);
  });
  return out;
}

/** Replace `${ref}`s; a string that is exactly one reference takes the value's own type. */
function substitute(
  text: string,
  value: (ref: string) => ParamValue,
  where: string,
): ParamValue {
  const whole = /^\$\{([^}]*)\}$/.exec(text);
  if (whole) return value(whole[1].trim());
  return text.replace(REF_RE, (_, ref: string) => {
    const v = value(ref.trim());
    if (v === null || Array.isArray(v)) {
      throw new UserError(
        `${where}: \${${ref}} is ${
          v === null ? "null" : "a list"
        } and cannot be part of a string ("${text}")`,
      );
    }
    return String(v);
  });
}

function asList(v: ParamValue): Scalar[] {
  return Array.isArray(v) ? v : [v];
}

function isScalarValue(v: unknown): v is Scalar {
  return v === null || ["string", "number", "boolean"].includes(typeof v);
}

function isParamValue(v: unknown): v is ParamValue {
  return isScalarValue(v) || (Array.isArray(v) && v.every(isScalarValue));
}

function isPathValue(v: unknown): boolean {
  return typeof v === "string" || (Array.isArray(v) && v.every((x) => typeof x === "string"));
}
