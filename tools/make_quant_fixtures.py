"""Golden vectors for bitsandbytes' 4-bit quantization, from tools/bnb_quant.py.

Writes tests/fixtures/quant/:
  codes.json           the NF4 and FP4 tables, the kernels' comparison thresholds and the 8-bit
                       dynamic map (double quantization), as float32 bit patterns
  cases.json           per case: input dtype and shape, quant type, double quantization, and the
                       files below (or a sha256 where the file would be large)
  CASE.input.bin       the input tensor's raw bytes (f16, bf16 or f32, little-endian; cases on
                       the same tensor share the first one's file, named in "input")
  CASE.packed.bin      the packed 4-bit codes as quantize_4bit returns them
  CASE.absmax.bin      float32 absmax per block of 64 (without double quantization)
  CASE.qabsmax.bin     uint8 codes of absmax - offset (double quantization), with
  CASE.absmax2.bin     float32 absmax per block of 256 of those, and "offset" in cases.json
  CASE.scales.bin      float32 block scales after double quantization is undone
  CASE.dequant.bin     float32 dequantize_4bit(quantize_4bit(input))
  blockwise8.*.bin     quantize_blockwise (the 8-bit step of double quantization) on values at
                       every midpoint of the dynamic map and one ulp either side: its input,
                       codes and absmax

Cases cover NF4 and FP4, with and without double quantization, odd element
counts (a half-filled last byte), a short last block of 64, a number of
blocks that is not a multiple of 256, a 2-D weight whose rows are not a
multiple of 64 (blocks straddle rows, as bitsandbytes quantizes the
flattened tensor), blocks of zeros, constant blocks, values on every
comparison threshold and one ulp either side, and tiny negatives (FP4's -0).

Run: .venv-tools/bin/python tools/make_quant_fixtures.py
"""

import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bnb_quant as bq  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "quant")
f32 = np.float32


def bits(a):
    return [int(x) for x in np.asarray(a, dtype=f32).view(np.uint32)]


