/**
 * Tile parameters for the generated matmul kernels, per device class.
 *
 * On a CPU fallback adapter (llvmpipe) each invocation is a loop on one core,
 * vectorised across the invocations of a workgroup; what pays there is a big
 * register tile (hundreds of accumulators per invocation, few loads per FMA)
 * and small workgroups. A real GPU wants the opposite: a few outputs per
 * thread and wide workgroups. Override with GLM_MATMUL_PROFILE, e.g.
 * `GLM_MATMUL_PROFILE=tm=8,tn=16,wgm=1,wgn=8` (`tex=0` turns the texture
 * kernel off), or `setMatmulProfile()`; an override applies to every size but
 * the small products' (it drops the `large` tile).
 */
import type { DeviceClass, Gpu } from "../device.ts";

export interface MatmulProfile {
  /** Rows of C per invocation. */
  tm: number;
  /** Columns of C per invocation (a multiple of 4: held as vec4). */
  tn: number;
  /** Invocations per workgroup along M and along N. */
  wgM: number;
  wgN: number;
  /**
   * K steps per tile staged in workgroup memory: when set, aligned products
   * that read B transposed (every product against a weight [out, in]) take the
   * shared-memory kernel (./matmul_shared.ts), the others the register-only
   * one. On an H200 staging made those 1.2–2.5× faster and the row-major-B
   * products 0–20 % slower; llvmpipe pays more for workgroup memory than it saves.
   */
  bk?: number;
  /**
   * Copy the operands of products and batches into textures and read them as
   * storage textures (./matmul_texture.ts), where the pass allows it: on
   * llvmpipe an image load of four floats costs a third of a vec4 storage load.
   */
  textures?: boolean;
  /** Stage tiles for every layout, not only a transposed B (tests, experiments). */
  stageAll?: boolean;
  /** Tiles of the fallback kernel for operands not aligned to 4 (default: these). */
  scalar?: MatmulProfile;
  /**
   * Tiles of the vec4 kernel for products of at least minM × minN: more FMAs
   * per load, but a pipeline LLVM takes several times longer to build, which
   * only the big products of training and scoring pay back.
   */
  large?: MatmulProfile & {
    minM: number;
    minN: number;
    /** Only for products that stage their tiles (`bk`: a transposed B). */
    stagedOnly?: boolean;
  };
  /**
   * Products of at most maxM rows (a decoder's step: one row per sequence)
   * without A transposed: tm is M rounded up to a power of two and one row
   * of wgN invocations covers wgN·tn columns. The gpu profile's 64-row tiles
   * would leave 63 of 64 rows of a one-row product idle; the cpu profile's
   * 16-row tiles did 16 times a one-row product's work, and its texture
   * kernel copied the weight for every token (kept now: `bFixed`).
   */
  small?: { maxM: number; tn: number; wgN: number };
}

export const DEFAULT_PROFILES: Record<DeviceClass, MatmulProfile> = {
  cpu: {
    tm: 16,
    tn: 16,
    wgM: 1,
    wgN: 8,
    textures: true,
    scalar: { tm: 4, tn: 8, wgM: 1, wgN: 8 },
    large: { tm: 32, tn: 32, wgM: 1, wgN: 8, minM: 512, minN: 512 },
    small: { maxM: 8, tn: 16, wgN: 8 },
  },
  // The large tiles: on an H200, 8×8 outputs per invocation with 8 K steps staged ran the two
  // widest forward products of the bench model (h→4h and the output layer) at 14.3 and 16.3
  // TFLOP/s against ~10 with 4×4, and the other products slower (docs/engine.md, "On a GPU").
  gpu: {
    tm: 4,
    tn: 4,
    wgM: 16,
    wgN: 16,
    bk: 16,
    large: { tm: 8, tn: 8, wgM: 16, wgN: 16, bk: 8, minM: 1024, minN: 2048, stagedOnly: true },
    small: { maxM: 8, tn: 4, wgN: 64 },
  },
};

let override: MatmulProfile | undefined;

/** Force a profile for this process (undefined restores the default). */
export function setMatmulProfile(p: MatmulProfile | undefined): void {
  if (p) validate(p, "setMatmulProfile");
  override = p;
}

