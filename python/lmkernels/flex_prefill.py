"""FlexPrefill: per-head adaptive block-sparse attention for long prefills.

For every (batch, head) at once (two C++ ops, no Python loop over batch or heads):

1. The last query block attends to every key (fp32 softmax): its mean over queries gives
   *vertical* scores per key, its mass per diagonal-offset block gives *slash* scores.
2. Block-pooled vertical scores are the "true" distribution; the softmax of the mean last
   query against mean-pooled key blocks is the "estimate". A head whose square-root
   Jensen-Shannon divergence between the two is below ``tau`` is *query-aware*: its blocks
   are chosen from pooled-Q x pooled-K block attention. Otherwise it is *vertical-slash*.
   (Steps 1-2: C++ op ``flex_pattern_scores``, GEMMs through ATen, per-head reductions in
   threads.)
3. Each pattern keeps the fewest blocks (by score, descending) whose cumulative attention
   reaches ``gamma``, within the token budgets; the sink block and the diagonal are always
   kept; the result is a CSR index (C++ op ``flex_select_blocks``, a (batch, head) per task).
4. :func:`block_sparse_attention` runs that index.

Differences from the reference implementation (see shared notes): any batch size, any N,
fp32/bf16/fp16; vertical-slash counts are taken over blocks of ``block_size`` (the reference
hard-codes 128); index building is C++ over all (batch, head) pairs, never a Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .attention import varlen_attention
from .sparse import BLOCK_SIZES, BlockIndex, block_sparse_attention


@dataclass
class FlexPrefillStats:
    """Per (batch, head): whether the head was query-aware, and its block density
    (selected causal blocks / all causal blocks)."""

    query_aware: torch.Tensor  # bool [B, Hq]
    density: torch.Tensor      # float [B, Hq]


def build_flex_index(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    gamma: float,
    tau: float,
    min_budget: int,
    max_budget: int | None,
    block_size: int,
    scale: float,
) -> tuple[BlockIndex, FlexPrefillStats]:
    """The FlexPrefill block index for q [B, Hq, N, D], k [B, Hkv, N, D] (causal)."""
    blocks = -(-q.shape[2] // block_size)
    # 1-3. Last-block scoring, vertical and slash scores, pooled block attention and the
    # sqrt-JSD per head: one C++ op (GEMMs through ATen, per-head reductions in threads).
    vertical_blocks, slash_blocks, block_attn, jsd = torch.ops.lmkernels.flex_pattern_scores(q, k, block_size,
                                                                                            float(scale))
    query_aware = jsd < tau                                                             # [B, Hq]

    # 4. Cumulative-attention selection within budgets (in blocks) and the CSR index: C++,
    # one (batch, head) per task.
    lo = min(blocks, max(1, math.ceil(min_budget / block_size)))
    hi = blocks if max_budget is None else min(blocks, max(lo, math.ceil(max_budget / block_size)))
    crow, col, density = torch.ops.lmkernels.flex_select_blocks(vertical_blocks, slash_blocks, block_attn,
                                                                 query_aware, float(gamma), lo, hi)
    return BlockIndex(crow, col), FlexPrefillStats(query_aware, density)


def flex_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    gamma: float = 0.9,
    tau: float = 0.1,
    min_budget: int = 512,
    max_budget: int | None = None,
    block_size: int = 128,
    scale: float | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, FlexPrefillStats]:
    """Causal FlexPrefill attention of q [B, Hq, N, D] over k, v [B, Hkv, N, D].

    Args:
        gamma: attention mass each selected pattern must cover (0 < gamma <= 1).
        tau: sqrt-JSD threshold below which a head is query-aware (0 disables that pattern).
        min_budget, max_budget: bounds, in tokens, on the vertical and slash selections.
        block_size: 16, 32, 64, 128 or 256.
        return_stats: also return :class:`FlexPrefillStats` (pattern and density per head).

    Short inputs (N <= max(2 * block_size, min_budget)) run dense causal attention, as the
    reference does.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"flex_prefill_attention: {name} must be a 4-D tensor [B, H, N, D]")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"flex_prefill_attention: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError("flex_prefill_attention: heads_q must be a positive multiple of heads_kv")
    _check_options("flex_prefill_attention", gamma, tau, min_budget, max_budget, block_size)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch, heads, n, _ = q.shape
    if n <= max(2 * block_size, min_budget):
        out = _dense_causal(q, k, v, scale)
        stats = FlexPrefillStats(torch.zeros(batch, heads, dtype=torch.bool), torch.ones(batch, heads))
    else:
        index, stats = build_flex_index(q, k, gamma=gamma, tau=tau, min_budget=min_budget, max_budget=max_budget,
                                        block_size=block_size, scale=scale)
        out = block_sparse_attention(q, k, v, index, block_size=block_size, scale=scale)
    return (out, stats) if return_stats else out


