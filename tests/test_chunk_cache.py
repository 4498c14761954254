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


def chunk(tokens, heads, dim, dtype):
    return torch.randn(tokens, heads, dim).to(dtype), torch.randn(tokens, heads, dim).to(dtype)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
def test_scatter_kv_matches_reference(isa, device, dtype, neox):
    rope = lmkernels.RopeConfig.standard(64, rotary_dim=48, neox=neox)
    k, v = chunk(20, 4, 64, dtype)
    k_cache, v_cache = chunk(50, 4, 64, dtype)
    slots = torch.randperm(50)[:20]
    slots[3] = -1  # skipped token
    old = torch.arange(20) + 7
    new = torch.arange(20) + 300
    want_k, want_v = reference.scatter_kv(k_cache, v_cache, k, v, slots, old, new, rope.inv_freq, neox)
    kc, vc = k_cache.to(device), v_cache.to(device)
    lmkernels.chunk_cache.scatter_kv_(kc, vc, k.to(device), v.to(device), slots.to(device),
                                      old_pos=old.to(device), new_pos=new.to(device), rope=rope)
    eps = torch.finfo(dtype).eps  # fp32 math: a few ulp of the inputs' scale (|k| ~ 1)
    torch.testing.assert_close(kc.cpu(), want_k, atol=4 * eps, rtol=eps)
    assert torch.equal(vc.cpu(), want_v)


def test_scatter_kv_into_a_paged_cache_equals_the_flat_one():
    rope = lmkernels.RopeConfig.standard(32)
    k, v = chunk(10, 2, 32, torch.float32)
    paged_k, paged_v = torch.zeros(4, 16, 2, 32), torch.zeros(4, 16, 2, 32)  # 4 blocks of 16 slots
    block_table = torch.tensor([3, 1])  # the sequence lives in blocks 3, then 1
    pos = torch.arange(10) + 12          # positions 12..21 cross from block 3 into block 1
    slots = block_table[pos // 16] * 16 + pos % 16
    lmkernels.chunk_cache.scatter_kv_(paged_k, paged_v, k, v, slots, old_pos=torch.arange(10), new_pos=pos, rope=rope)
    flat_k, flat_v = reference.scatter_kv(torch.zeros(64, 2, 32), torch.zeros(64, 2, 32), k, v, slots,
                                          torch.arange(10), pos, rope.inv_freq, True)
    torch.testing.assert_close(paged_k.flatten(0, 1), flat_k, atol=1e-6, rtol=1e-6)
    assert torch.equal(paged_v.flatten(0, 1), flat_v)


def test_scatter_kv_paths_agree_bit_for_bit():
    rope = lmkernels.RopeConfig.standard(128, rotary_dim=120)
    k, v = chunk(33, 3, 128, torch.bfloat16)
    slots = torch.randperm(40)[:33]
    results = []
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            kc, vc = torch.zeros(40, 3, 128, dtype=torch.bfloat16), torch.zeros(40, 3, 128, dtype=torch.bfloat16)
            lmkernels.chunk_cache.scatter_kv_(kc, vc, k, v, slots, old_pos=torch.arange(33),
                                              new_pos=torch.arange(33) * 3 + 1000, rope=rope)
            results.append(kc)
    finally:
        lmkernels.set_cpu_isa(None)
    assert all(torch.equal(r, results[0]) for r in results)


def test_scatter_kv_opcheck_and_compile():
    rope = lmkernels.RopeConfig.standard(16)
    k, v = chunk(5, 2, 16, torch.float32)
    args = (torch.zeros(8, 2, 16), torch.zeros(8, 2, 16), k, v, torch.tensor([0, 2, 4, 6, -1]),
            torch.arange(5), torch.arange(5) + 9, rope.inv_freq, True)
    torch.library.opcheck(torch.ops.lmkernels.scatter_kv_, args)

    def f(kc, vc):
        lmkernels.chunk_cache.scatter_kv_(kc, vc, k * 2, v, args[4], old_pos=args[5], new_pos=args[6], rope=rope)
        return kc + vc

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(torch.zeros(8, 2, 16), torch.zeros(8, 2, 16)),
                               f(torch.zeros(8, 2, 16), torch.zeros(8, 2, 16)), atol=0, rtol=0)


class TestScatterBadInputs:
    rope = lmkernels.RopeConfig.standard(16)

    def call(self, slots=None, cache=None, **kw):
        k, v = chunk(4, 2, 16, torch.float32)
        kc = torch.zeros(6, 2, 16) if cache is None else cache
        vc = torch.zeros_like(kc)
        slots = torch.tensor([0, 1, 2, 3]) if slots is None else slots
        lmkernels.chunk_cache.scatter_kv_(kc, vc, kw.get("k", k), v, slots, old_pos=torch.arange(4),
                                          new_pos=torch.arange(4) + 1, rope=self.rope)
        return kc

    def test_slot_out_of_range_leaves_the_cache_untouched(self):
        cache = torch.full((6, 2, 16), 7.0)
        with pytest.raises(RuntimeError, match=r"slot_mapping\[2\] = 6 is not a slot in \[0, 6\)"):
            self.call(slots=torch.tensor([0, 1, 6, 3]), cache=cache)
        assert torch.equal(cache, torch.full((6, 2, 16), 7.0))

    def test_repeated_slot(self):
        with pytest.raises(RuntimeError, match="names slot 1 more than once"):
            self.call(slots=torch.tensor([1, 1, 2, 3]))

    def test_cache_shape(self):
        with pytest.raises(ValueError, match="heads x dim"):
            self.call(cache=torch.zeros(6, 3, 16))

    def test_head_dim_mismatch_with_rope(self):
        with pytest.raises(ValueError, match="rope.head_dim is 16"):
            self.call(k=torch.randn(4, 2, 8))
