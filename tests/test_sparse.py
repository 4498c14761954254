"""block_sparse_attention against dense attention with the block mask materialised."""

from __future__ import annotations

import pytest
import torch

import lmkernels
import reference
from lmkernels.sparse import BlockIndex, block_sparse_attention

from conftest import devices

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def random_mask(batch, heads, blocks, density, causal, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, heads, blocks, blocks, generator=g) < density
    if causal:
        mask &= torch.ones(blocks, blocks, dtype=torch.bool).tril()
    return mask


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("density", [0.0, 0.2, 0.6, 1.0])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads_q,heads_kv,dim", [(4, 4, 64), (4, 2, 128), (6, 1, 64)])
def test_matches_dense_with_block_mask(isa, device, density, causal, heads_q, heads_kv, dim):
    n, bs = 300, 64  # odd N: the last block is partial
    blocks = -(-n // bs)
    q = torch.randn(2, heads_q, n, dim, device=device)
    k = torch.randn(2, heads_kv, n, dim, device=device)
    v = torch.randn(2, heads_kv, n, dim, device=device)
    mask = random_mask(2, heads_q, blocks, density, causal)
    index = BlockIndex.from_mask(mask)
    out, lse = block_sparse_attention(q, k, v, tuple(t.to(device) for t in index), block_size=bs,
                                      causal=causal, return_lse=True)
    want, want_lse = reference.block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), mask, bs, causal)
    torch.testing.assert_close(out.cpu(), want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=1e-5)
    assert not out.isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bs", [16, 32, 128, 256])
def test_block_sizes_and_dtypes(isa, dtype, bs):
    n = 257
    blocks = -(-n // bs)
    q, k, v = (torch.randn(1, 4, n, 64).to(dtype) for _ in range(3))
    mask = random_mask(1, 4, blocks, 0.5, True, seed=bs)
    out = block_sparse_attention(q, k, v, BlockIndex.from_mask(mask), block_size=bs)
    want, _ = reference.block_sparse_attention(q, k, v, mask, bs, True)
    torch.testing.assert_close(out, want, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bs", [16, 64, 128, 256])
@pytest.mark.parametrize("heads_q,heads_kv,dim", [(8, 2, 128), (64, 1, 64), (3, 3, 80)])
def test_half_precision_groups_and_block_sizes(device, dtype, bs, heads_q, heads_kv, dim):
    """On CUDA these run the tiled tensor-core kernel: each item merges its group's block lists
    (heads list different blocks), blocks smaller and larger than the 64-key tile, a partial
    last block, and a head dim (80) padded to the tile and read element by element."""
    n = 333
    blocks = -(-n // bs)
    q = torch.randn(2, heads_q, n, dim).to(dtype).to(device)
    k, v = (torch.randn(2, heads_kv, n, dim).to(dtype).to(device) for _ in range(2))
    mask = random_mask(2, heads_q, blocks, 0.4, True, seed=bs + heads_q)
    mask[..., 0] = True  # every query block sees the sink: no empty rows to compare
    index = BlockIndex.from_mask(mask)
    out, lse = block_sparse_attention(q, k, v, tuple(t.to(device) for t in index), block_size=bs, return_lse=True)
    want, want_lse = reference.block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), mask, bs, True)
    torch.testing.assert_close(out.cpu(), want, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=1e-5)


def test_all_blocks_equal_dense_causal_attention():
    q, k, v = (torch.randn(2, 8, 200, 64) for _ in range(3))
    blocks = -(-200 // 64)
    full = BlockIndex.from_mask(torch.ones(2, 8, blocks, blocks, dtype=torch.bool))
    out = block_sparse_attention(q, k, v, full, block_size=64)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, dense, atol=2e-5, rtol=2e-5)


def test_gqa_heads_with_different_patterns_share_tiles_correctly():
    """Heads of one KV group list different blocks: each must see only its own."""
    q = torch.randn(1, 4, 256, 64)
    k, v = (torch.randn(1, 1, 256, 64) for _ in range(2))
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 0, :, 0] = True                  # sink only
    mask[0, 1] = torch.eye(4, dtype=torch.bool)  # diagonal only
    mask[0, 2] = torch.ones(4, 4).tril().bool()  # dense
    # head 3 lists nothing: zeros
    out = block_sparse_attention(q, k, v, BlockIndex.from_mask(mask), block_size=64)
    want, _ = reference.block_sparse_attention(q, k, v, mask, 64, True)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    assert torch.equal(out[0, 3], torch.zeros(256, 64))


