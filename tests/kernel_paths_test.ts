/**
 * The kernels' two paths in one process (lib/gpu/features.ts): the subgroup
 * reductions against the plain kernels and the CPU references, f16 operand
 * loads bit for bit against unpacking; then the decoder's state kernels, the
 * one-row matmul tiles, recorded and replayed dispatches, and the uniform
 * arena. On a device without subgroups or shader-f16 (Mesa's GL driver) only
 * the plain paths run and the test says so; tests/lavapipe_test.ts runs this
 * file on lavapipe, which has both.
 */
import assert from "node:assert";
import { getGpu, type Gpu } from "../lib/gpu/device.ts";
import { kernelFeatures, setKernelFeatures } from "../lib/gpu/features.ts";
import {
  createBuffer,
  encodeStats,
  Knob,
  packUniforms,
  readBuffer,
  readF32,
  UniformArena,
  uniforms,
  upload,
  withUniforms,
  writeBuffer,
} from "../lib/gpu/runtime.ts";
import { Recording, submitPass } from "../lib/gpu/recording.ts";
import { encodeRmsnorm, encodeRmsnormBackward } from "../lib/gpu/kernels/rmsnorm.ts";
import { crossEntropyScratchBytes, encodeCrossEntropy } from "../lib/gpu/kernels/cross_entropy.ts";
import { GradNorm } from "../lib/gpu/kernels/grad_norm.ts";
import {
  type AttentionLayout,
  encodeAttentionBackwardMaterialized,
  encodeAttentionMaterialized,
  scoreBytes,
} from "../lib/gpu/kernels/attention.ts";
import {
  encodeMatmul,
  f32ToF16Packed,
  matmulKernelKind,
  matmulRef,
  releaseKeptTextures,
} from "../lib/gpu/kernels/matmul.ts";
import {
  DEFAULT_PROFILES,
  setMatmulProfile,
  vec4Tiles,
} from "../lib/gpu/kernels/matmul_profile.ts";
import { encodeEmbedding } from "../lib/gpu/kernels/embedding.ts";
import { encodeDropout } from "../lib/gpu/kernels/dropout.ts";
import {
  advanceRef,
  encodeAdvance,
  encodeKvStore,
  kvStoreRef,
} from "../lib/gpu/kernels/kv_cache.ts";
import { attention, crossEntropy, rmsnorm, rmsnormBackward } from "../lib/model/cpu/ops.ts";
import { gradNormRef } from "../lib/train/adamw.ts";
import { f16BitsToF32 } from "../lib/safetensors/dtype.ts";
import { rand, relErr } from "./test_util.ts";

/** `run` under each path the device has: plain, then (where granted) subgroups and f16 loads. */
async function bothPaths<T>(
  gpu: Gpu,
  run: (path: "plain" | "features") => Promise<T>,
): Promise<{ plain: T; features?: T }> {
  try {
    setKernelFeatures({ subgroups: false, f16: false });
    const plain = await run("plain");
    if (!gpu.hasSubgroups && !gpu.hasF16) {
      console.log(`${gpu.adapterInfo.description}: no subgroups or shader-f16, plain path only`);
      return { plain };
    }
    setKernelFeatures({ subgroups: true, f16: true });
    const f = kernelFeatures(gpu);
    console.log(`features in force: subgroups ${f.subgroups}, f16 ${f.f16}`);
    return { plain, features: await run("features") };
  } finally {
    setKernelFeatures(undefined);
  }
}

function submit(gpu: Gpu, fill: (pass: GPUComputePassEncoder) => void): void {
  const enc = gpu.device.createCommandEncoder();
  const pass = enc.beginComputePass();
  fill(pass);
  pass.end();
  gpu.device.queue.submit([enc.finish()]);
  uniforms(gpu).reset();
}

