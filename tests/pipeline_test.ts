import { deepStrictEqual as assertEquals, match as assertMatch, ok as assert } from "node:assert";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { UserError } from "../lib/errors.ts";
import { main } from "../lib/pipeline/cli.ts";
import { parsePipeline } from "../lib/pipeline/pipeline.ts";
import {
  defaultStages,
  type RunOptions,
  runPipeline,
  type StageRef,
  type StageResolver,
} from "../lib/pipeline/runner.ts";

const FIX = "tests/fixtures/pipeline";

/** Test stages from tests/fixtures/pipeline/stages, recording which steps' stages ran. */
function fakeStages(calls: string[], dir = `${FIX}/stages`): StageResolver {
  return (stage) => {
    const file = join(dir, `${stage}.ts`);
    try {
      Deno.statSync(file);
    } catch {
      return Promise.resolve(null);
    }
    const ref: StageRef = {
      file,
      load: async () => {
        const mod = await import(pathToFileURL(resolve(file)).href);
        return {
          main: (args: string[]) => {
            calls.push(`${stage} ${args.join(" ")}`);
            return mod.main(args);
          },
        };
      },
    };
    return Promise.resolve(ref);
  };
}

async function setup(): Promise<{ src: string; out: string; cleanup: () => Promise<void> }> {
  const root = await Deno.makeTempDir({ prefix: "pipeline_test_" });
  const src = join(root, "src");
  await Deno.mkdir(src);
  for (const f of ["a.txt", "b.txt", "train.json"]) {
    await Deno.copyFile(`${FIX}/src/${f}`, join(src, f));
  }
  return { src, out: join(root, "run"), cleanup: () => Deno.remove(root, { recursive: true }) };
}

async function run(file: string, opts: RunOptions & { calls?: string[] }) {
  const lines: string[] = [];
  const calls = opts.calls ?? [];
  const result = await runPipeline(file, {
    stages: fakeStages(calls),
    log: (l) => lines.push(l),
    ...opts,
  });
  const acted = (a: string) => result.steps.filter((s) => s.action === a).map((s) => s.name);
  return { result, lines, calls, ran: acted("run"), skipped: acted("skip") };
}

async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof UserError, `expected a UserError, got ${e}`);
    return e;
  }
  throw new Error("expected an error");
}

Deno.test("first run runs every step, a second run skips them all", async () => {
  const t = await setup();
  try {
    const sets = [`src=${t.src}`];
    const first = await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    assertEquals(first.ran, ["a", "b", "c", "d"]);
    assertEquals(first.calls.length, 4);
    assertEquals(await Deno.readTextFile(join(t.out, "c.out")), "HELLO WORLD!");
    assertEquals(await Deno.readTextFile(join(t.out, "d.out")), "HELLO");
    const manifest = JSON.parse(await Deno.readTextFile(join(t.out, ".manifests", "b.json")));
    assertEquals(manifest.argv, [
      "--in",
      join(t.out, "a.out"),
      "--extra",
      join(t.src, "b.txt"),
      "--out",
      join(t.out, "b.out"),
      "--suffix",
      "!",
    ]);
    assert(/^[0-9a-f]{64}$/.test(manifest.code));

    const second = await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    assertEquals(second.ran, []);
    assertEquals(second.skipped, ["a", "b", "c", "d"]);
    assertEquals(second.calls, []);
    assert(second.lines.includes("skip b (unchanged)"), second.lines.join("\n"));
  } finally {
    await t.cleanup();
  }
});

Deno.test("changing an input of step 2 reruns it and exactly the steps downstream", async () => {
  const t = await setup();
  try {
    const sets = [`src=${t.src}`];
    await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    await Deno.writeTextFile(join(t.src, "b.txt"), " there");
    const r = await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    assertEquals(r.ran, ["b", "c"]);
    assertEquals(r.skipped, ["a", "d"]);
    assertMatch(r.result.steps[1].reason, /input changed: .*b\.txt/);
    assertEquals(await Deno.readTextFile(join(t.out, "c.out")), "HELLO THERE!");

    // a rerun that leaves its output unchanged does not cascade
    await Deno.writeTextFile(join(t.src, "a.txt"), "HELLO");
    const same = await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    assertEquals(same.ran, ["a"]);
    assertEquals(same.skipped, ["b", "c", "d"]);

    // an output deleted or edited by hand is made again
    await Deno.remove(join(t.out, "d.out"));
    await Deno.writeTextFile(join(t.out, "c.out"), "edited");
    const fixed = await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    assertEquals(fixed.ran, ["c", "d"]);
    assertEquals(await Deno.readTextFile(join(t.out, "c.out")), "HELLO THERE!");
  } finally {
    await t.cleanup();
  }
});

