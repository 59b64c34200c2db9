/**
 * How the running command was started: on its own, or as a step of a
 * pipeline (the runner calls a stage's `main` in its own process). A stage
 * whose advice depends on it reads it here — the train stage's "resume with
 * --resume N" is the wrong advice inside a pipeline, which resumes with
 * `deno task pipeline NAME --resume` and says so itself.
 */

export interface PipelineStep {
  pipeline: string;
  step: string;
}

let current: PipelineStep | undefined;

/** The pipeline step running now, or undefined for a command run on its own. */
export function pipelineStep(): PipelineStep | undefined {
  return current;
}

/** Run `fn` as step `step` of a pipeline (the runner's call). */
export async function asPipelineStep<T>(step: PipelineStep, fn: () => Promise<T>): Promise<T> {
  const before = current;
  current = step;
  try {
    return await fn();
  } finally {
    current = before;
  }
}
