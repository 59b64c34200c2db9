/**
 * Checks of the code's shape that anyone can run:
 *
 *   deno run --allow-read tools/check_layout.ts
 *
 * - no file in lib/model/ (subfolders included) is longer than MAX_MODEL_LINES;
 * - no import cycle in lib/: every `import` and `export … from` of a
 *   relative module counts, `import type` included (a type-only cycle still
 *   ties two modules together for a reader).
 *
 * Prints what it finds and exits 1 on a violation; tests/layout_test.ts runs
 * the same checks.
 */

export const MAX_MODEL_LINES = 600;

const ROOT = new URL("../", import.meta.url);

async function tsFiles(dir: URL): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) out.push(...await tsFiles(u));
    else if (e.name.endsWith(".ts")) out.push(u.pathname);
  }
  return out.sort();
}

/** Files of lib/model/ over the line limit, with their lengths. */
export async function longModelFiles(): Promise<Array<{ file: string; lines: number }>> {
  const out: Array<{ file: string; lines: number }> = [];
  for (const f of await tsFiles(new URL("lib/model/", ROOT))) {
    const text = await Deno.readTextFile(f);
    const lines = text.split("\n").length - (text.endsWith("\n") ? 1 : 0);
    if (lines > MAX_MODEL_LINES) out.push({ file: f.slice(ROOT.pathname.length), lines });
  }
  return out;
}

/** The relative modules a file imports or re-exports, resolved to paths. */
function importsOf(file: string, text: string): string[] {
  const out: string[] = [];
  const re = /(?:^|\n)\s*(?:import|export)\b[^;]*?\bfrom\s*["'](\.[^"']+)["']/g;
  for (const m of text.matchAll(re)) out.push(new URL(m[1], "file://" + file).pathname);
  // Side-effect imports: import "./x.ts";
  for (const m of text.matchAll(/(?:^|\n)\s*import\s*["'](\.[^"']+)["']/g)) {
    out.push(new URL(m[1], "file://" + file).pathname);
  }
  return out;
}

/** Every import cycle among lib/'s modules (one per strongly connected component). */
export async function importCycles(): Promise<string[][]> {
  const files = await tsFiles(new URL("lib/", ROOT));
  const graph = new Map<string, string[]>();
  for (const f of files) {
    const text = await Deno.readTextFile(f);
    graph.set(f, importsOf(f, text).filter((t) => t.startsWith(new URL("lib/", ROOT).pathname)));
  }
  // Tarjan's strongly connected components.
  let index = 0;
  const idx = new Map<string, number>(), low = new Map<string, number>();
  const stack: string[] = [], on = new Set<string>(), cycles: string[][] = [];
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        comp.push(w.slice(ROOT.pathname.length));
      } while (w !== v);
      const selfLoop = (graph.get(v) ?? []).includes(v);
      if (comp.length > 1 || selfLoop) cycles.push(comp.sort());
    }
  };
  for (const f of files) if (!idx.has(f)) visit(f);
  return cycles;
}

if (import.meta.main) {
  const long = await longModelFiles();
  const cycles = await importCycles();
  for (const l of long) console.log(`${l.file}: ${l.lines} lines (at most ${MAX_MODEL_LINES})`);
  for (const c of cycles) console.log(`import cycle in lib/: ${c.join(" ↔ ")}`);
  if (long.length === 0 && cycles.length === 0) {
    console.log(
      `ok: every file in lib/model/ within ${MAX_MODEL_LINES} lines; no import cycle in lib/`,
    );
  } else Deno.exit(1);
}