Deno.test("row kernels: the subgroup paths match the plain ones and the references", async () => {
  const gpu = await getGpu();
  // RMSNorm over more rows than one grid dimension holds, and a wide row.
  for (const [rows, dim] of [[3, 4096], [70000, 4], [33, 130]]) {
    const x = rand(rows * dim, rows + dim), w = rand(dim, 3), dy = rand(rows * dim, 4);
    const ref = rmsnorm(x, w, rows, dim, 1e-5);
    const bref = rmsnormBackward(x, w, ref.rstd, dy, rows, dim);
    const out = await bothPaths(gpu, async () => {
      const bx = upload(gpu, x), bw = upload(gpu, w), by = createBuffer(gpu, x.byteLength);
      const br = createBuffer(gpu, rows * 4), bdy = upload(gpu, dy);
      const bdx = createBuffer(gpu, x.byteLength);
      submit(gpu, (pass) => {
        encodeRmsnorm(gpu, pass, { x: bx, w: bw, y: by, rstd: br, rows, dim, eps: 1e-5 });
        encodeRmsnormBackward(gpu, pass, { x: bx, w: bw, rstd: br, dy: bdy, dx: bdx, rows, dim });
      });
      return [await readF32(gpu, by), await readF32(gpu, br), await readF32(gpu, bdx)];
    });
    for (const [path, got] of Object.entries(out)) {
      const errs = [relErr(got![0], ref.y), relErr(got![1], ref.rstd), relErr(got![2], bref.dx)];
      console.log(`rmsnorm ${rows}x${dim} ${path}: ${errs.map((e) => e.toExponential(1))}`);
      for (const e of errs) assert(e < 1e-5, `${path}: ${e}`);
    }
  }
  // Cross-entropy over chatglm3-6b's vocabulary (16 chunks of 4,096), ignored rows included.
  {
    const rows = 3, V = 65024, gradScale = 0.25;
    const logits = rand(rows * V, 11).map((v) => v * 8);
    const targets = Int32Array.from([5, -100, V - 1]);
    const ref = crossEntropy(logits, targets, rows, V, gradScale);
    const out = await bothPaths(gpu, async () => {
      const bl = upload(gpu, logits), bt = upload(gpu, targets), rl = createBuffer(gpu, rows * 4);
      const partials = createBuffer(gpu, crossEntropyScratchBytes(rows, V));
      submit(gpu, (pass) =>
        encodeCrossEntropy(gpu, pass, {
          logits: bl,
          rows,
          V,
          targets: bt,
          rowLoss: rl,
          partials,
          gradScale,
        }));
      return [await readF32(gpu, rl), await readF32(gpu, bl)];
    });
    for (const [path, got] of Object.entries(out)) {
      const loss = got![0].reduce((a, b) => a + b, 0);
      const e1 = Math.abs(loss - ref.lossSum) / ref.lossSum, e2 = relErr(got![1], ref.dlogits);
      console.log(
        `cross-entropy ${path}: loss ${e1.toExponential(1)}, dlogits ${e2.toExponential(1)}`,
      );
      assert(e1 < 1e-5 && e2 < 1e-5, path);
    }
  }
  // The gradient norm over tensors of many workgroups.
  {
    const grads = [rand(7, 1, 1), rand(300000, 2, 0.01)];
    const ref = gradNormRef(grads, 1.0);
    const out = await bothPaths(gpu, async () => {
      const gn = new GradNorm(gpu, grads.map((g) => ({ grad: upload(gpu, g), size: g.length })));
      submit(gpu, (pass) => gn.encode(pass, 1.0));
      return await readF32(gpu, gn.result);
    });
    for (const [path, got] of Object.entries(out)) {
      assert(Math.abs(got![0] - ref.norm) / ref.norm < 1e-5, `${path}: ${got![0]} vs ${ref.norm}`);
      assert(Math.abs(got![1] - ref.clip) < 1e-6, path);
    }
  }
});

