/**
 * Running a Python peer (numpy / PyTorch CPU) for a benchmark. Peers live in
 * tools/peers/ and use the tools virtualenv (.venv-tools); without it the
 * bench prints our figures and says the peer is unavailable.
 */
const PYTHON = new URL("../.venv-tools/bin/python", import.meta.url).pathname;

/** Run `tools/peers/<script>` with JSON args; it prints one JSON object on its last stdout line. */
export async function runPeer(
  script: string,
  args: unknown,
): Promise<Record<string, unknown> | undefined> {
  try {
    await Deno.stat(PYTHON);
  } catch {
    console.log(`  (peer ${script}: .venv-tools missing — see tools/README.md)`);
    return undefined;
  }
  const path = new URL(`../tools/peers/${script}`, import.meta.url).pathname;
  const out = await new Deno.Command(PYTHON, {
    args: [path, JSON.stringify(args)],
    env: { OMP_NUM_THREADS: "2", MKL_NUM_THREADS: "2" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    console.log(
      `  (peer ${script} failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()})`,
    );
    return undefined;
  }
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}
