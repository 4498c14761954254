"""block_sparse_attention against dense causal attention (SDPA and our varlen path).

Block masks keep the sink column and the diagonal (as FlexPrefill forces) plus random
blocks up to the target density of the causal blocks. The kernel's time should fall with
the density; index building is not part of this op (FlexPrefill's selection comes on top).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmkernels import varlen_attention
from lmkernels.sparse import BlockIndex, block_sparse_attention

from .harness import Row, compare

CORE = "sparse"


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
    for n in ([2048] if quick else [4096, 8192, 16384]):
        heads, dim = 8, 128
        q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
        flat = [t[0].transpose(0, 1) for t in (q, k, v)]
        cu = torch.tensor([0, n], dtype=torch.int32)
        blocks = -(-n // block)
        impls = {
            "torch sdpa (dense)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "lmkernels dense": lambda: varlen_attention(*flat, cu, cu),
        }
        densities = {}
        for target in ([0.1] if quick else [0.05, 0.1, 0.2]):
            mask = planted_mask(heads, blocks, target)
            density = float(mask.sum()) / (heads * blocks * (blocks + 1) / 2)
            index = BlockIndex.from_mask(mask)
            name = f"block sparse {density:.0%}"
            densities[name] = density
            impls[name] = lambda index=index: block_sparse_attention(q, k, v, index, block_size=block)
        rows += compare(CORE, f"causal N={n} H={heads} D={dim} fp32 block={block}", impls,
                        baseline="torch sdpa (dense)", quick=quick, min_rounds=3,
                        extra=lambda name, _ms: {"density": densities.get(name, 1.0)})
    return rows
