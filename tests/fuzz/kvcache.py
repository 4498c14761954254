"""Fuzzers for lmkernels::kv_deviation and lmkernels::select_tokens (raw ops)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
import reference

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, bits, cpu_isa, layout_view, num_threads, special_values

DEVIATION = "lmkernels::kv_deviation"
SELECT = "lmkernels::select_tokens"


@fuzzer(DEVIATION)
def fuzz_kv_deviation(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["shape", "dtype", "stride"]), label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    shape = (draw(st.integers(0, 3)), draw(st.integers(0, 30)), draw(st.integers(0, 4)), draw(st.integers(1, 70)))

    def make(s):
        return draw(special_values(s, dtype))

    a = draw(layout_view(shape, make), label="a")
    b = draw(layout_view(shape, make), label="b")
    if fault == "shape":
        b = b[:, :-1] if shape[1] else torch.randn(1, 1, 1, 1).to(dtype)
    elif fault == "dtype":
        b = b.double()
    elif fault == "stride":
        a = a.transpose(-1, -2)
    result = attempt(DEVIATION, lambda: torch.ops.lmkernels.kv_deviation(a, b))
    if result is None:
        return
    out = result
    want = reference.kv_deviation(a, b)
    ok = torch.isfinite(want) & (want < 1e37)
    torch.testing.assert_close(out.double()[ok], want[ok], rtol=1e-5, atol=1e-6)
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            assert torch.equal(bits(torch.ops.lmkernels.kv_deviation(a, b)), bits(out)), f"cpu path {isa} differs"
    with num_threads(1):
        single = torch.ops.lmkernels.kv_deviation(a.contiguous(), b.contiguous())
    assert torch.equal(bits(single), bits(out)), "1 thread or contiguous copy differs"


@fuzzer(SELECT)
def fuzz_select_tokens(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["ratio", "nan", "dtype", "rank"]), label="fault")
    batch, n = draw(st.integers(0, 4), label="batch"), draw(st.integers(0, 200), label="tokens")
    # Few distinct values: many ties.
    scores = torch.randint(0, draw(st.integers(1, 50)), (batch, n)).float()
    scores = scores.to(draw(st.sampled_from(FLOAT_DTYPES), label="dtype"))
    ratio = draw(st.floats(1e-6, 1.0), label="ratio")
    if fault == "ratio":
        ratio = draw(st.sampled_from([0.0, -0.5, 1.0001, float("nan"), float("inf")]))
    elif fault == "nan" and scores.numel():
        scores[0, 0] = float("nan")
    elif fault == "dtype":
        scores = scores.long()
    elif fault == "rank":
        scores = scores[None]
    result = attempt(SELECT, lambda: torch.ops.lmkernels.select_tokens(scores, ratio))
    if result is None:
        return
    out = result
    assert torch.equal(out, reference.select_tokens(scores, ratio))


SCATTER = "lmkernels::scatter_kv_"


@fuzzer(SCATTER)
def fuzz_scatter_kv(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["slot range", "slot repeat", "dtype", "shape", "inv_freq"]),
                 label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    tokens, heads, dim = draw(st.integers(0, 20)), draw(st.integers(0, 3)), draw(st.integers(2, 40))
    slots_n = tokens + draw(st.integers(0, 10), label="spare slots")
    k = draw(special_values((tokens, heads, dim), dtype), label="k")
    v = draw(special_values((tokens, heads, dim), dtype), label="v")
    k_cache = draw(special_values((slots_n, heads, dim), dtype), label="k_cache")
    v_cache = draw(special_values((slots_n, heads, dim), dtype), label="v_cache")
    slots = torch.randperm(max(slots_n, 1))[:tokens]
    if tokens and draw(st.booleans()):
        slots[0] = -1
    old = torch.randint(-5000, 5000, (tokens,))
    new = torch.randint(-5000, 5000, (tokens,))
    half = draw(st.integers(1, dim // 2))
    inv_freq = (1.0 / (10000.0 ** (torch.arange(half) / half))).float()
    if fault == "slot range" and tokens:
        slots[-1] = slots_n + draw(st.integers(0, 3))
    elif fault == "slot repeat" and tokens >= 2:
        slots[1] = slots[0] = max(int(slots[0]), 0)
    elif fault == "dtype":
        v_cache = v_cache.double()
    elif fault == "shape":
        k_cache = k_cache[:, :, :-1]
    elif fault == "inv_freq":
        inv_freq = torch.ones(dim // 2 + 1)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    ok = attempt(SCATTER, lambda: torch.ops.lmkernels.scatter_kv_(k_cache, v_cache, k, v, slots, old, new,
                                                                  inv_freq, True) or True)
    if ok is None:
        assert torch.equal(bits(k_cache), bits(before_k)) and torch.equal(bits(v_cache), bits(before_v)), \
            "a rejected call changed the cache"
        return
    want_k, want_v = reference.scatter_kv(before_k, before_v, k, v, slots, old, new, inv_freq, True)
    assert torch.equal(bits(v_cache), bits(want_v))
    finite = torch.isfinite(k.float()).all(-1) if tokens else torch.ones(0, heads, dtype=torch.bool)
    rows = slots[(slots >= 0)]
    eps = torch.finfo(dtype).eps
    got, want = k_cache[rows].double(), want_k[rows].double()
    mask = finite[slots >= 0][..., None].expand_as(got) & torch.isfinite(want)
    scale = want.abs().nan_to_num(0, 0, 0).amax(-1, keepdim=True).clamp_min(1.0)
    assert ((got - want).abs() <= 4 * eps * scale)[mask].all(), "scatter_kv_ differs from the reference"
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again_k, again_v = before_k.clone(), before_v.clone()
            torch.ops.lmkernels.scatter_kv_(again_k, again_v, k, v, slots, old, new, inv_freq, True)
        assert torch.equal(bits(again_k), bits(k_cache)), f"cpu path {isa} differs"