def to_bf16_bytes(v):
    """float32 → bfloat16 bytes, round to nearest even (values here are finite)."""
    u = np.asarray(v, dtype=f32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r


def from_bf16(h):
    return (h.astype(np.uint32) << 16).view(f32)


def normal_weights(rng, n, scale=0.02):
    return (rng.standard_normal(n) * scale).astype(f32)


def specials(rng, n):
    """Blocks that exercise the edges: zeros, one value, constants, a huge and a tiny block."""
    v = normal_weights(rng, n)
    v[64:128] = 0.0  # a block of zeros (absmax 0: NaN codes, as on the GPU)
    v[128:192] = 0.0
    v[150] = -0.5  # one value in a block
    v[192:256] = 0.25  # a constant block
    v[256:320] *= 1e4  # large and tiny magnitudes
    v[320:384] *= 1e-4
    return v


def ties(quant_type):
    """Blocks whose absmax is 1 and whose values sit on each threshold and one ulp either side."""
    t = bq.table(bq.NF4_THRESHOLDS if quant_type == "nf4" else bq.FP4_THRESHOLDS)
    probes = []
    for x in list(t) + list(-t):
        probes += [x, np.nextafter(x, f32(np.inf)), np.nextafter(x, f32(-np.inf))]
    # The four NF4 pivots that are float32 midpoints: both neighbours of each literal.
    probes += [f32(0.0), f32(-0.0), f32(1e-30), f32(-1e-30), f32(-0.001), f32(0.001)]
    probes += list(bq.code_values(quant_type))
    out = []
    for i in range(0, len(probes), 63):
        out += [f32(1.0)] + probes[i : i + 63]
    # A last block that is short and has its absmax negative.
    out += [f32(-1.0)] + probes[:20]
    return np.array(out, dtype=f32)


def blockwise8_case(code):
    """quantize_blockwise on the dynamic map's midpoints (ties) and their neighbours."""
    mids = ((code[:-1] + code[1:]) * f32(0.5)).astype(f32)
    probes = []
    for m in mids:
        probes += [m, np.nextafter(m, f32(np.inf)), np.nextafter(m, f32(-np.inf))]
    probes += list(code) + [f32(0.0), f32(-0.0), f32(-1.0), f32(0.9999999)]
    values = []
    for i in range(0, len(probes), 255):
        values += [f32(1.0)] + probes[i : i + 255]  # absmax 1: the normalised value is the probe
    values = np.array(values, dtype=f32)
    q, absmax = bq.quantize_blockwise(values, code, 256)
    write("blockwise8.input.bin", values)
    write("blockwise8.codes.bin", q)
    write("blockwise8.absmax.bin", absmax)
    print(f"  blockwise8: {values.size} values, {absmax.size} blocks")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as fh:
        fh.write(np.ascontiguousarray(data).tobytes())


INPUTS = {}


def case(name, values, dtype, shape, quant_type, double_quant, store_dequant=True):
    """Quantize `values` (float32, already representable in `dtype`) and write the case."""
    if dtype == "f16":
        raw = values.astype(np.float16)
        values = raw.astype(f32)
    elif dtype == "bf16":
        raw = to_bf16_bytes(values)
        values = from_bf16(raw)
    else:
        raw = values.astype(f32)
    assert int(np.prod(shape)) == values.size
    state = bq.quantize_4bit(values, quant_type, 64, double_quant)
    deq = bq.dequantize_4bit(state)
    key = (dtype, hashlib.sha256(raw.tobytes()).hexdigest())
    if key not in INPUTS:
        INPUTS[key] = f"{name}.input.bin"
        write(INPUTS[key], raw)
    write(f"{name}.packed.bin", state["packed"])
    meta = {
        "name": name,
        "input": INPUTS[key],
        "dtype": dtype,
        "shape": list(shape),
        "quant_type": quant_type,
        "double_quant": double_quant,
        "blocksize": 64,
        "n": int(values.size),
        "blocks": int(-(-values.size // 64)),
    }
    if double_quant:
        write(f"{name}.qabsmax.bin", state["qabsmax"])
        write(f"{name}.absmax2.bin", state["absmax2"])
        write(f"{name}.scales.bin", bq.absmax_of(state))
        meta["offset"] = bits([state["offset"]])[0]
        meta["nested_blocks"] = int(state["absmax2"].size)
    else:
        write(f"{name}.absmax.bin", state["absmax"])
    digest = hashlib.sha256(deq.tobytes()).hexdigest()
    meta["dequant_sha256"] = digest
    if store_dequant:
        write(f"{name}.dequant.bin", deq)
    err = np.abs(deq - values)
    scales = np.repeat(bq.absmax_of(state), 64)[: values.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.nanmax(np.where(scales > 0, err / scales, 0))
    print(f"  {name}: n={values.size} blocks={meta['blocks']} worst |error|/absmax {rel:.3f}")
    return meta


def main():
    bq.self_check()
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240518)
    codes = {
        "nf4": bits(bq.nf4_code()),
        "fp4": bits(bq.fp4_code()),
        "nf4_thresholds": bits(bq.table(bq.NF4_THRESHOLDS)),
        "fp4_thresholds": bits(bq.table(bq.FP4_THRESHOLDS)),
        "fp4_level_bits": bq.FP4_LEVEL_BITS,
        "dynamic_map": bits(bq.dynamic_map()),
    }
    with open(os.path.join(OUT, "codes.json"), "w") as fh:
        json.dump(codes, fh, indent=1)
        fh.write("\n")

    blockwise8_case(bq.dynamic_map())
    cases = []
    # Small cases: every file stored.
    small = specials(rng, 999)
    cases.append(case("nf4-f16-odd", small, "f16", [999], "nf4", False))
    cases.append(case("fp4-f16-odd", small, "f16", [999], "fp4", False))
    tiny_neg = specials(rng, 777)
    tiny_neg[400:464] = -np.abs(tiny_neg[400:464]) * 1e-3  # tiny negatives: FP4 codes 1000 (-0)
    tiny_neg[400] = 1.0
    cases.append(case("fp4-bf16-tail", tiny_neg, "bf16", [7, 111], "fp4", False))
    cases.append(case("nf4-bf16-tail", tiny_neg, "bf16", [7, 111], "nf4", False))
    for qt in ("nf4", "fp4"):
        v = ties(qt)
        cases.append(case(f"{qt}-f32-ties", v, "f32", [v.size], qt, False))
    w = normal_weights(rng, 37 * 27)
    cases.append(case("nf4-dq-f32-small", w, "f32", [37, 27], "nf4", True))
    cases.append(case("fp4-dq-f32-small", w, "f32", [37, 27], "fp4", True))
    const = np.tile(np.linspace(-0.03, 0.03, 64, dtype=f32), 3)  # equal absmax: offset = absmax
    cases.append(case("nf4-dq-constant-absmax", const, "f32", [3, 64], "nf4", True))
    # Large cases: 261 blocks (the nested blocks: 256 + 5), a [61, 273] weight whose rows
    # straddle blocks; the dequantized tensor is checked by its sha256.
    big = specials(rng, 61 * 273)
    big[5000:6000] *= np.linspace(0.1, 10, 1000, dtype=f32)  # absmax spread for the 8-bit map
    cases.append(case("nf4-dq-f16-rows", big, "f16", [61, 273], "nf4", True, store_dequant=False))
    cases.append(case("fp4-dq-f16-rows", big, "f16", [61, 273], "fp4", True, store_dequant=False))
    cases.append(case("nf4-f16-rows", big, "f16", [61, 273], "nf4", False, store_dequant=False))
    with open(os.path.join(OUT, "cases.json"), "w") as fh:
        json.dump({"generator": "tools/make_quant_fixtures.py", "cases": cases}, fh, indent=1)
        fh.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(cases)} cases to {os.path.relpath(OUT, ROOT)} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
