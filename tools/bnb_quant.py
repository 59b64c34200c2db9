"""bitsandbytes' 4-bit quantization (NF4, FP4, double quantization), in NumPy.

bitsandbytes is not in the package mirror these machines reach, so this is
the reference the fixtures come from: its published algorithm, written from
its source (bitsandbytes/functional.py: quantize_4bit, dequantize_4bit,
quantize_blockwise, get_4bit_type, create_dynamic_map; csrc/kernels.cu:
kQuantizeBlockwise, kQuantizeBlockwiseSmall, kDequantizeBlockwise,
dQuantizeNF4, dQuantizeFP4, dQuantize) and the QLoRA paper (Dettmers et al.
2023, arXiv:2305.14314), following the CUDA kernels where the backends
differ. Every step is float32 arithmetic, as on the GPU. docs/qlora.md
states the rules; in short:

- A tensor is quantized flattened (row-major), in blocks of 64 values; a
  block's scale is absmax = max |v| over its values (a short last block:
  over the values it has).
- Each value is scaled by a float32 reciprocal, x = v * (1 / absmax), and
  mapped to a 4-bit code by the kernel's comparison tree: with the tree's 15
  thresholds (midpoints of neighbouring code values, as float32 literals),
  the code's rank is the number of thresholds t with x > t. So a value on a
  midpoint goes to the code below it, and NaN (a block of zeros: 0 * inf)
  to the lowest rank.
- NF4's 16 values are the table in get_4bit_type / the kernel's LUT; a code
  is its rank. FP4 is sign + 3 bits: the sign bit is x < 0, the 3 bits come
  from the tree on |x|, whose levels in ascending order are the bit patterns
  000, 001, 110, 111, 100, 101, 010, 011; its values are the kernel's LUT
  (0, 0.0052083, 0.6667, 1, 0.3333, 0.5, 0.1667, 0.25) times +-1, so the
  pattern 1000 decodes to -0.0.
- Two codes per byte: the first value (even index) in the high nibble, the
  second in the low one; an odd count pads the last byte's low nibble with
  the code of 0 scaled by the last block's reciprocal.
- Dequantization: value = code_value * absmax (float32), in the order the
  block's values came.
- Double quantization (compress_statistics): offset = mean of the absmax
  values; absmax - offset is quantized with quantize_blockwise in blocks of
  256 with the signed 8-bit dynamic map (create_dynamic_map), whose codes
  the kernel picks by a 7-step binary search and a comparison with the
  midpoints of the neighbours it ends between; dequantized as
  code8 * absmax2 + offset before it scales the 4-bit codes.

Where the CUDA build is not reproducible off the GPU, this takes the IEEE
float32 result: bitsandbytes compiles with --use_fast_math, so its
1.0f / absmax may be the approximate reciprocal (at most 1 ulp away), which
changes a code only for a value within an ulp of a threshold; the offset is
a float32 mean whose summation order is the GPU's (here: a float64 sum in
index order, divided by n, rounded once to float32).
"""

from fractions import Fraction

import numpy as np

f32 = np.float32