Deno.test("changing a step's parameter reruns it and downstream; --from and --only force", async () => {
  const t = await setup();
  try {
    await run(`${FIX}/chain.yaml`, { sets: [`src=${t.src}`], out: t.out });
    const r = await run(`${FIX}/chain.yaml`, {
      sets: [`params.src=${t.src}`, "suffix=?"],
      out: t.out,
    });
    assertEquals(r.ran, ["b", "c"]);
    assertMatch(r.result.steps[1].reason, /flags changed: \?/);
    assertEquals(await Deno.readTextFile(join(t.out, "c.out")), "HELLO WORLD?");

    // a step flag set directly
    const s = await run(`${FIX}/chain.yaml`, {
      sets: [`src=${t.src}`, "suffix=?", "steps.b.args.suffix=#"],
      out: t.out,
    });
    assertEquals(s.ran, ["b", "c"]);

    const from = await run(`${FIX}/chain.yaml`, {
      sets: [`src=${t.src}`, "steps.b.args.suffix=#"],
      out: t.out,
      from: "c",
    });
    assertEquals(from.ran, ["c", "d"]);
    assertEquals(from.result.steps[2].reason, "forced by --from c");

    const only = await run(`${FIX}/chain.yaml`, {
      sets: [`src=${t.src}`, "steps.b.args.suffix=#"],
      out: t.out,
      only: "b",
    });
    assertEquals(only.ran, ["b"]);
    assertEquals(only.calls.length, 1);
    assertEquals(only.skipped, []);

    // --only on a step whose input an earlier step makes, not made yet: said before the run
    // folder is made, in a dry run too.
    const fresh = join(t.out, "..", "fresh");
    for (const dryRun of [true, false]) {
      const e = await rejects(
        run(`${FIX}/chain.yaml`, { sets: [`src=${t.src}`], out: fresh, only: "b", dryRun }),
      );
      assertMatch(
        e.message,
        /step "b": input --in \S+a\.out does not exist \(made by step "a"; run it first, or use --from a\)/,
      );
    }
    assert(!(await Deno.stat(fresh).then(() => true, () => false)));
  } finally {
    await t.cleanup();
  }
});

Deno.test("a change in a stage's code, or in a module it imports, reruns its steps", async () => {
  const t = await setup();
  try {
    const dir = join(t.src, "..", "stages");
    await Deno.mkdir(dir);
    for (const f of ["upper.ts", "concat.ts", "text.ts"]) {
      await Deno.copyFile(`${FIX}/stages/${f}`, join(dir, f));
    }
    const opts = { sets: [`src=${t.src}`], out: t.out, stages: fakeStages([], dir) };
    await run(`${FIX}/chain.yaml`, opts);
    assertEquals((await run(`${FIX}/chain.yaml`, opts)).ran, []);
    // upper.ts changed: a, c and d use it
    await Deno.writeTextFile(join(dir, "upper.ts"), "\n// edited\n", { append: true });
    const r = await run(`${FIX}/chain.yaml`, opts);
    assertEquals(r.ran, ["a", "c", "d"]);
    assertEquals(r.result.steps[0].reason, "code of stage upper changed");
    // text.ts is imported by both stages
    await Deno.writeTextFile(join(dir, "text.ts"), "\n// edited\n", { append: true });
    assertEquals((await run(`${FIX}/chain.yaml`, opts)).ran, ["a", "b", "c", "d"]);
  } finally {
    await t.cleanup();
  }
});