Deno.test("attention softmax rows: the subgroup path through the matmul attention", async () => {
  const gpu = await getGpu();
  const B = 2, S = 70, H = 2, G = 1, D = 8, W = (H + 2 * G) * D;
  const qkv = rand(B * S * W, 21, 0.8), dOut = rand(B * S * H * D, 22);
  const pos = Int32Array.from({ length: B * S }, (_, t) => t % S);
  const part = (off: number, width: number) => {
    const t = new Float32Array(B * S * width);
    for (let r = 0; r < B * S; r++) {
      t.set(qkv.subarray(r * W + off, r * W + off + width), r * width);
    }
    return t;
  };
  const shape = {
    batch: B,
    seq: S,
    heads: H,
    groups: G,
    headDim: D,
    prefix: 0,
    scale: 1 / Math.sqrt(D),
  };
  const ref = attention(part(0, H * D), part(H * D, G * D), part((H + G) * D, G * D), shape);
  const out = await bothPaths(gpu, async () => {
    const bq = upload(gpu, qkv), bp = upload(gpu, pos), bo = createBuffer(gpu, B * S * H * D * 4);
    const stats = createBuffer(gpu, 2 * B * H * S * 4), bdo = upload(gpu, dOut);
    const dqkv = createBuffer(gpu, qkv.byteLength);
    const l: AttentionLayout = {
      batch: B,
      seq: S,
      heads: H,
      groups: G,
      headDim: D,
      prefix: 0,
      scale: 1 / Math.sqrt(D),
      q: bq,
      qOff: 0,
      qRow: W,
      kv: bq,
      kOff: H * D,
      vOff: (H + G) * D,
      kvRow: W,
      kvBatch: S * W,
      pos: bp,
      stats,
    };
    const sb = scoreBytes({ batch: B, heads: H, seq: S, prefix: 0 });
    const sc = createBuffer(gpu, sb), dsc = createBuffer(gpu, sb);
    submit(gpu, (pass) => {
      encodeAttentionMaterialized(gpu, pass, l, { buffer: bo, off: 0, row: H * D }, sc);
      encodeAttentionBackwardMaterialized(
        gpu,
        pass,
        l,
        {
          out: bo,
          dOut: bdo,
          oOff: 0,
          oRow: H * D,
          dqkv,
          dqOff: 0,
          dkOff: H * D,
          dvOff: (H + G) * D,
          dRow: W,
        },
        sc,
        dsc,
      );
    });
    return [await readF32(gpu, bo), await readF32(gpu, dqkv)];
  });
  for (const [path, got] of Object.entries(out)) {
    const e = relErr(got![0], ref.out);
    console.log(`attention (matmul) ${path}: out ${e.toExponential(1)}`);
    assert(e < 1e-5, path);
  }
  if (out.features) {
    const e = relErr(out.features[1], out.plain[1]);
    console.log(`attention backward, subgroups against plain: ${e.toExponential(1)}`);
    assert(e < 1e-5);
  }
});

Deno.test("f16 operand loads give the unpacking path's results bit for bit", async () => {
  const gpu = await getGpu();
  const M = 9, N = 36, K = 44;
  const a = rand(M * K, 31), bf = rand(N * K, 32);
  const b = f32ToF16Packed(bf);
  const table = f32ToF16Packed(rand(10 * 12, 33));
  const ids = Int32Array.from([3, 0, 9, 3]);
  const out = await bothPaths(gpu, async () => {
    const ba = upload(gpu, a), bb = upload(gpu, b), c1 = createBuffer(gpu, M * N * 4);
    const c2 = createBuffer(gpu, M * N * 4), c3 = createBuffer(gpu, 5 * 7 * 4);
    const bt = upload(gpu, table), bi = upload(gpu, ids), y = createBuffer(gpu, 4 * 12 * 4);
    submit(gpu, (pass) => {
      // vec4 kernel (nt), and an unaligned product on the scalar kernel (nn, odd offset).
      encodeMatmul(gpu, pass, { M, N, K, a: ba, b: bb, c: c1, transB: true, bF16: true });
      encodeMatmul(gpu, pass, { M, N, K: 8, a: ba, b: bb, c: c2, bF16: true, ldb: 44 });
      encodeMatmul(gpu, pass, { M: 5, N: 7, K: 3, a: ba, b: bb, bOffset: 1, c: c3, bF16: true });
      encodeEmbedding(gpu, pass, { ids: bi, tokens: 4, dim: 12, table: bt, f16: true, y });
    });
    return await Promise.all([c1, c2, c3, y].map((x) => readF32(gpu, x)));
  });
  const plain = out.plain;
  // The plain path against the reference, with the f16 values as f32.
  const bHalf = new Float32Array(N * K).map((_, i) =>
    f16BitsToF32((b[i >> 1] >>> ((i & 1) * 16)) & 0xffff)
  );
  const want = new Float32Array(M * N);
  matmulRef(a, bHalf, want, { M, N, K, transB: true });
  assert(relErr(plain[0], want) < 1e-6);
  out.features?.forEach((x, i) => assert.deepEqual(x, plain[i], `output ${i}`));
});

