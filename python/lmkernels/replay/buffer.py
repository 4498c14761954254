"""``ReplayBuffer``: fixed-length token rows in memory or on disk, sampled by a C++ core.

The storage, the writers, the sum tree and the gather loop are C++ (``lmkernels._C``); this
module checks arguments, converts tensors and carries the state dict.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import _C

WRITERS = ("reservoir", "fifo", "random")
SAMPLERS = ("uniform", "prioritized")
_STORAGE_DTYPES = {torch.uint16: (2, 65535), torch.int32: (4, 2**31 - 1)}


class ReplaySample(NamedTuple):
    """Rows drawn by :meth:`ReplayBuffer.sample` with ``return_info=True``."""

    rows: torch.Tensor  # [n, seq_len]
    indices: torch.Tensor  # [n] int64 slots, for update_priorities
    weights: torch.Tensor  # [n] float32 importance weights (all ones for uniform sampling)


class ReplayBuffer:
    """A buffer of token rows of ``seq_len`` ids for replay in continual pre-training.

    Args:
        capacity: rows held at most.
        seq_len: tokens per row.
        dtype: storage type, ``torch.uint16`` (vocabularies up to 65,536, half the bytes) or
            ``torch.int32``.
        directory: keep rows in memory-mapped shard files under this folder (created if
            missing; an existing buffer there is reopened, after a crash too) instead of in
            memory. One buffer object per directory at a time (a file lock enforces it).
        writer: what a row offered to a full buffer replaces: ``"reservoir"`` (every row ever
            offered is held with equal probability ``capacity / seen``), ``"fifo"`` (the oldest)
            or ``"random"`` (a uniform slot, as in the paper's code).
        sampler: ``"uniform"`` or ``"prioritized"`` (proportional to
            ``priority ** priority_exponent``, through a C++ sum tree; new rows get the largest
            priority seen so far).
        seed: seeds the writer's and the sampler's random streams (independent of torch's).
        shard_rows: rows per shard file (default: 64 MiB shards).
        durable: fsync rows and metadata on every ``add`` so a power loss, not only a killed
            process, keeps the buffer consistent.
    """

    def __init__(
        self,
        capacity: int,
        seq_len: int,
        *,
        dtype: torch.dtype = torch.int32,
        directory: str | os.PathLike[str] | None = None,
        writer: str = "reservoir",
        sampler: str = "uniform",
        priority_exponent: float = 1.0,
        seed: int = 0,
        shard_rows: int | None = None,
        durable: bool = False,
    ) -> None:
        _check_positive_int("capacity", capacity)
        _check_positive_int("seq_len", seq_len)
        if dtype not in _STORAGE_DTYPES:
            raise ValueError(f"ReplayBuffer: dtype must be torch.uint16 or torch.int32, got {dtype}")
        if writer not in WRITERS:
            raise ValueError(f"ReplayBuffer: writer must be one of {WRITERS}, got {writer!r}")
        if sampler not in SAMPLERS:
            raise ValueError(f"ReplayBuffer: sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not (isinstance(priority_exponent, (int, float)) and math.isfinite(priority_exponent) and priority_exponent >= 0):
            raise ValueError(f"ReplayBuffer: priority_exponent must be finite and >= 0, got {priority_exponent!r}")
        if shard_rows is not None:
            _check_positive_int("shard_rows", shard_rows)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"ReplayBuffer: seed must be a non-negative int, got {seed!r}")
        self.capacity = capacity
        self.seq_len = seq_len
        self.dtype = dtype
        self.directory = None if directory is None else os.fspath(directory)
        self.writer = writer
        self.sampler = sampler
        self.priority_exponent = float(priority_exponent)
        item_bytes, self._max_id = _STORAGE_DTYPES[dtype]
        self._core = _C.ReplayBuffer(capacity, seq_len, item_bytes, writer, self.directory or "", shard_rows or 0,
                                     seed % 2**64, sampler == "prioritized", durable)
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def for_rank(
        cls,
        capacity: int,
        seq_len: int,
        *,
        directory: str | os.PathLike[str] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> ReplayBuffer:
        """This data-parallel rank's part of a buffer of global ``capacity``: its own folder
        ``directory/rank-NNNNN`` (a shared filesystem is fine), its share of the capacity and
        its own random streams. Rank and world size default to torch.distributed's."""
        from .distributed import buffer_kwargs, rank_and_world

        rank, world_size = rank_and_world(rank, world_size)
        _check_positive_int("capacity", capacity)
        if capacity < world_size:
            raise ValueError(f"ReplayBuffer.for_rank: capacity {capacity} is smaller than the world size {world_size}")
        return cls(seq_len=seq_len, **buffer_kwargs(capacity, directory, seed, rank, world_size), **kwargs)

    # ---- writing -------------------------------------------------------------------------
    def add(self, rows: torch.Tensor | np.ndarray | list) -> int:
        """Offers rows ``[n, seq_len]`` (or one row ``[seq_len]``) of token ids; returns how many
        were stored (a full reservoir keeps each with probability ``capacity / seen``).

        Raises ``ValueError`` for a wrong shape, a non-integer dtype or ids outside the storage
        type; nothing is stored then.
        """
        rows = torch.as_tensor(rows)
        if rows.dim() == 1:
            rows = rows.unsqueeze(0)
        if rows.dim() != 2 or rows.shape[1] != self.seq_len:
            raise ValueError(f"ReplayBuffer.add: rows must have shape [n, {self.seq_len}], got {tuple(rows.shape)}")
        if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
            raise ValueError(f"ReplayBuffer.add: rows must hold integer token ids, got dtype {rows.dtype}")
        if rows.numel() == 0:
            return 0
        rows = rows.cpu()
        if rows.dtype != self.dtype:
            low, high = int(rows.min()), int(rows.max())
            if low < 0 or high > self._max_id:
                raise ValueError(f"ReplayBuffer.add: token ids must lie in [0, {self._max_id}] for {self.dtype}, "
                                 f"got values in [{low}, {high}]")
            rows = rows.to(self.dtype)
        rows = rows.contiguous()
        return int(self._c.add_ptr(rows.data_ptr(), rows.shape[0]))

    # ---- reading -------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        *,
        dtype: torch.dtype = torch.long,
        pin_memory: bool = False,
        return_info: bool = False,
        beta: float = 1.0,
    ) -> torch.Tensor | ReplaySample:
        """Draws ``n`` rows with replacement (uniformly, or by priority) and gathers them.

        Args:
            dtype: ``torch.long`` (widened in the gather, ready for an embedding) or the
                storage dtype.
            pin_memory: gather into page-locked memory for a fast, asynchronous copy to a GPU.
            return_info: return a :class:`ReplaySample` with the slots and importance weights
                ``(size * P(i)) ** -beta`` normalised to a maximum of 1.

        The gather is multithreaded C++ and runs without the GIL. Raises ``RuntimeError`` when
        the buffer is empty.
        """
        _check_positive_int("n", n)
        if dtype not in (torch.long, self.dtype):
            raise ValueError(f"ReplayBuffer.sample: dtype must be torch.long or {self.dtype}, got {dtype}")
        out = torch.empty((n, self.seq_len), dtype=dtype, pin_memory=pin_memory)
        if not return_info:
            self._c.sample_ptr(n, 0, out.data_ptr(), out.element_size())
            return out
        indices = torch.empty(n, dtype=torch.long)
        self._c.sample_ptr(n, indices.data_ptr(), out.data_ptr(), out.element_size())
        return ReplaySample(out, indices, self._importance_weights(indices, beta))

    def sample_async(self, n: int, **kwargs: Any) -> Future:
        """:meth:`sample` on a background thread (prefetch); the draws keep submission order."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmkernels-replay")
        return self._executor.submit(self.sample, n, **kwargs)

    def gather(self, indices: torch.Tensor | list[int], *, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """The rows in slots ``indices``; raises ``IndexError`` for a slot not holding a row."""
        indices = _index_tensor("ReplayBuffer.gather", indices)
        if dtype not in (torch.long, self.dtype):
            raise ValueError(f"ReplayBuffer.gather: dtype must be torch.long or {self.dtype}, got {dtype}")
        out = torch.empty((indices.numel(), self.seq_len), dtype=dtype)
        self._c.gather_ptr(indices.data_ptr(), indices.numel(), out.data_ptr(), out.element_size())
        return out

    # ---- priorities ----------------------------------------------------------------------
    def update_priorities(self, indices: torch.Tensor | list[int], priorities: torch.Tensor | list[float]) -> None:
        """Sets the priorities of slots (e.g. to each sampled row's loss); must be finite, >= 0."""
        indices = _index_tensor("ReplayBuffer.update_priorities", indices)
        values = torch.as_tensor(priorities, dtype=torch.float64).detach().cpu().reshape(-1)
        if values.numel() != indices.numel():
            raise ValueError("ReplayBuffer.update_priorities: priorities and indices differ in length")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError("ReplayBuffer.update_priorities: priorities must be finite and >= 0")
        values = values.pow(self.priority_exponent).contiguous()
        self._c.update_priorities_ptr(indices.data_ptr(), values.data_ptr(), indices.numel())

    def priorities(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """The stored (exponentiated) priorities of slots, float64."""
        indices = _index_tensor("ReplayBuffer.priorities", indices)
        out = torch.empty(indices.numel(), dtype=torch.float64)
        self._c.get_priorities_ptr(indices.data_ptr(), indices.numel(), out.data_ptr())
        return out

    def _importance_weights(self, indices: torch.Tensor, beta: float) -> torch.Tensor:
        if self.sampler == "uniform":
            return torch.ones(indices.numel(), dtype=torch.float32)
        probs = self.priorities(indices) / self._c.total_priority
        weights = (len(self) * probs).pow(-beta)
        return (weights / weights.max()).float()

    # ---- state ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._c.size)

    @property
    def seen(self) -> int:
        """Rows ever offered to :meth:`add`."""
        return int(self._c.seen)

    @property
    def recovered_rows(self) -> int:
        """Rows dropped when this directory was reopened after an interrupted overwrite."""
        return int(self._c.recovered_rows)

    def state_dict(self) -> dict[str, Any]:
        """Counters and both random states (and, in memory, the rows; with priorities, those):
        a buffer restored from it samples and replaces exactly as this one would."""
        size, seen, cursor, commit, write_rng, sample_rng = self._c.state()
        state: dict[str, Any] = {
            "config": {"capacity": self.capacity, "seq_len": self.seq_len, "dtype": str(self.dtype),
                       "writer": self.writer, "sampler": self.sampler, "directory": self.directory},
            "counters": {"size": size, "seen": seen, "cursor": cursor, "commit": commit},
            "write_rng": list(write_rng),
            "sample_rng": list(sample_rng),
        }
        if self.directory is None:
            state["rows"] = self.gather(torch.arange(size), dtype=self.dtype)
        if self.sampler == "prioritized":
            state["priorities"] = self.priorities(torch.arange(size))
            state["max_priority"] = float(self._c.max_priority)
        return state

    def load_state_dict(self, state: dict[str, Any], *, strict: bool = True) -> None:
        """Restores :meth:`state_dict`. On disk the directory must be at the saved commit; with
        ``strict=False`` a directory that moved on keeps its rows and takes only the sampling
        state."""
        config = state["config"]
        mine = {"capacity": self.capacity, "seq_len": self.seq_len, "dtype": str(self.dtype), "writer": self.writer}
        for key, value in mine.items():
            if config[key] != value:
                raise ValueError(f"ReplayBuffer.load_state_dict: the state has {key}={config[key]!r}, this buffer {value!r}")
        c = state["counters"]
        packed = (c["size"], c["seen"], c["cursor"], c["commit"], state["write_rng"], state["sample_rng"])
        rows = state.get("rows") if self.directory is None else None
        self._c.restore(packed, None if rows is None else rows.contiguous(), strict)
        if self.sampler == "prioritized" and "priorities" in state and len(self) == state["priorities"].numel():
            slots, values = torch.arange(len(self)), state["priorities"].double().contiguous()
            self._c.update_priorities_ptr(slots.data_ptr(), values.data_ptr(), len(self))
            self._c.max_priority = state["max_priority"]

    @property
    def _c(self) -> Any:
        if self._core is None:
            raise RuntimeError("ReplayBuffer: the buffer is closed")
        return self._core

    def close(self) -> None:
        """Releases the directory (its lock and mappings); the object is unusable afterwards."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._core = None

    def __enter__(self) -> ReplayBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"directory={self.directory!r}" if self.directory else "memory"
        return (f"ReplayBuffer({len(self)}/{self.capacity} rows x {self.seq_len} {self.dtype}, writer={self.writer}, "
                f"sampler={self.sampler}, {where})")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ReplayBuffer: {name} must be a positive int, got {value!r}")


def _index_tensor(where: str, indices: torch.Tensor | list[int]) -> torch.Tensor:
    indices = torch.as_tensor(indices)
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"{where}: indices must be integers, got dtype {indices.dtype}")
    return indices.reshape(-1).to(torch.long).cpu().contiguous()