Deno.test("--dry-run runs and writes nothing and reports run/skip with reasons", async () => {
  const t = await setup();
  try {
    const sets = [`src=${t.src}`];
    const fresh = await run(`${FIX}/chain.yaml`, { sets, out: t.out, dryRun: true });
    assertEquals(fresh.calls, []);
    assertEquals(fresh.ran, ["a", "b", "c", "d"]);
    assertEquals(fresh.result.steps[0].reason, "no previous run");
    assertMatch(fresh.result.steps[1].reason, /reads the outputs of "a", which runs first/);
    let exists = true;
    await Deno.stat(t.out).catch(() => (exists = false));
    assert(!exists, "a dry run must not create the run directory");
    const text = fresh.lines.join("\n");
    assertMatch(text, /run {2}b \(/);
    assertMatch(text, /\$ concat --in \S+a\.out --extra \S+b\.txt --out \S+b\.out --suffix '!'/);

    await run(`${FIX}/chain.yaml`, { sets, out: t.out });
    await Deno.writeTextFile(join(t.src, "b.txt"), " there");
    const plan = await run(`${FIX}/chain.yaml`, { sets, out: t.out, dryRun: true });
    assertEquals(plan.calls, []);
    assertEquals(plan.skipped, ["a", "d"]);
    assertEquals(plan.ran, ["b", "c"]);
    assertMatch(plan.lines.join("\n"), /skip a \(unchanged\)/);
    // nothing was run: the real run still has b and c to do
    assertEquals((await run(`${FIX}/chain.yaml`, { sets, out: t.out })).ran, ["b", "c"]);
  } finally {
    await t.cleanup();
  }
});

Deno.test("a failing step stops the run, names the step and leaves no manifest", async () => {
  const t = await setup();
  try {
    const calls: string[] = [];
    const e = await rejects(
      run(`${FIX}/fail.yaml`, { sets: [`src=${t.src}`], out: t.out, calls }),
    );
    assertMatch(e.message, /^step "boom" \(stage fail\) failed: bad input --in /);
    assertEquals(calls.map((c) => c.split(" ")[0]), ["upper", "fail"]);
    await Deno.stat(join(t.out, ".manifests", "a.json"));
    let exists = true;
    await Deno.stat(join(t.out, ".manifests", "boom.json")).catch(() => (exists = false));
    assert(!exists);
  } finally {
    await t.cleanup();
  }
});

Deno.test("a stage that is not implemented gives a clear error when its step is reached", async () => {
  const t = await setup();
  try {
    const plan = await run(`${FIX}/unimplemented.yaml`, {
      sets: [`src=${t.src}`],
      out: t.out,
      dryRun: true,
    });
    assertEquals(plan.result.steps[1].reason, 'stage "no-such-stage" is not implemented yet');
    const calls: string[] = [];
    const e = await rejects(
      run(`${FIX}/unimplemented.yaml`, { sets: [`src=${t.src}`], out: t.out, calls }),
    );
    assertMatch(
      e.message,
      /step "summary" \(.*unimplemented\.yaml:\d+\): stage "no-such-stage" is not implemented yet/,
    );
    assertEquals(calls.length, 1);
    // the default resolver knows the registry's stages and validate, and nothing else
    assertEquals(await defaultStages("no-such-stage"), null);
    assert(await defaultStages("validate"));
  } finally {
    await t.cleanup();
  }
});

Deno.test("bad pipeline files and flags are UserErrors with file:line", async () => {
  const bad: [string, RegExp][] = [
    [
      "steps:\n  - name: a\n    stage: x\n  - name: a\n    stage: y\n",
      /p\.yaml:4: steps\.1\.name: duplicate step name "a"/,
    ],
    [
      "steps:\n  - name: a\n    stage: x\n    input: {}\n",
      /p\.yaml:4: steps\.0\.input: unknown key/,
    ],
    ["stepz: []\n", /p\.yaml:1: stepz: unknown key/],
    ["steps:\n  - name: a\n", /p\.yaml:2: steps\.0\.stage: required/],
    [
      "steps:\n  - name: a\n    stage: x\n    args:\n      k: {a: 1}\n",
      /p\.yaml:5: steps\.0\.args\.k: expected a scalar/,
    ],
    // The run folder itself, and the runner's own files, are no step's output.
    [
      "steps:\n  - name: a\n    stage: x\n    outputs: {out: .}\n",
      /steps\.0\.outputs\.out: step "a": "\." is the run folder itself/,
    ],
    [
      "steps:\n  - name: a\n    stage: x\n    outputs: {out: .glm-finetune.lock}\n",
      /"\.glm-finetune\.lock" is the runner's own \.glm-finetune\.lock/,
    ],
    [
      "steps:\n  - name: a\n    stage: x\n    outputs: {out: .manifests/a.json}\n",
      /is the runner's own \.manifests/,
    ],
  ];
  for (const [text, re] of bad) {
    let msg = "";
    try {
      parsePipeline(text, "p.yaml");
    } catch (e) {
      assert(e instanceof UserError);
      msg = e.message;
    }
    assertMatch(msg, re);
  }
  // Every problem of a file at once, one line each, in file order.
  let all = "";
  try {
    parsePipeline(
      "bogus: 1\nsteps:\n  - name: a\n    stage: x\n    outputs: {out: /abs.jsonl}\n" +
        "  - name: a\n    stage: y\n",
      "p.yaml",
    );
  } catch (e) {
    assert(e instanceof UserError);
    all = e.message;
  }
  assertEquals(all.split("\n").map((l) => l.split(": ").slice(0, 2).join(": ")), [
    "p.yaml:1: bogus",
    "p.yaml:5: steps.0.outputs.out",
    "p.yaml:6: steps.1.name",
  ]);
  const t = await setup();
  try {
    const file = join(t.src, "refs.yaml");
    await Deno.writeTextFile(
      file,
      "steps:\n  - name: a\n    stage: upper\n    inputs:\n      in: ${steps.b.outputs.out}\n" +
        "    outputs:\n      out: a.out\n  - name: b\n    stage: upper\n    inputs:\n      in: x\n" +
        "    outputs:\n      out: b.out\n",
    );
    assertMatch(
      (await rejects(run(file, { out: t.out }))).message,
      /refs\.yaml:5: steps\.0\.inputs\.in: \$\{steps\.b\.outputs\.out\}: step "b" comes later/,
    );
    const twice = join(t.src, "twice.yaml");
    await Deno.writeTextFile(
      twice,
      "steps:\n  - name: a\n    stage: upper\n    outputs:\n      out: x\n" +
        "  - name: b\n    stage: upper\n    outputs:\n      out: x\n",
    );
    assertMatch(
      (await rejects(run(twice, { out: t.out }))).message,
      /twice\.yaml:9: steps\.1\.outputs\.out: \S+ is also written by step "a"/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { sets: ["nope=1"], out: t.out }))).message,
      /--set nope=1: "nope" is neither a param of pipeline chain \(out, src, suffix\)/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { sets: ["params.nope=1"], out: t.out }))).message,
      /has no param "nope"/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { sets: ["training_args.max_steps=1"], out: t.out })))
        .message,
      /pipeline chain has no "config" param/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { only: "zz", out: t.out }))).message,
      /no step named "zz"; steps are: a, b, c, d/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { sets: [`src=${t.src}/none`], out: t.out })))
        .message,
      /^2 inputs of pipeline chain are missing or unusable; nothing was run:\n {2}\S+none\/a\.txt: no such file or directory \(read by step a\)\n {2}\S+none\/b\.txt: no such file or directory \(read by step b\)$/,
    );
  } finally {
    await t.cleanup();
  }
});

