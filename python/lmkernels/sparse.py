"""Block-sparse attention for long prefills (FlexPrefill's kernel), on the shared engine.

A block index lists, for every (batch, query head) and query block of ``block_size``
tokens, the key blocks it attends to, as CSR: ``crow [B, Hq, blocks + 1]`` row pointers and
``col [B, Hq, width]`` sorted key-block columns (entries past a head's last row pointer are
ignored).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_SIZES = (16, 32, 64, 128, 256)


class BlockIndex(NamedTuple):
    """CSR block index: ``crow [B, Hq, blocks + 1]`` and ``col [B, Hq, width]`` (int32/int64)."""

    crow: torch.Tensor
    col: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> BlockIndex:
        """From a boolean block mask ``[B, Hq, blocks, blocks]`` (query block, key block)."""
        if mask.dim() != 4 or mask.dtype != torch.bool:
            raise TypeError(f"BlockIndex.from_mask: mask must be a 4-D bool tensor, got {mask.dtype} {tuple(mask.shape)}")
        batch, heads, rows, _ = mask.shape
        counts = mask.sum(-1)                                        # [B, H, rows]
        crow = torch.zeros(batch, heads, rows + 1, dtype=torch.int64, device=mask.device)
        crow[..., 1:] = counts.cumsum(-1)
        per_head = crow[..., -1]                                     # [B, H]
        width = max(1, int(per_head.max()))
        b, h, _, j = mask.nonzero(as_tuple=True)                     # row-major: sorted by (b, h, i, j)
        flat = b * heads + h
        head_start = torch.cumsum(per_head.flatten(), 0) - per_head.flatten()
        slot = torch.arange(flat.numel(), device=mask.device) - head_start[flat]
        col = torch.zeros(batch * heads, width, dtype=torch.int64, device=mask.device)
        col[flat, slot] = j
        return cls(crow, col.view(batch, heads, width))

    def to_mask(self, blocks: int) -> torch.Tensor:
        """The boolean block mask ``[B, Hq, blocks, blocks]`` this index lists."""
        batch, heads, _ = self.crow.shape
        mask = torch.zeros(batch, heads, blocks, blocks, dtype=torch.bool)
        crow, col = self.crow.cpu().long(), self.col.cpu().long()
        for b in range(batch):
            for h in range(heads):
                for i in range(blocks):
                    mask[b, h, i, col[b, h, crow[b, h, i]:crow[b, h, i + 1]]] = True
        return mask


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_index: BlockIndex | tuple[torch.Tensor, torch.Tensor],
    *,
    block_size: int,
    causal: bool = True,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted to the listed (query block, key block) pairs.

    Args:
        q: ``[B, Hq, N, D]`` (SDPA layout), float32/bfloat16/float16; any N.
        k, v: ``[B, Hkv, N, D]``, ``Hq % Hkv == 0``; each K/V tile is read once per GQA group.
        block_index: :class:`BlockIndex` (or ``(crow, col)``) over ``ceil(N / block_size)``
            blocks.
        block_size: one of 16, 32, 64, 128, 256.
        causal: also mask keys after the query inside listed blocks.
        scale: default ``1 / sqrt(D)``.
        return_lse: also return the natural-log log-sum-exp, float32 ``[B, Hq, N]``.

    Rows whose listed blocks hold no visible key give 0 (and ``-inf`` LSE), not NaN.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"block_sparse_attention: {name} must be a 4-D tensor [B, H, N, D]")
    if q.dtype not in _FLOATS or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"block_sparse_attention: q, k, v must share a float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"block_sparse_attention: block_size must be one of {BLOCK_SIZES}, got {block_size!r}")
    if not isinstance(block_index, tuple) or len(block_index) != 2:
        raise TypeError("block_sparse_attention: block_index must be a BlockIndex (crow, col)")
    crow, col = block_index
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if not math.isfinite(scale):
        raise ValueError(f"block_sparse_attention: scale must be finite, got {scale}")
    out, lse = torch.ops.lmkernels.block_sparse_attention(q, k, v, crow, col, int(block_size), bool(causal),
                                                          float(scale), bool(return_lse))
    return (out, lse) if return_lse else out
