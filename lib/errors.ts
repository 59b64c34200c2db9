/**
 * Errors that are the user's to fix (bad input, bad flags, missing files, a
 * full disk). The CLI prints their message alone — never a stack trace — and
 * exits 1 (2 for a command line it cannot parse).
 */
export class UserError extends Error {
  /** The process exit status the CLI ends with. */
  readonly exitCode: number = 1;
  constructor(message: string) {
    super(message);
    this.name = "UserError";
  }
}

/** A command line that does not parse (unknown flag, missing value or argument): exit 2, as argparse does. */
export class UsageError extends UserError {
  override readonly exitCode: number = 2;
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * A run stopped by Ctrl-C with its work saved: the message says how to go on
 * (no `error:` before it), and the exit status is 130, as for any SIGINT.
 */
export class InterruptedError extends UserError {
  override readonly exitCode: number = 130;
  constructor(message: string) {
    super(message);
    this.name = "InterruptedError";
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

/** What an errno code means, in words, for the codes file operations meet. */
const OS_REASONS: Record<string, string> = {
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EROFS: "read-only file system",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  EISDIR: "is a directory",
  ENOTDIR: "not a directory",
  EEXIST: "already exists",
  ENOTEMPTY: "directory not empty",
  EIO: "input/output error",
  EMFILE: "too many open files",
  ENFILE: "too many open files in the system",
  ENAMETOOLONG: "file name too long",
  ELOOP: "too many levels of symbolic links",
  EXDEV: "cannot rename across file systems",
  EBUSY: "device or resource busy",
  EFBIG: "file too large",
  ETXTBSY: "text file busy",
};

/** The errno code of an operating-system error (Deno's fs errors carry one), or undefined. */
export function osErrorCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return e instanceof Error && typeof code === "string" && /^E[A-Z0-9]+$/.test(code)
    ? code
    : undefined;
}

/**
 * One line for an operating-system error: `PATH: reason`, with the path
 * given or, failing that, the one Deno names in its message
 * (`No space left on device (os error 28): writefile '/x'`).
 */
export function describeOsError(e: Error, path?: string, doing?: string): string {
  const code = osErrorCode(e) ?? "";
  const reason = OS_REASONS[code] ??
    e.message.replace(/\s*\(os error \d+\).*$/s, "").toLowerCase();
  const named = path ?? /'([^']*)'\s*$/.exec(e.message)?.[1];
  const what = doing ? `cannot ${doing}: ${reason}` : reason;
  return named ? `${named}: ${what}` : what;
}

/**
 * `e` as a UserError naming `path` when it is an operating-system error (a
 * full disk, a read-only or missing directory, no permission), else `e`
 * itself: `catch (e) { throw osError(e, path, "write"); }`.
 */
export function osError(e: unknown, path: string, doing: string): unknown {
  if (e instanceof UserError || !osErrorCode(e)) return e;
  return new UserError(describeOsError(e as Error, path, doing));
}

/**
 * Run `main`, turning a UserError or an operating-system error into one line
 * on stderr and its exit status; anything else is a bug and keeps its trace.
 */
export async function runCli(main: () => Promise<number | void>): Promise<never> {
  try {
    const code = await main();
    Deno.exit(code ?? 0);
  } catch (e) {
    if (e instanceof InterruptedError) {
      console.error(e.message);
      Deno.exit(e.exitCode);
    }
    if (e instanceof UserError) {
      console.error(`error: ${e.message}`);
      Deno.exit(e.exitCode);
    }
    if (e instanceof Deno.errors.Interrupted || (e instanceof Error && e.name === "AbortError")) {
      console.error("interrupted");
      Deno.exit(130);
    }
    if (osErrorCode(e)) {
      console.error(`error: ${describeOsError(e as Error)}`);
      Deno.exit(1);
    }
    throw e;
  }
}
