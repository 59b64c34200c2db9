import { ok as assert, throws } from "node:assert";
import { makeSchedule } from "../lib/train/schedule.ts";
import { UserError } from "../lib/errors.ts";

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b));

function check(type: string, warm: number, total: number, want: number[], kwargs = {}) {
  const lr = makeSchedule({ type, baseLr: 1, totalSteps: total, warmupSteps: warm, kwargs });
  want.forEach((w, k) => assert(close(lr(k), w), `${type} step ${k}: ${lr(k)} != ${w}`));
}

// Values as torch LambdaLR gives them after k scheduler steps (HF get_scheduler).
Deno.test("linear with and without warmup", () => {
  check("linear", 0, 5, [1, 0.8, 0.6, 0.4, 0.2]);
  check("linear", 2, 6, [0, 0.5, 1, 0.75, 0.5, 0.25, 0]);
});

Deno.test("cosine, restarts, constant, constant_with_warmup", () => {
  check("cosine", 0, 4, [
    1,
    0.5 * (1 + Math.cos(Math.PI / 4)),
    0.5,
    0.5 * (1 + Math.cos(3 * Math.PI / 4)),
    0,
  ]);
  check("cosine", 1, 3, [0, 1, 0.5]);
  check("cosine_with_restarts", 0, 4, [1, 0.5, 1, 0.5], { num_cycles: 2 });
  check("constant", 3, 5, [1, 1, 1]);
  check("constant_with_warmup", 4, 10, [0, 0.25, 0.5, 0.75, 1, 1]);
});

Deno.test("polynomial and inverse_sqrt", () => {
  // lr_init 1, lr_end 1e-7, power 1, total 4: (1-1e-7)·(1-k/4) + 1e-7
  check("polynomial", 0, 4, [1, 0.75 + 0.25e-7, 0.5 + 0.5e-7, 0.25 + 0.75e-7, 1e-7]);
  check("inverse_sqrt", 2, 10, [0, 0.5, 1, Math.sqrt(2 / 3)]);
});

Deno.test("unknown schedule is a UserError (warmup steps: tests/config_test.ts)", () => {
  throws(
    () => makeSchedule({ type: "reduce_lr_on_plateau", baseLr: 1, totalSteps: 1, warmupSteps: 0 }),
    UserError,
  );
});
