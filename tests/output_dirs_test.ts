/**
 * A stage never deletes or overwrites what it did not write: merge-adapter,
 * evaluate, train and a pipeline's run folder refuse a non-empty directory
 * that is not an earlier output of their own (lib/outdir.ts) unless --force,
 * replace their own earlier outputs, and no stage writes over its inputs.
 */
import { deepStrictEqual, ok as assert, rejects } from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import { evaluate } from "../lib/eval/evaluate.ts";
import { mergeAdapter } from "../lib/model/merge.ts";
import { claimOutputDir, isInside, markOutputDir, OUTPUT_MARKER } from "../lib/outdir.ts";
import { runPipeline } from "../lib/pipeline/runner.ts";
import { runTraining } from "../lib/train/run.ts";
import { runCli, withTempDir } from "./test_util.ts";

const FIX = new URL("./fixtures/", import.meta.url).pathname;
const TINY = join(FIX, "tiny");
const PEFT = join(FIX, "tiny-lora-peft");

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const e of Deno.readDir(from)) {
    await Deno.copyFile(join(from, e.name), join(to, e.name));
  }
}

const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

const refused = (re: RegExp) => (e: Error) => e instanceof UserError && re.test(e.message);

Deno.test("merge-adapter: a directory it did not write is refused, never emptied", async () => {
  await withTempDir(async (dir) => {
    // --out is the parent of the model and adapter dirs: refused, even with --force.
    const model = join(dir, "model"), adapter = join(dir, "adapter");
    await copyDir(TINY, model);
    await copyDir(PEFT, adapter);
    for (const force of [false, true]) {
      await rejects(
        () => mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: dir, force }),
        refused(/^--out \S+ contains the --model input \S+model, which replacing it would delete/),
      );
    }
    deepStrictEqual(names(dir), ["adapter", "model"]);
    deepStrictEqual(names(model), names(TINY));

    // A directory with someone's files: refused, naming it and --force; untouched.
    const mine = join(dir, "mine");
    await Deno.mkdir(mine);
    await Deno.writeTextFile(join(mine, "notes.txt"), "keep me");
    await rejects(
      () => mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: mine }),
      refused(
        /^--out \S+mine: the directory is not empty and it holds files merge-adapter did not write \(notes\.txt\); choose a new or empty directory, or pass --force to replace it$/,
      ),
    );
    deepStrictEqual(await Deno.readTextFile(join(mine, "notes.txt")), "keep me");
    // Another stage's output is named as such.
    await markOutputDir(mine, "evaluate");
    await rejects(
      () => mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: mine }),
      refused(/it is an output of evaluate, not of merge-adapter/),
    );

    // Its own earlier output is replaced (atomically: built beside, then renamed); one that
    // something was added to since is refused, the addition kept, unless --force.
    const merged = join(dir, "merged");
    await mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: merged });
    await mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: merged });
    await Deno.writeTextFile(join(merged, "stale.txt"), "x");
    await rejects(
      () => mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: merged }),
      refused(/now also holds stale\.txt/),
    );
    assert(names(merged).includes("stale.txt"));
    await mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: merged, force: true });
    assert(!names(merged).includes("stale.txt"));
    // --force replaces a foreign directory when the user says so.
    await mergeAdapter({ modelDir: model, adapterDir: adapter, outDir: mine, force: true });
    deepStrictEqual(names(mine), names(merged));
    // No temporaries are left beside the outputs.
    deepStrictEqual(names(dir), ["adapter", "merged", "mine", "model"]);

    // Through the CLI: exit 1, one line naming the directory and --force.
    const other = join(dir, "other");
    await Deno.mkdir(other);
    await Deno.writeTextFile(join(other, "a.txt"), "");
    const r = await runCli([
      "stage",
      "merge-adapter",
      "--model",
      model,
      "--adapter",
      adapter,
      "--out",
      other,
    ]);
    assert(r.code === 1 && /^error: --out \S+other: .*--force/.test(r.err.trim()), r.err);
    deepStrictEqual(names(other), ["a.txt"]);
  });
});

