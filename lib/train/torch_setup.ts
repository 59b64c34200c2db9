/**
 * `deno task setup-torch [--dir DIR] [--python PYTHON] [--deepspeed]`: the
 * torch engine's Python environment, made once.
 *
 * A virtual environment in DIR (default .venv-torch/ in the repository, which
 * git ignores) with the pinned packages of engines/torch/requirements.txt,
 * installed by pip from whatever index pip is configured to use; with
 * --deepspeed, DeepSpeed too (if the index has it). The environment is
 * complete when DIR/requirements.sha256 holds the hash of what was asked for;
 * that file is written last, so an interrupted setup is redone, and a second
 * run with the same requirements does nothing (CI keys its cache on it). The
 * train stage then finds DIR/bin/python (the default DIR), or the interpreter
 * GLM_TORCH_PYTHON names.
 */
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseFlags } from "../args.ts";
import { runCli, UserError } from "../errors.ts";
import { DEFAULT_VENV } from "./torch_engine.ts";

const REQUIREMENTS = fileURLToPath(
  new URL("../../engines/torch/requirements.txt", import.meta.url),
);
const STAMP = "requirements.sha256";
/** transformers 5 needs Python 3.10 or later. */
const MIN_PYTHON: [number, number] = [3, 10];

const USAGE = `usage: deno task setup-torch [--dir DIR] [--python PYTHON] [--deepspeed]

  --dir DIR        where the virtual environment goes (default ${DEFAULT_VENV});
                   for another DIR, set GLM_TORCH_PYTHON=DIR/bin/python for the train stage
  --python PYTHON  the Python that makes it (default python3; 3.10 or later, with venv)
  --deepspeed      install DeepSpeed too, so training_args.deepspeed runs on DeepSpeed
                   (without it, such configs run on PyTorch FSDP, the equivalent)`;

export interface SetupOptions {
  dir?: string;
  python?: string;
  deepspeed?: boolean;
  /** Where pip's and the checks' output goes (default: this process's). */
  quiet?: boolean;
}

/** The requirement lines to install, and their hash (the stamp's content). */
export async function requirements(deepspeed: boolean): Promise<{ lines: string[]; hash: string }> {
  const text = await Deno.readTextFile(REQUIREMENTS);
  const lines = text.split("\n").map((l) => l.replace(/#.*/, "").trim()).filter((l) => l);
  if (deepspeed) lines.push("deepspeed");
  return { lines, hash: createHash("sha256").update(lines.join("\n")).digest("hex") };
}

async function run(
  cmd: string,
  args: string[],
  quiet: boolean,
): Promise<{ code: number; out: string }> {
  try {
    const p = await new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: quiet ? "piped" : "inherit",
      stderr: quiet ? "piped" : "inherit",
    }).output();
    const dec = new TextDecoder();
    return { code: p.code, out: quiet ? dec.decode(p.stdout) + dec.decode(p.stderr) : "" };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { code: -1, out: "" };
    throw e;
  }
}

async function pythonVersion(python: string): Promise<[number, number] | null> {
  try {
    const p = await new Deno.Command(python, {
      args: ["-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!p.success) return null;
    const [a, b] = new TextDecoder().decode(p.stdout).trim().split(" ").map(Number);
    return [a, b];
  } catch {
    return null;
  }
}

/** Make (or confirm) the environment; returns its python. */
export async function setupTorch(o: SetupOptions = {}): Promise<string> {
  const dir = resolve(o.dir ?? DEFAULT_VENV);
  const quiet = o.quiet ?? false;
  const venvPython = join(dir, "bin", "python");
  const { lines, hash } = await requirements(o.deepspeed ?? false);
  const stamp = await Deno.readTextFile(join(dir, STAMP)).catch(() => "");
  if (stamp.trim() === hash && await pythonVersion(venvPython)) {
    if (!quiet) console.error(`torch engine environment up to date: ${dir}`);
    return venvPython;
  }
  const base = o.python ?? "python3";
  const v = await pythonVersion(base);
  if (!v) {
    throw new UserError(
      `${base} not found: the torch engine needs Python ${MIN_PYTHON.join(".")} or later ` +
        `(install python3 with its venv module, or pass --python PATH)`,
    );
  }
  if (v[0] < MIN_PYTHON[0] || (v[0] === MIN_PYTHON[0] && v[1] < MIN_PYTHON[1])) {
    throw new UserError(
      `${base} is Python ${v.join(".")}; the torch engine needs ${
        MIN_PYTHON.join(".")
      } or later (pass --python PATH)`,
    );
  }
  // Only a directory that is a virtual environment is replaced: a half-made one of ours.
  try {
    await Deno.stat(dir);
    try {
      await Deno.stat(join(dir, "pyvenv.cfg"));
    } catch {
      throw new UserError(`${dir} exists and is not a virtual environment; choose another --dir`);
    }
    await Deno.remove(dir, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (!quiet) console.error(`making the torch engine environment in ${dir} (${lines.join(", ")})`);
  const venv = await run(base, ["-m", "venv", dir], quiet);
  if (venv.code !== 0) {
    throw new UserError(
      `${base} -m venv ${dir} failed${venv.out ? `: ${venv.out.trim().split("\n").pop()}` : ""} ` +
        `(on Debian/Ubuntu: apt-get install python3-venv)`,
    );
  }
  const pip = await run(venvPython, ["-m", "pip", "install", ...lines], quiet);
  if (pip.code !== 0) {
    const why = pip.out.trim().split("\n").filter((l) => /error/i.test(l)).pop() ?? "";
    throw new UserError(
      `pip could not install ${lines.join(" ")} into ${dir}${why ? `: ${why}` : ""}` +
        (o.deepspeed
          ? "; if your package index has no deepspeed, run without --deepspeed (configs naming deepspeed then run on FSDP)"
          : "; check that pip reaches a package index (pip config list)"),
    );
  }
  const check = await run(
    venvPython,
    ["-c", "import torch, transformers, peft, accelerate, safetensors; print(torch.__version__)"],
    true,
  );
  if (check.code !== 0) {
    throw new UserError(
      `the packages installed in ${dir} do not import: ${check.out.trim().split("\n").pop()}`,
    );
  }
  await Deno.writeTextFile(join(dir, STAMP), hash + "\n");
  if (!quiet) {
    console.error(`torch engine environment ready: ${dir} (torch ${check.out.trim()})`);
    if (resolve(dir) !== resolve(DEFAULT_VENV)) {
      console.error(`use it with: export GLM_TORCH_PYTHON=${venvPython}`);
    }
  }
  return venvPython;
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, {
    dir: { type: "string" },
    python: { type: "string" },
    deepspeed: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  }, USAGE);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  await setupTorch({
    dir: values.dir as string | undefined,
    python: values.python as string | undefined,
    deepspeed: values.deepspeed as boolean | undefined,
  });
  return 0;
}

if (import.meta.main) await runCli(() => main(Deno.args));
