"""FlexPrefill: pattern choice, cumulative-attention selection, and end-to-end accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkernels.bench.sparse import planted_inputs
from lmkernels.flex_prefill import build_flex_index, flex_prefill_attention
from lmkernels.sparse import BlockIndex

import reference
from conftest import devices


def rel_err(out, want):
    return float((out.float() - want.float()).norm() / want.float().norm())


def select(vertical, slash, block_attn, query_aware, gamma, lo, hi):
    """The C++ op's selection as a block mask."""
    crow, col, density = torch.ops.lmkernels.flex_select_blocks(vertical, slash, block_attn, query_aware, gamma, lo, hi)
    mask = BlockIndex(crow, col).to_mask(vertical.shape[-1])
    causal = torch.ones(vertical.shape[-1], vertical.shape[-1], dtype=torch.bool).tril()
    torch.testing.assert_close(density, mask.sum((-1, -2)).float() / causal.sum())
    return mask


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=40), st.floats(0.05, 1.0), st.integers(1, 5))
def test_selection_is_the_fewest_blocks_reaching_gamma(scores, gamma, lo):
    """The selection rule (the reference, which the C++ op equals below): the kept entries
    are the top ones, reach gamma, and are the fewest that do (above the minimum count)."""
    x = torch.tensor(scores, dtype=torch.float64)[None]
    lo = min(lo, x.shape[-1])
    keep = reference.keep_until(x, gamma, lo, x.shape[-1])[0]
    total = float(x.sum())
    kept_mass = float(x[0][keep].sum())
    assert kept_mass >= gamma * total - 1e-9 or int(keep.sum()) == x.shape[-1]
    if int(keep.sum()) > lo:  # minimal: dropping the smallest kept entry falls short of gamma
        assert kept_mass - float(x[0][keep].min()) < gamma * total + 1e-9
    if keep.any() and (~keep).any():
        assert float(x[0][keep].min()) >= float(x[0][~keep].max())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.floats(0.05, 1.0), st.integers(1, 4),
       st.integers(0, 8), st.booleans(), st.integers(0, 2**31))
def test_select_op_matches_reference(batch, heads, blocks, gamma, lo, extra, integers, seed):
    g = torch.Generator().manual_seed(seed)
    draw = (lambda *s: torch.randint(0, 4, s, generator=g).float()) if integers else (lambda *s: torch.rand(*s, generator=g))
    vertical, slash = draw(batch, heads, blocks), draw(batch, heads, blocks)
    block_attn = draw(batch, heads, blocks, blocks).tril()
    aware = torch.rand(batch, heads, generator=g) < 0.5
    got = select(vertical, slash, block_attn, aware, gamma, lo, lo + extra)
    want = reference.flex_select_blocks(vertical, slash, block_attn, aware, gamma, lo, lo + extra)
    assert torch.equal(got, want)