Deno.test("evaluate: writes only into a new, empty or earlier evaluate dir unless --force", async () => {
  await withTempDir(async (dir) => {
    const preds = join(dir, "preds.jsonl");
    await Deno.writeTextFile(preds, JSON.stringify({ prediction: "a b", label: "a b" }) + "\n");
    const run = (outDir: string, force = false) =>
      evaluate({
        input: preds,
        outDir,
        batchSize: 1,
        generation: {
          maxNewTokens: 1,
          doSample: false,
          temperature: 1,
          topP: 1,
          topK: 1,
          seed: 1,
        },
        segmenter: "char",
        metricsOnly: true,
        quiet: true,
        force,
      });
    // The user's own metrics.json beside their notes is not overwritten.
    const theirs = join(dir, "theirs");
    await Deno.mkdir(theirs);
    await Deno.writeTextFile(join(theirs, "metrics.json"), "mine");
    await Deno.writeTextFile(join(theirs, "notes.txt"), "mine");
    await rejects(
      () => run(theirs),
      refused(/^--out \S+theirs: the directory is not empty.*--force/),
    );
    deepStrictEqual(await Deno.readTextFile(join(theirs, "metrics.json")), "mine");
    // An earlier output, marked or from before markers (only evaluate's own files), is fine.
    const out = join(dir, "out");
    await run(out);
    await run(out);
    await Deno.remove(join(out, OUTPUT_MARKER));
    await run(out);
    deepStrictEqual(names(out), [OUTPUT_MARKER, "metrics.json", "predictions.jsonl"]);
    // --force writes evaluate's two files and leaves the rest alone.
    await run(theirs, true);
    deepStrictEqual(await Deno.readTextFile(join(theirs, "notes.txt")), "mine");
  });
});

Deno.test("train: refuses a non-empty directory it did not write; its own is reused", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "home");
    await Deno.mkdir(out);
    await Deno.writeTextFile(join(out, "thesis.tex"), "years of work");
    const opts = {
      modelDir: TINY,
      configPath: join(FIX, "config", "upstream", "lora.yaml"),
      overrides: ["training_args.max_steps=1", "training_args.evaluation_strategy=no"],
      trainFile: join(FIX, "tiny-train", "data.jsonl"),
      outDir: out,
    };
    await rejects(
      () => runTraining(opts),
      refused(
        /^--out \S+home: the directory is not empty and it holds files train did not write \(thesis\.tex\).*--force to write into it$/,
      ),
    );
    deepStrictEqual(names(out), ["thesis.tex"]);
    const err = console.error;
    console.error = () => {};
    try {
      // --force trains there and leaves the other file alone.
      await runTraining({ ...opts, force: true });
      assert(names(out).includes("thesis.tex") && names(out).includes("adapter_model.safetensors"));
      // Now it is train's own: a rerun with overwrite_output_dir replaces its checkpoints.
      await runTraining({
        ...opts,
        overrides: [...opts.overrides, "training_args.overwrite_output_dir=true"],
      });
    } finally {
      console.error = err;
    }
    deepStrictEqual(await Deno.readTextFile(join(out, "thesis.tex")), "years of work");
  });
});

