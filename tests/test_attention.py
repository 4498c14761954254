"""varlen_attention against per-sequence float64 attention and against torch SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmkernels
from lmkernels import varlen_attention

import reference
from conftest import devices

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def cu(lengths, device="cpu"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def packed(lengths_q, lengths_k, heads_q, heads_kv, dim, dtype, device="cpu"):
    q = torch.randn(sum(lengths_q), heads_q, dim).to(dtype).to(device)
    k = torch.randn(sum(lengths_k), heads_kv, dim).to(dtype).to(device)
    v = torch.randn(sum(lengths_k), heads_kv, dim).to(dtype).to(device)
    return q, k, v, cu(lengths_q, device), cu(lengths_k, device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads_q,heads_kv,dim", [(4, 4, 64), (8, 2, 128), (6, 3, 80), (4, 1, 256), (2, 2, 24)])
def test_matches_reference(isa, device, dtype, causal, heads_q, heads_kv, dim):
    lengths = [5, 70, 1, 130, 64]
    q, k, v, cu_q, cu_k = packed(lengths, lengths, heads_q, heads_kv, dim, dtype, device)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, causal=causal, return_lse=True)
    want_out, want_lse = reference.varlen_attention(q.cpu(), k.cpu(), v.cpu(), cu_q.cpu(), cu_k.cpu(), causal)
    torch.testing.assert_close(out.cpu(), want_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("causal", [True, False])
def test_queries_shorter_than_keys_align_bottom_right(isa, device, causal):
    """The chunk-recompute case: a few queries at the end of each key sequence; also a
    sequence with more queries than keys, whose first rows see nothing."""
    q, k, v, cu_q, cu_k = packed([3, 17, 1, 9], [40, 17, 200, 4], 4, 2, 64, torch.float32, device)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, causal=causal, return_lse=True)
    want_out, want_lse = reference.varlen_attention(q.cpu(), k.cpu(), v.cpu(), cu_q.cpu(), cu_k.cpu(), causal)
    torch.testing.assert_close(out.cpu(), want_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=1e-5)
    if causal:  # the last sequence's first 5 queries see no key at all
        assert torch.equal(out.cpu()[-9:-4], torch.zeros(5, 4, 64))
        assert torch.isinf(lse.cpu()[-9:-4]).all()


@pytest.mark.parametrize("device", devices())
def test_matches_sdpa_on_one_long_sequence(device):
    q, k, v, cu_q, cu_k = packed([777], [777], 8, 8, 64, torch.float32, device)
    out = varlen_attention(q, k, v, cu_q, cu_k)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), is_causal=True)
    torch.testing.assert_close(out, sdpa[0].transpose(0, 1), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["fused_qkv", "misaligned_rows"])
@pytest.mark.parametrize("heads_q,heads_kv,dim", [(8, 2, 64), (64, 1, 64), (3, 1, 200)])
def test_half_precision_strided_and_grouped(device, dtype, layout, heads_q, heads_kv, dim):
    """On CUDA these run the tiled tensor-core kernel: rows packed from many heads of one KV
    group (up to 64), head dims padded to the tile, rows read by cp.async (fused qkv) or
    element by element (rows that do not start 16-byte aligned)."""
    lengths = [1, 129, 64, 7, 300]
    total, width = sum(lengths), (heads_q + 2 * heads_kv) * dim
    extra = 1 if layout == "misaligned_rows" else 0
    qkv = torch.randn(total, width + extra).to(dtype).to(device)[:, extra:].unflatten(1, (-1, dim))
    q, k, v = qkv[:, :heads_q], qkv[:, heads_q:heads_q + heads_kv], qkv[:, heads_q + heads_kv:]
    cu_q = cu(lengths, device)
    out, lse = varlen_attention(q, k, v, cu_q, cu_q, return_lse=True)
    want_out, want_lse = reference.varlen_attention(q.cpu(), k.cpu(), v.cpu(), cu_q.cpu(), cu_q.cpu(), True)
    torch.testing.assert_close(out.cpu(), want_out, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("lengths", [[1], [1] * 33, [0, 5, 0], [300] + [1] * 20, [64, 64, 64]])
def test_odd_lengths(isa, lengths):
    q, k, v, cu_q, cu_k = packed(lengths, lengths, 4, 2, 64, torch.float32)
    out = varlen_attention(q, k, v, cu_q, cu_k)
    want, _ = reference.varlen_attention(q, k, v, cu_q, cu_k, True)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_every_cpu_path_gives_the_same_bits():
    q, k, v, cu_q, cu_k = packed([100, 37], [100, 37], 6, 2, 96, torch.bfloat16)
    results = []
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            results.append(varlen_attention(q, k, v, cu_q, cu_k, return_lse=True))
    finally:
        lmkernels.set_cpu_isa(None)
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])


def test_thread_count_and_strided_inputs_do_not_change_the_result():
    q, k, v, cu_q, cu_k = packed([300, 50, 129], [300, 50, 129], 8, 4, 64, torch.float32)
    base = varlen_attention(q, k, v, cu_q, cu_k)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = varlen_attention(q, k, v, cu_q, cu_k)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(base, single)
    # q, k, v as views into one fused qkv projection output (strided tokens).
    qkv = torch.cat([q, k, v], dim=1)
    strided = varlen_attention(qkv[:, :8], qkv[:, 8:12], qkv[:, 12:], cu_q, cu_k)
    assert torch.equal(base, strided)


def test_scale_and_int64_cu_seqlens():
    q, k, v, cu_q, cu_k = packed([20, 9], [20, 9], 2, 2, 32, torch.float32)
    out = varlen_attention(q, k, v, cu_q.long(), cu_k.long(), scale=0.3, causal=False)
    want, _ = reference.varlen_attention(q, k, v, cu_q, cu_k, False, scale=0.3)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_empty_batch():
    q, k, v, cu_q, cu_k = packed([0], [0], 2, 2, 32, torch.float32)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, return_lse=True)
    assert out.shape == (0, 2, 32) and lse.shape == (0, 2)


def test_opcheck():
    for dtype in DTYPES:
        q, k, v, cu_q, cu_k = packed([7, 19], [7, 19], 4, 2, 32, dtype)
        for causal in (True, False):
            for lse in (True, False):
                torch.library.opcheck(torch.ops.lmkernels.varlen_attention, (q, k, v, cu_q, cu_k, causal, 0.2, lse))


def test_torch_compile_fullgraph():
    q, k, v, cu_q, cu_k = packed([7, 19], [7, 19], 4, 2, 32, torch.float32)

    def f(q, k, v):
        return varlen_attention(q * 2, k, v, cu_q, cu_k).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v), atol=0, rtol=0)


class TestBadInputs:
    def args(self, **change):
        q, k, v, cu_q, cu_k = packed([4, 6], [4, 6], 4, 2, 32, torch.float32)
        base = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        base.update(change)
        return base

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="q must be 3-D"):
            varlen_attention(**self.args(q=torch.randn(10, 32)))

    def test_wrong_dtype(self):
        a = self.args()
        with pytest.raises(TypeError, match="must share a dtype"):
            varlen_attention(**self.args(k=a["k"].double()))
        with pytest.raises(TypeError, match="q must be float32"):
            varlen_attention(**self.args(q=a["q"].long()))

    def test_heads_not_divisible(self):
        with pytest.raises(ValueError, match="multiple of heads_kv"):
            varlen_attention(**self.args(q=torch.randn(10, 3, 32)))

    def test_head_dim_mismatch(self):
        with pytest.raises(ValueError, match="head_dim"):
            varlen_attention(**self.args(q=torch.randn(10, 4, 16)))

    def test_cu_seqlens_wrong_total(self):
        with pytest.raises(RuntimeError, match="must end at the token count 10"):
            varlen_attention(**self.args(cu_seqlens_q=torch.tensor([0, 4, 9], dtype=torch.int32)))

    def test_cu_seqlens_decreasing(self):
        with pytest.raises(RuntimeError, match="non-decreasing"):
            varlen_attention(**self.args(cu_seqlens_k=torch.tensor([0, 7, 6, 10], dtype=torch.int32),
                                         cu_seqlens_q=torch.tensor([0, 4, 4, 10], dtype=torch.int32)))

    def test_cu_seqlens_batch_mismatch(self):
        with pytest.raises(ValueError, match=r"both be \[batch \+ 1\]"):
            varlen_attention(**self.args(cu_seqlens_q=torch.tensor([0, 10], dtype=torch.int32)))

    def test_cu_seqlens_float(self):
        with pytest.raises(TypeError, match="cu_seqlens_q must be a 1-D int32/int64"):
            varlen_attention(**self.args(cu_seqlens_q=torch.tensor([0.0, 4.0, 10.0])))

    def test_non_contiguous_head_dim(self):
        with pytest.raises(RuntimeError, match="unit stride on head_dim"):
            varlen_attention(**self.args(q=torch.randn(10, 4, 64)[..., ::2]))

    def test_bad_scale(self):
        with pytest.raises(ValueError, match="scale must be finite"):
            varlen_attention(**self.args(), scale=float("nan"))

    def test_raw_op_starts_at_zero(self):
        a = self.args()
        bad = torch.tensor([1, 4, 10], dtype=torch.int32)
        with pytest.raises(RuntimeError, match="cu_seqlens_q must start at 0"):
            torch.ops.lmkernels.varlen_attention(a["q"], a["k"], a["v"], bad, a["cu_seqlens_k"], True, 0.1, False)
