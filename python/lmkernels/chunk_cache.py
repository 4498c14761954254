"""Chunk KV-cache reuse (Cache-Craft / CacheBlend): the per-token kernels.

- :func:`kv_deviation`: how far each token's cached K (or V) is from a freshly computed one,
  the CacheBlend criterion for which tokens to recompute.
- :func:`select_tokens`: the tokens to recompute, top-k by a score with a deterministic tie-break.
- :func:`lmkernels.rope_rerotate_` (re-exported here): move cached keys to new positions.
"""

from __future__ import annotations

import torch

from .rope import RopeConfig, rope_rerotate_

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

__all__ = ["RopeConfig", "kv_deviation", "rope_rerotate_", "select_tokens"]


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
