/**
 * A private XDG_RUNTIME_DIR for the GPU drivers when the environment has no
 * usable one (a container, `su`, an SSH session without a login manager).
 *
 * Mesa's EGL and Vulkan loaders link libwayland-client; when a driver probes
 * for a Wayland display without XDG_RUNTIME_DIR, libwayland prints
 * `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` to
 * stderr — an alarming line on a run where nothing fails (twice: once per
 * probe). With a valid, empty directory it finds no Wayland socket and says
 * nothing. The directory is the user's own (mode 0700, not a symlink), reused
 * across runs; a value the user set is kept when it names a directory.
 */
import { tmpdir } from "node:os";
import { join } from "node:path";

interface Env {
  get(key: string): string | undefined;
  set(key: string, value: string): void;
}

function usable(dir: string | undefined): boolean {
  if (!dir || !dir.startsWith("/")) return false;
  try {
    return Deno.statSync(dir).isDirectory;
  } catch {
    return false;
  }
}

/** Whether `dir` is a real directory of ours that no one else may enter. */
function private_(dir: string, uid: number | null): boolean {
  try {
    const st = Deno.lstatSync(dir);
    return st.isDirectory && !st.isSymlink && (uid === null || st.uid === uid) &&
      ((st.mode ?? 0) & 0o077) === 0;
  } catch {
    return false;
  }
}

/**
 * Set XDG_RUNTIME_DIR to a private directory when it is unset or not a
 * directory; returns the directory set, or undefined when the environment's
 * was kept (or this is not Linux, where the variable means nothing).
 */
export function ensureRuntimeDir(env: Env = Deno.env): string | undefined {
  if (Deno.build.os !== "linux") return undefined;
  if (usable(env.get("XDG_RUNTIME_DIR"))) return undefined;
  const uid = Deno.uid();
  let dir = join(tmpdir(), `glm-finetune-runtime-${uid ?? "user"}`);
  try {
    Deno.mkdirSync(dir, { mode: 0o700 });
  } catch { /* there already (checked below), or /tmp is not writable */ }
  // Another user's directory, or a symlink planted under the name: use a fresh one.
  if (!private_(dir, uid)) {
    try {
      dir = Deno.makeTempDirSync({ prefix: "glm-finetune-runtime-" });
    } catch {
      return undefined;
    }
  }
  env.set("XDG_RUNTIME_DIR", dir);
  return dir;
}