Deno.test("outputs cannot leave the run folder: .., absolute paths and output flags in args", async () => {
  const step = (extra: string) => `steps:\n  - name: conv\n    stage: convert\n${extra}`;
  const bad: [string, RegExp][] = [
    [
      step("    outputs:\n      out: ../../x.jsonl\n"),
      /^p\.yaml:5: steps\.0\.outputs\.out: step "conv": "\.\.\/\.\.\/x\.jsonl" goes up with "\.\."; outputs stay inside the run folder$/,
    ],
    [
      step("    outputs:\n      out: data/../../x.jsonl\n"),
      /p\.yaml:5: steps\.0\.outputs\.out: step "conv": .* goes up with "\.\."/,
    ],
    [
      step("    outputs:\n      out: /tmp/x.jsonl\n"),
      /^p\.yaml:5: steps\.0\.outputs\.out: step "conv": "\/tmp\/x\.jsonl" is an absolute path; outputs are relative to the run folder$/,
    ],
    [
      step("    outputs:\n      out: [a.jsonl, /etc/b]\n"),
      /p\.yaml:5: steps\.0\.outputs\.out: step "conv": "\/etc\/b" is an absolute path/,
    ],
    [
      step("    args:\n      out: /tmp/x.jsonl\n"),
      /^p\.yaml:5: steps\.0\.args\.out: step "conv": --out is where the stage writes; give it under outputs, relative to the run folder$/,
    ],
    [
      "steps:\n  - name: r\n    stage: report\n    args:\n      summary: s.json\n",
      /p\.yaml:5: steps\.0\.args\.summary: step "r": --summary is where the stage writes/,
    ],
  ];
  for (const [text, re] of bad) {
    let msg = "";
    try {
      parsePipeline(text, "p.yaml");
    } catch (e) {
      assert(e instanceof UserError);
      msg = e.message;
    }
    assertMatch(msg, re);
  }
  // What a reference resolves to is checked too, before any step runs; so is --set.
  const t = await setup();
  try {
    const file = join(t.src, "esc.yaml");
    await Deno.writeTextFile(
      file,
      "params:\n  dest: ../outside.txt\nsteps:\n  - name: a\n    stage: upper\n" +
        `    inputs:\n      in: ${t.src}/a.txt\n    outputs:\n      out: \${params.dest}\n`,
    );
    const calls: string[] = [];
    assertMatch(
      (await rejects(run(file, { out: t.out, calls }))).message,
      /esc\.yaml:9: steps\.0\.outputs\.out: step "a": "\.\.\/outside\.txt" goes up with "\.\."/,
    );
    assertMatch(
      (await rejects(run(file, { out: t.out, calls, sets: ["dest=/tmp/abs.txt"] }))).message,
      /step "a": "\/tmp\/abs\.txt" is an absolute path/,
    );
    assertMatch(
      (await rejects(run(`${FIX}/chain.yaml`, { out: t.out, sets: ["steps.a.args.out=/tmp/x"] })))
        .message,
      /--set steps\.a\.args\.out=\/tmp\/x: --out is where step "a" writes/,
    );
    assertEquals(calls, []);
    await Deno.stat(join(t.src, "a.txt"));
    assert(!(await Deno.stat(join(t.src, "..", "outside.txt")).catch(() => false)));
  } finally {
    await t.cleanup();
  }
});