# NF4: the 16 values of get_4bit_type("nf4") / nf4_dequantization_lut, as float32.
NF4_VALUES = [
    "-1.0",
    "-0.6961928009986877",
    "-0.5250730514526367",
    "-0.39491748809814453",
    "-0.28444138169288635",
    "-0.18477343022823334",
    "-0.09105003625154495",
    "0.0",
    "0.07958029955625534",
    "0.16093020141124725",
    "0.24611230194568634",
    "0.33791524171829224",
    "0.44070982933044434",
    "0.5626170039176941",
    "0.7229568362236023",
    "1.0",
]
# The pivots of dQuantizeNF4's tree, ascending: code rank r has r pivots below it.
NF4_THRESHOLDS = [
    "-0.8480964004993439",
    "-0.6106329262256622",
    "-0.4599952697753906",
    "-0.33967943489551544",
    "-0.23460740596055984",
    "-0.13791173323988914",
    "-0.045525018125772476",
    "0.03979014977812767",
    "0.1202552504837513",
    "0.2035212516784668",
    "0.2920137718319893",
    "0.3893125355243683",
    "0.5016634166240692",
    "0.6427869200706482",
    "0.8614784181118011",
]
# FP4: fp4_dequantization_lut, indexed by the 3 low bits of a code.
FP4_MAGNITUDES = [
    "0.0",
    "0.005208333333",
    "0.66666667",
    "1.0",
    "0.33333333",
    "0.5",
    "0.16666667",
    "0.25",
]
# The pivots of dQuantizeFP4's tree on |x|, ascending, and the bit pattern of each level.
FP4_THRESHOLDS = [
    "0.00260417",
    "0.0859375",
    "0.20833333",
    "0.29166667",
    "0.4166667",
    "0.583333",
    "0.8333333",
]
FP4_LEVEL_BITS = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011]


def f32_of_decimal(s):
    """The float32 nearest to a decimal literal, as a C compiler reads `1.5f` (round half even)."""
    x = Fraction(s)
    if x == 0:
        return f32(-0.0) if s.strip().startswith("-") else f32(0.0)
    a = f32(float(x))  # a candidate; fix it by exact comparison with its neighbours
    best = None
    for c in (np.nextafter(a, f32(-np.inf)), a, np.nextafter(a, f32(np.inf))):
        d = abs(Fraction(float(c)) - x)
        if best is None or d < best[0] or (d == best[0] and int(c.view(np.uint32)) % 2 == 0):
            best = (d, c)
    return f32(best[1])


def table(strings):
    return np.array([f32_of_decimal(s) for s in strings], dtype=f32)


def nf4_code():
    return table(NF4_VALUES)


def fp4_code():
    """The 16 FP4 values by code, as the kernel decodes them (code 8 is -0.0)."""
    mag = table(FP4_MAGNITUDES)
    return np.concatenate([mag, -mag]).astype(f32)


def code_values(quant_type):
    return nf4_code() if quant_type == "nf4" else fp4_code()


def quantize_codes(x, quant_type):
    """4-bit codes of normalised float32 values x, as dQuantizeNF4 / dQuantizeFP4 pick them."""
    x = np.asarray(x, dtype=f32)
    with np.errstate(invalid="ignore"):
        if quant_type == "nf4":
            t = table(NF4_THRESHOLDS)
            return np.sum(x[:, None] > t[None, :], axis=1).astype(np.uint8)
        t = table(FP4_THRESHOLDS)
        sign = np.where(x < 0, 8, 0).astype(np.uint8)
        rank = np.sum(np.abs(x)[:, None] > t[None, :], axis=1)
        return (np.array(FP4_LEVEL_BITS, dtype=np.uint8)[rank] + sign).astype(np.uint8)


def linspace_f32(start, end, steps):
    """torch.linspace(start, end, steps) in float32 as torch 2.x computes it on x86-64: from both
    ends, each value one fused multiply-add (start + step*i, end - step*(steps-1-i))."""
    start, end = f32(start), f32(end)
    step = f32((end - start) / f32(steps - 1))
    half = steps // 2
    # The float64 expressions are exact (a float32 times an integer below 2**7, plus a float32),
    # so rounding them once to float32 is the fused result.
    return np.array(
        [
            f32(float(start) + float(step) * i) if i < half else f32(float(end) - float(step) * (steps - 1 - i))
            for i in range(steps)
        ],
        dtype=f32,
    )