export function parseMatmulProfile(s: string, base: MatmulProfile): MatmulProfile {
  const { large: _large, ...p } = base;
  for (const part of s.split(",").map((x) => x.trim()).filter(Boolean)) {
    const [k, v] = part.split("=");
    const n = Number(v);
    if (k.toLowerCase() === "tex" && (v === "0" || v === "1")) {
      p.textures = v === "1"; // tex=0: the storage-buffer kernels on the cpu profile
      continue;
    }
    const key = { tm: "tm", tn: "tn", wgm: "wgM", wgn: "wgN", bk: "bk" }[k.toLowerCase()] as
      | "tm"
      | "tn"
      | "wgM"
      | "wgN"
      | "bk"
      | undefined;
    if (key === "bk" && n === 0) {
      delete p.bk; // bk=0: the register-only kernel on a profile that stages tiles
      continue;
    }
    if (!key || !Number.isInteger(n) || n <= 0) {
      throw new Error(
        `GLM_MATMUL_PROFILE: cannot read "${part}" (expected tm=,tn=,wgm=,wgn=,bk= with positive integers, or tex=0|1)`,
      );
    }
    p[key] = n;
  }
  validate(p, "GLM_MATMUL_PROFILE");
  return p;
}

function validate(p: MatmulProfile, where: string): void {
  if (p.tn % 4 !== 0) throw new Error(`${where}: tn must be a multiple of 4, got ${p.tn}`);
  if (p.tm < 1 || p.wgM < 1 || p.wgN < 1) throw new Error(`${where}: sizes must be positive`);
  if (p.bk !== undefined && (p.bk % 4 !== 0 || p.tm % 4 !== 0)) {
    throw new Error(`${where}: bk and tm must be multiples of 4 for the shared-memory kernel`);
  }
  if (p.large) validate(p.large, `${where} (large)`);
  if (p.small && p.small.tn % 4 !== 0) {
    throw new Error(`${where}: small.tn must be a multiple of 4`);
  }
}

/** The profile in force for this device. */
export function matmulProfile(gpu: Gpu): MatmulProfile {
  if (override) return override;
  const env = Deno.env.get("GLM_MATMUL_PROFILE");
  const base = gpu.deviceClass === "cpu"
    ? withLanes(DEFAULT_PROFILES.cpu, gpu.cpuLanes)
    : DEFAULT_PROFILES.gpu;
  return env ? parseMatmulProfile(env, base) : base;
}

/**
 * A cpu profile whose large tiles (products of at least 512×512) take one
 * SIMD row of `lanes` invocations per workgroup (16 with 512-bit code). The
 * other tiles keep 8: a workgroup of 16 × 16 columns is wider than many of
 * the small model's products, whose lanes would idle. A decoder's small
 * products among them: with 16 invocations the bench model's per-token
 * products took 17–26 ms at batch 1 and 48–64 ms at batch 8, with 8 16–21 ms
 * and 40–50 ms (alternated, 512-bit code; docs/engine.md). Each output's sum
 * is the same either way.
 */
export function withLanes(p: MatmulProfile, lanes: number): MatmulProfile {
  return { ...p, ...(p.large ? { large: { ...p.large, wgM: 1, wgN: lanes } } : {}) };
}

/** The vec4 tiles for an M × N product under profile `p` (`transB`: B is read transposed). */
export function vec4Tiles(p: MatmulProfile, M: number, N: number, transB = false): MatmulProfile {
  const l = p.large;
  const staged = !l?.stagedOnly || stagesTiles(l, transB);
  return l && M >= l.minM && N >= l.minN && staged ? l : p;
}

/** The small-product tiles for an M-row product (see `small`), or undefined when they do not apply. */
export function smallTiles(
  p: MatmulProfile,
  M: number,
  transA: boolean,
): MatmulProfile | undefined {
  const s = p.small;
  if (!s || transA || M > s.maxM) return undefined;
  return { tm: 2 ** Math.ceil(Math.log2(Math.max(1, M))), tn: s.tn, wgM: 1, wgN: s.wgN };
}

/** Whether an aligned product under `p` takes the shared-memory kernel (see `bk`). */
export function stagesTiles(p: MatmulProfile, transB: boolean): boolean {
  return !!p.bk && (transB || !!p.stageAll);
}