Deno.test("the shipped pipelines resolve, with config overrides in an effective config", async () => {
  for (const name of ["lora", "ptuning", "sft"]) {
    const t = await setup();
    try {
      const r = await run(`pipelines/${name}.yaml`, {
        stages: defaultStages,
        out: t.out,
        dryRun: true,
        sets: ["training_args.max_steps=3", "eval_limit=5"],
      });
      const names = r.result.steps.map((s) => s.name);
      assertEquals(names.slice(0, 7), [
        "validate",
        "convert-train",
        "convert-dev",
        "tokenize-train",
        "tokenize-dev",
        "mask-train",
        "mask-eval",
      ]);
      assert(names.includes("train") && names.includes("evaluate-after"));
      assertEquals(names.includes("merge-adapter"), name === "lora");
      const train = r.result.steps.find((s) => s.name === "train")!;
      const cfg = train.argv[train.argv.indexOf("--config") + 1];
      assertEquals(cfg, join(t.out, "config.yaml"));
      const ev = r.result.steps.find((s) => s.name === "evaluate-before")!;
      assertEquals(ev.argv.slice(-2), ["--limit", "5"]);
      assertEquals(r.result.steps[0].argv.slice(0, 2), [
        "data/demo/train.json",
        "data/demo/dev.json",
      ]);
      assertEquals(r.result.steps[1].argv.slice(0, 2), ["--in", "data/demo/train.json"]);
    } finally {
      await t.cleanup();
    }
  }
});

Deno.test("real convert and validate stages: run, then skip", {
  // convert lands from another part of the project; without it this test has nothing to run
  ignore: (() => {
    try {
      Deno.statSync("stages/convert.ts");
      Deno.statSync("stages/validate.ts");
      return false;
    } catch {
      return true;
    }
  })(),
}, async () => {
  const t = await setup();
  try {
    const opts = { stages: defaultStages, sets: [`data=${t.src}`], out: t.out };
    const first = await run(`${FIX}/convert.yaml`, opts);
    assertEquals(first.ran, ["convert", "validate"]);
    const lines = (await Deno.readTextFile(join(t.out, "train.jsonl"))).trim().split("\n");
    assertEquals(lines.length, 2);
    assertEquals(JSON.parse(lines[0]).conversations[0].role, "user");
    const second = await run(`${FIX}/convert.yaml`, opts);
    assertEquals(second.skipped, ["convert", "validate"]);
  } finally {
    await t.cleanup();
  }
});

Deno.test("the CLI parses its flags", async () => {
  const t = await setup();
  try {
    const log = console.log;
    const lines: string[] = [];
    console.log = (...a: unknown[]) => lines.push(a.join(" "));
    try {
      assertEquals(
        await main([
          `${FIX}/convert.yaml`,
          "--dry-run",
          `--out=${t.out}`,
          "--set",
          `data=${t.src}`,
        ]),
        0,
      );
    } finally {
      console.log = log;
    }
    assertMatch(lines.join("\n"), /dry run/);
    assertMatch((await rejects(main(["lora", "--bogus"]))).message, /unknown flag --bogus/);
    assertMatch((await rejects(main([]))).message, /which pipeline\?/);
    assertMatch((await rejects(main(["nope"]))).message, /no pipeline "nope"/);
  } finally {
    await t.cleanup();
  }
});

/** `fn` with console.log and console.error captured (real stages print their summaries). */
async function captured<T>(
  fn: () => Promise<T>,
): Promise<{ value?: T; error?: Error; out: string }> {
  const lines: string[] = [];
  const [log, err] = [console.log, console.error];
  console.log = console.error = (...a: unknown[]) => void lines.push(a.join(" "));
  try {
    return { value: await fn(), out: lines.join("\n") };
  } catch (e) {
    return { error: e as Error, out: lines.join("\n") };
  } finally {
    [console.log, console.error] = [log, err];
  }
}

