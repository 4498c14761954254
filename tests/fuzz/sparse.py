"""Fuzzers for lmkernels::block_sparse_attention, flex_select_blocks and flex_pattern_scores (raw ops;
also its tensor-op form _flex_pattern_scores_tensor_ops, the CUDA impl)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
import reference
from lmkernels.sparse import BlockIndex

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, cpu_isa, num_threads, special_values

OP = "lmkernels::block_sparse_attention"
TOL = {torch.float32: 5e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@fuzzer(OP)
def fuzz_block_sparse_attention(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 7 + ["block_size", "crow", "col order", "col range", "shape", "dtype"]),
                 label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    batch = draw(st.integers(1, 2), label="batch")
    heads_kv = draw(st.integers(1, 2), label="heads_kv")
    heads_q = heads_kv * draw(st.integers(1, 3), label="group")
    n = draw(st.integers(0, 150), label="tokens")
    dim = draw(st.integers(1, 72), label="head_dim")
    bs = draw(st.sampled_from([16, 32, 64]), label="block_size")
    causal = draw(st.booleans(), label="causal")
    blocks = -(-n // bs)
    density = draw(st.floats(0.0, 1.0), label="density")
    mask = torch.rand(batch, heads_q, blocks, blocks, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) < density
    q = draw(special_values((batch, heads_q, n, dim), dtype), label="q")
    k = draw(special_values((batch, heads_kv, n, dim), dtype), label="k")
    v = draw(special_values((batch, heads_kv, n, dim), dtype), label="v")
    crow, col = BlockIndex.from_mask(mask)
    if fault == "block_size":
        bs = draw(st.sampled_from([0, 48, 512]))
    elif fault == "crow":
        crow = crow[..., :-1]
    elif fault == "col order" and col.shape[-1] >= 2 and int(crow[0, 0, -1]) >= 2:
        col = col.clone()
        col[0, 0, 0], col[0, 0, 1] = col[0, 0, 1].item(), col[0, 0, 0].item()
    elif fault == "col range":
        col = col.clone()
        col[..., 0] = blocks + 3
        crow = crow.clone()
        crow[..., -1] = crow[..., -1].clamp_min(1)
        crow[..., 1:] = crow[..., 1:].clamp_min(1)
    elif fault == "shape":
        k = k[:, :, : max(0, n - 1)]
        v = v[:, :, : max(0, n - 1)]
    elif fault == "dtype":
        v = v.double()
    result = attempt(OP, lambda: torch.ops.lmkernels.block_sparse_attention(q, k, v, crow, col, bs, causal, 0.3, True))
    if result is None:
        return
    out, lse = result
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    finite = all(torch.isfinite(t.float()).all() for t in (q, k, v))
    if finite and all(t.abs().max() < 1e10 for t in (q, k, v) if t.numel()):
        want, want_lse = reference.block_sparse_attention(q, k, v, BlockIndex(crow, col).to_mask(blocks), bs, causal, 0.3)
        torch.testing.assert_close(out, want, atol=TOL[dtype], rtol=TOL[dtype])
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again = torch.ops.lmkernels.block_sparse_attention(q, k, v, crow, col, bs, causal, 0.3, True)[0]
        assert torch.equal(again.nan_to_num(), out.nan_to_num()), f"cpu path {isa} differs"
    with num_threads(1):
        single = torch.ops.lmkernels.block_sparse_attention(q, k, v, crow, col, bs, causal, 0.3, True)[0]
    assert torch.equal(single.nan_to_num(), out.nan_to_num()), "1 thread differs"


SELECT = "lmkernels::flex_select_blocks"


@fuzzer(SELECT)
def fuzz_flex_select_blocks(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["shape", "attn shape", "aware dtype", "gamma", "budget", "nan",
                                               "negative", "dtype", "empty"]), label="fault")
    batch = draw(st.integers(1, 2), label="batch")
    heads = draw(st.integers(1, 3), label="heads")
    blocks = draw(st.integers(1, 10), label="blocks")
    gamma = draw(st.floats(0.01, 1.0), label="gamma")
    lo = draw(st.integers(1, 12), label="min_blocks")
    hi = lo + draw(st.integers(0, 12), label="extra blocks")
    seed = draw(st.integers(0, 2**31), label="seed")
    g = torch.Generator().manual_seed(seed)
    vertical = torch.rand(batch, heads, blocks, generator=g)
    slash = torch.rand(batch, heads, blocks, generator=g)
    attn = torch.rand(batch, heads, blocks, blocks, generator=g).tril()
    aware = torch.rand(batch, heads, generator=g) < 0.5
    if fault == "shape":
        slash = slash[..., :-1]
    elif fault == "attn shape":
        attn = attn[:, :, :1]
    elif fault == "aware dtype":
        aware = aware.float()
    elif fault == "gamma":
        gamma = draw(st.sampled_from([0.0, -1.0, 1.5, float("nan")]))
    elif fault == "budget":
        lo, hi = hi + 1, hi
    elif fault == "nan":
        vertical[0, 0, 0] = float("nan")
    elif fault == "negative":
        attn[0, 0, 0, 0] = -1.0
    elif fault == "dtype":
        vertical = vertical.half()
    elif fault == "empty":
        vertical, slash, attn = vertical[..., :0], slash[..., :0], attn[..., :0, :0]
    before = [t.clone() for t in (vertical, slash, attn)]
    result = attempt(SELECT, lambda: torch.ops.lmkernels.flex_select_blocks(vertical, slash, attn, aware, gamma, lo, hi))
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, (vertical, slash, attn)))
    if result is None:
        return
    crow, col, density = result
    mask = BlockIndex(crow, col).to_mask(blocks)
    assert torch.equal(mask, reference.flex_select_blocks(vertical, slash, attn, aware, gamma, lo, hi))
    with num_threads(1):
        again = torch.ops.lmkernels.flex_select_blocks(vertical, slash, attn, aware, gamma, lo, hi)
    assert all(torch.equal(a, b) for a, b in zip(again, result)), "1 thread differs"


SCORES = "lmkernels::flex_pattern_scores"
SCORES_TENSOR_OPS = "lmkernels::_flex_pattern_scores_tensor_ops"


@fuzzer(SCORES)
def fuzz_flex_pattern_scores(data):
    _fuzz_pattern_scores(data, SCORES)


@fuzzer(SCORES_TENSOR_OPS)
def fuzz_flex_pattern_scores_tensor_ops(data):
    _fuzz_pattern_scores(data, SCORES_TENSOR_OPS)


def _fuzz_pattern_scores(data, name):
    op = getattr(torch.ops.lmkernels, name.split("::")[1])
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["heads", "length", "dtype", "block", "scale", "dims"]), label="fault")
    batch = draw(st.integers(1, 2), label="batch")
    heads_kv = draw(st.integers(1, 2), label="heads_kv")
    heads_q = heads_kv * draw(st.integers(1, 3), label="group")
    n = draw(st.integers(1, 200), label="tokens")
    dim = draw(st.integers(1, 48), label="head_dim")
    block = draw(st.sampled_from([1, 7, 16, 64, 256]), label="block_size")
    scale = draw(st.floats(0.01, 1.0), label="scale")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    q = draw(special_values((batch, heads_q, n, dim), dtype), label="q")
    k = draw(special_values((batch, heads_kv, n, dim), dtype), label="k")
    if fault == "heads":
        q = torch.randn(batch, heads_kv * 2 + 1, n, dim).to(dtype) if heads_kv > 1 else q
    elif fault == "length":
        k = k[:, :, : n // 2]
    elif fault == "dtype":
        k = k.double()
    elif fault == "block":
        block = draw(st.sampled_from([0, -4]))
    elif fault == "scale":
        scale = float("inf")
    elif fault == "dims":
        q = q[0]
    before = (q.clone(), k.clone())
    result = attempt(name, lambda: op(q, k, block, scale))
    assert torch.equal(before[0].nan_to_num(), q.nan_to_num()) and torch.equal(before[1].nan_to_num(), k.nan_to_num())
    if result is None:
        return
    finite = bool(torch.isfinite(q.float()).all() and torch.isfinite(k.float()).all())
    small = finite and q.float().abs().max() * k.float().abs().max() * dim * scale < 50
    if small:  # within fp32 softmax range: compare to float64
        want = reference.flex_pattern_scores(q.float(), k.float(), block, scale)
        for a, b in zip(result, want):
            torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-3)
    with num_threads(1):
        again = op(q, k, block, scale)
    # Both forms run their GEMMs and reductions through ATen, whose BLAS picks another kernel
    # (another summation order) for some small shapes at another thread count (seen: MKL sgemm
    # of [7, 5] x [5, 17]): close, not equal.
    for a, b in zip(again, result):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, equal_nan=True, msg="1 thread differs")
