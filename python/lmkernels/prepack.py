"""Prepacking: bin-pack prompts of varied lengths into rows instead of padding them.

``pack`` places lengths into rows (a C++ op, O(n log n)); ``prepack`` builds the packed
token rows with position ids restarting per prompt, the varlen ``cu_seqlens`` that keep
every prompt's attention to itself (no ``S x S`` mask is ever built), and the index maps
that gather each prompt's last token and KV slice back out. ``prefill`` (in
:mod:`lmkernels.hf`) runs a transformers model on packed rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

_ALGORITHMS = ("bfd", "ffd")


@dataclass(frozen=True)
class Packing:
    """Where each sequence went: ``row[i]`` and ``offset[i]`` (int64 ``[n]``)."""

    row: torch.Tensor
    offset: torch.Tensor
    lengths: torch.Tensor
    capacity: int
    num_rows: int

    @property
    def lower_bound(self) -> int:
        """``ceil(sum(lengths) / capacity)``: no packing can use fewer rows."""
        return -(-int(self.lengths.sum()) // self.capacity)

    @property
    def fill(self) -> float:
        """Fraction of the rows' tokens that are real (1.0: no padding at all)."""
        return float(self.lengths.sum()) / max(1, self.num_rows * self.capacity)


def pack(lengths: torch.Tensor | Sequence[int], capacity: int | None = None, *, algorithm: str = "bfd") -> Packing:
    """Bin-pack sequence lengths into rows of ``capacity`` tokens.

    Args:
        lengths: ``[n]`` positive ints (tensor or list).
        capacity: tokens per row; default the longest length.
        algorithm: ``"bfd"`` (best-fit decreasing: each sequence, longest first, goes to the
            fullest row it fits in) or ``"ffd"`` (first-fit decreasing: to the first such row).

    Raises ``ValueError`` for an empty list, a length < 1 or longer than ``capacity``.
    """
    lengths = _lengths_tensor(lengths)
    if lengths.numel() == 0:
        raise ValueError("pack: lengths is empty")
    if int(lengths.min()) < 1:
        raise ValueError(f"pack: every length must be >= 1, got {int(lengths.min())}")
    longest = int(lengths.max())
    capacity = longest if capacity is None else capacity
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"pack: capacity must be a positive int, got {capacity!r}")
    if longest > capacity:
        raise ValueError(f"pack: a sequence of {longest} tokens does not fit the capacity {capacity}")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"pack: algorithm must be one of {_ALGORITHMS}, got {algorithm!r}")
    row, offset = torch.ops.lmkernels.pack_sequences(lengths, capacity, algorithm)
    return Packing(row, offset, lengths, capacity, int(row.max()) + 1)


def _lengths_tensor(lengths: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if isinstance(lengths, torch.Tensor):
        if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise TypeError(f"pack: lengths must be a 1-D integer tensor, got {lengths.dtype} {tuple(lengths.shape)}")
        return lengths.to(torch.int64).cpu()
    return torch.tensor(list(lengths), dtype=torch.int64)


@dataclass(frozen=True)
class PackedBatch:
    """Prompts packed into ``rows x capacity`` tokens.

    Attributes:
        input_ids: ``[rows, capacity]``; tokens past each row's prompts are ``pad_id``.
        position_ids: ``[rows, capacity]``, restarting at 0 for every prompt.
        cu_seqlens: int32 ``[segments + 1]`` over the flattened rows (``rows * capacity``
            tokens): each prompt is a segment, and each row's padding tail is one too, so
            ``varlen_attention`` over the flat tokens keeps every prompt to itself.
        max_seqlen: longest segment.
        packing: the row and offset of each prompt (:class:`Packing`).
        token_index: ``[total]`` flat index of every prompt token, prompts in input order.
        prompt_cu_seqlens: int64 ``[n + 1]``: prompt ``i``'s tokens are
            ``token_index[prompt_cu_seqlens[i]:prompt_cu_seqlens[i + 1]]``.
        last_token_index: ``[n]`` flat index of each prompt's last token.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    packing: Packing
    token_index: torch.Tensor
    prompt_cu_seqlens: torch.Tensor
    last_token_index: torch.Tensor

    def unpack(self, flat: torch.Tensor, dim: int = 0) -> list[torch.Tensor]:
        """Split a tensor laid out like the flattened rows (``rows * capacity`` along
        ``dim``) into per-prompt tensors, in prompt order, with one gather."""
        gathered = flat.index_select(dim, self.token_index.to(flat.device))
        return list(gathered.split(self.packing.lengths.tolist(), dim=dim))


def prompt_tensors(prompts: Sequence[torch.Tensor | Sequence[int]], caller: str,
                   device: torch.device) -> list[torch.Tensor]:
    """Check a list of prompts (1-D integer tensors or lists) and return int64 tensors on
    `device`; errors name `caller` and the bad prompt."""
    if len(prompts) == 0:
        raise ValueError(f"{caller}: prompts is empty")
    tensors = []
    for i, p in enumerate(prompts):
        t = p if isinstance(p, torch.Tensor) else torch.tensor(list(p), dtype=torch.int64)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{caller}: prompts[{i}] must be a 1-D integer sequence, got {t.dtype} {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{caller}: prompts[{i}] is empty")
        tensors.append(t.to(device=device, dtype=torch.int64))
    return tensors


def prepack(
    prompts: Sequence[torch.Tensor | Sequence[int]],
    capacity: int | None = None,
    *,
    algorithm: str = "bfd",
    pad_id: int = 0,
) -> PackedBatch:
    """Pack a list of 1-D token sequences into rows (see :class:`PackedBatch`)."""
    tensors = prompt_tensors(prompts, "prepack", torch.device("cpu"))
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    packing = pack(lengths, capacity, algorithm=algorithm)
    cap, rows = packing.capacity, packing.num_rows

    starts = packing.row * cap + packing.offset                       # flat start of each prompt
    prompt_cu = torch.zeros(len(tensors) + 1, dtype=torch.int64)
    prompt_cu[1:] = lengths.cumsum(0)
    within = torch.arange(int(prompt_cu[-1])) - prompt_cu[:-1].repeat_interleave(lengths)
    token_index = starts.repeat_interleave(lengths) + within

    input_ids = torch.full((rows * cap,), pad_id, dtype=torch.int64)
    input_ids[token_index] = torch.cat(tensors)
    position_ids = torch.zeros(rows * cap, dtype=torch.int64)
    position_ids[token_index] = within

    # Segments: the prompts, plus one padding segment at the end of each row that is not full.
    fill = torch.zeros(rows, dtype=torch.int64).index_add_(0, packing.row, lengths)
    pad_rows = (fill < cap).nonzero().flatten()
    segment_starts = torch.cat([starts, pad_rows * cap + fill[pad_rows]]).sort().values
    cu_seqlens = torch.cat([segment_starts, torch.tensor([rows * cap])]).to(torch.int32)
    return PackedBatch(
        input_ids=input_ids.view(rows, cap),
        position_ids=position_ids.view(rows, cap),
        cu_seqlens=cu_seqlens,
        max_seqlen=int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
        packing=packing,
        token_index=token_index,
        prompt_cu_seqlens=prompt_cu,
        last_token_index=starts + lengths - 1,
    )
