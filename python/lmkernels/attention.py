"""Attention over packed variable-length sequences (the flash-attention varlen convention).

Sequences are concatenated along the token dimension and described by cumulative lengths
``cu_seqlens`` (``[0, len_0, len_0 + len_1, ...]``), so a batch of prompts of different
lengths needs no padding and no ``S x S`` mask.
"""

from __future__ import annotations

import math

import torch

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _check_qkv(op: str, q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{op}: {name} must be 3-D [tokens, heads, head_dim], got {tuple(t.shape)}")
    if q.dtype not in _FLOATS:
        raise TypeError(f"{op}: q must be float32, bfloat16 or float16, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"{op}: q has head_dim {q.shape[2]} but k has {k.shape[2]}")
    if k.shape[1] == 0 or q.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"{op}: heads_q ({q.shape[1]}) must be a positive multiple of heads_kv ({k.shape[1]})"
        )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of each packed query sequence over its own key sequence.

    Args:
        q: ``[total_q, heads_q, head_dim]``; float32, bfloat16 or float16.
        k, v: ``[total_k, heads_kv, head_dim]``, q's dtype; ``heads_q`` must be a multiple of
            ``heads_kv`` (grouped-query attention: each K/V head serves ``heads_q // heads_kv``
            query heads, and is never repeated in memory).
        cu_seqlens_q, cu_seqlens_k: int32/int64 ``[batch + 1]`` cumulative lengths, starting
            at 0 and ending at ``total_q`` / ``total_k``.
        causal: query ``i`` of a sequence attends to keys ``j <= i + len_k - len_q``
            (aligned at the bottom right, as flash-attention does: with ``len_q < len_k`` the
            queries are the last ``len_q`` positions). Rows that see no key give 0.
        scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.
        return_lse: also return the natural-log log-sum-exp of the scaled scores,
            float32 ``[total_q, heads_q]`` (``-inf`` for rows that see no key).

    Returns:
        ``out [total_q, heads_q, head_dim]`` in q's dtype, or ``(out, lse)``.
        Accumulation is fp32 whatever the input dtype.
    """
    _check_qkv("varlen_attention", q, k, v)
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1:
            raise TypeError(f"varlen_attention: {name} must be a 1-D int32/int64 tensor")
        if cu.device != q.device:
            raise ValueError(f"varlen_attention: {name} is on {cu.device} but q is on {q.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(
            f"varlen_attention: cu_seqlens_q and cu_seqlens_k must both be [batch + 1], got "
            f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    elif not math.isfinite(scale):
        raise ValueError(f"varlen_attention: scale must be finite, got {scale}")
    out, lse = torch.ops.lmkernels.varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, bool(causal), float(scale), bool(return_lse)
    )
    return (out, lse) if return_lse else out


def spliced_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention for queries at given positions of one sequence.

    Query ``i`` attends to keys ``0 .. q_positions[i]``: the attention of the tokens a chunk
    reuse recomputes, scattered over a prompt whose other keys come from stored KV.

    Args:
        q: ``[n, heads_q, head_dim]``; float32, bfloat16 or float16.
        k, v: ``[total, heads_kv, head_dim]`` (any token stride, unit stride on head_dim), q's
            dtype; ``heads_q`` a multiple of ``heads_kv`` (K/V never repeated in memory).
        q_positions: integer ``[n]``, non-decreasing, each in ``[0, total)``.
        scale: multiplies ``q . k``; default ``1 / sqrt(head_dim)``.

    Returns ``[n, heads_q, head_dim]`` in q's dtype, accumulated in fp32.
    """
    _check_qkv("spliced_attention", q, k, v)
    if not isinstance(q_positions, torch.Tensor) or q_positions.dim() != 1 or q_positions.numel() != q.shape[0]:
        raise ValueError(f"spliced_attention: q_positions must be a 1-D tensor of {q.shape[0]} positions")
    if q_positions.dtype.is_floating_point or q_positions.dtype == torch.bool:
        raise TypeError(f"spliced_attention: q_positions must hold integers, got {q_positions.dtype}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    elif not math.isfinite(scale):
        raise ValueError(f"spliced_attention: scale must be finite, got {scale}")
    return torch.ops.lmkernels.spliced_attention(q, k, v, q_positions, float(scale))
