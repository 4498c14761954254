"""Rotary position embeddings: the model's frequencies, RoPE applied in place from transformers'
per-token tables, and in-place re-rotation of cached keys.

A key cached at position ``p`` can be moved to position ``q`` by one rotation of each pair by
``(q - p) * inv_freq[i]``: that is what lets a chunk's KV be computed once and reused at any
offset (see the chunk-cache core). The frequencies must be the model's own, scaling included,
so :class:`RopeConfig` reads them from a transformers config or model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

# Frequency schemes whose inv_freq depends on the sequence length: a cached key then has no
# single rotation to undo, so re-rotation would be silently wrong.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def rope_inv_freq(
    rotary_dim: int,
    base: float = 10000.0,
    scaling: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Inverse frequencies ``[rotary_dim // 2]`` (float32), computed as transformers does.

    ``scaling`` is a transformers ``rope_scaling`` / ``rope_parameters`` dict; supported
    ``rope_type`` values: ``"default"``, ``"linear"`` (``factor``) and ``"llama3"`` (``factor``,
    ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``).
    """
    if not isinstance(rotary_dim, int) or rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rope_inv_freq: rotary_dim must be an even int >= 2, got {rotary_dim!r}")
    if not base > 0:
        raise ValueError(f"rope_inv_freq: base must be positive, got {base!r}")
    steps = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    inv_freq = 1.0 / (base ** (steps / rotary_dim))
    rope_type = _rope_type(scaling)
    if rope_type == "default":
        return inv_freq
    assert scaling is not None
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(
        f"rope_inv_freq: rope_type {rope_type!r} is not built in; use "
        "RopeConfig.from_hf_config (which asks transformers) or pass inv_freq directly"
    )


def _rope_type(scaling: Mapping[str, Any] | None) -> str:
    if not scaling:
        return "default"
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: Mapping[str, Any]) -> torch.Tensor:
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


@dataclass(frozen=True, eq=False)
class RopeConfig:
    """How a model rotates keys: its frequencies, pairing style and head size.

    Attributes:
        head_dim: values per head; the first ``rotary_dim`` of them are rotated.
        inv_freq: float32 ``[rotary_dim // 2]``, the model's (possibly scaled) frequencies.
        neox: ``True`` for the half-split pairing of NeoX/Llama (``i, i + rotary_dim/2``),
            ``False`` for GPT-J's interleaved pairs (``2i, 2i + 1``).
    """

    head_dim: int
    inv_freq: torch.Tensor
    neox: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.head_dim, int) or self.head_dim < 2:
            raise ValueError(f"RopeConfig: head_dim must be an int >= 2, got {self.head_dim!r}")
        if not isinstance(self.inv_freq, torch.Tensor) or self.inv_freq.dim() != 1:
            raise TypeError("RopeConfig: inv_freq must be a 1-D tensor")
        if not 1 <= self.inv_freq.numel() <= self.head_dim // 2:
            raise ValueError(
                f"RopeConfig: inv_freq must have 1..{self.head_dim // 2} entries, "
                f"got {self.inv_freq.numel()}"
            )
        if not torch.isfinite(self.inv_freq).all():
            raise ValueError("RopeConfig: inv_freq has NaN or Inf entries")
        object.__setattr__(self, "inv_freq", self.inv_freq.detach().float().contiguous())

    @property
    def rotary_dim(self) -> int:
        return 2 * self.inv_freq.numel()

    @classmethod
    def standard(
        cls,
        head_dim: int,
        *,
        base: float = 10000.0,
        rotary_dim: int | None = None,
        neox: bool = True,
        scaling: Mapping[str, Any] | None = None,
    ) -> RopeConfig:
        """RoPE with ``base ** (-2i / rotary_dim)`` frequencies (see :func:`rope_inv_freq`)."""
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if not isinstance(rotary_dim, int) or rotary_dim > head_dim:
            raise ValueError(
                f"RopeConfig: rotary_dim must be an int <= head_dim={head_dim}, got {rotary_dim!r}"
            )
        return cls(head_dim, rope_inv_freq(rotary_dim, base, scaling), neox)

    @classmethod
    def from_hf_config(cls, config: Any, *, neox: bool = True) -> RopeConfig:
        """The RoPE of a transformers config (Llama, Mistral, Qwen2, ... architectures).

        Frequencies come from transformers' own init functions when a scaling type is set,
        so they match the model exactly. Length-dependent schemes (``dynamic``, ``longrope``)
        are refused: a cached key has no single rotation to undo under them.
        """
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        params = getattr(config, "rope_parameters", None) or {}
        legacy_scaling = getattr(config, "rope_scaling", None) or {}
        base = params.get("rope_theta", getattr(config, "rope_theta", None))
        if base is None:
            raise ValueError("RopeConfig.from_hf_config: the config has no rope_theta")
        partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
        rotary_dim = int(head_dim * partial)
        rope_type = _rope_type(params) if params else _rope_type(legacy_scaling)
        if rope_type in _LENGTH_DEPENDENT_ROPE:
            raise ValueError(
                f"RopeConfig.from_hf_config: rope_type {rope_type!r} changes frequencies with "
                "the sequence length, so cached keys cannot be re-rotated"
            )
        if rope_type == "default":
            inv_freq = rope_inv_freq(rotary_dim, float(base))
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            if rope_type not in ROPE_INIT_FUNCTIONS:
                raise ValueError(f"RopeConfig.from_hf_config: unknown rope_type {rope_type!r}")
            inv_freq, _attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
        return cls(int(head_dim), inv_freq, neox)