def dynamic_map():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 float32 values, sorted."""
    values = []
    for i in range(7):
        bounds = linspace_f32(0.1, 1.0, 2**i + 1)
        means = (bounds[:-1] + bounds[1:]) / f32(2)
        scaled = (f32_of_decimal(f"1e{i - 6}") * means).astype(f32)
        values += list(scaled) + list(-scaled)
    values += [f32(0.0), f32(1.0)]
    return np.sort(np.array(values, dtype=f32))


def quantize_8bit_codes(x, code):
    """dQuantize<0>: the 8-bit code of each normalised float32 value, by the kernel's search."""
    x = np.asarray(x, dtype=f32)
    n = x.size
    pivot = np.full(n, 127)
    upper_pivot = np.full(n, 255)
    lower_pivot = np.zeros(n, dtype=np.int64)
    lower = np.full(n, f32(-1.0), dtype=f32)
    upper = np.full(n, f32(1.0), dtype=f32)
    val = code[pivot]
    with np.errstate(invalid="ignore"):
        for i in (64, 32, 16, 8, 4, 2, 1):
            up = x > val
            lower_pivot = np.where(up, pivot, lower_pivot)
            lower = np.where(up, val, lower).astype(f32)
            upper_pivot = np.where(up, upper_pivot, pivot)
            upper = np.where(up, upper, val).astype(f32)
            pivot = np.where(up, pivot + i, pivot - i)
            val = code[pivot]
        upper = np.where(upper_pivot == 255, code[255], upper).astype(f32)
        lower = np.where(lower_pivot == 0, code[0], lower).astype(f32)
        above = x > val
        mid_up = ((upper + val) * f32(0.5)).astype(f32)
        mid_down = ((lower + val) * f32(0.5)).astype(f32)
        q = np.where(
            above,
            np.where(x > mid_up, upper_pivot, pivot),
            np.where(x < mid_down, lower_pivot, pivot),
        )
    return q.astype(np.uint8)


