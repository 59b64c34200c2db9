/**
 * Convert throughput and memory: a ~200 MB raw data set (ZhipuAI/OpenAI
 * `messages` records with tool calls and Chinese text), as JSON Lines and as one
 * JSON array, converted by the CLI in a subprocess; prints MB/s and the peak
 * resident set size, which must stay under 200 MB however large the file.
 */
const ROOT = new URL("../", import.meta.url).pathname;
const TARGET_MB = Number(Deno.env.get("CONVERT_BENCH_MB") ?? 200);

function record(n: number): unknown {
  return {
    messages: [
      { role: "system", content: "你是一个乐于助人的助手，回答要简洁。" },
      {
        role: "user",
        content: `第 ${n} 个问题：北京明天的天气怎么样？` + "请详细说明。".repeat(20),
      },
      {
        role: "assistant",
        tool_calls: [{
          id: `call_${n}`,
          type: "function",
          function: {
            name: "get_weather",
            arguments: JSON.stringify({ city: "北京", day: n % 7 }),
          },
        }],
      },
      {
        role: "tool",
        tool_call_id: `call_${n}`,
        content: JSON.stringify({ city: "北京", forecast: [{ temp: [n % 30, 30], sky: "晴" }] }),
      },
      { role: "assistant", content: `明天北京晴。` + "Sunny and mild tomorrow. ".repeat(12) },
    ],
  };
}

async function generate(path: string, array: boolean): Promise<number> {
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const enc = new TextEncoder();
  let bytes = 0;
  let n = 0;
  if (array) bytes += await f.write(enc.encode("[\n"));
  while (bytes < TARGET_MB * 1e6) {
    const parts: string[] = [];
    for (let k = 0; k < 1000; k++, n++) {
      const sep = array ? (n === 0 ? "  " : ",\n  ") : "";
      parts.push(sep + JSON.stringify(record(n)) + (array ? "" : "\n"));
    }
    const b = enc.encode(parts.join(""));
    await f.write(b);
    bytes += b.length;
  }
  if (array) bytes += await f.write(enc.encode("\n]\n"));
  f.close();
  return bytes;
}

/** Run a command, polling its peak RSS (VmHWM) from /proc. */
async function measure(
  args: string[],
): Promise<{ seconds: number; peakMB: number; stderr: string }> {
  const t0 = performance.now();
  const p = new Deno.Command(Deno.execPath(), { args, stdout: "null", stderr: "piped" }).spawn();
  let peak = 0;
  let running = true;
  const poll = (async () => {
    while (running) {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(await Deno.readTextFile(`/proc/${p.pid}/status`));
        if (m) peak = Math.max(peak, Number(m[1]) / 1024);
      } catch { /* exited */ }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const o = await p.output();
  running = false;
  await poll;
  const stderr = new TextDecoder().decode(o.stderr);
  if (o.code !== 0) throw new Error(`convert failed (${o.code}): ${stderr}`);
  return { seconds: (performance.now() - t0) / 1000, peakMB: peak, stderr };
}

export async function run(): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    for (
      const [kind, ext, array] of [["JSON Lines", "jsonl", false], [
        "JSON array",
        "json",
        true,
      ]] as const
    ) {
      const raw = `${dir}/raw.${ext}`;
      const bytes = await generate(raw, array);
      const r = await measure([
        "run",
        "-A",
        `${ROOT}cli.ts`,
        "stage",
        "convert",
        "--in",
        raw,
        "--out",
        `${dir}/conv.jsonl`,
      ]);
      const mb = bytes / 1e6;
      console.log(
        `convert ${kind}: ${mb.toFixed(0)} MB in ${r.seconds.toFixed(2)} s = ${
          (mb / r.seconds).toFixed(1)
        } MB/s, ` +
          `peak RSS ${r.peakMB.toFixed(0)} MB (limit 200 MB: ${
            r.peakMB < 200 ? "ok" : "EXCEEDED"
          })`,
      );
      await Deno.remove(raw);
      await Deno.remove(`${dir}/conv.jsonl`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await run();