def rope_rerotate_(
    k: torch.Tensor,
    old_pos: torch.Tensor,
    new_pos: torch.Tensor,
    *,
    rope: RopeConfig,
    layout: str = "bthd",
) -> torch.Tensor:
    """Rotate cached keys in place from positions ``old_pos`` to ``new_pos``; returns ``k``.

    Args:
        k: cached keys, float32 / bfloat16 / float16, in one of the layouts
            ``"thd"`` ``[tokens, heads, head_dim]``, ``"bthd"`` ``[batch, tokens, heads, head_dim]``
            or ``"bhtd"`` ``[batch, heads, tokens, head_dim]`` (transformers' KV cache). Any
            strides, as long as ``head_dim`` is contiguous.
        old_pos, new_pos: integer positions ``[tokens]`` (shared by the batch) or
            ``[batch, tokens]``; any integers, the rotation is by ``new_pos - old_pos``.
        rope: the model's RoPE (:class:`RopeConfig`).
        layout: how ``k`` is laid out, see above.

    The math runs in fp32 (angles in fp64) whatever the storage dtype, so the result equals
    applying RoPE at ``new_pos`` directly up to one rounding to ``k.dtype``.
    """
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"rope_rerotate_: k must be a tensor, got {type(k).__name__}")
    if not isinstance(rope, RopeConfig):
        raise TypeError(f"rope_rerotate_: rope must be a RopeConfig, got {type(rope).__name__}")
    if k.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"rope_rerotate_: k must be float32, bfloat16 or float16, got {k.dtype}")
    view = _bthd_view("rope_rerotate_", "k", k, layout)
    if k.shape[-1] != rope.head_dim:
        raise ValueError(
            f"rope_rerotate_: k has head_dim {k.shape[-1]} but rope.head_dim is {rope.head_dim}"
        )
    batch, tokens = view.shape[0], view.shape[1]
    old = _positions("old_pos", old_pos, batch, tokens, k.device)
    new = _positions("new_pos", new_pos, batch, tokens, k.device)
    inv_freq = rope.inv_freq.to(k.device)
    torch.ops.lmkernels.rope_rerotate_(view, old, new, inv_freq, rope.neox)
    return k