Deno.test("one-row matmul tiles (the gpu profile's small products) match the reference", async () => {
  const gpu = await getGpu();
  try {
    setMatmulProfile(DEFAULT_PROFILES.gpu);
    for (
      const [M, N, K, bF16] of [[1, 260, 64, true], [2, 40, 12, false], [5, 520, 36, true]] as const
    ) {
      const a = rand(M * K, M + N), bf = rand(N * K, K), bias = rand(N, 9);
      const b = bF16 ? f32ToF16Packed(bf) : bf;
      const bHalf = bF16
        ? new Float32Array(N * K).map((_, i) =>
          f16BitsToF32((b[i >> 1] >>> ((i & 1) * 16)) & 0xffff)
        )
        : bf;
      const c0 = rand(M * N, 5);
      const want = c0.slice();
      matmulRef(a, bHalf, want, { M, N, K, transB: true, accumulate: true, alpha: 0.5 }, bias);
      const bc = upload(gpu, c0);
      submit(gpu, (pass) =>
        encodeMatmul(gpu, pass, {
          M,
          N,
          K,
          a: upload(gpu, a),
          b: upload(gpu, b),
          c: bc,
          transB: true,
          bF16,
          accumulate: true,
          alpha: 0.5,
          bias: upload(gpu, bias),
        }));
      const e = relErr(await readF32(gpu, bc), want);
      console.log(`small tiles ${M}x${N}x${K}${bF16 ? " f16" : ""}: ${e.toExponential(1)}`);
      assert(e < 1e-5);
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("the gpu profile's large staged tiles: transposed-B products only, same results", async () => {
  const gpu = await getGpu();
  const large = DEFAULT_PROFILES.gpu.large!;
  assert.equal(vec4Tiles(DEFAULT_PROFILES.gpu, 1024, 2048, true), large);
  assert.equal(vec4Tiles(DEFAULT_PROFILES.gpu, 1024, 2048, false), DEFAULT_PROFILES.gpu);
  assert.equal(vec4Tiles(DEFAULT_PROFILES.gpu, 1023, 2048, true), DEFAULT_PROFILES.gpu);
  try {
    setMatmulProfile({ ...DEFAULT_PROFILES.gpu, large: { ...large, minM: 1, minN: 1 } });
    for (const bF16 of [true]) {
      const M = 40, N = 300, K = 64;
      const a = rand(M * K, 71), bf = rand(N * K, 72);
      const b = bF16 ? f32ToF16Packed(bf) : bf;
      const bRef = bF16
        ? new Float32Array(N * K).map((_, i) =>
          f16BitsToF32((b[i >> 1] >>> ((i & 1) * 16)) & 0xffff)
        )
        : bf;
      const want = new Float32Array(M * N);
      matmulRef(a, bRef, want, { M, N, K, transB: true });
      const c = createBuffer(gpu, M * N * 4);
      submit(gpu, (pass) =>
        encodeMatmul(gpu, pass, {
          M,
          N,
          K,
          a: upload(gpu, a),
          b: upload(gpu, b),
          c,
          transB: true,
          bF16,
        }));
      const e = relErr(await readF32(gpu, c), want);
      console.log(`large staged tiles ${M}x${N}x${K}${bF16 ? " f16" : ""}: ${e.toExponential(1)}`);
      assert(e < 1e-5);
    }
  } finally {
    setMatmulProfile(undefined);
  }
});

Deno.test("decoder state: keys/values stored at each row's position, tokens kept in a ring", async () => {
  const gpu = await getGpu();
  const rows = 3, width = 8, srcRow = 20, srcOff = 4, dstRow = 8, dstBatch = 5 * dstRow;
  const src = rand(rows * srcRow, 41), pos = Int32Array.from([0, 4, 2]);
  const want = rand(rows * dstBatch, 42);
  const bdst = upload(gpu, want);
  const a = { rows, width, srcOff, srcRow, dstBatch, dstRow };
  kvStoreRef(src, pos, want, a);
  const ids = Uint32Array.from([7, 8, 9]), slots = 4;
  const ring = new Uint32Array(slots * rows), tp = Int32Array.from([1, 2, 3]);
  const counter = Uint32Array.from([5]);
  const bids = upload(gpu, ids), bring = upload(gpu, ring), btp = upload(gpu, tp);
  const bc = upload(gpu, counter);
  submit(gpu, (pass) => {
    encodeKvStore(gpu, pass, { ...a, src: upload(gpu, src), pos: upload(gpu, pos), dst: bdst });
    for (let k = 0; k < 2; k++) {
      encodeAdvance(gpu, pass, { rows, ids: bids, ring: bring, slots, pos: btp, counter: bc });
    }
  });
  for (let k = 0; k < 2; k++) advanceRef(ids, ring, tp, counter, rows, slots);
  assert.deepEqual(await readF32(gpu, bdst), want);
  assert.deepEqual(new Uint32Array(await readBuffer(gpu, bring)), ring);
  assert.deepEqual(new Int32Array(await readBuffer(gpu, btp)), tp);
  assert.deepEqual(new Uint32Array(await readBuffer(gpu, bc)), counter);
  // Counter 5 and 6 over 4 slots: slots 1 and 2.
  assert.deepEqual([...ring], [0, 0, 0, 7, 8, 9, 7, 8, 9, 0, 0, 0]);
});

Deno.test("a recorded sequence replays with its Knobs' new values, without new bind groups", async () => {
  const gpu = await getGpu();
  const n = 1000;
  const x = upload(gpu, rand(n, 51)), y1 = createBuffer(gpu, n * 4), y2 = createBuffer(gpu, n * 4);
  const seed = new Knob(3);
  let recording: Recording | undefined;
  const run = (y: GPUBuffer) =>
    submitPass(gpu, (pass) => {
      if (recording) recording.replay(pass);
      else {
        recording = Recording.record(gpu, pass, (p) => {
          encodeDropout(gpu, p, { x, y: y1, n, p: 0.5, seed, stream: 1 });
          encodeDropout(gpu, p, { x, y: y2, n, p: 0.25, seed, stream: 2, beta: 1 });
        });
      }
    }, (enc) => enc.copyBufferToBuffer(y1, 0, y, 0, n * 4));
  const direct = async (s: number) => {
    const a = createBuffer(gpu, n * 4), b = createBuffer(gpu, n * 4);
    submitPass(gpu, (pass) => {
      encodeDropout(gpu, pass, { x, y: a, n, p: 0.5, seed: s, stream: 1 });
      encodeDropout(gpu, pass, { x, y: b, n, p: 0.25, seed: s, stream: 2, beta: 1 });
    });
    return [await readF32(gpu, a), await readF32(gpu, b)];
  };
  const out = createBuffer(gpu, n * 4);
  run(out);
  const first = [await readF32(gpu, out), await readF32(gpu, y2)];
  assert.deepEqual(first[0], (await direct(3))[0]);
  const made = encodeStats.bindGroups;
  seed.value = 77;
  await readF32(gpu, y2); // y2 accumulates: start from a known value
  const before = await readF32(gpu, y2);
  run(out);
  const second = [await readF32(gpu, out), await readF32(gpu, y2)];
  const ref = await direct(77);
  assert.deepEqual(second[0], ref[0]);
  assert.deepEqual(second[1], before.map((v, i) => v + ref[1][i]));
  assert.notDeepEqual(second[0], first[0]);
  assert.equal(
    encodeStats.bindGroups - made,
    2,
    "the replay made no bind group (direct() made two)",
  );
  assert.equal(recording!.dispatches, 2);
  recording!.destroy();
});

Deno.test("uniform arena: unchanged slots are not written again, deferred writes go in one call", async () => {
  const gpu = await getGpu();
  const arena = new UniformArena(gpu, 8, "test-uniforms");
  const writes: number[] = [];
  const real = gpu.device.queue.writeBuffer.bind(gpu.device.queue);
  const queue = gpu.device.queue as { writeBuffer: typeof real };
  queue.writeBuffer = ((buf: GPUBuffer, off: number, data: BufferSource) => {
    if (buf.label.startsWith("test-uniforms")) writes.push(off);
    return real(buf, off, data as ArrayBuffer);
  }) as typeof real;
  try {
    withUniforms(gpu, arena, () => {
      // Immediate writes: one per changed slot.
      uniforms(gpu).alloc(packUniforms([{ u: 1 }]));
      uniforms(gpu).alloc(packUniforms([{ u: 2 }]));
      assert.equal(writes.length, 2);
      arena.reset();
      uniforms(gpu).alloc(packUniforms([{ u: 1 }]));
      uniforms(gpu).alloc(packUniforms([{ u: 2 }]));
      assert.equal(writes.length, 2, "the same values in the same slots: nothing written");
      arena.reset();
      writes.length = 0;
      arena.deferred(() => {
        for (let i = 0; i < 12; i++) uniforms(gpu).alloc(packUniforms([{ u: 100 + i }]));
      });
      // 12 slots over two chunks of 8: one write per chunk.
      assert.equal(writes.length, 2);
    });
  } finally {
    queue.writeBuffer = real;
    arena.destroy();
  }
});

Deno.test("a fixed B's texture is kept by a CPU adapter's small products, until released", async () => {
  const gpu = await getGpu();
  const M = 1, N = 36, K = 64;
  const a = rand(M * K, 61), b1 = rand(N * K, 62), b2 = rand(N * K, 63);
  const ba = upload(gpu, a), bb = upload(gpu, b1), c = createBuffer(gpu, M * N * 4);
  const product = async (bFixed: boolean) => {
    submitPass(
      gpu,
      (pass) => encodeMatmul(gpu, pass, { M, N, K, a: ba, b: bb, c, transB: true, bFixed }),
    );
    return await readF32(gpu, c);
  };
  const want = (b: Float32Array) => {
    const out = new Float32Array(M * N);
    matmulRef(a, b, out, { M, N, K, transB: true });
    return out;
  };
  assert(relErr(await product(true), want(b1)) < 1e-6);
  // B changes behind the kept texture's back: a fixed product still reads the kept copy
  // where the cpu profile keeps one (the texture kernel), a plain product reads the new values.
  writeBuffer(gpu, bb, 0, b2);
  assert(relErr(await product(false), want(b2)) < 1e-6);
  const kept = relErr(await product(true), want(b1)) < 1e-6;
  const textures = matmulKernelKind({ M, N, K, transB: true }, gpu) === "texture";
  assert.equal(kept, textures, `kept ${kept}, texture kernel ${textures}`);
  releaseKeptTextures(gpu, [bb]);
  assert(relErr(await product(true), want(b2)) < 1e-6, "released: the new values are copied");
  releaseKeptTextures(gpu, [bb]);
});
