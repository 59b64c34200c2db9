/**
 * Running a Python peer (numpy / PyTorch CPU) for a benchmark. Peers live in
 * tools/peers/ and use GLM_PEER_PYTHON (an interpreter with torch,
 * transformers, peft, safetensors and numpy: a GPU machine's own python3,
 * say) or else the tools virtualenv (.venv-tools); without either the bench
 * prints our figures and says the peer is unavailable.
 */
const PYTHON = Deno.env.get("GLM_PEER_PYTHON") ||
  new URL("../.venv-tools/bin/python", import.meta.url).pathname;
const MAKE_VENV = "python3 -m venv .venv-tools && .venv-tools/bin/pip install torch " +
  "transformers==5.18.0 peft safetensors numpy";

/** Run `tools/peers/<script>` with JSON args; it prints one JSON object on its last stdout line. */
export async function runPeer(
  script: string,
  args: unknown,
): Promise<Record<string, unknown> | undefined> {
  if (!Deno.env.get("GLM_PEER_PYTHON")) {
    try {
      await Deno.stat(PYTHON);
    } catch {
      console.log(
        `  (peer ${script}: no .venv-tools — make it with \`${MAKE_VENV}\`, or set GLM_PEER_PYTHON)`,
      );
      return undefined;
    }
  }
  const path = new URL(`../tools/peers/${script}`, import.meta.url).pathname;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(PYTHON, {
      args: [path, JSON.stringify(args)],
      env: { OMP_NUM_THREADS: "2", MKL_NUM_THREADS: "2" },
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    console.log(`  (peer ${script}: cannot run ${PYTHON}: ${(e as Error).message})`);
    return undefined;
  }
  if (!out.success) {
    console.log(
      `  (peer ${script} failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()})`,
    );
    return undefined;
  }
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}