Deno.test("inputs are checked before any step runs: all problems at once, no run folder", async () => {
  const t = await setup();
  try {
    const bins = join(t.src, "bin-model");
    await Deno.mkdir(bins);
    for (const f of ["config.json", "tokenizer.model"]) {
      await Deno.copyFile(`data/demo-model/${f}`, join(bins, f));
    }
    for (const f of ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]) {
      await Deno.writeTextFile(join(bins, f), "");
    }
    const r = await captured(() =>
      runPipeline("pipelines/lora.yaml", {
        sets: ["model=/no/such/model", `data=${t.src}/nodata`],
        out: t.out,
        log: () => {},
      })
    );
    assert(r.error instanceof UserError, String(r.error));
    assertEquals(
      r.error.message,
      "3 inputs of pipeline lora are missing or unusable; nothing was run:\n" +
        `  ${t.src}/nodata/train.json: no such file or directory (read by steps validate, convert-train)\n` +
        `  ${t.src}/nodata/dev.json: no such file or directory (read by steps validate, convert-dev)\n` +
        "  /no/such/model: no such model directory (read by steps tokenize-train, tokenize-dev, " +
        "evaluate-before, train, evaluate-after, merge-adapter)",
    );
    await Deno.stat(t.out).then(() => assert(false, "no run folder"), () => {});
    // A model dir of PyTorch shards: the conversion command, before anything runs.
    const b = await captured(() =>
      runPipeline("pipelines/lora.yaml", { sets: [`model=${bins}`], out: t.out, log: () => {} })
    );
    assert(b.error instanceof UserError, String(b.error));
    assertMatch(
      b.error.message,
      new RegExp(
        `^${bins}: holds PyTorch weights only \\(pytorch_model-00001-of-00002\\.bin, ` +
          `pytorch_model-00002-of-00002\\.bin\\); this tool reads safetensors\\. Convert once ` +
          `with: python -c .*save_pretrained.* \\(read by steps evaluate-before, train, ` +
          `evaluate-after, merge-adapter\\); nothing was run$`,
      ),
    );
    await Deno.remove(join(bins, "tokenizer.model"));
    const c = await captured(() =>
      runPipeline("pipelines/lora.yaml", { sets: [`model=${bins}`], out: t.out, log: () => {} })
    );
    assertMatch(c.error!.message, /^\S+bin-model: no tokenizer\.model \(expected a chatglm3/);
    await Deno.stat(t.out).then(() => assert(false, "no run folder"), () => {});
  } finally {
    await t.cleanup();
  }
});

Deno.test("a set with no eval record stops the pipeline at mask-eval, with the reason", async () => {
  const t = await setup();
  try {
    const lines: string[] = [];
    const r = await captured(() =>
      runPipeline("pipelines/lora.yaml", {
        sets: ["data=tests/fixtures/sharegpt-system", "data_format=sharegpt"],
        out: t.out,
        log: (l) => lines.push(l),
      })
    );
    assert(r.error instanceof UserError, `${r.error}\n${r.out}`);
    assertMatch(
      r.error.message,
      /^step "mask-eval" \(stage mask\) failed: \S+dev\.tok\.jsonl: nothing to evaluate: 2 of 2 conversations gave no eval record: the tokens before the first assistant message already reach max_input_length \(64\)/,
    );
    assert(lines.some((l) => l.startsWith("run mask-train")), lines.join("\n"));
    assert(!lines.some((l) => l.startsWith("run evaluate-before")), "evaluate never runs");
  } finally {
    await t.cleanup();
  }
});

Deno.test("a file given through a step's args is an input: hashed, and checked before the run", async () => {
  const t = await setup();
  try {
    // a stand-in for the mask stage, whose --config is a file it reads
    const stages = join(t.src, "stages");
    await Deno.mkdir(stages);
    await Deno.writeTextFile(
      join(stages, "mask.ts"),
      `import { parseArgs } from "node:util";
export async function main(args: string[]) {
  const { values } = parseArgs({ args, options: { in: { type: "string" }, out: { type: "string" }, config: { type: "string" } } });
  await Deno.writeTextFile(values.out!, (await Deno.readTextFile(values.in!)) + (values.config ? await Deno.readTextFile(values.config) : ""));
  return 0;
}
`,
    );
    const file = join(t.src, "m.yaml");
    await Deno.writeTextFile(
      file,
      `steps:\n  - name: m\n    stage: mask\n    inputs:\n      in: ${t.src}/a.txt\n` +
        `    outputs:\n      out: m.out\n`,
    );
    const opts = (sets: string[]) => ({
      out: t.out,
      sets,
      stages: fakeStages([], stages),
    });
    const cfg = join(t.src, "b.txt");
    const first = await run(file, opts([`steps.m.args.config=${cfg}`]));
    assertEquals(first.ran, ["m"]);
    assertEquals(await Deno.readTextFile(join(t.out, "m.out")), "hello world");
    assertEquals((await run(file, opts([`steps.m.args.config=${cfg}`]))).skipped, ["m"]);
    await Deno.writeTextFile(cfg, " there");
    const edited = await run(file, opts([`steps.m.args.config=${cfg}`]));
    assertEquals(edited.ran, ["m"]);
    assertMatch(edited.result.steps[0].reason, /input changed: \S+b\.txt/);
    assertEquals(await Deno.readTextFile(join(t.out, "m.out")), "hello there");

    // missing, it is said before anything runs, as a file under inputs is
    const calls: string[] = [];
    const e = await rejects(
      run(file, { ...opts([`steps.m.args.config=${t.src}/nope.yaml`]), calls }),
    );
    assertMatch(
      e.message,
      /nope\.yaml: no such file or directory \(read by step m\); nothing was run/,
    );
    assertEquals(calls, []);
  } finally {
    await t.cleanup();
  }
});

