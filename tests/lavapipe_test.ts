/**
 * The kernels' subgroup and f16 paths (lib/gpu/features.ts), run where they
 * exist without a GPU: the kernel and model tests again in a subprocess on
 * lavapipe, Mesa's Vulkan driver on the CPU, which grants `subgroups`
 * (subgroups of 8) and `shader-f16`; Mesa's GL driver, the default adapter
 * here, has neither and runs the plain paths. tests/features_test.ts fails
 * in that subprocess unless both features are in force, so a pass here means
 * the paths ran.
 *
 * Lavapipe is found installed (/usr/share/vulkan/icd.d/lvp_icd.*.json) or
 * unpacked in GLM_LAVAPIPE_DIR (.ci/run unpacks mesa-vulkan-drivers and
 * libvulkan1 there rather than installing them, which would make lavapipe
 * every test's adapter). Without it the test is skipped with a message.
 */
const TESTS = [
  "features_test.ts",
  "kernel_paths_test.ts",
  "rmsnorm_test.ts",
  "cross_entropy_test.ts",
  "attention_test.ts",
  "grad_norm_test.ts",
  "matmul_test.ts",
  "embedding_test.ts",
  "sampling_test.ts",
  "loop_budget_test.ts",
  "glm_gpu_test.ts",
  "generate_test.ts",
  "generate_chunks_test.ts",
];

/** The environment that selects lavapipe, or why there is none. */
async function lavapipeEnv(): Promise<Record<string, string> | string> {
  try {
    for await (const e of Deno.readDir("/usr/share/vulkan/icd.d")) {
      if (/^lvp_icd\..*\.json$/.test(e.name)) return { DENO_WEBGPU_BACKEND: "vulkan" };
    }
  } catch {
    // No system ICDs.
  }
  const dir = Deno.env.get("GLM_LAVAPIPE_DIR");
  if (!dir) {
    return "lavapipe not found: install mesa-vulkan-drivers, or unpack it and libvulkan1 " +
      "into a directory named by GLM_LAVAPIPE_DIR (as .ci/run does)";
  }
  let lib: string | undefined;
  const walk = async (d: string): Promise<void> => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (e.name === "libvulkan_lvp.so") lib = p;
    }
  };
  await walk(dir);
  if (!lib) return `GLM_LAVAPIPE_DIR=${dir} holds no libvulkan_lvp.so`;
  const icd = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(
    icd,
    JSON.stringify({
      file_format_version: "1.0.0",
      ICD: { library_path: lib, api_version: "1.1.0" },
    }),
  );
  const libDir = lib.slice(0, lib.lastIndexOf("/"));
  const ld = Deno.env.get("LD_LIBRARY_PATH");
  return {
    DENO_WEBGPU_BACKEND: "vulkan",
    VK_DRIVER_FILES: icd,
    VK_ICD_FILENAMES: icd,
    LD_LIBRARY_PATH: ld ? `${libDir}:${ld}` : libDir,
  };
}

const env = await lavapipeEnv();
if (typeof env === "string") console.log(`lavapipe_test: skipped: ${env}`);

Deno.test({
  name: "lavapipe: kernel and model tests with subgroups and f16 operand loads",
  ignore: typeof env === "string",
  async fn() {
    const dir = new URL(".", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", ...TESTS.map((t) => dir + t)],
      env: {
        ...(env as Record<string, string>),
        GLM_EXPECT_FEATURES: "subgroups,shader-f16",
        NO_COLOR: "1",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    // deno test's summary line, e.g. "ok | 40 passed | 0 failed (1m2s)".
    const summary = text.split("\n").filter((l) => /^(ok|FAILED) \|/.test(l)).at(-1);
    console.log(`lavapipe: ${summary ?? "(no summary)"}`);
    if (!out.success) console.log(text.split("\n").slice(-80).join("\n"));
    if (!out.success) throw new Error("the tests failed on lavapipe (output above)");
  },
});
