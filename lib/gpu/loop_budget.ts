/**
 * How long one shader invocation may loop.
 *
 * Mesa's CPU drivers (llvmpipe, and lavapipe on Vulkan) end every loop of an
 * invocation once that invocation has taken 65,535 loop iterations in all:
 * gallivm's LP_MAX_TGSI_LOOP_ITERATIONS, one counter shared by every loop of
 * the shader, nested ones included, decremented at each back-edge (loops the
 * compiler unrolls do not count). Nothing reports it: the loop just stops,
 * and the kernel's result is silently wrong. A row kernel walking a
 * chatglm3-6b vocabulary row (65,024 logits) three times was cut off this way
 * (tests/loop_budget_test.ts reproduces the limit itself).
 *
 * So every kernel keeps each invocation's iterations under LOOP_BUDGET, half
 * the driver's limit (the rest is room for the short fixed loops a kernel also
 * has): a loop whose length grows with a model dimension is unrolled when the
 * length is a compile-time constant, walks a bounded chunk per invocation, or
 * is split across dispatches. Real GPUs have no such limit; the kernels keep
 * the same shapes there so that one code path is tested everywhere.
 */

/** Mesa gallivm's per-invocation limit on loop iterations, all loops together. */
export const DRIVER_LOOP_LIMIT = 65535;

/** Iterations one invocation of a project kernel may take, all its loops together. */
export const LOOP_BUDGET = 1 << 15;

/**
 * Throws when an invocation would loop more than LOOP_BUDGET times: a shape
 * the kernel's dispatch helper did not split, which on a CPU adapter would
 * give a silently truncated result. A programming error, not a user's.
 */
export function checkLoopBudget(kernel: string, trips: number): void {
  if (trips > LOOP_BUDGET) {
    throw new Error(
      `${kernel}: ${trips} loop iterations per invocation exceed the budget of ${LOOP_BUDGET} ` +
        `(Mesa's CPU drivers stop a loop silently after ${DRIVER_LOOP_LIMIT}); split the work`,
    );
  }
}

/** [start, end) ranges of at most `per` covering [0, total). */
export function spans(total: number, per: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let s = 0; s < total; s += per) out.push([s, Math.min(total, s + per)]);
  return out;
}
