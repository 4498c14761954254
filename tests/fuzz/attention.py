"""Fuzzers for lmkernels::varlen_attention and lmkernels::spliced_attention (raw ops)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
import reference

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, cpu_isa, layout_view, num_threads, special_values

OP = "lmkernels::varlen_attention"
TOL = {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@fuzzer(OP)
def fuzz_varlen_attention(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 8 + ["dtype", "cu end", "cu order", "cu dtype", "cu batch",
                                               "heads", "head_dim", "stride", "scale"]), label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    batch = draw(st.integers(0, 4), label="batch")
    lens_q = draw(st.lists(st.integers(0, 80), min_size=batch, max_size=batch), label="lens_q")
    same = draw(st.booleans(), label="same lengths")
    lens_k = lens_q if same else draw(st.lists(st.integers(0, 80), min_size=batch, max_size=batch), label="lens_k")
    heads_kv = draw(st.integers(1, 3), label="heads_kv")
    heads_q = heads_kv * draw(st.integers(1, 3), label="group")
    dim = draw(st.integers(1, 100), label="head_dim")
    causal = draw(st.booleans(), label="causal")
    return_lse = draw(st.booleans(), label="return_lse")
    scale = draw(st.floats(0.01, 2.0), label="scale")

    def make_q(shape):
        return draw(special_values(shape, dtype))

    q = draw(layout_view((sum(lens_q), heads_q, dim), make_q), label="q")
    k = draw(layout_view((sum(lens_k), heads_kv, dim), make_q), label="k")
    v = draw(layout_view((sum(lens_k), heads_kv, dim), make_q), label="v")
    cu_q = torch.tensor([0] + torch.tensor(lens_q, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)

    if fault == "dtype":
        k = k.double()
    elif fault == "cu end":
        cu_q = cu_q.clone()
        cu_q[-1] += draw(st.sampled_from([-1, 1, 1000]))
    elif fault == "cu order" and batch >= 2:
        cu_k = cu_k.clone()
        cu_k[1] = cu_k[-1] + 1
    elif fault == "cu dtype":
        cu_q = cu_q.float()
    elif fault == "cu batch":
        cu_k = torch.cat([cu_k, cu_k[-1:]])
    elif fault == "heads":
        q = torch.randn(q.shape[0], heads_kv * 2 + 1, dim).to(dtype) if heads_kv > 1 else q[:, :0]
    elif fault == "head_dim":
        v = torch.randn(v.shape[0], heads_kv, dim + 1).to(dtype)
    elif fault == "stride" and dim > 1:
        q = torch.randn(q.shape[0], heads_q, dim * 2).to(dtype)[..., ::2]
    elif fault == "scale":
        scale = float("nan")

    result = attempt(OP, lambda: torch.ops.lmkernels.varlen_attention(q, k, v, cu_q, cu_k, causal, scale, return_lse))
    if result is None:
        return
    out, lse = result
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == ((q.shape[0] if return_lse else 0), heads_q)
    finite = all(torch.isfinite(t.float()).all() for t in (q, k, v))
    # Scores and sums are fp32 (as in SDPA and flash-attention): compare where they fit.
    def peak(t):
        return t.double().abs().max().item() if t.numel() else 0.0

    fits_fp32 = finite and peak(q) * peak(k) * dim * scale < 1e30 and peak(v) * max(lens_k + [1]) < 1e30
    if fits_fp32:
        want_out, want_lse = reference.varlen_attention(q, k, v, cu_q, cu_k, causal, scale)
        tol = TOL[dtype] * max(1.0, scale * dim ** 0.5)
        torch.testing.assert_close(out, want_out, atol=tol, rtol=tol)
        if return_lse:
            torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-4)
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again = torch.ops.lmkernels.varlen_attention(q, k, v, cu_q, cu_k, causal, scale, return_lse)
        assert torch.equal(again[0].nan_to_num(), out.nan_to_num()), f"cpu path {isa} differs"
    with num_threads(1):
        single = torch.ops.lmkernels.varlen_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                                      cu_q, cu_k, causal, scale, return_lse)
    assert torch.equal(single[0].nan_to_num(), out.nan_to_num()), "1 thread or contiguous copy differs"


SPLICED = "lmkernels::spliced_attention"


@fuzzer(SPLICED)
def fuzz_spliced_attention(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 8 + ["dtype", "pos range", "pos order", "pos dtype", "pos count",
                                               "heads", "stride", "scale"]), label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    total = draw(st.integers(1, 150), label="keys")
    positions = sorted(draw(st.lists(st.integers(0, total - 1), max_size=60), label="positions"))
    heads_kv = draw(st.integers(1, 3), label="heads_kv")
    heads_q = heads_kv * draw(st.integers(1, 3), label="group")
    dim = draw(st.integers(1, 100), label="head_dim")
    scale = draw(st.floats(0.01, 2.0), label="scale")

    def make(shape):
        return draw(special_values(shape, dtype))

    q = draw(layout_view((len(positions), heads_q, dim), make), label="q")
    k = draw(layout_view((total, heads_kv, dim), make), label="k")
    v = draw(layout_view((total, heads_kv, dim), make), label="v")
    pos = torch.tensor(positions, dtype=torch.int64)
    if fault == "dtype":
        v = v.double()
    elif fault == "pos range" and positions:
        pos = pos.clone()
        pos[-1] = draw(st.sampled_from([total, total + 100, -1]))
    elif fault == "pos order" and len(positions) >= 2 and positions[0] != positions[-1]:
        pos = pos.flip(0)
    elif fault == "pos dtype":
        pos = pos.float()
    elif fault == "pos count":
        pos = torch.cat([pos, pos[-1:] if positions else torch.zeros(1, dtype=torch.int64)])
    elif fault == "heads" and heads_kv > 1:
        q = torch.randn(q.shape[0], heads_kv * 2 + 1, dim).to(dtype)
    elif fault == "stride" and dim > 1:
        k = torch.randn(total, heads_kv, dim * 2).to(dtype)[..., ::2]
    elif fault == "scale":
        scale = float("inf")

    out = attempt(SPLICED, lambda: torch.ops.lmkernels.spliced_attention(q, k, v, pos, scale))
    if out is None:
        return
    assert out.shape == q.shape and out.dtype == q.dtype
    finite = all(torch.isfinite(t.float()).all() for t in (q, k, v))

    def peak(t):
        return t.double().abs().max().item() if t.numel() else 0.0

    if finite and peak(q) * peak(k) * dim * scale < 1e30 and peak(v) * total < 1e30:
        want = reference.spliced_attention(q, k, v, pos, scale)
        tol = TOL[dtype] * max(1.0, scale * dim ** 0.5)
        torch.testing.assert_close(out, want, atol=tol, rtol=tol)
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again = torch.ops.lmkernels.spliced_attention(q, k, v, pos, scale)
        assert torch.equal(again.nan_to_num(), out.nan_to_num()), f"cpu path {isa} differs"
    with num_threads(1):
        single = torch.ops.lmkernels.spliced_attention(q.contiguous(), k.contiguous(), v.contiguous(), pos, scale)
    assert torch.equal(single.nan_to_num(), out.nan_to_num()), "1 thread or contiguous copy differs"