def block_absmax(v, blocksize):
    """max |v| per block of `blocksize` (the last block over the values it has)."""
    n = v.size
    blocks = -(-n // blocksize)
    padded = np.zeros(blocks * blocksize, dtype=f32)
    padded[:n] = np.abs(v)
    return padded.reshape(blocks, blocksize).max(axis=1).astype(f32)


def normalise(v, absmax, blocksize):
    """v * (1 / absmax of its block), float32; a block of zeros gives NaN as on the GPU."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (f32(1.0) / absmax).astype(f32)
        return (v * np.repeat(inv, blocksize)[: v.size]).astype(f32)


def quantize_blockwise(v, code, blocksize=256):
    """quantize_blockwise: (uint8 codes, float32 absmax per block)."""
    v = np.asarray(v, dtype=f32)
    absmax = block_absmax(v, blocksize)
    return quantize_8bit_codes(normalise(v, absmax, blocksize), code), absmax


def dequantize_blockwise(q, absmax, code, blocksize=256):
    return (code[q.astype(np.int64)] * np.repeat(absmax, blocksize)[: q.size]).astype(f32)


def mean_f32(v):
    """The offset of double quantization: a float64 sum in index order, / n, rounded to float32."""
    return f32(np.cumsum(v.astype(np.float64))[-1] / v.size)


def quantize_4bit(v, quant_type="nf4", blocksize=64, double_quant=False):
    """quantize_4bit on a flattened float32 array: packed bytes and the block statistics."""
    v = np.asarray(v, dtype=f32).reshape(-1)
    n = v.size
    absmax = block_absmax(v, blocksize)
    x = normalise(v, absmax, blocksize)
    if n % 2:
        # The kernel loads the missing value as 0 and quantizes it with the block's reciprocal.
        with np.errstate(divide="ignore", invalid="ignore"):
            pad = f32(0.0) * (f32(1.0) / absmax[-1])
        x = np.concatenate([x, np.array([pad], dtype=f32)])
    q = quantize_codes(x, quant_type)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    state = {"n": n, "quant_type": quant_type, "blocksize": blocksize, "packed": packed}
    if double_quant:
        offset = mean_f32(absmax)
        code = dynamic_map()
        qabs, absmax2 = quantize_blockwise((absmax - offset).astype(f32), code, 256)
        state.update({"qabsmax": qabs, "absmax2": absmax2, "offset": offset, "code": code})
    else:
        state["absmax"] = absmax
    return state


def absmax_of(state):
    """The float32 block scales a state holds (double quantization undone)."""
    if "absmax" in state:
        return state["absmax"]
    deq = dequantize_blockwise(state["qabsmax"], state["absmax2"], state["code"], 256)
    return (deq + state["offset"]).astype(f32)


def dequantize_4bit(state):
    n, bs = state["n"], state["blocksize"]
    packed = state["packed"]
    q = np.empty(packed.size * 2, dtype=np.uint8)
    q[0::2] = packed >> 4
    q[1::2] = packed & 15
    values = code_values(state["quant_type"])[q[:n].astype(np.int64)]
    return (values * np.repeat(absmax_of(state), bs)[:n]).astype(f32)


# ---- the kernels' comparison trees, written out, for the self-check ----


def nf4_tree(x):
    t = [f32_of_decimal(s) for s in NF4_THRESHOLDS]
    if x > t[7]:
        if x > t[11]:
            if x > t[13]:
                return 15 if x > t[14] else 14
            return 13 if x > t[12] else 12
        if x > t[9]:
            return 11 if x > t[10] else 10
        return 9 if x > t[8] else 8
    if x > t[3]:
        if x > t[5]:
            return 7 if x > t[6] else 6
        return 5 if x > t[4] else 4
    if x > t[1]:
        return 3 if x > t[2] else 2
    return 1 if x > t[0] else 0


def fp4_tree(x):
    t = [f32_of_decimal(s) for s in FP4_THRESHOLDS]
    sign = 8 if x < 0 else 0
    x = abs(x)
    if x > t[3]:
        if x > t[5]:
            return (0b011 if x > t[6] else 0b010) + sign
        return (0b101 if x > t[4] else 0b100) + sign
    if x > t[1]:
        return (0b111 if x > t[2] else 0b110) + sign
    return (0b001 if x > t[0] else 0b000) + sign


def self_check():
    """The rank rule equals the written-out trees; the tables are what bitsandbytes computes."""
    for quant_type, tree, thresholds in (
        ("nf4", nf4_tree, NF4_THRESHOLDS),
        ("fp4", fp4_tree, FP4_THRESHOLDS),
    ):
        probes = [f32(np.nan), f32(0.0), f32(-0.0), f32(1.0), f32(-1.0), f32(2.0), f32(-2.0)]
        for s in thresholds:
            t = f32_of_decimal(s)
            for u in (t, -t):
                probes += [u, np.nextafter(u, f32(np.inf)), np.nextafter(u, f32(-np.inf))]
        probes += list(np.linspace(-1.1, 1.1, 2001, dtype=f32))
        with np.errstate(invalid="ignore"):
            got = quantize_codes(np.array(probes, dtype=f32), quant_type)
            want = [tree(p) for p in probes]
        assert list(got) == want, f"{quant_type}: the rank rule disagrees with the tree"
    # Each threshold is the float32 midpoint of its neighbours (the trees' pivots are midpoints).
    nf4 = nf4_code()
    mids = ((nf4[:-1].astype(np.float64) + nf4[1:]) / 2).astype(f32)
    assert np.max(np.abs(mids - table(NF4_THRESHOLDS))) < 1e-6
    # The kernel's FP4 LUT equals get_4bit_type("fp4"): the bit-pattern values divided by 12.
    raw = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3], dtype=f32)
    assert np.array_equal((raw / f32(12)).astype(f32), table(FP4_MAGNITUDES))
    code = dynamic_map()
    assert code.size == 256 and code[255] == 1 and code[127] == 0


if __name__ == "__main__":
    self_check()
    print("bnb_quant: self-check passed")
