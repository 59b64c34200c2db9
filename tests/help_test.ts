/**
 * Every command answers --help with exit 0, a one-line summary, and every
 * flag its parser accepts, each with a one-line description (and its default
 * where it has one). The flags come from the commands' own `COMMAND` specs,
 * which their parsers read, so a new flag without help fails here; the stage
 * names come from the README's table, so a stage the README names cannot be
 * missing from the CLI.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { pathToFileURL } from "node:url";
import { type CommandSpec, helpText } from "../lib/args.ts";
import { stageFile, STAGES } from "../stages/registry.ts";
import { runCli } from "./test_util.ts";

/** The stage names in the first column of the README's "## Stages" table. */
async function readmeStages(): Promise<string[]> {
  const text = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = text.split(/^## /m).find((s) => s.startsWith("Stages"));
  assert(section, "README.md has a ## Stages section");
  const names: string[] = [];
  for (const line of section.split("\n")) {
    const first = /^\|([^|]+)\|/.exec(line)?.[1];
    if (!first) continue;
    for (const m of first.matchAll(/`([a-z-]+)`/g)) names.push(m[1]);
  }
  return names;
}

async function commandOf(stage: string): Promise<CommandSpec> {
  const mod = await import(stageFile(stage).href) as { COMMAND?: CommandSpec };
  assert(mod.COMMAND, `${stage}: the module exports COMMAND`);
  return mod.COMMAND;
}

/** Each flag of `spec` is on its own line of `help`, with a description and its default. */
function checkHelp(name: string, spec: CommandSpec, help: string): void {
  assert(help.startsWith(`${spec.name}: ${spec.summary}\n`), `${name}: summary line\n${help}`);
  assert(/^usage: /m.test(help), `${name}: usage`);
  const lines = help.split("\n");
  for (const [flag, f] of Object.entries(spec.flags)) {
    assert(f.help.trim() && !f.help.includes("\n"), `${name} --${flag}: a one-line description`);
    const i = lines.findIndex((l) => new RegExp(`^ {2}(-\\w, )?--${flag}\\b`).test(l));
    assert(i >= 0, `${name}: --help lists --${flag}\n${help}`);
    // The description follows on the flag's line (or the next, for a long flag), then
    // continues on indented lines; the default is part of it.
    let text = lines[i].replace(/^ {2}\S.*?(\s{2,}|$)/, "");
    for (let k = i + 1; k < lines.length && /^ {26}\S/.test(lines[k]); k++) {
      text += " " + lines[k].trim();
    }
    assert(text.length > 10, `${name} --${flag}: described (${JSON.stringify(lines[i])})`);
    const def = f.defaultText ?? (f.type === "string" ? f.default : undefined);
    if (def !== undefined) {
      assert(text.includes(`default: ${def}`), `${name} --${flag}: default ${def} in ${text}`);
    }
  }
  assert(lines.some((l) => /^ {2}-h, --help\s+print this help/.test(l)), `${name}: -h, --help`);
  for (const [arg] of spec.positionals ?? []) assert(help.includes(arg), `${name}: ${arg}`);
}

Deno.test("help: every stage the README names answers --help with exit 0 and all its flags", async () => {
  const names = await readmeStages();
  for (
    const s of [
      "validate",
      "convert",
      "tokenize",
      "mask",
      "train",
      "evaluate",
      "merge-adapter",
      "report",
      "chat",
    ]
  ) {
    assert(names.includes(s), `README names ${s} (found ${names.join(", ")})`);
  }
  const runs = await Promise.all(
    names.map(async (name) => ({ name, r: await runCli(["stage", name, "--help"]) })),
  );
  for (const { name, r } of runs) {
    assertEquals(r.code, 0, `${name} --help: exit ${r.code}\n${r.err}`);
    assertEquals(r.err, "", `${name} --help writes nothing to stderr`);
    const spec = await commandOf(name);
    checkHelp(name, spec, r.out);
    assertEquals(r.out.trimEnd(), helpText(spec));
  }
});

Deno.test("help: the task shortcuts, the pipeline and stage --help", async () => {
  const [validate, chat, pipeline, stage, shortH] = await Promise.all([
    runCli(["validate", "--help"]),
    runCli(["chat", "-h"]),
    runCli(["pipeline", "--help"]),
    runCli(["stage", "--help"]),
    runCli(["stage", "train", "-h", "--not-a-flag"]),
  ]);
  for (const [r, stageName] of [[validate, "validate"], [chat, "chat"]] as const) {
    assertEquals(r.code, 0, r.err);
    checkHelp(stageName, await commandOf(stageName), r.out);
  }
  assertEquals(pipeline.code, 0, pipeline.err);
  const { COMMAND } = await import(pathToFileURL("lib/pipeline/cli.ts").href);
  checkHelp("pipeline", COMMAND, pipeline.out);
  assert(pipeline.out.includes("--resume"), "pipeline --help lists --resume");
  // Every stage, with what it does.
  assertEquals(stage.code, 0, stage.err);
  for (const [name, e] of Object.entries(STAGES)) {
    assert(
      stage.out.split("\n").some((l) => l.trim().startsWith(name) && l.includes(e.does)),
      `stage --help: ${name} — ${e.does}\n${stage.out}`,
    );
  }
  // --help wins over a bad flag on the same line.
  assertEquals(shortH.code, 0, shortH.err);
});

Deno.test("help: a usage error is exit 2 and points at --help", async () => {
  const [unknownStage, badFlag] = await Promise.all([
    runCli(["stage", "frobnicate"]),
    runCli(["stage", "mask", "--frob"]),
  ]);
  assertEquals(unknownStage.code, 2);
  assert(unknownStage.err.includes('unknown stage "frobnicate"'), unknownStage.err);
  assert(unknownStage.err.includes("validate"), "lists the stages");
  assertEquals(badFlag.code, 2);
  assert(badFlag.err.includes("unknown flag --frob"), badFlag.err);
  assert(badFlag.err.includes("deno task stage mask --help describes every flag"), badFlag.err);
});
