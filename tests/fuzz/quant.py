"""Fuzzers for lmkernels::quantize_weight, dequantize_weight and quant_linear (raw ops)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
import reference

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, bits, cpu_isa, layout_view, num_threads, special_values

QUANTIZE = "lmkernels::quantize_weight"
GPTQ = "lmkernels::quantize_weight_gptq"
DEQUANTIZE = "lmkernels::dequantize_weight"
LINEAR = "lmkernels::quant_linear"
GROUP_SIZES = [32, 64, 128, 256]
PACKED_FAULTS = ["group_size", "in_features", "lo shape", "hi shape", "scales dtype", "super shape",
                 "hi range", "hi order", "stride"]


@fuzzer(QUANTIZE)
def fuzz_quantize_weight(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["group_size", "num_hi", "select", "importance", "dtype", "rank"]),
                 label="fault")
    n, k = draw(st.integers(0, 6), label="rows"), draw(st.integers(1, 300), label="in_features")
    group_size = draw(st.sampled_from(GROUP_SIZES), label="group_size")
    groups = -(-k // group_size)
    num_hi = draw(st.integers(0, groups), label="num_hi")
    select = draw(st.sampled_from(["range", "error"]), label="select")
    weight = draw(special_values((n, k), torch.float32), label="weight") * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    importance = None
    if draw(st.booleans(), label="importance"):
        importance = torch.rand(k) * draw(st.sampled_from([0.0, 1.0, 1e6]))
    if fault == "group_size":
        group_size = draw(st.sampled_from([0, 16, 48, 512]))
    elif fault == "num_hi":
        num_hi = draw(st.sampled_from([-1, groups + 1]))
    elif fault == "select":
        select = draw(st.sampled_from(["Range", "", "rtn"]))
    elif fault == "importance":
        importance = draw(st.sampled_from([torch.rand(k + 1), torch.full((k,), float("nan")), -torch.rand(k),
                                           torch.rand(1, k)]))
    elif fault == "dtype":
        weight = weight.double()
    elif fault == "rank":
        weight = weight[None]
    result = attempt(QUANTIZE, lambda: torch.ops.lmkernels.quantize_weight(weight, group_size, num_hi, select, importance))
    if result is None:
        assert fault is not None or not torch.isfinite(weight).all() or weight.abs().max() > 1e5, "valid input refused"
        return
    assert torch.isfinite(weight).all(), "NaN/Inf weight accepted"
    packed = result
    assert packed[2].shape == (n, num_hi)
    got = reference.dequantize_packed(*packed, k, group_size)
    # Every weight lies within its group's range of its decoded value (the grid spans the group),
    # plus the rounding of the 4-bit scale and min codes (half a super-block step each, times the
    # top code) and fp16's subnormal floor for tiny weights.
    ranges = reference.group_ranges(weight, group_size).repeat_interleave(group_size, 1)[:, :k]
    block = (torch.arange(-(-k // group_size)) * (group_size // 32)) // 8
    supers = packed[4].double()[:, block].repeat_interleave(group_size, 1)[:, :k]
    code_rounding = 0.5 * 15 * supers[..., 0] + 0.5 * supers[..., 1]
    bound = ranges * 1.01 + code_rounding + 1e-3 * weight.double().abs() + 1e-5
    assert ((got.double() - weight.double()).abs() <= bound).all(), "weight far outside its group grid"
    with num_threads(1):
        single = torch.ops.lmkernels.quantize_weight(weight.contiguous(), group_size, num_hi, select, importance)
    for a, b in zip(single, packed):
        assert torch.equal(a, b), "1 thread differs"


@fuzzer(GPTQ)
def fuzz_quantize_weight_gptq(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["hessian shape", "hessian nan", "negative diag", "damp", "dtype"]),
                 label="fault")
    n, k = draw(st.integers(0, 6), label="rows"), draw(st.integers(1, 300), label="in_features")
    group_size = draw(st.sampled_from(GROUP_SIZES), label="group_size")
    num_hi = draw(st.integers(0, -(-k // group_size)), label="num_hi")
    weight = draw(special_values((n, k), torch.float32), label="weight")
    # x x^T sums of a few samples: low rank and with dead inputs, as real calibration gives.
    samples = draw(st.integers(0, 2 * k), label="samples")
    x = torch.randn(samples, k, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    x[:, : draw(st.integers(0, k))] *= draw(st.sampled_from([0.0, 1.0, 1e3]))
    hessian = x.double().T @ x.double()
    damp = draw(st.sampled_from([0.0, 0.01, 1.0]), label="damp")
    if fault == "hessian shape":
        hessian = hessian[:-1]
    elif fault == "hessian nan":
        hessian[draw(st.integers(0, k - 1)), 0] = float("nan")
    elif fault == "negative diag":
        hessian[0, 0] = -1.0
    elif fault == "damp":
        damp = draw(st.sampled_from([-0.1, 2.0, float("nan")]))
    elif fault == "dtype":
        hessian = hessian.to(torch.int64)
    result = attempt(GPTQ, lambda: torch.ops.lmkernels.quantize_weight_gptq(weight, hessian, group_size, num_hi,
                                                                             "range", damp))
    if result is None:
        assert fault is not None or not torch.isfinite(weight).all() or weight.abs().max() > 1e5, "valid input refused"
        return
    assert torch.isfinite(weight).all(), "NaN/Inf weight accepted"
    got = reference.dequantize_packed(*result, k, group_size)
    assert torch.isfinite(got).all() and got.shape == (n, k)
    with num_threads(1):
        single = torch.ops.lmkernels.quantize_weight_gptq(weight, hessian, group_size, num_hi, "range", damp)
    for a, b in zip(single, result):
        assert torch.equal(a, b), "1 thread differs"


def draw_packed(draw, n: int, k: int, group_size: int):
    groups = -(-k // group_size)
    num_hi = draw(st.integers(0, groups), label="num_hi")
    s = lmkernels._fake._quant_shape(n, k, group_size, num_hi)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31), label="seed"))
    lo = torch.randint(0, 256, (n, s["lo_stride"]), dtype=torch.uint8, generator=gen)
    hi = torch.randint(0, 256, (s["hi_quads"], 32), dtype=torch.uint8, generator=gen)
    hi_groups = torch.randperm(groups, generator=gen)[:num_hi].sort().values.repeat(n, 1).to(torch.int16)
    if n and num_hi:  # rows differ: the last row takes other groups
        hi_groups[-1] = torch.randperm(groups, generator=gen)[:num_hi].sort().values
    scales = torch.randint(0, 256, (n, groups), dtype=torch.uint8, generator=gen)
    super_scales = (torch.rand(n, s["super_blocks"], 2, generator=gen) * 0.1).half()
    return [lo, hi, hi_groups, scales, super_scales]


def break_packed(draw, fault, packed, k, group_size):
    """Apply `fault` to the packed tensors / arguments; returns (packed, in_features, group_size)."""
    lo, hi, hi_groups, scales, super_scales = packed
    if fault == "group_size":
        group_size = draw(st.sampled_from([0, 16, 100, 512]))
    elif fault == "in_features":
        k = draw(st.sampled_from([0, -3, k + 10 * group_size]))
    elif fault == "lo shape":
        lo = lo[:, :-1]
    elif fault == "hi shape":
        hi = torch.cat([hi, hi[:1]]) if hi.shape[0] else torch.zeros(1, 32, dtype=torch.uint8)
    elif fault == "scales dtype":
        scales = scales.to(torch.int16)
    elif fault == "super shape":
        super_scales = super_scales[:, :, :1]
    elif fault == "hi range" and hi_groups.numel():
        hi_groups = hi_groups.clone()
        hi_groups[0, -1] = draw(st.sampled_from([-1, scales.shape[1], 32767]))
    elif fault == "hi order" and hi_groups.shape[0] and hi_groups.shape[1] >= 2:
        hi_groups = hi_groups.clone()
        hi_groups[0, 1] = hi_groups[0, 0]
    elif fault == "stride" and lo.shape[0] >= 2:
        lo = torch.cat([lo, lo], 1)[:, : lo.shape[1]]
    return [lo, hi, hi_groups, scales, super_scales], k, group_size


@fuzzer(DEQUANTIZE)
def fuzz_dequantize_weight(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + PACKED_FAULTS), label="fault")
    n, k = draw(st.integers(0, 5), label="rows"), draw(st.integers(1, 600), label="in_features")
    group_size = draw(st.sampled_from(GROUP_SIZES), label="group_size")
    packed = draw_packed(draw, n, k, group_size)
    args, k_arg, gs_arg = break_packed(draw, fault, packed, k, group_size)
    result = attempt(DEQUANTIZE, lambda: torch.ops.lmkernels.dequantize_weight(*args, k_arg, gs_arg))
    if result is None:
        return
    assert torch.equal(result, reference.dequantize_packed(*args, k_arg, gs_arg))


@fuzzer(LINEAR)
def fuzz_quant_linear(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 8 + PACKED_FAULTS + ["x shape", "x dtype", "bias"]), label="fault")
    n, k = draw(st.integers(0, 40), label="rows"), draw(st.integers(1, 600), label="in_features")
    group_size = draw(st.sampled_from(GROUP_SIZES), label="group_size")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    lead = tuple(draw(st.lists(st.integers(0, 5), max_size=2), label="lead"))
    packed = draw_packed(draw, n, k, group_size)
    args, k_arg, gs_arg = break_packed(draw, fault, packed, k, group_size)
    x = draw(layout_view(lead + (k,), lambda s: draw(special_values(s, dtype))), label="x")
    bias = torch.randn(n).to(dtype) if draw(st.booleans(), label="bias") else None
    if fault == "x shape":
        x = x[..., :-1]
    elif fault == "x dtype":
        x = x.to(torch.int32)
    elif fault == "bias":
        bias = torch.randn(n + 1)
    result = attempt(LINEAR, lambda: torch.ops.lmkernels.quant_linear(x, *args, bias, k_arg, gs_arg))
    if result is None:
        return
    out = result
    assert out.shape == lead + (n,) and out.dtype == dtype
    w = reference.dequantize_packed(*args, k_arg, gs_arg)
    want = torch.nn.functional.linear(x.double(), w.double(), None if bias is None else bias.double())
    x_ok = torch.isfinite(x.double()).all(-1, keepdim=True) & (x.double().abs().amax(-1, keepdim=True) < 1e30)
    # A row with NaN/Inf activations gives a non-finite output row: never a silent number.
    bad_rows = ~torch.isfinite(x.double()).all(-1)
    if n:
        assert (~torch.isfinite(out[bad_rows].double())).all(), "NaN/Inf activation gave a finite output"
    ok = x_ok.expand_as(want) & torch.isfinite(want) & (want.abs() < 1e30)
    # int8 activations: error bounded by the per-block activation step times the weight row mass.
    tol = 0.02 * (x.double().abs().amax(-1, keepdim=True) * w.double().abs().sum(1)) + 1e-2 * want.abs() + 1e-3
    assert ((out.double() - want).abs() <= tol)[ok].all(), "output far from the dequantized reference"
    # The row kernels agree bit for bit; the strip paths ("avx512_vnni" and "amx": int8 GEMMs on
    # unpacked strips, their own float order, the same bits as each other) take batches of
    # reference.QUANT_STRIP_MIN_ROWS rows or more, and must then be within the same tolerance.
    rows = x.numel() // k if k else 0
    strips = rows >= reference.QUANT_STRIP_MIN_ROWS
    by_isa = {}
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            by_isa[isa] = torch.ops.lmkernels.quant_linear(x, *args, bias, k_arg, gs_arg)
    for isa, again in by_isa.items():
        if strips and isa in reference.QUANT_STRIP_ISAS:
            assert ((again.double() - want).abs() <= tol)[ok].all(), f"{isa} strips far from the dequantized reference"
            assert torch.equal(bits(again), bits(by_isa["avx512_vnni"])), f"{isa} strips differ from avx512_vnni's"
        else:
            assert torch.equal(bits(again), bits(by_isa["scalar"])), f"cpu path {isa} differs"
    default = lmkernels.cpu_isa()
    assert torch.equal(bits(by_isa[default]), bits(out)), "the default path differs from its own call again"
    with num_threads(1):
        single = torch.ops.lmkernels.quant_linear(x.contiguous(), *args, bias, k_arg, gs_arg)
    assert torch.equal(bits(single), bits(out)), "1 thread or contiguous copy differs"