def test_select_op_checks_and_opcheck():
    v = torch.rand(1, 2, 5)
    attn = torch.rand(1, 2, 5, 5)
    aware = torch.tensor([[True, False]])
    torch.library.opcheck(torch.ops.lmkernels.flex_select_blocks, (v, v, attn, aware, 0.9, 1, 5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    op = torch.ops.lmkernels.flex_select_blocks
    with pytest.raises(RuntimeError, match="slash must have vertical's shape"):
        op(v, v[..., :4], attn, aware, 0.9, 1, 5)
    with pytest.raises(RuntimeError, match=r"block_attn must be \[B, H, nb, nb\]"):
        op(v, v, attn[..., :4], aware, 0.9, 1, 5)
    with pytest.raises(RuntimeError, match="query_aware must be a bool"):
        op(v, v, attn, aware.int(), 0.9, 1, 5)
    with pytest.raises(RuntimeError, match="gamma"):
        op(v, v, attn, aware, 1.5, 1, 5)
    with pytest.raises(RuntimeError, match="min_blocks"):
        op(v, v, attn, aware, 0.9, 3, 2)
    with pytest.raises(RuntimeError, match="finite and >= 0"):
        op(v.clone().fill_(float("nan")), v, attn, aware, 0.9, 1, 5)
    with pytest.raises(RuntimeError, match="float32"):
        op(v.double(), v, attn, aware, 0.9, 1, 5)


def test_planted_structure_is_found_and_error_is_small():
    q, k, v = planted_inputs(1, 2, 4096, 64, seed=3)
    dense = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    errors = {}
    for gamma in (0.8, 0.9, 0.95):
        out, stats = flex_prefill_attention(q, k, v, gamma=gamma, return_stats=True)
        errors[gamma] = rel_err(out, dense)
        assert not stats.query_aware.any()  # columns and a band: vertical-slash heads
        assert float(stats.density.max()) < 0.75
    assert errors[0.95] < 0.06
    assert errors[0.95] <= errors[0.8] + 1e-6
    # The planted columns (sink and strong keys) are selected for every row that can see them.
    index, _ = build_flex_index(q, k, gamma=0.95, tau=0.1, min_budget=512, max_budget=None, block_size=128,
                                scale=64 ** -0.5)
    mask = index.to_mask(32)
    # Ground truth: every key block holding at least 2% of the attention of a query block
    # far from the one used for estimation (its diagonal aside) must be listed for it.
    scores = (q[0, :, 3840 - 128:3840] @ k[0].transpose(-1, -2)) * 64 ** -0.5
    scores = scores.masked_fill(torch.arange(4096) > torch.arange(3840 - 128, 3840)[:, None], float("-inf"))
    mass = scores.softmax(-1).sum(1).unflatten(-1, (32, 128)).sum(-1)   # [heads, key blocks]
    share = mass / mass.sum(-1, keepdim=True)
    share[:, 29] = 0
    for h in range(2):
        heavy = (share[h] >= 0.02).nonzero().flatten()
        assert len(heavy) >= 3 and mask[0, h, 29, heavy].all(), f"head {h}: {heavy.tolist()} not all selected"


def test_gamma_one_without_budget_cap_is_dense():
    q, k, v = (torch.randn(2, 4, 700, 64) for _ in range(3))
    out, stats = flex_prefill_attention(q, k, v, gamma=1.0, min_budget=0, block_size=64, return_stats=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=2e-5)
    assert torch.allclose(stats.density, torch.ones(2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_gqa_and_odd_length(dtype):
    q, k, v = planted_inputs(2, 8, 1500, 64, seed=1, dtype=dtype)
    k, v = k[:, ::4].contiguous(), v[:, ::4].contiguous()  # 8 query heads over 2 KV heads
    out = flex_prefill_attention(q, k, v, gamma=0.95, block_size=64, min_budget=256)
    dense = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, dense) < 0.1


def test_short_inputs_run_dense():
    q, k, v = (torch.randn(1, 2, 300, 32) for _ in range(3))
    out, stats = flex_prefill_attention(q, k, v, return_stats=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-5, rtol=2e-5)
    assert torch.equal(stats.density, torch.ones(1, 2))


def test_bad_arguments():
    q = torch.randn(1, 2, 600, 32)
    with pytest.raises(ValueError, match="gamma must be in"):
        flex_prefill_attention(q, q, q, gamma=0.0)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        flex_prefill_attention(q, q, q, tau=-1.0)
    with pytest.raises(ValueError, match="block_size must be one of"):
        flex_prefill_attention(q, q, q, block_size=100)
    with pytest.raises(ValueError, match="shapes do not match"):
        flex_prefill_attention(q, q[:, :, :10], q)
    with pytest.raises(ValueError, match="multiple of heads_kv"):
        flex_prefill_attention(torch.randn(1, 3, 600, 32), q, q)


def test_slash_and_vertical_scores_match_a_loop():
    """The op's slash entry s sums the last block's attention over (q_pos - j) // bs == s,
    its vertical entry c over key block c; both averaged over the block's queries."""
    n, bs, dim = 37, 5, 8
    q, k = torch.randn(1, 1, n, dim), torch.randn(1, 1, n, dim)
    vertical, slash, _, _ = torch.ops.lmkernels.flex_pattern_scores(q, k, bs, 0.5)
    rows = min(bs, n)
    want_slash, want_vertical = torch.zeros(-(-n // bs)), torch.zeros(-(-n // bs))
    for r in range(rows):
        pos = n - rows + r
        p = ((q[0, 0, pos] @ k[0, 0, : pos + 1].T) * 0.5).softmax(-1)
        for j in range(pos + 1):
            want_slash[(pos - j) // bs] += p[j] / rows
            want_vertical[j // bs] += p[j] / rows
    torch.testing.assert_close(slash[0, 0], want_slash)
    torch.testing.assert_close(vertical[0, 0], want_vertical)


PATTERN_OPS = ["flex_pattern_scores", "_flex_pattern_scores_tensor_ops"]  # CPU loops; CUDA's tensor-op form


@pytest.mark.parametrize("op_name", PATTERN_OPS)
@pytest.mark.parametrize("batch,heads,kv_heads,n,dim,block", [(1, 2, 2, 300, 32, 64), (2, 8, 2, 1000, 64, 128),
                                                              (1, 3, 1, 17, 16, 32), (2, 4, 4, 129, 24, 16)])
def test_pattern_scores_op_matches_reference(op_name, batch, heads, kv_heads, n, dim, block):
    q = torch.randn(batch, heads, n, dim) * 2
    k = torch.randn(batch, kv_heads, n, dim) * 2
    got = getattr(torch.ops.lmkernels, op_name)(q, k, block, dim ** -0.5)
    want = reference.flex_pattern_scores(q, k, block, dim ** -0.5)
    for name, a, b in zip(("vertical", "slash", "block_attn", "jsd"), got, want):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b, atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("device", devices())
def test_pattern_scores_on_device_match_the_cpu_loops(device):
    q, k = torch.randn(2, 8, 700, 64) * 2, torch.randn(2, 2, 700, 64) * 2
    want = torch.ops.lmkernels.flex_pattern_scores(q, k, 128, 0.125)
    got = torch.ops.lmkernels.flex_pattern_scores(q.to(device), k.to(device), 128, 0.125)
    for name, a, b in zip(("vertical", "slash", "block_attn", "jsd"), got, want):
        assert a.device.type == device, name
        torch.testing.assert_close(a.cpu(), b, atol=2e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("op_name", PATTERN_OPS)
def test_pattern_scores_op_bf16_checks_and_opcheck(op_name):
    q, k = torch.randn(1, 4, 200, 32), torch.randn(1, 2, 200, 32)
    op = getattr(torch.ops.lmkernels, op_name)
    got = op(q.bfloat16(), k.bfloat16(), 64, 0.2)
    want = reference.flex_pattern_scores(q.bfloat16().float(), k.bfloat16().float(), 64, 0.2)
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-3)
    torch.library.opcheck(op, (q, k, 64, 0.2))
    with pytest.raises(RuntimeError, match="multiple of heads_kv"):
        op(torch.randn(1, 3, 200, 32), k, 64, 0.2)
    with pytest.raises(RuntimeError, match="share B, N and D"):
        op(q, k[:, :, :100], 64, 0.2)
    with pytest.raises(RuntimeError, match="block_size"):
        op(q, k, 0, 0.2)
    with pytest.raises(RuntimeError, match="share a floating dtype"):
        op(q, k.half(), 64, 0.2)
    with pytest.raises(RuntimeError, match="scale must be finite"):
        op(q, k, 64, float("nan"))


@pytest.mark.parametrize("op_name", PATTERN_OPS)
def test_pattern_scores_under_torch_compile(op_name):
    op = getattr(torch.ops.lmkernels, op_name)
    q, k = torch.randn(2, 4, 150, 32), torch.randn(2, 2, 150, 32)
    compiled = torch.compile(lambda a, b: op(a, b, 32, 0.3), fullgraph=True)
    for got, want in zip(compiled(q, k), op(q, k, 32, 0.3)):
        torch.testing.assert_close(got, want)


def test_varlen_form_equals_each_sequence_alone():
    from lmkernels import varlen_attention
    from lmkernels.flex_prefill import flex_prefill_varlen

    lengths = [700, 100, 1500, 30, 400]
    qs, ks, vs = zip(*(planted_inputs(1, 4, n, 32, seed=n) for n in lengths))
    ks = [k[:, ::2].contiguous() for k in ks]  # 4 query heads over 2 KV heads
    vs = [v[:, ::2].contiguous() for v in vs]
    packed = [torch.cat([t[0].transpose(0, 1) for t in ts]) for ts in (qs, ks, vs)]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    opts = dict(gamma=0.9, block_size=64, min_budget=128)
    out, stats = flex_prefill_varlen(*packed, cu, min_len=300, return_stats=True, **opts)
    assert stats.density.shape == (5, 4)
    for i, n in enumerate(lengths):
        got = out[cu[i]:cu[i + 1]]
        if n >= 300:  # FlexPrefill on its own, as if alone
            want, alone = flex_prefill_attention(qs[i], ks[i], vs[i], return_stats=True, **opts)
            torch.testing.assert_close(got, want[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(stats.density[i], alone.density[0])
        else:  # dense causal attention
            flat = [t[0].transpose(0, 1) for t in (qs[i], ks[i], vs[i])]
            c = torch.tensor([0, n])
            torch.testing.assert_close(got, varlen_attention(*flat, c, c), atol=1e-6, rtol=1e-6)
            assert float(stats.density[i].min()) == 1.0
    assert float(stats.density[2].mean()) < 0.9  # the long planted sequence was sparse
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0"):
        flex_prefill_varlen(*packed, torch.tensor([0, 5, 3, sum(lengths)]))
    with pytest.raises(TypeError, match="cu_seqlens"):
        flex_prefill_varlen(*packed, cu.float())
    with pytest.raises(ValueError, match="3-D"):
        flex_prefill_varlen(packed[0][None], *packed[1:], cu)
