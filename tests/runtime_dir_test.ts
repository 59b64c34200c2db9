/**
 * lib/gpu/runtime_dir.ts: a private XDG_RUNTIME_DIR before the GPU drivers
 * load, so libwayland never prints "error: XDG_RUNTIME_DIR is invalid or not
 * set in the environment." on a run where nothing fails.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { ensureRuntimeDir } from "../lib/gpu/runtime_dir.ts";
import { withTempDir } from "./test_util.ts";

function fakeEnv(init: Record<string, string> = {}) {
  const vars = new Map(Object.entries(init));
  return { get: (k: string) => vars.get(k), set: (k: string, v: string) => void vars.set(k, v) };
}

Deno.test("runtime dir: set to a private directory when unset or unusable, kept when valid", async () => {
  const env = fakeEnv();
  const dir = ensureRuntimeDir(env)!;
  assertEquals(env.get("XDG_RUNTIME_DIR"), dir);
  const st = Deno.lstatSync(dir);
  assert(st.isDirectory && !st.isSymlink);
  assertEquals((st.mode ?? 0) & 0o777, 0o700);
  assertEquals(st.uid, Deno.uid());
  // The same directory on the next run, not a new one each time.
  assertEquals(ensureRuntimeDir(fakeEnv()), dir);
  for (const bad of ["", "relative/dir", "/no/such/runtime/dir"]) {
    const e = fakeEnv({ XDG_RUNTIME_DIR: bad });
    assertEquals(ensureRuntimeDir(e), dir, JSON.stringify(bad));
  }
  await withTempDir((own) => {
    const e = fakeEnv({ XDG_RUNTIME_DIR: own });
    assertEquals(ensureRuntimeDir(e), undefined);
    assertEquals(e.get("XDG_RUNTIME_DIR"), own);
    return Promise.resolve();
  });
});

Deno.test("runtime dir: acquiring the GPU with no XDG_RUNTIME_DIR sets one and prints nothing", async () => {
  const script = `
    import { getGpu } from "${new URL("../lib/gpu/device.ts", import.meta.url).href}";
    await getGpu();
    console.log(Deno.env.get("XDG_RUNTIME_DIR") ?? "unset");`;
  const env = Deno.env.toObject();
  delete env.XDG_RUNTIME_DIR;
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", script],
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(o.stdout).trim();
  const err = new TextDecoder().decode(o.stderr);
  assertEquals(o.code, 0, err);
  assert(out.startsWith("/") && Deno.statSync(out).isDirectory, out);
  assert(!err.includes("XDG_RUNTIME_DIR"), err);
});