def rope_apply_(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    layout: str = "bhtd",
) -> torch.Tensor:
    """Apply half-split (NeoX / Llama) RoPE to ``x`` in place from per-token tables; returns ``x``.

    One pass over ``x`` instead of the half a dozen elementwise ops of transformers'
    ``apply_rotary_pos_emb`` (``x * cos + rotate_half(x) * sin``), with the same result up to
    one rounding: pair ``(x[i], x[i + r/2])`` turns by the angle whose cosine and sine are
    ``cos[..., i]`` and ``sin[..., i]``.

    Args:
        x: queries or keys, float32 / bfloat16 / float16, in layout ``"thd"``, ``"bthd"`` or
            ``"bhtd"`` (transformers' attention inputs), any strides with ``head_dim`` contiguous.
        cos, sin: ``[tokens, r/2]`` or ``[batch or 1, tokens, r/2]``: one entry per rotated pair,
            ``r`` (the rotary dim) at most ``head_dim``; values past ``r`` are untouched.
            transformers' rotary embedding repeats its frequencies in both halves, so
            ``cos[..., : r // 2]`` of its ``position_embeddings`` is this table. Computed in
            float32 whatever ``x``'s dtype.
        layout: how ``x`` is laid out.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"rope_apply_: x must be a tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"rope_apply_: x must be float32, bfloat16 or float16, got {x.dtype}")
    view = _bthd_view("rope_apply_", "x", x, layout)
    tables = []
    for name, table in (("cos", cos), ("sin", sin)):
        if not isinstance(table, torch.Tensor) or not table.dtype.is_floating_point:
            raise TypeError(f"rope_apply_: {name} must be a floating-point tensor, got {_describe(table)}")
        if table.device != x.device:
            raise ValueError(f"rope_apply_: {name} is on {table.device} but x is on {x.device}")
        if table.dim() == 2:
            table = table.unsqueeze(0)
        if table.dim() != 3:
            raise ValueError(
                f"rope_apply_: {name} must be [tokens, rotary_dim / 2] or [batch or 1, tokens, rotary_dim / 2], "
                f"got shape {tuple(table.shape)}"
            )
        tables.append(table.float())
    torch.ops.lmkernels.rope_apply_(view, tables[0], tables[1])
    return x


def _describe(value: object) -> str:
    return str(value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__


def _bthd_view(caller: str, name: str, x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` in ``layout`` as a [batch, tokens, heads, head_dim] view."""
    expected_dims = {"thd": 3, "bthd": 4, "bhtd": 4}
    if layout not in expected_dims:
        raise ValueError(f"{caller}: layout must be 'thd', 'bthd' or 'bhtd', got {layout!r}")
    if x.dim() != expected_dims[layout]:
        raise ValueError(
            f"{caller}: {name} must have {expected_dims[layout]} dims for layout {layout!r}, "
            f"got shape {tuple(x.shape)}"
        )
    view = x.unsqueeze(0) if layout == "thd" else x
    return view.transpose(1, 2) if layout == "bhtd" else view


def _positions(
    name: str, pos: torch.Tensor, batch: int, tokens: int, device: torch.device
) -> torch.Tensor:
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"rope_rerotate_: {name} must be a tensor, got {type(pos).__name__}")
    if pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool:
        raise TypeError(f"rope_rerotate_: {name} must hold integers, got {pos.dtype}")
    if pos.device != device:
        raise ValueError(f"rope_rerotate_: {name} is on {pos.device} but k is on {device}")
    if pos.dim() == 1 and pos.shape[0] == tokens:
        pos = pos.unsqueeze(0).expand(batch, tokens)
    if tuple(pos.shape) != (batch, tokens):
        raise ValueError(
            f"rope_rerotate_: {name} must be [tokens]=[{tokens}] or [batch, tokens]="
            f"[{batch}, {tokens}], got {tuple(pos.shape)}"
        )
    return pos.to(torch.int64).contiguous()
