/**
 * report.html: the pipeline report as one self-contained page — it opens
 * from disk, offline, with nothing fetched. Interactive charts (training
 * loss with eval loss, learning rate) drawn by uPlot (npm `uplot`, pinned in
 * deno.json, its script and stylesheet inlined), the metrics before and
 * after, sample predictions beside their labels with the differences marked
 * (./text_diff.ts), the step times and the config that ran.
 *
 * The page's numbers come from one JSON document embedded in it
 * (`<script type="application/json" id="report-data">`): `summary` is exactly
 * summary.json, `curves` the log history's points. tests/report_html_test.ts
 * reads it back; tools/render_report.ts renders the page in headless
 * Chromium and fails on any console error.
 */
import { count } from "../plural.ts";
import { createRequire } from "node:module";
import { escapeXml } from "./svg.ts";
import { diffText } from "./text_diff.ts";
import { METRIC_KEYS, missingNotes, type ReportData, type Summary } from "./report.ts";

/** What the page embeds: its charts and tables are drawn from this alone. */
export interface ReportPageData {
  summary: Summary;
  /** [step, value] points of the log history */
  curves: {
    loss: [number, number][];
    eval_loss: [number, number][];
    learning_rate: [number, number][];
  };
  samples: {
    index: number;
    prompt: string | null;
    label: string;
    before: string | null;
    after: string | null;
  }[];
  notes: string[];
  config: string | null;
}

const num = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

export function reportPageData(s: Summary, d: ReportData, samples = 5): ReportPageData {
  const points = (k: "loss" | "eval_loss" | "learning_rate") =>
    d.logHistory.filter((e) => num(e[k])).map((e) => [e.step, e[k] as number] as [number, number]);
  const before = new Map((d.before?.predictions ?? []).map((p) => [p.index, p]));
  const after = new Map((d.after?.predictions ?? []).map((p) => [p.index, p]));
  const indices = [...new Set([...after.keys(), ...before.keys()])].sort((a, b) => a - b)
    .slice(0, samples);
  return {
    summary: s,
    curves: {
      loss: points("loss"),
      eval_loss: points("eval_loss"),
      learning_rate: points("learning_rate"),
    },
    samples: indices.map((i) => {
      const b = before.get(i);
      const a = after.get(i);
      return {
        index: i,
        prompt: a?.prompt ?? b?.prompt ?? null,
        label: (a ?? b)!.label,
        before: b?.prediction ?? null,
        after: a?.prediction ?? null,
      };
    }),
    notes: missingNotes(d),
    config: d.configText ?? null,
  };
}

/** uPlot's script and stylesheet, from the npm package (fetched into Deno's cache on first use). */
async function uplotAssets(): Promise<{ js: string; css: string; version: string }> {
  await import("uplot"); // puts the package in Deno's npm cache; the files are read below
  const require = createRequire(import.meta.url);
  const pkg = JSON.parse(await Deno.readTextFile(require.resolve("uplot/package.json")));
  return {
    js: await Deno.readTextFile(require.resolve("uplot/dist/uPlot.iife.min.js")),
    css: await Deno.readTextFile(require.resolve("uplot/dist/uPlot.min.css")),
    version: String(pkg.version),
  };
}

const h = escapeXml;

function f(v: number | null | undefined, digits = 2): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
}

/** The prediction with its differences from the label marked. */
function diffHtml(label: string, prediction: string): string {
  return diffText(label, prediction).map((p) =>
    p.op === "same"
      ? h(p.text)
      : p.op === "added"
      ? `<ins title="not in the label">${h(p.text)}</ins>`
      : `<del title="in the label, missing here">${h(p.text)}</del>`
  ).join("");
}

const STYLE = `
:root { color-scheme: light; --fg: #1b1f24; --muted: #5b6570; --line: #d8dee4; --bg2: #f6f8fa; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC",
  "WenQuanYi Micro Hei", "PingFang SC", "Microsoft YaHei", sans-serif;
  color: var(--fg); max-width: 1100px; margin: 2rem auto; padding: 0 1.25rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin: 2rem 0 .75rem;
  border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
.facts { color: var(--muted); margin: 0; } code { background: var(--bg2); padding: 0 .25em; border-radius: 3px; }
table { border-collapse: collapse; } th, td { padding: .3rem .8rem; border-bottom: 1px solid var(--line); }
th { text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #1a7f37; } .down { color: #cf222e; }
.kpis { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
.kpi { background: var(--bg2); border-radius: 6px; padding: .6rem 1rem; min-width: 10rem; }
.kpi b { display: block; font-size: 1.25rem; } .kpi span { color: var(--muted); font-size: .85rem; }
.chart { margin: .5rem 0 1.5rem; min-height: 320px; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; border-radius: 6px; padding: .4rem .8rem; }
.sample { border: 1px solid var(--line); border-radius: 6px; padding: .6rem 1rem; margin: .75rem 0; }
.sample dl { display: grid; grid-template-columns: 5.5rem 1fr; gap: .25rem .75rem; margin: .4rem 0 0; }
.sample dt { color: var(--muted); } .sample dd { margin: 0; white-space: pre-wrap; word-break: break-word; }
ins { background: #dafbe1; text-decoration: none; } del { background: #ffebe9; color: #82071e; }
.legend-key { font-size: .85rem; color: var(--muted); }
pre { background: var(--bg2); padding: .75rem 1rem; border-radius: 6px; overflow: auto; font-size: 13px; }
`;

