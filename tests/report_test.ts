import assert from "node:assert";
import { join } from "node:path";
import { UserError } from "../lib/errors.ts";
import {
  buildSummary,
  type LogEntry,
  lossChart,
  METRIC_KEYS,
  readLogHistory,
  type ReportData,
  writeReport,
} from "../lib/pipeline/report.ts";
import { escapeXml, lineChart, niceTicks } from "../lib/pipeline/svg.ts";
import type { ReportPageData } from "../lib/pipeline/report_html.ts";
import { diffText } from "../lib/pipeline/text_diff.ts";
import { main as reportMain } from "../stages/report.ts";

/**
 * Well-formedness of an XML fragment: one root, every tag closed in order,
 * attributes quoted and unique, only the five predefined entities. Returns the
 * elements in document order.
 */
function parseXml(text: string): { name: string; attrs: Record<string, string> }[] {
  const elements: { name: string; attrs: Record<string, string> }[] = [];
  const stack: string[] = [];
  let roots = 0;
  const checkText = (t: string) => {
    assert.ok(!/&(?!(amp|lt|gt|quot|apos);)/.test(t), `bad entity in ${JSON.stringify(t)}`);
  };
  const re = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+\s*=\s*"[^"<]*")*)\s*(\/?)>|([^<]+)|(<)/g;
  for (const m of text.matchAll(re)) {
    if (m[6]) assert.fail(`stray "<" at ${m.index}: ${text.slice(m.index!, m.index! + 40)}`);
    if (m[5] !== undefined) {
      if (stack.length === 0) assert.ok(m[5].trim() === "", `text outside the root: ${m[5]}`);
      checkText(m[5]);
      continue;
    }
    const [, close, name, attrText, selfClose] = m;
    if (close) {
      assert.strictEqual(stack.pop(), name, `</${name}> closes another element`);
      continue;
    }
    if (stack.length === 0) roots++;
    const attrs: Record<string, string> = {};
    for (const a of attrText.matchAll(/([\w:-]+)\s*=\s*"([^"]*)"/g)) {
      assert.ok(!(a[1] in attrs), `duplicate attribute ${a[1]} on <${name}>`);
      checkText(a[2]);
      attrs[a[1]] = a[2];
    }
    elements.push({ name, attrs });
    if (!selfClose) stack.push(name);
  }
  assert.deepStrictEqual(stack, [], "unclosed elements");
  assert.strictEqual(roots, 1, "exactly one root element");
  return elements;
}