def _check_options(op: str, gamma: float, tau: float, min_budget: int, max_budget: int | None, block_size: int) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"{op}: gamma must be in (0, 1], got {gamma}")
    if tau < 0:
        raise ValueError(f"{op}: tau must be >= 0, got {tau}")
    if block_size not in BLOCK_SIZES:
        raise ValueError(f"{op}: block_size must be one of {BLOCK_SIZES}, got {block_size}")
    if min_budget < 0 or (max_budget is not None and max_budget < 1):
        raise ValueError(f"{op}: budgets must be non-negative (max_budget >= 1)")


def flex_prefill_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    gamma: float = 0.9,
    tau: float = 0.1,
    min_budget: int = 512,
    max_budget: int | None = None,
    block_size: int = 128,
    min_len: int = 0,
    scale: float | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, FlexPrefillStats]:
    """Causal FlexPrefill over packed sequences, in the flash-attention varlen layout.

    Args:
        q: ``[total, Hq, D]``; k, v: ``[total, Hkv, D]``; sequence ``i`` is tokens
            ``cu_seqlens[i] .. cu_seqlens[i + 1] - 1`` of each.
        cu_seqlens: int32/int64 ``[num_seqs + 1]`` cumulative lengths from 0 to ``total``.
        min_len: sequences shorter than this (and every sequence too short for FlexPrefill,
            see :func:`flex_prefill_attention`) run dense causal attention, all of them in one
            :func:`varlen_attention` call.
        Other options as :func:`flex_prefill_attention`.

    Each long sequence gets its own pattern and index (its heads, its last block) and runs
    the block-sparse kernel on views of the packed tensors. ``return_stats`` gives
    :class:`FlexPrefillStats` with one row per sequence (dense ones: not query-aware,
    density 1).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"flex_prefill_varlen: {name} must be a 3-D tensor [total, H, D]")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"flex_prefill_varlen: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError("flex_prefill_varlen: heads_q must be a positive multiple of heads_kv")
    _check_options("flex_prefill_varlen", gamma, tau, min_budget, max_budget, block_size)
    if (not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1
            or cu_seqlens.dtype not in (torch.int32, torch.int64)):
        raise TypeError("flex_prefill_varlen: cu_seqlens must be a 1-D int32/int64 tensor [num_seqs + 1]")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != q.shape[0] or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
        raise ValueError(f"flex_prefill_varlen: cu_seqlens must rise from 0 to {q.shape[0]}, got {bounds}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    heads = q.shape[1]
    threshold = max(min_len, 2 * block_size + 1, min_budget + 1)
    out = torch.empty_like(q)
    aware = torch.zeros(len(bounds) - 1, heads, dtype=torch.bool)
    density = torch.ones(len(bounds) - 1, heads)
    short = []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end - start < threshold:
            short.append((start, end))
            continue
        # [n, H, D] -> [1, H, n, D] views; the kernel takes any strides with a contiguous D.
        views = [t[start:end].transpose(0, 1)[None] for t in (q, k, v)]
        index, stats = build_flex_index(views[0], views[1], gamma=gamma, tau=tau, min_budget=min_budget,
                                        max_budget=max_budget, block_size=block_size, scale=scale)
        out[start:end] = block_sparse_attention(*views, index, block_size=block_size, scale=scale)[0].transpose(0, 1)
        aware[i], density[i] = stats.query_aware[0].cpu(), stats.density[0].cpu()
    if short:
        rows = torch.cat([torch.arange(a, b) for a, b in short]).to(q.device)
        lengths = torch.tensor([b - a for a, b in short])
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(q.device)
        out[rows] = varlen_attention(q[rows], k[rows], v[rows], cu, cu, scale=scale)
    return (out, FlexPrefillStats(aware, density)) if return_stats else out


def _dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    batch, heads, n, dim = q.shape
    cu = torch.arange(0, (batch + 1) * n, n, dtype=torch.int32, device=q.device)
    flat = [t.transpose(1, 2).reshape(batch * n, t.shape[1], dim) for t in (q, k, v)]
    return varlen_attention(*flat, cu, cu, scale=scale).view(batch, n, heads, dim).transpose(1, 2)
