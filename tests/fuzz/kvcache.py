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
