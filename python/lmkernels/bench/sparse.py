"""Sparse prefill: FlexPrefill and block_sparse_attention against dense causal attention
(SDPA and our varlen path), on inputs with planted sparse structure.

flex_prefill is timed end to end (index building included) and its index building alone;
the block-sparse kernel also runs on fixed masks (sink column, diagonal, random blocks) at
several densities, where its time should fall linearly with the density.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmkernels import varlen_attention
from lmkernels.flex_prefill import build_flex_index, flex_prefill_attention
from lmkernels.sparse import BlockIndex, block_sparse_attention

from .harness import Row, compare

CORE = "sparse"


def planted_inputs(batch: int, heads: int, n: int, dim: int, *, seed: int = 0, columns: int = 6,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [batch, heads, n, dim] whose attention has planted sparse structure: a sink at
    token 0, `columns` strong key columns and a local band (keys of the query's own 64-token
    segment), each about +8 logits at scale 1/sqrt(dim) over a noise background."""
    g = torch.Generator().manual_seed(seed)
    strength = dim ** 0.25 * 8 ** 0.5  # strength^2 / sqrt(dim) = 8
    q = torch.randn(batch, heads, n, dim, generator=g) * 0.3
    k = torch.randn(batch, heads, n, dim, generator=g) * 0.3
    v = torch.randn(batch, heads, n, dim, generator=g)
    axis = torch.zeros(dim)
    axis[0] = 1.0
    strong = torch.cat([torch.tensor([0]), torch.randint(1, max(2, n), (columns,), generator=g)])
    q += strength * axis
    k[:, :, strong] += strength * axis
    segments = torch.randn(n // 64 + 1, dim, generator=g)
    segments[:, 0] = 0
    segments /= segments.norm(dim=-1, keepdim=True)
    code = segments[torch.arange(n) // 64]
    return (q + strength * code).to(dtype), (k + strength * code).to(dtype), v.to(dtype)


def planted_mask(heads: int, blocks: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(blocks, blocks, dtype=torch.bool).tril()
    mask = (torch.rand(1, heads, blocks, blocks, generator=g) < density) & causal
    mask[..., 0] = True
    mask |= torch.eye(blocks, dtype=torch.bool)
    return mask


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    rows: list[Row] = []
    block = 128
    for n in ([4096] if quick else [4096, 8192, 16384]):
        heads, dim = 8, 128
        q, k, v = planted_inputs(1, heads, n, dim, seed=n)
        flat = [t[0].transpose(0, 1) for t in (q, k, v)]
        cu = torch.tensor([0, n], dtype=torch.int32)
        blocks = -(-n // block)
        flex_kwargs = dict(gamma=0.9, tau=0.1, min_budget=512, max_budget=None, block_size=block, scale=dim ** -0.5)
        index, stats = build_flex_index(q, k, **flex_kwargs)
        densities = {"flex_prefill (index + kernel)": float(stats.density.mean()),
                     "flex index only": float(stats.density.mean())}
        impls = {
            "torch sdpa (dense)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "lmkernels dense": lambda: varlen_attention(*flat, cu, cu),
            "flex_prefill (index + kernel)": lambda: flex_prefill_attention(q, k, v, gamma=0.9),
            "flex index only": lambda: build_flex_index(q, k, **flex_kwargs),
        }
        for target in ([0.1] if quick else [0.05, 0.1, 0.2]):
            mask = planted_mask(heads, blocks, target)
            density = float(mask.sum()) / (heads * blocks * (blocks + 1) / 2)
            name = f"block sparse kernel {density:.0%}"
            densities[name] = density
            impls[name] = lambda idx=BlockIndex.from_mask(mask): block_sparse_attention(q, k, v, idx, block_size=block)
        dense_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        flex_err = float((flex_prefill_attention(q, k, v, gamma=0.9) - dense_out).norm() / dense_out.norm())
        rows += compare(CORE, f"causal N={n} H={heads} D={dim} fp32 block={block}, planted", impls,
                        baseline="torch sdpa (dense)", quick=quick, min_rounds=3,
                        extra=lambda name, _ms: {"density": densities.get(name, 1.0),
                                                 "rel err": flex_err if name.startswith("flex_prefill") else 0.0})
    return rows