/** Points of a path's `d` (absolute M/L commands, as the chart writes them). */
function pathPoints(d: string): [number, number][] {
  return [...d.matchAll(/[ML](-?[\d.]+) (-?[\d.]+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
}

Deno.test("niceTicks: round steps covering the range", () => {
  assert.deepStrictEqual(niceTicks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
  assert.deepStrictEqual(niceTicks(0.3, 6.54, 5), [0, 2, 4, 6, 8]);
  const t = niceTicks(10, 300);
  assert.ok(t[0] <= 10 && t[t.length - 1] >= 300, `${t}`);
  // a single value still gets an interval around it
  const one = niceTicks(5, 5);
  assert.ok(one[0] < 5 && one[one.length - 1] > 5, `${one}`);
});

Deno.test("lineChart: well-formed SVG, one path point per value, in order, inside the plot", () => {
  const train: [number, number][] = Array.from(
    { length: 30 },
    (_, i) => [(i + 1) * 10, 7 / (i + 1)],
  );
  const evals: [number, number][] = [[100, 3], [200, 1.5], [300, 1]];
  const svg = lineChart([
    { name: "training <loss> & co", points: train },
    { name: "eval loss", points: evals, markers: true },
  ], { title: "Loss", xLabel: "step", yLabel: "loss" });
  const els = parseXml(svg);
  assert.strictEqual(els[0].name, "svg");
  assert.strictEqual(els[0].attrs.xmlns, "http://www.w3.org/2000/svg");
  const series = els.filter((e) => e.name === "path" && e.attrs.class === "series");
  assert.strictEqual(series.length, 2);
  assert.strictEqual(series[0].attrs["data-name"], escapeXml("training <loss> & co"));
  const p0 = pathPoints(series[0].attrs.d);
  const p1 = pathPoints(series[1].attrs.d);
  assert.strictEqual(p0.length, 30);
  assert.strictEqual(p1.length, 3);
  assert.strictEqual(els.filter((e) => e.name === "circle").length, 3, "markers for eval only");
  const W = Number(els[0].attrs.width);
  const H = Number(els[0].attrs.height);
  for (const [x, y] of [...p0, ...p1]) assert.ok(x >= 0 && x <= W && y >= 0 && y <= H);
  // x grows with the step, and a falling loss is drawn going down (SVG y grows downwards)
  for (let i = 1; i < p0.length; i++) {
    assert.ok(p0[i][0] > p0[i - 1][0]);
    assert.ok(p0[i][1] > p0[i - 1][1]);
  }
  // the legend text is escaped
  assert.ok(svg.includes("training &lt;loss&gt; &amp; co"));
});

Deno.test("lineChart: non-finite points are dropped, empty series draw nothing", () => {
  const svg = lineChart([
    { name: "a", points: [[1, 2], [2, NaN], [3, 1]] },
    { name: "b", points: [] },
  ]);
  const series = parseXml(svg).filter((e) => e.name === "path" && e.attrs.class === "series");
  assert.strictEqual(series.length, 1);
  assert.strictEqual(pathPoints(series[0].attrs.d).length, 2);
  parseXml(lineChart([]));
});

const LOG: LogEntry[] = [
  { loss: 6, grad_norm: 1, learning_rate: 1e-3, epoch: 0.1, step: 10 },
  { loss: 4, grad_norm: 1, learning_rate: 1e-3, epoch: 0.2, step: 20 },
  { eval_loss: 3.5, epoch: 0.2, step: 20 },
  { loss: 2, grad_norm: 1, learning_rate: 1e-3, epoch: 0.3, step: 30 },
  { loss: 1.5, grad_norm: 1, learning_rate: 1e-3, epoch: 0.4, step: 40 },
  { eval_loss: 1.25, epoch: 0.4, step: 40 },
  { epoch: 0.4, step: 40, train_runtime: 80, train_steps_per_second: 0.5, train_loss: 3.375 },
];

const metrics = (r: number, b: number) => ({
  "rouge-1": r + 5,
  "rouge-2": r - 5,
  "rouge-l": r,
  "bleu-4": b,
  examples: 4,
});

Deno.test("buildSummary: losses, metrics, tokens/s and wall time from synthetic inputs", () => {
  const d: ReportData = {
    pipeline: "lora",
    trainDir: "t",
    logHistory: LOG,
    recordsPerStep: 8,
    meanRecordTokens: 50,
    before: { dir: "b", metrics: metrics(10, 0.05), predictions: [] },
    after: { dir: "a", metrics: metrics(80, 0.7), predictions: [] },
    stepSeconds: { convert: 0.5, train: 80, "evaluate-after": 9.5 },
  };
  const s = buildSummary(d);
  assert.strictEqual(s.train_loss_first, 6);
  assert.strictEqual(s.train_loss_last, 1.5);
  assert.strictEqual(s.train_loss_ratio, 0.25);
  assert.strictEqual(s.eval_loss_first, 3.5);
  assert.strictEqual(s.eval_loss_last, 1.25);
  assert.strictEqual(s.train_steps, 40);
  assert.strictEqual(s.train_runtime_seconds, 80);
  assert.strictEqual(s.tokens_per_second, (40 * 8 * 50) / 80);
  assert.strictEqual(s.wall_seconds, 90);
  for (const k of METRIC_KEYS) {
    assert.strictEqual(s.metrics_before![k], d.before!.metrics[k]);
    assert.strictEqual(s.metrics_after![k], d.after!.metrics[k]);
  }
  // an unknown step time makes the wall time unknown rather than too small
  assert.strictEqual(
    buildSummary({ ...d, stepSeconds: { a: 1, b: null } }).wall_seconds,
    null,
  );
  // no training log: nulls, not NaN
  const empty = buildSummary({ trainDir: "t", logHistory: [], stepSeconds: {} });
  assert.strictEqual(empty.train_loss_first, null);
  assert.strictEqual(empty.tokens_per_second, null);
  assert.strictEqual(empty.metrics_after, null);
});

Deno.test("lossChart: a training-loss point per logged loss, an eval point per eval", () => {
  const series = parseXml(lossChart(LOG)).filter((e) => e.name === "path" && e.attrs.class);
  assert.deepStrictEqual(series.map((e) => pathPoints(e.attrs.d).length), [4, 2]);
});

async function writeFixtureRun(dir: string): Promise<void> {
  const w = (p: string, v: unknown) =>
    Deno.writeTextFile(join(dir, p), typeof v === "string" ? v : JSON.stringify(v));
  for (const d of ["train", "before", "after", ".manifests"]) await Deno.mkdir(join(dir, d));
  await w("train/trainer_state.json", { global_step: 40, log_history: LOG });
  const preds = (kind: string) =>
    [0, 1, 2].map((i) =>
      JSON.stringify({
        index: i,
        prompt: `[gMASK]sop<|user|> \n 类型#裙*颜色#红色 ${i}<|assistant|>`,
        prediction: `${kind} ${i} | *x*`,
        label: `label ${i}`,
      }) + "\n"
    ).join("");
  await w("before/metrics.json", { ...metrics(10, 0.05), "bleu-4 (x100)": 5, eval_loss: null });
  await w("before/predictions.jsonl", preds("before"));
  await w("after/metrics.json", { ...metrics(80, 0.7), "bleu-4 (x100)": 70, eval_loss: null });
  await w("after/predictions.jsonl", preds("after"));
  await w(
    "train.masked.jsonl",
    '{"input_ids":[1,2,3,4],"labels":[-100,2,3,4]}\n{"input_ids":[1,2],"labels":[-100,2]}\n',
  );
  await w("config.yaml", await Deno.readTextFile(new URL("../configs/lora.yaml", import.meta.url)));
  const t0 = Date.parse("2026-01-01T00:00:00Z");
  for (
    const [i, [step, seconds]] of ([["convert", 1], ["train", 80], ["evaluate-after", 4]] as const)
      .entries()
  ) {
    await w(`.manifests/${step}.json`, {
      version: 1,
      step,
      finished: new Date(t0 + i * 1000).toISOString(),
      seconds,
    });
  }
  // a report manifest left by an earlier run does not count
  await w(".manifests/report.json", {
    step: "report",
    finished: new Date(t0 + 9e3).toISOString(),
    seconds: 1e6,
  });
}

Deno.test("report stage: summary.json fields and report.md sections from a run dir", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFixtureRun(dir);
    const rc = await reportMain([
      "--train",
      join(dir, "train"),
      "--before",
      join(dir, "before"),
      "--after",
      join(dir, "after"),
      "--config",
      join(dir, "config.yaml"),
      "--train-data",
      join(dir, "train.masked.jsonl"),
      "--run",
      dir,
      "--pipeline",
      "lora",
      "--samples",
      "2",
      "--summary",
      join(dir, "summary.json"),
      "--report",
      join(dir, "report.md"),
    ]);
    assert.strictEqual(rc, 0);
    const s = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    for (
      const k of [
        "train_loss_first",
        "train_loss_last",
        "metrics_before",
        "metrics_after",
        "wall_seconds",
        "tokens_per_second",
      ]
    ) assert.ok(k in s, `summary.json lacks ${k}`);
    assert.strictEqual(s.mode, "lora");
    assert.strictEqual(s.train_loss_first, 6);
    assert.strictEqual(s.train_loss_last, 1.5);
    assert.strictEqual(s.metrics_after["rouge-l"], 80);
    assert.strictEqual(s.metrics_before["bleu-4"], 0.05);
    assert.strictEqual(s.wall_seconds, 85);
    assert.deepStrictEqual(Object.keys(s.step_seconds), ["convert", "train", "evaluate-after"]);
    // lora.yaml: batch 8 × accumulation 1; mean record length 3 tokens; 40 steps in 80 s
    assert.strictEqual(s.tokens_per_second, (40 * 8 * 3) / 80);

    const md = await Deno.readTextFile(join(dir, "report.md"));
    assert.match(md, /^# Pipeline lora: report/);
    assert.match(md, /\| ROUGE-L \| 10\.00 \| 80\.00 \|/);
    assert.match(md, /\| BLEU-4 \(0–1\) \| 0\.0500 \| 0\.7000 \|/);
    const svg = md.slice(md.indexOf("<svg"), md.indexOf("</svg>") + 6);
    parseXml(svg);
    // an HTML block in Markdown ends at a blank line
    assert.ok(!svg.includes("\n\n"));
    assert.match(md, /- before: before 0 \\\| \\\*x\\\*/);
    assert.match(md, /- after: after 1/);
    assert.ok(!md.includes("after 2"), "--samples 2 shows two records");
    assert.match(md, /```yaml\n[^]*peft_type: LORA/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: metrics.jsonl when there is no trainer_state.json; clear errors otherwise", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      join(dir, "metrics.jsonl"),
      LOG.map((e) => JSON.stringify(e) + "\n").join(""),
    );
    assert.deepStrictEqual(await readLogHistory(dir), LOG);
    await Deno.writeTextFile(join(dir, "metrics.jsonl"), '{"loss": 1, "step": 1}\n{oops\n');
    await assert.rejects(
      readLogHistory(dir),
      (e) => e instanceof UserError && /:2: /.test(e.message),
    );
    await Deno.remove(join(dir, "metrics.jsonl"));
    await assert.rejects(
      writeReport({
        trainDir: dir,
        summaryPath: join(dir, "s.json"),
        reportPath: join(dir, "r.md"),
      }),
      (e) => e instanceof UserError && /not a train output dir/.test(e.message),
    );
    await Deno.writeTextFile(
      join(dir, "metrics.jsonl"),
      LOG.map((e) => JSON.stringify(e)).join("\n"),
    );
    await Deno.mkdir(join(dir, "ev"));
    await Deno.writeTextFile(join(dir, "ev", "metrics.json"), '{"rouge-1": 1, "rouge-2": "high"}');
    await assert.rejects(
      writeReport({
        trainDir: dir,
        afterDir: join(dir, "ev"),
        summaryPath: join(dir, "s.json"),
        reportPath: join(dir, "r.md"),
      }),
      (e) =>
        e instanceof UserError &&
        /metrics\.json: rouge-2: expected a number, found "high"$/.test(e.message),
    );
    await assert.rejects(
      reportMain(["--train", dir]),
      (e) => e instanceof UserError && /--summary is required/.test(e.message),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: a null where an object belongs, a bad --run, outputs over the files it reads", async () => {
  const dir = await Deno.makeTempDir();
  const rejectsWith = (o: Partial<Parameters<typeof writeReport>[0]>, re: RegExp) =>
    assert.rejects(
      writeReport({
        trainDir: join(dir, "train"),
        summaryPath: join(dir, "s.json"),
        reportPath: join(dir, "r.md"),
        ...o,
      }),
      (e) => e instanceof UserError && re.test(e.message),
    );
  try {
    const train = join(dir, "train"), ev = join(dir, "ev"), run = join(dir, "run");
    for (const d of [train, ev, join(run, ".manifests")]) await Deno.mkdir(d, { recursive: true });
    const state = JSON.stringify({ global_step: 2, log_history: LOG });
    await Deno.writeTextFile(
      join(train, "trainer_state.json"),
      JSON.stringify({ global_step: 2, log_history: [...LOG, null] }),
    );
    await rejectsWith({}, new RegExp(`log_history\\[${LOG.length}\\]: expected an object$`));
    await Deno.writeTextFile(join(train, "trainer_state.json"), state);
    await Deno.writeTextFile(join(ev, "metrics.json"), JSON.stringify(metrics(50, 0.5)));
    await Deno.writeTextFile(join(ev, "predictions.jsonl"), "null\n");
    await rejectsWith({ afterDir: ev }, /predictions\.jsonl:1: expected a JSON object$/);
    await Deno.writeTextFile(join(run, ".manifests", "train.json"), "null");
    await rejectsWith({ runDir: run }, /train\.json: expected a JSON object \(a step manifest\)$/);
    await rejectsWith({ runDir: join(dir, "nope") }, /--run \S+nope: no such directory$/);
    // The files it reads are never what it writes.
    const kept = await Deno.readTextFile(join(ev, "metrics.json"));
    await rejectsWith(
      { summaryPath: join(train, "trainer_state.json") },
      /is the --train dir's trainer_state\.json file/,
    );
    await rejectsWith(
      { afterDir: ev, reportPath: join(ev, "metrics.json") },
      /is the --after dir's metrics\.json file/,
    );
    assert.strictEqual(await Deno.readTextFile(join(train, "trainer_state.json")), state);
    assert.strictEqual(await Deno.readTextFile(join(ev, "metrics.json")), kept);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("report: an evaluation of 0 records has no metrics: – in the report, a note, no failure", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFixtureRun(dir);
    // What evaluate writes for 0 records: no scores at all.
    await Deno.writeTextFile(
      join(dir, "before", "metrics.json"),
      JSON.stringify({ examples: 0, eval_loss: null, eval_tokens: 0, wall_seconds: 0.1 }),
    );
    await Deno.writeTextFile(join(dir, "before", "predictions.jsonl"), "");
    const args = [
      "--train",
      join(dir, "train"),
      "--before",
      join(dir, "before"),
      "--after",
      join(dir, "after"),
      "--summary",
      join(dir, "summary.json"),
      "--report",
      join(dir, "report.md"),
    ];
    const errs: string[] = [];
    const orig = console.error;
    console.error = (...a: unknown[]) => void errs.push(a.join(" "));
    let rc;
    try {
      rc = await reportMain(args);
    } finally {
      console.error = orig;
    }
    assert.strictEqual(rc, 0);
    const s = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    assert.deepStrictEqual(s.metrics_before, {
      examples: 0,
      "rouge-1": null,
      "rouge-2": null,
      "rouge-l": null,
      "bleu-4": null,
    });
    assert.strictEqual(s.metrics_after["rouge-l"], 80);
    const md = await Deno.readTextFile(join(dir, "report.md"));
    assert.match(md, /\| ROUGE-L \| – \| 80\.00 \|/);
    const note = `${join(dir, "before", "metrics.json")} has no rouge-1, rouge-2, rouge-l, ` +
      "bleu-4: no record was evaluated (examples: 0); shown as –";
    assert.ok(md.includes(`- **note:** ${note}`), md);
    assert.ok(errs.includes(`note: ${note}`), errs.join("\n"));
    assert.match(errs.at(-1)!, /ROUGE-L – → 80\.00/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The JSON the report page embeds, and the page without it. */
function pageData(html: string): ReportPageData {
  const m = /<script type="application\/json" id="report-data">([^<]*)<\/script>/.exec(html);
  assert.ok(m, "report.html embeds its data");
  return JSON.parse(m[1]);
}

Deno.test("report.html: self-contained; its embedded data is summary.json and the log history", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFixtureRun(dir);
    // A prediction that would end a <script> element if it were not escaped.
    await Deno.writeTextFile(
      join(dir, "after", "predictions.jsonl"),
      JSON.stringify({ index: 0, prediction: "裙子</script><b>x", label: "裙子很好看" }) + "\n",
    );
    const quiet = console.error;
    console.error = () => {};
    try {
      await reportMain([
        ...["--train", join(dir, "train"), "--before", join(dir, "before")],
        ...["--after", join(dir, "after"), "--config", join(dir, "config.yaml")],
        ...["--train-data", join(dir, "train.masked.jsonl"), "--run", dir, "--pipeline", "lora"],
        ...["--summary", join(dir, "summary.json"), "--report", join(dir, "report.md")],
        ...["--html", join(dir, "report.html")],
      ]);
    } finally {
      console.error = quiet;
    }
    const html = await Deno.readTextFile(join(dir, "report.html"));
    const summary = JSON.parse(await Deno.readTextFile(join(dir, "summary.json")));
    const data = pageData(html);
    assert.deepStrictEqual(data.summary, summary);
    const pts = (k: "loss" | "eval_loss" | "learning_rate") =>
      LOG.filter((e) => e[k] !== undefined).map((e) => [e.step, e[k]]);
    assert.deepStrictEqual(data.curves, {
      loss: pts("loss"),
      eval_loss: pts("eval_loss"),
      learning_rate: pts("learning_rate"),
    });
    assert.deepStrictEqual(data.samples[0], {
      index: 0,
      prompt: `[gMASK]sop<|user|> \n 类型#裙*颜色#红色 0<|assistant|>`,
      label: "裙子很好看",
      before: "before 0 | *x*",
      after: "裙子</script><b>x",
    });
    assert.ok(data.config?.includes("peft_type: LORA"));
    // Offline: nothing is fetched — no src or href at all — and uPlot is inlined.
    assert.ok(!/\s(src|href)\s*=/i.test(html), "no external resource");
    assert.ok(/<script>\/\* uPlot 1\.6\.\d+, MIT License/.test(html));
    assert.ok(html.includes("new uPlot(") && html.includes('id="loss-chart"'));
    // The tables show summary.json's numbers; the diff marks what the label lacks or has.
    assert.match(
      html,
      /<tr data-metric="rouge-l"><th>ROUGE-L<\/th><td class="n">10\.00<\/td><td class="n">80\.00<\/td><td class="n up">\+70\.00<\/td><\/tr>/,
    );
    assert.ok(
      html.includes(
        '<dd>裙子<del title="in the label, missing here">很好看</del>' +
          '<ins title="not in the label">&lt;/script&gt;&lt;b&gt;x</ins></dd>',
      ),
    );
    assert.strictEqual(html.match(/<script\b/g)!.length, 3, "the data, uPlot and the page's code");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("diffText: shared runs, additions and omissions in reading order", () => {
  assert.deepStrictEqual(diffText("abc", "abd"), [
    { op: "same", text: "ab" },
    { op: "missing", text: "c" },
    { op: "added", text: "d" },
  ]);
  assert.deepStrictEqual(diffText("这款裙子很好看", "这条裙子好看"), [
    { op: "same", text: "这" },
    { op: "missing", text: "款" },
    { op: "added", text: "条" },
    { op: "same", text: "裙子" },
    { op: "missing", text: "很" },
    { op: "same", text: "好看" },
  ]);
  assert.deepStrictEqual(diffText("", "x"), [{ op: "added", text: "x" }]);
  assert.deepStrictEqual(diffText("same", "same"), [{ op: "same", text: "same" }]);
  // astral characters are one character each
  assert.deepStrictEqual(diffText("a😀", "😀"), [
    { op: "missing", text: "a" },
    { op: "same", text: "😀" },
  ]);
});