Deno.test("the runner's list of input flags is each stage's FILE, DIR, CFG and RAW flags that are not outputs", async () => {
  const { INPUT_FLAGS, isOutputFlag } = await import("../lib/pipeline/pipeline.ts");
  const { STAGES } = await import("../stages/registry.ts");
  for (const [name, entry] of Object.entries(STAGES)) {
    if (!entry.step) continue;
    const mod = await import(new URL(entry.file, new URL("../stages/", import.meta.url)).href);
    const paths = Object.entries(mod.COMMAND.flags as Record<string, { arg?: string }>)
      .filter(([k, f]) =>
        /^(FILE|DIR|CFG|RAW|FILE\|DIR)$/.test(f.arg ?? "") && !isOutputFlag(name, k)
      )
      // report's --run is the run folder, which holds the report itself
      .filter(([k]) => !(name === "report" && k === "run"))
      .map(([k]) => k);
    assertEquals([...INPUT_FLAGS[name]].sort(), paths.sort(), name);
  }
});

/** How the shipped LoRA pipeline names its train step in a message. */
const TRAIN_AT = `pipelines/lora.yaml:${
  (await Deno.readTextFile("pipelines/lora.yaml")).split("\n").findIndex((l) =>
    l.includes("- name: train")
  ) + 1
}: step "train" (stage train): `;

Deno.test("a training_args.logging_dir outside the run folder is refused before anything runs", async () => {
  const t = await setup();
  try {
    const outside = join(t.src, "tb");
    const opts = (sets: string[]) => ({ stages: defaultStages, out: t.out, sets, log: () => {} });
    const e = await rejects(
      runPipeline("pipelines/lora.yaml", opts([`training_args.logging_dir=${outside}`])),
    );
    assertEquals(
      e.message,
      `${TRAIN_AT}--set training_args.logging_dir=${outside}: training_args.logging_dir ` +
        `${outside} is outside the run folder ${t.out}, and a pipeline writes only inside it; ` +
        `leave logging_dir unset (the train step's runs/ folder) or give a path inside the run ` +
        `folder; nothing was run`,
    );
    // a pipeline run of another step alone does not read the train step's config
    await runPipeline("pipelines/lora.yaml", {
      ...opts([`training_args.logging_dir=${outside}`]),
      only: "validate",
      dryRun: true,
    });
    // from the config file itself, the file is named
    const cfg = join(t.src, "cfg.yaml");
    await Deno.writeTextFile(
      cfg,
      (await Deno.readTextFile("configs/lora.yaml")).replace(
        "training_args:\n",
        "training_args:\n  logging_dir: ../elsewhere\n",
      ),
    );
    assertMatch(
      (await rejects(runPipeline("pipelines/lora.yaml", opts([`config=${cfg}`])))).message,
      new RegExp(
        `^${
          TRAIN_AT.replace(/[()]/g, "\\$&")
        }${cfg}: training_args\\.logging_dir \\.\\./elsewhere is outside`,
      ),
    );
    await Deno.stat(t.out).then(() => assert(false, "no run folder"), () => {});
    // inside the run folder it is kept
    const dry = await runPipeline("pipelines/lora.yaml", {
      ...opts([`training_args.logging_dir=${t.out}/tb`]),
      dryRun: true,
    });
    assert(dry.steps.length > 0);
  } finally {
    await t.cleanup();
  }
});

