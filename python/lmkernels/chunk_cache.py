"""Chunk KV-cache reuse (Cache-Craft / CacheBlend): the per-token kernels.

- :func:`kv_deviation`: how far each token's cached K (or V) is from a freshly computed one,
  the CacheBlend criterion for which tokens to recompute.
- :func:`select_tokens`: the tokens to recompute, top-k by a score with a deterministic tie-break.
- :func:`scatter_kv_`: write a stored chunk's K/V into a flat or paged cache at new positions,
  the RoPE shift fused into the copy.
- :func:`lmkernels.rope_rerotate_` (re-exported here): move cached keys to new positions in place.
- :class:`ChunkCache`: the stored chunk KV-caches, tiered under byte budgets (C++ core).
- :class:`ChunkedPrefill` (re-exported from :mod:`lmkernels.chunk_prefill`): prefill RAG
  prompts from stored chunks under the ``full``/``prefix``/``reuse``/``cachecraft``/``cacheblend``
  policies.
"""

from __future__ import annotations

import torch

from .chunk_store import ChunkCache
from .rope import RopeConfig, rope_rerotate_

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

__all__ = ["ChunkCache", "ChunkedPrefill", "ChunkedPrefillResult", "ChunkReport", "RopeConfig", "greedy_decode",
           "kv_deviation", "rope_rerotate_", "scatter_kv_", "select_tokens"]
_FLOW = ("ChunkedPrefill", "ChunkedPrefillResult", "ChunkReport", "greedy_decode")


def __getattr__(name: str):
    # The flow imports this module's kernels, so it is re-exported lazily (PEP 562).
    if name in _FLOW:
        from . import chunk_prefill

        return getattr(chunk_prefill, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_bthd(name: str, t: torch.Tensor, layout: str) -> torch.Tensor:
    dims = {"thd": 3, "bthd": 4, "bhtd": 4}
    if layout not in dims:
        raise ValueError(f"kv_deviation: layout must be 'thd', 'bthd' or 'bhtd', got {layout!r}")
    if not isinstance(t, torch.Tensor) or t.dim() != dims[layout]:
        raise ValueError(f"kv_deviation: {name} must be a {dims[layout]}-D tensor for layout {layout!r}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"kv_deviation: {name} must be float32, bfloat16 or float16, got {t.dtype}")
    if layout == "thd":
        return t.unsqueeze(0)
    return t.transpose(1, 2) if layout == "bhtd" else t


def kv_deviation(a: torch.Tensor, b: torch.Tensor, *, layout: str = "thd") -> torch.Tensor:
    """Per-token squared L2 distance ``sum over heads and dims of (a - b)^2``, in fp32.

    Args:
        a, b: KV tensors of one shape and dtype, laid out as ``"thd"`` ``[tokens, heads, dim]``,
            ``"bthd"`` or ``"bhtd"`` (transformers' cache); any strides with a contiguous dim.

    Returns float32 ``[tokens]`` (``"thd"``) or ``[batch, tokens]``. Squared L2 is rotation
    invariant, so keys may be compared before or after RoPE at a common position.
    """
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape:
        raise ValueError(f"kv_deviation: a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = torch.ops.lmkernels.kv_deviation(_as_bthd("a", a, layout), _as_bthd("b", b, layout))
    return out[0] if layout == "thd" else out


def select_tokens(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the ``k = max(floor(ratio * n), 1)`` highest scores, ascending.

    Args:
        scores: ``[n]`` or ``[batch, n]`` float scores (no NaN).
        ratio: fraction of tokens to select, in ``(0, 1]``.

    Ties are broken towards the lower index, so the choice is deterministic on every device.
    Returns int64 ``[k]`` or ``[batch, k]``.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2):
        raise ValueError("select_tokens: scores must be a 1-D or 2-D tensor")
    if scores.dtype not in _FLOATS:
        raise TypeError(f"select_tokens: scores must be float32, bfloat16 or float16, got {scores.dtype}")
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(f"select_tokens: ratio must be in (0, 1], got {ratio!r}")
    out = torch.ops.lmkernels.select_tokens(scores.unsqueeze(0) if scores.dim() == 1 else scores, float(ratio))
    return out[0] if scores.dim() == 1 else out


def _as_slots(name: str, cache: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """A flat [slots, heads, dim] view of a flat or paged ([blocks, block_size, heads, dim]) cache."""
    if not isinstance(cache, torch.Tensor) or cache.dim() not in (3, 4):
        raise ValueError(f"scatter_kv_: {name} must be [slots, heads, dim] or [blocks, block_size, heads, dim]")
    if cache.shape[-2:] != (heads, dim):
        raise ValueError(f"scatter_kv_: {name} has heads x dim {tuple(cache.shape[-2:])}, the chunk {(heads, dim)}")
    if cache.dim() == 4:
        if cache.stride(0) != cache.shape[1] * cache.stride(1):
            raise ValueError(f"scatter_kv_: the blocks of paged {name} must be laid out one after another")
        cache = cache.flatten(0, 1)
    return cache


def scatter_kv_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    old_pos: torch.Tensor,
    new_pos: torch.Tensor,
    rope: RopeConfig,
) -> None:
    """Write a chunk's keys and values into cache slots, moving the keys to new positions.

    ``k_cache[slot_mapping[t]] = RoPE-shift(k[t], new_pos[t] - old_pos[t])`` and
    ``v_cache[slot_mapping[t]] = v[t]`` in one pass; ``slot_mapping[t] = -1`` skips token t.

    Args:
        k_cache, v_cache: ``[slots, heads, dim]`` or paged ``[blocks, block_size, heads, dim]``
            (slot = block * block_size + offset, as in vLLM), the chunk's dtype.
        k, v: the stored chunk ``[tokens, heads, dim]``; float32, bfloat16 or float16.
        slot_mapping, old_pos, new_pos: integer ``[tokens]``; slots distinct.
        rope: the model's RoPE (:class:`RopeConfig`).
    """
    if not isinstance(rope, RopeConfig):
        raise TypeError(f"scatter_kv_: rope must be a RopeConfig, got {type(rope).__name__}")
    if not isinstance(k, torch.Tensor) or k.dim() != 3:
        raise ValueError("scatter_kv_: k must be a [tokens, heads, dim] tensor")
    if k.shape[-1] != rope.head_dim:
        raise ValueError(f"scatter_kv_: k has head_dim {k.shape[-1]} but rope.head_dim is {rope.head_dim}")
    kc = _as_slots("k_cache", k_cache, k.shape[1], k.shape[2])
    vc = _as_slots("v_cache", v_cache, k.shape[1], k.shape[2])
    ints = []
    for name, t in (("slot_mapping", slot_mapping), ("old_pos", old_pos), ("new_pos", new_pos)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"scatter_kv_: {name} must be an integer tensor")
        ints.append(t.to(torch.int64).contiguous())
    torch.ops.lmkernels.scatter_kv_(kc, vc, k, v, *ints, rope.inv_freq.to(k.device), rope.neox)
