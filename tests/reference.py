"""Plain-torch references for every op, computed in float64 where it matters."""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, neox: bool) -> torch.Tensor:
    """RoPE at integer positions, in float64.

    x: [batch, tokens, heads, head_dim]; pos: [tokens] or [batch, tokens]; inv_freq: [rot/2].
    """
    half = inv_freq.numel()
    rot = 2 * half
    angle = pos.to(torch.float64)[..., None] * inv_freq.to(torch.float64)  # [(batch,) tokens, half]
    cos = angle.cos().unsqueeze(-2)  # broadcast over heads
    sin = angle.sin().unsqueeze(-2)
    out = x.to(torch.float64).clone()
    if neox:
        first, second = out[..., :half], out[..., half:rot]
    else:
        first, second = out[..., 0:rot:2], out[..., 1:rot:2]
    new_first = first * cos - second * sin
    new_second = second * cos + first * sin
    if neox:
        out[..., :half], out[..., half:rot] = new_first, new_second
    else:
        out[..., 0:rot:2], out[..., 1:rot:2] = new_first, new_second
    return out


def rope_rerotate(k: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor,
                  inv_freq: torch.Tensor, neox: bool) -> torch.Tensor:
    """Reference for lmkernels.rope_rerotate_ on [batch, tokens, heads, head_dim] (not in place)."""
    return apply_rope(k, new_pos - old_pos, inv_freq, neox).to(k.dtype)