Deno.test("a train step does not rerun for config keys it does not read (generation settings, lengths)", async () => {
  const t = await setup();
  try {
    const stages = join(t.src, "stages");
    await Deno.mkdir(stages);
    await Deno.writeTextFile(
      join(stages, "train.ts"),
      `import { parseArgs } from "node:util";
export async function main(args: string[]) {
  const { values } = parseArgs({ args, options: { config: { type: "string" }, out: { type: "string" } } });
  await Deno.writeTextFile(values.out!, await Deno.readTextFile(values.config!));
  return 0;
}
`,
    );
    const cfg = join(t.src, "c.yaml");
    const text = (lr: string, tokens: number, len: number) =>
      `max_input_length: ${len}\ntraining_args:\n  learning_rate: ${lr}\n  generation_config:\n` +
      `    max_new_tokens: ${tokens}\n`;
    await Deno.writeTextFile(cfg, text("1e-3", 8, 64));
    const file = join(t.src, "t.yaml");
    await Deno.writeTextFile(
      file,
      `steps:\n  - name: train\n    stage: train\n    inputs:\n      config: ${cfg}\n` +
        `    outputs:\n      out: t.out\n`,
    );
    const go = () => run(file, { out: t.out, stages: fakeStages([], stages) });
    assertEquals((await go()).ran, ["train"]);
    await Deno.writeTextFile(cfg, text("1e-3", 16, 32));
    assertEquals((await go()).skipped, ["train"]);
    // key order and comments do not count either; a value train reads does
    await Deno.writeTextFile(
      cfg,
      text("1e-3", 16, 32).replace("max_input_length: 32\n", "") + "max_input_length: 32\n",
    );
    assertEquals((await go()).skipped, ["train"]);
    await Deno.writeTextFile(cfg, text("2e-3", 16, 32));
    const changed = await go();
    assertEquals(changed.ran, ["train"]);
    assertMatch(changed.result.steps[0].reason, /input changed: \S+c\.yaml/);
  } finally {
    await t.cleanup();
  }
});

Deno.test("a step flag its stage does not have, or cannot take, is said before anything runs (dry run too)", async () => {
  const t = await setup();
  try {
    for (const dryRun of [true, false]) {
      const e = await rejects(runPipeline("pipelines/lora.yaml", {
        stages: defaultStages,
        out: t.out,
        dryRun,
        log: () => {},
        sets: ["steps.train.args.rows_per_pass=2", "steps.evaluate-before.args.limit=true"],
      }));
      assertMatch(
        e.message,
        /^2 problems in pipeline lora; nothing was run:\n {2}pipelines\/lora\.yaml:\d+: step "evaluate-before" \(stage evaluate\): .*--limit.*\n {2}pipelines\/lora\.yaml:\d+: step "train" \(stage train\): unknown flag --rows_per_pass$/,
      );
      await Deno.stat(t.out).then(() => assert(false, "no run folder"), () => {});
    }
    // a value that starts with "-" is joined to its flag, so the stage reads it as the value
    const neg = await runPipeline("pipelines/lora.yaml", {
      stages: defaultStages,
      out: t.out,
      dryRun: true,
      log: () => {},
      sets: ["steps.evaluate-before.args.limit=-1"],
    });
    assert(neg.steps.find((s) => s.name === "evaluate-before")!.argv.includes("--limit=-1"));
    // a positional count the stage does not take, and a logging_dir outside the run folder given
    // to one step
    const p = await rejects(runPipeline("pipelines/lora.yaml", {
      stages: defaultStages,
      out: t.out,
      dryRun: true,
      log: () => {},
      sets: [
        "steps.train.args.no-shuffle=yes",
        "steps.train.args.set=[training_args.logging_dir=/tmp/elsewhere]",
      ],
    }));
    assertMatch(
      p.message,
      /step "train" \(stage train\): 1 positional argument \(yes\), where it takes DATA_DIR MODEL_DIR CONFIG \[yes\|N\] or flags/,
    );
    const l = await rejects(runPipeline("pipelines/lora.yaml", {
      stages: defaultStages,
      out: t.out,
      dryRun: true,
      log: () => {},
      sets: ["steps.train.args.set=[training_args.logging_dir=/tmp/elsewhere]"],
    }));
    assertMatch(
      l.message,
      /step "train" \(stage train\): --set training_args\.logging_dir=\/tmp\/elsewhere: training_args\.logging_dir \/tmp\/elsewhere is outside the run folder/,
    );
    // the torch engine's Python environment, when the train step will run (a dry run runs none)
    const before = Deno.env.get("GLM_TORCH_PYTHON");
    Deno.env.set("GLM_TORCH_PYTHON", "/no/such/python");
    try {
      const opts = { stages: defaultStages, out: t.out, log: () => {}, sets: ["engine=torch"] };
      const e = await rejects(runPipeline("pipelines/lora.yaml", opts));
      assertMatch(
        e.message,
        /step "train" \(stage train\): GLM_TORCH_PYTHON=\/no\/such\/python: no such file/,
      );
      await Deno.stat(t.out).then(() => assert(false, "no run folder"), () => {});
      await runPipeline("pipelines/lora.yaml", { ...opts, dryRun: true });
    } finally {
      if (before === undefined) Deno.env.delete("GLM_TORCH_PYTHON");
      else Deno.env.set("GLM_TORCH_PYTHON", before);
    }
  } finally {
    await t.cleanup();
  }
});