Deno.test("pipeline: the run folder must be new, empty or an earlier run's", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "p.yaml");
    await Deno.writeTextFile(file, "steps:\n  - name: a\n    stage: noop\n");
    const stages = () =>
      Promise.resolve({ file, load: () => Promise.resolve({ main: () => Promise.resolve(0) }) });
    const opts = { stages, log: () => {} };
    const home = join(dir, "home");
    await Deno.mkdir(home);
    await Deno.writeTextFile(join(home, "photo.jpg"), "");
    await rejects(
      () => runPipeline(file, { ...opts, out: home }),
      refused(
        /^run folder \S+home: the directory is not empty and it holds files a pipeline run did not write \(photo\.jpg\).*--force to run in it anyway$/,
      ),
    );
    deepStrictEqual(names(home), ["photo.jpg"]);
    await runPipeline(file, { ...opts, out: home, force: true });
    // A run folder from before markers (it has .manifests) and a marked one are reused.
    const old = join(dir, "old");
    await Deno.mkdir(join(old, ".manifests"), { recursive: true });
    await runPipeline(file, { ...opts, out: old });
    await runPipeline(file, { ...opts, out: old });
    deepStrictEqual(names(old), [".glm-finetune-output.json", ".glm-finetune.lock", ".manifests"]);
  });
});

Deno.test("pipeline: a config that is the run folder's config.yaml is not rewritten with --set", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "p.yaml");
    await Deno.writeTextFile(
      file,
      'params: {config: ""}\nsteps:\n  - name: a\n    stage: noop\n    inputs: {config: "${params.config}"}\n',
    );
    const run = join(dir, "run"), cfg = join(run, "config.yaml");
    await Deno.mkdir(run);
    const mine = (await Deno.readTextFile(join(FIX, "torch", "lora.yaml"))) + "# mine\n";
    await Deno.writeTextFile(cfg, mine);
    const stages = () =>
      Promise.resolve({ file, load: () => Promise.resolve({ main: () => Promise.resolve(0) }) });
    // The config param is that config.yaml; or another config, with the user's config.yaml in a
    // folder the pipeline is forced into: either way the user's file is not replaced.
    for (
      const [config, re] of [
        [cfg, /the config \S+config\.yaml is the run folder's config\.yaml/],
        [join(FIX, "torch", "lora.yaml"), /holds a config\.yaml the pipeline did not write/],
      ] as const
    ) {
      await rejects(
        () =>
          runPipeline(file, {
            stages,
            log: () => {},
            out: run,
            force: true,
            sets: [`config=${config}`, "training_args.max_steps=2"],
          }),
        refused(re),
      );
      deepStrictEqual(await Deno.readTextFile(cfg), mine);
    }
  });
});

Deno.test("pipeline: a step's output never leads outside the run folder through a link", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "p.yaml");
    await Deno.writeTextFile(
      file,
      "steps:\n  - name: a\n    stage: noop\n    outputs: {out: data/x.txt}\n",
    );
    const stages = () =>
      Promise.resolve({
        file,
        load: () =>
          Promise.resolve({
            main: async (argv: string[]) => {
              await Deno.writeTextFile(argv[argv.indexOf("--out") + 1], "step");
              return 0;
            },
          }),
      });
    const run = join(dir, "run"), elsewhere = join(dir, "elsewhere");
    await Deno.mkdir(run);
    await Deno.mkdir(elsewhere);
    await Deno.writeTextFile(join(elsewhere, "x.txt"), "mine");
    await Deno.symlink(elsewhere, join(run, "data"));
    await rejects(
      () => runPipeline(file, { stages, log: () => {}, out: run, force: true }),
      refused(/output --out \S+data\/x\.txt leads outside the run folder \(through a link/),
    );
    deepStrictEqual(await Deno.readTextFile(join(elsewhere, "x.txt")), "mine");
  });
});

