/**
 * Which kernel paths this process runs (lib/gpu/features.ts). With
 * GLM_EXPECT_FEATURES (tests/lavapipe_test.ts sets it), the named device
 * features must have been granted and be in force: otherwise a run meant to
 * test the subgroup and f16 paths would quietly test the plain ones.
 */
import assert from "node:assert";
import { getGpu } from "../lib/gpu/device.ts";
import { kernelFeatures, setKernelFeatures } from "../lib/gpu/features.ts";

Deno.test("kernel features: granted ones are in force, forced ones never beyond the device", async () => {
  const gpu = await getGpu();
  const f = kernelFeatures(gpu);
  console.log(
    `${gpu.adapterInfo.description}: subgroups ${gpu.hasSubgroups}, shader-f16 ${gpu.hasF16}`,
  );
  for (const want of (Deno.env.get("GLM_EXPECT_FEATURES") ?? "").split(",").filter(Boolean)) {
    if (want === "subgroups") assert(gpu.hasSubgroups && f.subgroups, "subgroups not in force");
    else if (want === "shader-f16") assert(gpu.hasF16 && f.f16, "shader-f16 not in force");
    else throw new Error(`GLM_EXPECT_FEATURES: unknown feature ${want}`);
  }
  try {
    setKernelFeatures({ subgroups: true, f16: true });
    assert.deepEqual(kernelFeatures(gpu), { subgroups: gpu.hasSubgroups, f16: gpu.hasF16 });
    setKernelFeatures({ subgroups: false, f16: false });
    assert.deepEqual(kernelFeatures(gpu), { subgroups: false, f16: false });
  } finally {
    setKernelFeatures(undefined);
  }
});
