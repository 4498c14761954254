"""``ReplayMixer``: batches with an exact share of replayed rows, α-stratified per batch."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

import torch

from .buffer import ReplayBuffer
from .distributed import rank_and_world, rank_replay_count


def replay_count(rate: float, batch_size: int) -> int:
    """``round(rate * batch_size)``, halves rounded up (Python's round would go to even)."""
    return int(math.floor(rate * batch_size + 0.5))


class ReplayMixer:
    """Wraps an iterable of new-data batches ``[b, seq_len]``; yields batches of ``batch_size``
    rows of which exactly ``replay_count(rate, batch_size)`` are drawn from ``buffer``.

    New rows are consumed as a stream (re-chunked across incoming batches, none dropped) and
    added to the buffer after the replayed rows of the same batch are drawn, so a batch never
    replays itself. During warm-up (the first ``warmup_batches`` batches, and while the buffer
    holds fewer rows than one batch replays) batches are all new. Rows are shuffled within each
    batch. The last, partial batch keeps the rate: its size ``t`` is the smallest with
    ``t - replay_count(rate, t)`` equal to the new rows left.

    Args:
        batches: iterable of integer tensors ``[b, seq_len]`` (any ``b``).
        buffer: the :class:`ReplayBuffer` to draw from and to fill.
        rate: replayed fraction in ``[0, 1)``.
        batch_size: rows per yielded batch (default: the first incoming batch's ``b``).
        return_mask: yield ``(rows, is_replay)`` with a bool mask instead of rows alone.
        seed: seeds the in-batch shuffle.
        rank, world_size: data parallelism (default: torch.distributed's when initialised).
            ``batch_size`` is then per rank, ``buffer`` this rank's part
            (:meth:`ReplayBuffer.for_rank`), and the global batch of ``batch_size * world_size``
            rows holds exactly ``replay_count(rate, batch_size * world_size)`` replayed rows,
            split over the ranks by :func:`~lmkernels.replay.distributed.rank_replay_count`.
    """

    def __init__(
        self,
        batches: Iterable[torch.Tensor],
        buffer: ReplayBuffer,
        rate: float,
        *,
        batch_size: int | None = None,
        warmup_batches: int = 0,
        return_mask: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0.0 <= rate < 1.0:
            raise ValueError(f"ReplayMixer: rate must be in [0, 1), got {rate!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"ReplayMixer: batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(warmup_batches, int) or warmup_batches < 0:
            raise ValueError(f"ReplayMixer: warmup_batches must be a non-negative int, got {warmup_batches!r}")
        self.rank, self.world_size = rank_and_world(rank, world_size)
        self.buffer = buffer
        self.rate = float(rate)
        self.batch_size = batch_size
        self.warmup_batches = warmup_batches
        self.return_mask = return_mask
        self.steps = 0
        self._batches = batches
        self._pending: list[torch.Tensor] = []  # new rows read but not yet yielded
        self._generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        source = iter(self._batches)
        exhausted = False
        while True:
            if self.batch_size is None:
                first = self._next_new(source)
                if first is None:
                    return
                self._pending.insert(0, first)
                self.batch_size = first.shape[0]
            total = self.batch_size
            n_replay = self._replay_rows(total)
            need_new = total - n_replay
            while not exhausted and self._pending_rows() < need_new:
                batch = self._next_new(source)
                if batch is None:
                    exhausted = True
                else:
                    self._pending.append(batch)
            have = self._pending_rows()
            if have == 0:
                return
            if have < need_new:  # the last, partial batch: keep the rate
                total = have
                while total - replay_count(self.rate, total) < have:
                    total += 1
                n_replay = self._replay_rows(total, across_ranks=False)
                need_new = have if n_replay == 0 else total - n_replay
            yield self._mix(self._take(need_new), n_replay)

    def _replay_rows(self, total: int, *, across_ranks: bool = True) -> int:
        if across_ranks:
            n = rank_replay_count(replay_count(self.rate, total * self.world_size), self.rank, self.world_size, self.steps)
        else:  # the last, partial batch of one rank
            n = replay_count(self.rate, total)
        # warm-up is counted in steps, the same on every rank; the size check only guards an empty buffer
        if self.steps < self.warmup_batches or len(self.buffer) < max(n, 1):
            return 0
        return n

    def _mix(self, new_rows: torch.Tensor, n_replay: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        parts, mask_parts = [new_rows], [torch.zeros(new_rows.shape[0], dtype=torch.bool)]
        if n_replay:
            parts.append(self.buffer.sample(n_replay).to(new_rows.dtype))
            mask_parts.append(torch.ones(n_replay, dtype=torch.bool))
        self.buffer.add(new_rows)
        rows, mask = torch.cat(parts), torch.cat(mask_parts)
        order = torch.randperm(rows.shape[0], generator=self._generator)
        self.steps += 1
        rows, mask = rows[order], mask[order]
        return (rows, mask) if self.return_mask else rows

    def _next_new(self, source: Iterator[torch.Tensor]) -> torch.Tensor | None:
        try:
            batch = next(source)
        except StopIteration:
            return None
        batch = torch.as_tensor(batch)
        if batch.dim() != 2 or batch.shape[1] != self.buffer.seq_len:
            raise ValueError(f"ReplayMixer: new batches must have shape [b, {self.buffer.seq_len}], "
                             f"got {tuple(batch.shape)}")
        return batch.cpu()

    def _pending_rows(self) -> int:
        return sum(b.shape[0] for b in self._pending)

    def _take(self, n: int) -> torch.Tensor:
        rows = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = [rows[n:]] if rows.shape[0] > n else []
        return rows[:n]

    def state_dict(self) -> dict[str, Any]:
        """Steps, the shuffle generator, new rows read but not yet yielded, and the buffer's state.
        Resuming also needs the new-data iterable resumed where it was."""
        pending = torch.cat(self._pending) if self._pending else None
        return {"steps": self.steps, "batch_size": self.batch_size, "generator": self._generator.get_state(),
                "pending": pending, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        self.steps = state["steps"]
        self.batch_size = state["batch_size"]
        self._generator.set_state(state["generator"])
        self._pending = [] if state["pending"] is None else [state["pending"]]
        self.buffer.load_state_dict(state["buffer"], strict=strict)
