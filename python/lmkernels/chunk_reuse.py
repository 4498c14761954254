"""Cache-Craft's reuse metrics: how much a stored chunk variant must be fixed in a new context.

A variant is a chunk's KV computed after some chunks ``S_old``; at storing time we keep its
contextual impact ``CCI`` (how much its tokens attend outside the chunk) and the attention
mass it paid to each chunk of ``S_old``. Reusing it after chunks ``S_new`` costs

    CFO = alpha * CCI * (1 - beta * (1 - gamma)),  clamped to [0, 1],

where ``beta`` is the share of that attention which went to chunks also in ``S_new`` (those
parts of its context are unchanged) and ``gamma`` the normalised Kendall-tau distance between
the orders of the common chunks. ``ceil(CFO * tokens)`` tokens are then recomputed.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["cache_fix_overhead", "contextual_impact", "order_penalty", "prefix_overlap"]


def contextual_impact(inter: Sequence[float], sizes: Sequence[int], intra: float, tokens: int) -> float:
    """``CCI = sigmoid(a / b)`` with ``a = sum_j inter_j / (tokens * sizes_j)`` (mean attention a
    token pair across chunks gets) and ``b = intra / tokens^2`` (the same inside the chunk).

    ``inter``: attention mass from the chunk to each preceding chunk (summed over its tokens,
    averaged over heads and layers); ``sizes``: those chunks' token counts; ``intra``: the mass
    it kept inside itself. A chunk with nothing before it has ``a = 0``, so ``CCI = 0.5``.
    """
    if len(inter) != len(sizes):
        raise ValueError("contextual_impact: inter and sizes must have one entry per preceding chunk")
    if tokens <= 0:
        raise ValueError(f"contextual_impact: tokens must be positive, got {tokens}")
    a = sum(m / (tokens * n) for m, n in zip(inter, sizes))
    b = intra / (tokens * tokens)
    if a == 0.0:
        return 0.5
    ratio = a / max(b, 1e-30)
    return 1.0 / (1.0 + math.exp(-min(ratio, 700.0)))


def prefix_overlap(prefix: Sequence[tuple[int, float]], new_prefix: Sequence[int]) -> float:
    """``beta``: the share of the variant's attention to its old prefix that went to chunks
    which precede it again. 1 when both prefixes are empty (nothing changed) or when it paid
    no attention to its old prefix; 0 when it had none and now has one."""
    if not prefix:
        return 1.0 if not new_prefix else 0.0
    total = sum(mass for _, mass in prefix)
    if total <= 0.0:
        return 1.0
    present = set(new_prefix)
    return sum(mass for key, mass in prefix if key in present) / total


def order_penalty(old_order: Sequence[int], new_order: Sequence[int]) -> float:
    """``gamma``: discordant pairs among the chunks in both orders over ``C(m, 2)`` (0 for
    fewer than two common chunks)."""
    new_rank = {key: i for i, key in enumerate(new_order)}
    common = [new_rank[key] for key in old_order if key in new_rank]
    m = len(common)
    if m < 2:
        return 0.0
    discordant = sum(1 for i in range(m) for j in range(i + 1, m) if common[i] > common[j])
    return discordant / (m * (m - 1) / 2)


def cache_fix_overhead(cci: float, prefix: Sequence[tuple[int, float]], new_prefix: Sequence[int],
                       alpha: float) -> float:
    """Cache-Craft's CFO in ``[0, 1]``: the fraction of the variant's tokens to recompute when
    it follows ``new_prefix`` (chunk keys in order) instead of the ``prefix`` it was computed
    after (``(key, attention)`` pairs)."""
    beta = prefix_overlap(prefix, new_prefix)
    gamma = order_penalty([key for key, _ in prefix], new_prefix)
    return min(max(alpha * cci * (1.0 - beta * (1.0 - gamma)), 0.0), 1.0)
