"""Replay across data-parallel ranks: each rank owns a disjoint part of the buffer (its own
folder and shards under one shared directory) and the global batch keeps the replay rate.

Each rank replays only rows it stored itself, so no rows cross the network; the global count
``replay_count(rate, batch_size * world_size)`` is split over the ranks, the remainder
rotating with the step so that every rank replays equally often.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments, else torch.distributed's, else (0, 1)."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    return rank, world_size


def rank_capacity(capacity: int, rank: int, world_size: int) -> int:
    """This rank's share of a global capacity (the first ``capacity % world_size`` ranks get one more)."""
    return capacity // world_size + (1 if rank < capacity % world_size else 0)


def rank_directory(directory: str | os.PathLike[str], rank: int) -> str:
    return os.path.join(os.fspath(directory), f"rank-{rank:05d}")


def rank_replay_count(global_count: int, rank: int, world_size: int, step: int) -> int:
    """This rank's part of ``global_count`` replayed rows at ``step``; the parts sum to it exactly."""
    base, remainder = divmod(global_count, world_size)
    return base + (1 if (rank - step) % world_size < remainder else 0)


def buffer_kwargs(capacity: int, directory: Any, seed: int, rank: int, world_size: int) -> dict[str, Any]:
    return {
        "capacity": rank_capacity(capacity, rank, world_size),
        "directory": None if directory is None else rank_directory(directory, rank),
        "seed": seed * world_size + rank,  # distinct, reproducible streams per rank
    }
