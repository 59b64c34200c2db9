/**
 * Render a pipeline's report.html in headless Chromium, save a full-page PNG,
 * and fail if the page logs a console error, throws, fetches anything that
 * is not inside the file itself, or leaves a chart undrawn.
 *
 *   deno run -A tools/render_report.ts runs/lora/report.html /tmp/report.png [--width 1200]
 *
 * Needs Chromium (Debian: `apt-get install -y chromium`); not part of the
 * tests, which run where no browser is. Chromium runs with a fresh profile
 * and no network services, and is driven over the DevTools protocol: every
 * Runtime.consoleAPICalled of type error or assert, Runtime.exceptionThrown,
 * Log.entryAdded of level error and any request whose URL is not the page's
 * own file is reported. Prints one JSON line with what it found; exit 1 on
 * any problem.
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = [...Deno.args];
const widthAt = args.indexOf("--width");
const width = widthAt >= 0 ? Number(args.splice(widthAt, 2)[1]) : 1200;
const [page, png] = args;
if (!page || !png) {
  console.error("usage: deno run -A tools/render_report.ts REPORT.html OUT.png [--width 1200]");
  Deno.exit(2);
}

function findChromium(): string {
  for (const name of ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]) {
    for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
      try {
        if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
      } catch { /* not here */ }
    }
  }
  throw new Error("no Chromium found (Debian: apt-get install -y chromium)");
}

const profile = await Deno.makeTempDir({ prefix: "render-report-" });
const browser = new Deno.Command(findChromium(), {
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    `--user-data-dir=${profile}`,
    "--remote-debugging-port=0",
    `--window-size=${width},900`,
    "about:blank",
  ],
  stdout: "null",
  stderr: "piped",
}).spawn();

/** The browser's DevTools WebSocket URL, from the line Chromium prints on stderr. */
async function devtoolsUrl(): Promise<string> {
  const reader = browser.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    text += value;
    const m = /DevTools listening on (ws:\/\/\S+)/.exec(text);
    if (m) {
      // keep draining stderr so Chromium never blocks on a full pipe
      (async () => {
        while (!(await reader.read()).done) { /* discard */ }
      })();
      return m[1];
    }
  }
  throw new Error(`Chromium did not start:\n${text}`);
}

interface Message {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
}

const problems: string[] = [];
const requests: string[] = [];
let result: Record<string, unknown> = {};
try {
  const ws = new WebSocket(await devtoolsUrl());
  await new Promise((ok, fail) => {
    ws.onopen = ok;
    ws.onerror = () => fail(new Error("cannot connect to Chromium's DevTools"));
  });
  let nextId = 1;
  const pending = new Map<number, (m: Message) => void>();
  const listeners: ((m: Message) => void)[] = [];
  ws.onmessage = (ev) => {
    const m: Message = JSON.parse(ev.data);
    if (m.id !== undefined) pending.get(m.id)?.(m);
    else for (const l of listeners) l(m);
  };
  const send = (method: string, params: Record<string, unknown> = {}, sessionId?: string) =>
    new Promise<Record<string, unknown>>((ok, fail) => {
      const id = nextId++;
      pending.set(
        id,
        (m) => (m.error ? fail(new Error(`${method}: ${m.error.message}`)) : ok(m.result ?? {})),
      );
      ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });

  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true }) as {
    sessionId: string;
  };
  const url = pathToFileURL(resolve(page)).href;
  let loaded: () => void = () => {};
  const loadedP = new Promise<void>((ok) => (loaded = ok));
  listeners.push((m) => {
    if (m.sessionId !== sessionId) return;
    const p = m.params ?? {};
    if (m.method === "Page.loadEventFired") loaded();
    if (m.method === "Runtime.consoleAPICalled" && ["error", "assert"].includes(String(p.type))) {
      const args = (p.args as { value?: unknown; description?: string }[]) ?? [];
      problems.push(`console.${p.type}: ${args.map((a) => a.value ?? a.description).join(" ")}`);
    }
    if (m.method === "Runtime.exceptionThrown") {
      const d = p.exceptionDetails as { text: string; exception?: { description?: string } };
      problems.push(`uncaught: ${d.exception?.description ?? d.text}`);
    }
    if (m.method === "Log.entryAdded") {
      const e = p.entry as { level: string; text: string; url?: string };
      if (e.level === "error") problems.push(`log: ${e.text}${e.url ? ` (${e.url})` : ""}`);
    }
    if (m.method === "Network.requestWillBeSent") {
      const r = (p.request as { url: string }).url;
      if (r !== url && !r.startsWith("data:")) requests.push(r);
    }
  });
  for (const domain of ["Runtime", "Log", "Page", "Network"]) {
    await send(`${domain}.enable`, {}, sessionId);
  }
  await send("Emulation.setDeviceMetricsOverride", {
    width,
    height: 900,
    deviceScaleFactor: 1,
    mobile: false,
  }, sessionId);
  await send("Page.navigate", { url }, sessionId);
  await Promise.race([
    loadedP,
    new Promise((_, fail) => setTimeout(() => fail(new Error("the page did not load")), 30_000)),
  ]);
  await new Promise((r) => setTimeout(r, 500)); // the charts draw on load; let them settle
  const evaluated = await send("Runtime.evaluate", {
    expression: `JSON.stringify({
      charts: [...document.querySelectorAll(".chart")].map((e) => [e.id, e.dataset.drawn === "true"]),
      uplot: document.querySelectorAll(".uplot canvas").length,
      samples: document.querySelectorAll(".sample").length,
      marked: document.querySelectorAll(".sample ins, .sample del").length,
      metricsRows: document.querySelectorAll("#metrics tbody tr").length,
      height: document.documentElement.scrollHeight,
    })`,
    returnByValue: true,
  }, sessionId);
  const page_ = JSON.parse((evaluated.result as { value: string }).value);
  for (const [id, drawn] of page_.charts as [string, boolean][]) {
    if (!drawn) problems.push(`chart #${id} was not drawn`);
  }
  await send("Emulation.setDeviceMetricsOverride", {
    width,
    height: page_.height,
    deviceScaleFactor: 1,
    mobile: false,
  }, sessionId);
  const shot = await send("Page.captureScreenshot", { format: "png" }, sessionId);
  const bytes = Uint8Array.from(atob(shot.data as string), (c) => c.charCodeAt(0));
  await Deno.writeFile(png, bytes);
  for (const r of requests) problems.push(`fetched ${r} (the page must be self-contained)`);
  const version = await send("Browser.getVersion");
  result = {
    page,
    png,
    browser: version.product,
    width,
    height: page_.height,
    png_bytes: bytes.length,
    charts: page_.charts,
    uplot_canvases: page_.uplot,
    samples: page_.samples,
    marked_differences: page_.marked,
    metric_rows: page_.metricsRows,
    problems,
  };
  ws.close();
} catch (e) {
  problems.push((e as Error).message);
  result = { page, problems };
} finally {
  try {
    browser.kill("SIGTERM");
  } catch { /* already gone */ }
  await browser.status;
  await Deno.remove(profile, { recursive: true }).catch(() => {});
}
console.log(JSON.stringify(result));
Deno.exit(problems.length ? 1 : 0);