/** Draws the charts from the embedded data; runs in the page. */
const APP = `
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  // Learning rates are ~1e-3..1e-6: uPlot's default labels would round them to 0.
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    var a = Math.abs(v);
    return v === 0 ? "0" : a < 1e-2 || a >= 1e5 ? v.toExponential(2) : String(+v.toPrecision(4));
  }
  // Steps are whole numbers: ticks at 1, 2, 5 × 10^k only.
  var STEP_INCRS = [];
  for (var k = 0; k < 9; k++) [1, 2, 5].forEach(function (m) { STEP_INCRS.push(m * Math.pow(10, k)); });
  function aligned(seriesList) {
    var steps = [];
    seriesList.forEach(function (pts) { pts.forEach(function (p) { steps.push(p[0]); }); });
    steps = Array.from(new Set(steps)).sort(function (a, b) { return a - b; });
    var cols = [steps];
    seriesList.forEach(function (pts) {
      var byStep = new Map(pts.map(function (p) { return [p[0], p[1]]; }));
      cols.push(steps.map(function (s) { return byStep.has(s) ? byStep.get(s) : null; }));
    });
    return cols;
  }
  function draw(id, title, yLabel, defs) {
    var el = document.getElementById(id);
    var present = defs.filter(function (d) { return d.points.length > 0; });
    if (present.length === 0) { el.textContent = "No " + title.toLowerCase() + " was logged."; return null; }
    var opts = {
      title: title,
      width: Math.max(320, el.clientWidth),
      height: 320,
      scales: { x: { time: false } },
      axes: [
        { label: "step", incrs: STEP_INCRS },
        { label: yLabel, size: 80, values: function (u, vals) { return vals.map(fmt); } },
      ],
      series: [{ label: "step" }].concat(present.map(function (d) {
        return { label: d.label, stroke: d.color, width: 2, spanGaps: true,
          value: function (u, v) { return fmt(v); },
          points: { show: d.points.length < 60, size: 6, fill: d.color } };
      })),
    };
    var plot = new uPlot(opts, aligned(present.map(function (d) { return d.points; })), el);
    el.dataset.drawn = "true";
    return plot;
  }
  var c = data.curves;
  var plots = [
    draw("loss-chart", "Loss", "loss", [
      { label: "training loss", color: "#1f77b4", points: c.loss },
      { label: "eval loss", color: "#d62728", points: c.eval_loss },
    ]),
    draw("lr-chart", "Learning rate", "learning rate", [
      { label: "learning rate", color: "#2ca02c", points: c.learning_rate },
    ]),
  ];
  window.addEventListener("resize", function () {
    plots.forEach(function (p) {
      if (p) p.setSize({ width: Math.max(320, p.root.parentNode.clientWidth), height: 320 });
    });
  });
})();
`;

