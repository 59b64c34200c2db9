/**
 * Errors that are the user's to fix (bad input, bad flags, missing files).
 * The CLI prints their message alone — never a stack trace — and exits 1.
 */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UserError";
  }
}

/** `FILE:LINE: field: message`, the one place problems get their location. */
export function located(
  file: string,
  line: number | undefined,
  field: string | undefined,
  message: string,
): string {
  const where = line === undefined ? file : `${file}:${line}`;
  return field ? `${where}: ${field}: ${message}` : `${where}: ${message}`;
}

/** Run `main`, turning a UserError into a clean message and exit code 1. */
export async function runCli(main: () => Promise<number | void>): Promise<never> {
  try {
    const code = await main();
    Deno.exit(code ?? 0);
  } catch (e) {
    if (e instanceof UserError) {
      console.error(`error: ${e.message}`);
      Deno.exit(1);
    }
    if (e instanceof Deno.errors.NotFound) {
      console.error(`error: ${e.message}`);
      Deno.exit(1);
    }
    if (e instanceof Deno.errors.Interrupted || (e instanceof Error && e.name === "AbortError")) {
      console.error("interrupted");
      Deno.exit(130);
    }
    throw e;
  }
}