def test_every_cpu_path_gives_the_same_bits():
    q, k, v = (torch.randn(1, 4, 190, 96).to(torch.bfloat16) for _ in range(3))
    index = BlockIndex.from_mask(random_mask(1, 4, 6, 0.5, True))
    results = []
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            results.append(block_sparse_attention(q, k, v, index, block_size=32))
    finally:
        lmkernels.set_cpu_isa(None)
    assert all(torch.equal(r, results[0]) for r in results)


def test_opcheck_and_compile():
    q, k, v = (torch.randn(1, 2, 70, 32) for _ in range(3))
    crow, col = BlockIndex.from_mask(random_mask(1, 2, 3, 0.7, True))
    torch.library.opcheck(torch.ops.lmkernels.block_sparse_attention, (q, k, v, crow, col, 32, True, 0.2, True))
    f = torch.compile(lambda q: block_sparse_attention(q, k, v, (crow, col), block_size=32), fullgraph=True,
                      backend="aot_eager")
    torch.testing.assert_close(f(q), block_sparse_attention(q, k, v, (crow, col), block_size=32), atol=0, rtol=0)


class TestBadInputs:
    def setup_method(self):
        self.q, self.k, self.v = (torch.randn(1, 2, 100, 32) for _ in range(3))
        self.crow, self.col = BlockIndex.from_mask(torch.ones(1, 2, 4, 4, dtype=torch.bool))

    def call(self, crow=None, col=None, block_size=32, **kw):
        return torch.ops.lmkernels.block_sparse_attention(
            kw.get("q", self.q), self.k, self.v, self.crow if crow is None else crow,
            self.col if col is None else col, block_size, True, 0.1, False)

    def test_block_size(self):
        with pytest.raises(ValueError, match="block_size must be one of"):
            block_sparse_attention(self.q, self.k, self.v, (self.crow, self.col), block_size=48)
        with pytest.raises(RuntimeError, match="block_size must be one of 16, 32, 64, 128, 256"):
            self.call(block_size=100)

    def test_crow_wrong_length(self):
        with pytest.raises(RuntimeError, match=r"crow must have ceil\(tokens / block_size\) \+ 1 = 5"):
            self.call(crow=self.crow[..., :4])

    def test_unsorted_columns(self):
        col = self.col.clone()
        col[0, 0, :2] = torch.tensor([1, 0])
        with pytest.raises(RuntimeError, match="sorted and unique"):
            self.call(col=col)

    def test_column_out_of_range(self):
        col = self.col.clone()
        col[0, 1, 0] = 9
        with pytest.raises(RuntimeError, match=r"col entry 9 is not a key block in \[0, 4\)"):
            self.call(col=col)

    def test_crow_past_col(self):
        crow = self.crow.clone()
        crow[0, 0, -1] = 999
        with pytest.raises(RuntimeError, match="crow ends at 999"):
            self.call(crow=crow)

    def test_mismatched_shapes(self):
        with pytest.raises(RuntimeError, match="k must match q"):
            self.call(q=torch.randn(1, 2, 99, 32))
        with pytest.raises(ValueError, match="q must be a 4-D tensor"):
            block_sparse_attention(self.q[0], self.k, self.v, (self.crow, self.col), block_size=32)