/** The whole page. */
export async function renderReportHtml(s: Summary, d: ReportData, samples = 5): Promise<string> {
  const data = reportPageData(s, d, samples);
  const uplot = await uplotAssets();
  const title = s.pipeline ? `Pipeline ${s.pipeline}` : "Training run";
  const out: string[] = [];
  out.push(
    "<!doctype html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    `<title>${h(title)}: report</title>`,
    `<style>/* uPlot ${h(uplot.version)}, MIT License, (c) Leon Sorokin */\n${uplot.css}</style>`,
    `<style>${STYLE}</style>`,
    "</head>",
    "<body>",
    `<h1>${h(title)}: report</h1>`,
  );
  const facts = [
    s.run_dir && `run directory <code>${h(s.run_dir)}</code>`,
    s.mode && `mode <b>${h(s.mode)}</b>`,
    s.config && `config <code>${h(s.config)}</code>`,
  ].filter(Boolean);
  if (facts.length) out.push(`<p class="facts">${facts.join(" · ")}</p>`);

  const ratio = s.train_loss_ratio === null ? "–" : `×${s.train_loss_ratio.toFixed(3)}`;
  out.push(
    '<div class="kpis">',
    `<div class="kpi"><span>training loss</span><b>${f(s.train_loss_first, 4)} → ${
      f(s.train_loss_last, 4)
    }</b><span>${ratio} over ${count(s.train_steps, "step")}</span></div>`,
    `<div class="kpi"><span>eval loss (teacher-forced)</span><b>${f(s.eval_loss_first, 4)} → ${
      f(s.eval_loss_last, 4)
    }</b></div>`,
    `<div class="kpi"><span>ROUGE-L before → after</span><b>${f(s.metrics_before?.["rouge-l"])} → ${
      f(s.metrics_after?.["rouge-l"])
    }</b></div>`,
    `<div class="kpi"><span>training speed</span><b>${
      s.tokens_per_second === null ? "–" : Math.round(s.tokens_per_second)
    } tokens/s</b><span>${
      s.train_runtime_seconds === null ? "–" : s.train_runtime_seconds.toFixed(1)
    } s of training</span></div>`,
    "</div>",
  );

  out.push("<h2>Metrics</h2>", '<table id="metrics">', "<thead><tr>");
  out.push("<th></th><th>before training</th><th>after training</th><th>change</th></tr></thead>");
  out.push("<tbody>");
  for (const k of METRIC_KEYS) {
    const digits = k === "bleu-4" ? 4 : 2;
    const b = s.metrics_before?.[k] ?? null;
    const a = s.metrics_after?.[k] ?? null;
    const delta = b !== null && a !== null ? a - b : null;
    const cls = delta === null || delta === 0 ? "" : delta > 0 ? "up" : "down";
    out.push(
      `<tr data-metric="${k}"><th>${k.toUpperCase()}${k === "bleu-4" ? " (0–1)" : ""}</th>` +
        `<td class="n">${f(b, digits)}</td><td class="n">${f(a, digits)}</td>` +
        `<td class="n ${cls}">${
          delta === null ? "–" : `${delta > 0 ? "+" : ""}${delta.toFixed(digits)}`
        }</td></tr>`,
    );
  }
  out.push(
    `<tr><th>examples</th><td class="n">${s.metrics_before?.examples ?? "–"}</td><td class="n">${
      s.metrics_after?.examples ?? "–"
    }</td><td></td></tr>`,
    "</tbody></table>",
  );
  for (const n of data.notes) out.push(`<p class="note">note: ${h(n)}</p>`);

  out.push(
    "<h2>Training</h2>",
    '<div id="loss-chart" class="chart"></div>',
    '<div id="lr-chart" class="chart"></div>',
  );

  if (data.samples.length) {
    out.push(
      "<h2>Sample predictions</h2>",
      '<p class="legend-key">Each prediction is compared with its label character by character: ' +
        "<ins>added</ins> characters are not in the label, <del>struck</del> ones are in the " +
        "label but missing from the prediction.</p>",
    );
    for (const p of data.samples) {
      out.push(`<div class="sample" data-index="${p.index}"><b>Record ${p.index}</b><dl>`);
      if (p.prompt !== null) out.push(`<dt>prompt</dt><dd><code>${h(p.prompt)}</code></dd>`);
      out.push(`<dt>label</dt><dd>${h(p.label) || "<i>(empty)</i>"}</dd>`);
      for (const [name, pred] of [["before", p.before], ["after", p.after]] as const) {
        out.push(`<dt>${name}</dt><dd>${pred === null ? "–" : diffHtml(p.label, pred)}</dd>`);
      }
      out.push("</dl></div>");
    }
  }

  const timed = Object.entries(s.step_seconds);
  if (timed.length) {
    out.push(
      "<h2>Steps</h2>",
      "<table><thead><tr><th>step</th><th>seconds</th></tr></thead><tbody>",
    );
    for (const [name, sec] of timed) {
      out.push(`<tr><td>${h(name)}</td><td class="n">${f(sec, 1)}</td></tr>`);
    }
    out.push(
      `<tr><th>all</th><td class="n">${f(s.wall_seconds, 1)}</td></tr>`,
      "</tbody></table>",
    );
  }
  if (data.config !== null) out.push("<h2>Config</h2>", `<pre>${h(data.config.trimEnd())}</pre>`);

  // In a <script> element only "</script" (any case) and "<!--" could end or upset it.
  const json = JSON.stringify(data).replace(/</g, "\\u003c");
  out.push(
    `<script type="application/json" id="report-data">${json}</script>`,
    `<script>/* uPlot ${h(uplot.version)}, MIT License, (c) Leon Sorokin */\n${uplot.js}</script>`,
    `<script>${APP}</script>`,
    "</body>",
    "</html>",
    "",
  );
  return out.join("\n");
}
