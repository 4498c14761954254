"""Chunk-reuse kernels: kv_deviation and select_tokens."""

from __future__ import annotations

import pytest
import torch

import lmkernels
import reference
from lmkernels.chunk_cache import kv_deviation, select_tokens

from conftest import devices

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,dim", [(8, 128), (3, 80), (1, 17), (2, 1)])
def test_kv_deviation_matches_reference(isa, device, dtype, heads, dim):
    a = torch.randn(2, 37, heads, dim).to(dtype)
    b = (a.float() + 0.1 * torch.randn(a.shape)).to(dtype)
    out = kv_deviation(a.to(device), b.to(device), layout="bthd")
    want = reference.kv_deviation(a, b)
    torch.testing.assert_close(out.cpu().double(), want, rtol=1e-5, atol=1e-6)


def test_kv_deviation_paths_and_threads_agree_bit_for_bit():
    a = torch.randn(3, 50, 4, 72).to(torch.bfloat16)
    b = torch.randn(3, 50, 4, 72).to(torch.bfloat16)
    results = []
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            results.append(kv_deviation(a, b, layout="bthd"))
    finally:
        lmkernels.set_cpu_isa(None)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results.append(kv_deviation(a, b, layout="bthd"))
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(r, results[0]) for r in results)


def test_kv_deviation_layouts_and_views():
    cache_a = torch.randn(2, 4, 30, 64)  # transformers layout [batch, heads, tokens, dim]
    cache_b = torch.randn(2, 4, 30, 64)
    want = reference.kv_deviation(cache_a.transpose(1, 2), cache_b.transpose(1, 2))
    torch.testing.assert_close(kv_deviation(cache_a, cache_b, layout="bhtd").double(), want, rtol=1e-5, atol=1e-6)
    thd = kv_deviation(cache_a[0].transpose(0, 1), cache_b[0].transpose(0, 1))
    torch.testing.assert_close(thd.double(), want[0], rtol=1e-5, atol=1e-6)
    # Rotation invariance: re-rotating both keys by the same shift changes nothing.
    rope = lmkernels.RopeConfig.standard(64)
    pos = torch.arange(30)
    ra, rb = (lmkernels.rope_rerotate_(t.clone(), pos, pos + 99, rope=rope, layout="bhtd") for t in (cache_a, cache_b))
    torch.testing.assert_close(kv_deviation(ra, rb, layout="bhtd").double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("ratio", [1e-9, 0.16, 0.5, 1.0])
def test_select_tokens_matches_reference(device, ratio):
    scores = torch.randn(3, 101)
    scores[0, 10:20] = 0.5  # ties
    out = select_tokens(scores.to(device), ratio)
    assert torch.equal(out.cpu(), reference.select_tokens(scores, ratio))


def test_select_tokens_ties_prefer_lower_indices_and_1d():
    scores = torch.zeros(10)
    assert select_tokens(scores, 0.3).tolist() == [0, 1, 2]
    scores[7] = 1.0
    assert select_tokens(scores, 0.2).tolist() == [0, 7]
    assert select_tokens(torch.tensor([3.0]), 0.5).tolist() == [0]  # k >= 1


def test_opcheck_and_compile():
    a, b = torch.randn(2, 5, 3, 16), torch.randn(2, 5, 3, 16)
    torch.library.opcheck(torch.ops.lmkernels.kv_deviation, (a, b))
    torch.library.opcheck(torch.ops.lmkernels.select_tokens, (torch.randn(2, 9), 0.4))
    f = torch.compile(lambda a, b: select_tokens(kv_deviation(a, b, layout="bthd"), 0.4), fullgraph=True,
                      backend="aot_eager")
    assert torch.equal(f(a, b), select_tokens(kv_deviation(a, b, layout="bthd"), 0.4))


class TestBadInputs:
    def test_kv_deviation(self):
        a = torch.randn(4, 2, 8)
        with pytest.raises(ValueError, match="one shape"):
            kv_deviation(a, a[:3])
        with pytest.raises(TypeError, match="must be float32"):
            kv_deviation(a.double(), a.double())
        with pytest.raises(ValueError, match="layout must be"):
            kv_deviation(a, a, layout="tbhd")
        with pytest.raises(RuntimeError, match="a and b must share a dtype"):
            torch.ops.lmkernels.kv_deviation(a[None], a[None].half())
        with pytest.raises(RuntimeError, match="unit stride on head_dim"):
            torch.ops.lmkernels.kv_deviation(a[None].transpose(-1, -2), a[None].transpose(-1, -2))

    def test_select_tokens(self):
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
            select_tokens(torch.randn(5), 0.0)
        with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
            select_tokens(torch.randn(5), 1.5)
        with pytest.raises(RuntimeError, match="NaN"):
            select_tokens(torch.tensor([1.0, float("nan")]), 0.5)
        with pytest.raises(TypeError, match="must be float32"):
            select_tokens(torch.arange(5), 0.5)
