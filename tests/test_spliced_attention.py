"""spliced_attention (queries at scattered positions, causal by position) against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkernels import spliced_attention

import reference
from conftest import devices

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def case(positions, total, heads_q, heads_kv, dim, dtype, device="cpu"):
    q = torch.randn(len(positions), heads_q, dim).to(dtype).to(device)
    k = torch.randn(total, heads_kv, dim).to(dtype).to(device)
    v = torch.randn(total, heads_kv, dim).to(dtype).to(device)
    return q, k, v, torch.tensor(positions, dtype=torch.int64, device=device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads_q,heads_kv,dim", [(4, 4, 64), (8, 2, 128), (6, 3, 80), (4, 1, 256)])
def test_matches_reference(isa, device, dtype, heads_q, heads_kv, dim):
    g = torch.Generator().manual_seed(1)
    total = 333
    positions = torch.sort(torch.randperm(total, generator=g)[:97]).values.tolist()
    positions += list(range(positions[-1] + 1, total))  # a contiguous tail (the question)
    q, k, v, pos = case(positions, total, heads_q, heads_kv, dim, dtype, device)
    out = spliced_attention(q, k, v, pos)
    want = reference.spliced_attention(q.cpu(), k.cpu(), v.cpu(), pos.cpu())
    torch.testing.assert_close(out.cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("device", devices())
def test_every_position_equals_causal_sdpa(isa, device):
    q, k, v, pos = case(list(range(200)), 200, 4, 2, 64, torch.float32, device)
    out = spliced_attention(q, k, v, pos, scale=0.1)
    want = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(2, 0),
                                          v.transpose(0, 1).repeat_interleave(2, 0), is_causal=True, scale=0.1)
    torch.testing.assert_close(out, want.transpose(0, 1), atol=2e-5, rtol=2e-5)


def test_strided_keys_repeated_positions_and_position_zero(isa):
    """Keys as a view into a [tokens, layers, heads, dim] buffer (what chunk reuse passes);
    equal positions; a query at 0 sees one key."""
    buffer = torch.randn(50, 3, 2, 32)
    k, v = buffer[:, 1], torch.randn(50, 3, 2, 32)[:, 2]
    q = torch.randn(5, 4, 32)
    pos = torch.tensor([0, 7, 7, 30, 49])
    torch.testing.assert_close(spliced_attention(q, k, v, pos), reference.spliced_attention(q, k, v, pos),
                               atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(spliced_attention(q, k, v, pos)[0], v[0].repeat_interleave(2, 0), atol=1e-6, rtol=0)


def test_opcheck_and_compile():
    q, k, v, pos = case([1, 5, 9, 10], 12, 4, 2, 32, torch.float32)
    torch.library.opcheck(torch.ops.lmkernels.spliced_attention, (q, k, v, pos, 0.3))
    f = lambda q, k, v: spliced_attention(q, k, v, pos) * 2  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v), atol=0, rtol=0)


def test_bad_inputs():
    q, k, v, pos = case([1, 5, 9], 12, 4, 2, 32, torch.float32)
    with pytest.raises(RuntimeError, match=r"q_positions\[2\] = 12 is outside the 12 keys"):
        spliced_attention(q, k, v, torch.tensor([1, 5, 12]))
    with pytest.raises(RuntimeError, match="non-decreasing"):
        spliced_attention(q, k, v, torch.tensor([1, 9, 5]))
    with pytest.raises(RuntimeError, match="outside"):
        spliced_attention(q, k, v, torch.tensor([-1, 5, 9]))
    with pytest.raises(ValueError, match="q_positions must be a 1-D tensor of 3"):
        spliced_attention(q, k, v, torch.tensor([1, 5]))
    with pytest.raises(TypeError, match="integers"):
        spliced_attention(q, k, v, torch.tensor([1.0, 5.0, 9.0]))
    with pytest.raises(ValueError, match="multiple of heads_kv"):
        spliced_attention(torch.randn(3, 3, 32), k, v, pos)
    with pytest.raises(TypeError, match="share a dtype"):
        spliced_attention(q.half(), k, v, pos)