Deno.test("no stage writes over its own input", async () => {
  await withTempDir(async (dir) => {
    const f = join(dir, "data.jsonl");
    const text = '{"instruction": "q", "input": "", "output": "a"}\n';
    await Deno.writeTextFile(f, text);
    const cases = [
      ["stage", "convert", "--in", f, "--out", f],
      ["stage", "tokenize", "--model", TINY, "--in", f, "--out", join(dir, ".", "data.jsonl")],
      ["stage", "mask", "--in", f, "--out", f, "--mode", "train", "--max-input-length", "8"],
      [
        "stage",
        "report",
        "--train",
        dir,
        "--train-data",
        f,
        "--summary",
        f,
        "--report",
        join(dir, "r.md"),
      ],
    ];
    for (const args of cases) {
      const r = await runCli(args);
      assert(r.code === 1, `${args[1]}: exit ${r.code}: ${r.err}`);
      assert(/^error: --(out|summary) \S+ is the --(in|train-data) file/.test(r.err.trim()), r.err);
    }
    deepStrictEqual(await Deno.readTextFile(f), text);
    deepStrictEqual(names(dir), ["data.jsonl"]);
    // tokenize over its model's tokenizer.model
    const tokModel = join(dir, "tok-model");
    await Deno.mkdir(tokModel);
    for (const f of Deno.readDirSync(TINY)) {
      await Deno.copyFile(join(TINY, f.name), join(tokModel, f.name));
    }
    const tk = await runCli([
      "stage",
      "tokenize",
      "--model",
      tokModel,
      "--in",
      f,
      "--out",
      join(tokModel, "tokenizer.model"),
    ]);
    assert(tk.code === 1, `tokenize: exit ${tk.code}: ${tk.err}`);
    assert(/is the --model's tokenizer\.model file/.test(tk.err), tk.err);
    deepStrictEqual(
      await Deno.readFile(join(tokModel, "tokenizer.model")),
      await Deno.readFile(join(TINY, "tokenizer.model")),
    );
    // train into its own base model's dir, even with --force
    const model = join(dir, "model");
    await Deno.mkdir(model);
    for (const f of Deno.readDirSync(TINY)) {
      await Deno.copyFile(join(TINY, f.name), join(model, f.name));
    }
    const before = names(model);
    const t = await runCli([
      "stage",
      "train",
      "--model",
      model,
      "--config",
      join(FIX, "torch", "sft.yaml"),
      "--train",
      join(FIX, "tiny-train", "data.jsonl"),
      "--out",
      model,
      "--force",
    ]);
    assert(t.code === 1, `train: exit ${t.code}: ${t.err}`);
    assert(/^error: --out \S+ is the --model dir/.test(t.err.trim()), t.err);
    deepStrictEqual(names(model), before);
    // evaluate re-scoring its own predictions.jsonl into the same dir would replace them
    const ev = join(dir, "ev"), preds = join(ev, "predictions.jsonl");
    await Deno.mkdir(ev);
    const mine = '{"index":0,"prediction":"a b","label":"a b","note":"mine"}\n';
    await Deno.writeTextFile(preds, mine);
    const r = await runCli(["stage", "evaluate", "--metrics-only", "--in", preds, "--out", ev]);
    assert(r.code === 1, `evaluate: exit ${r.code}: ${r.err}`);
    assert(/^error: evaluate's output \S+ is the --in file/.test(r.err.trim()), r.err);
    deepStrictEqual(await Deno.readTextFile(preds), mine);
    deepStrictEqual(names(ev), ["predictions.jsonl"]);
  });
});

Deno.test("claimOutputDir and isInside, the rules themselves", async () => {
  assert(isInside("/a/b/c", "/a/b") && isInside("/a/b", "/a/b"));
  assert(!isInside("/a/bc", "/a/b") && !isInside("/a", "/a/b") && !isInside("/a/..b", "/a/b"));
  await withTempDir(async (dir) => {
    await claimOutputDir(join(dir, "new"), "x");
    await claimOutputDir(dir, "x");
    const f = join(dir, "file");
    await Deno.writeTextFile(f, "");
    await rejects(() => claimOutputDir(f, "x"), refused(/is a file, expected a directory/));
    await rejects(() => claimOutputDir(dir, "x"), refused(/holds files x did not write \(file\)/));
    await claimOutputDir(dir, "x", { legacy: (n) => n.includes("file") });
    await markOutputDir(dir, "x");
    await claimOutputDir(dir, "x");
    await rejects(() => claimOutputDir(dir, "y"), refused(/it is an output of x, not of y/));
  });
});
