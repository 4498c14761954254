"""``ChunkCache``: stored chunk KV-caches under per-tier byte budgets (C++ core).

Re-exported by :mod:`lmkernels.chunk_cache`. The index, the tiers and the eviction policy are
C++ (``lmkernels._C.ChunkCache``); tensors cross by DLPack, so the cache holds the caller's
tensors themselves (a tensor already on the tier's device is not copied).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, NamedTuple, Sequence

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from . import _C

_MASK64 = (1 << 64) - 1


def _token_tensor(name: str, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.dim() != 1 or t.numel() == 0 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"ChunkCache: {name} must be a non-empty 1-D sequence of token ids")
    return t.to(torch.int64).cpu().contiguous()


class StoredChunk(NamedTuple):
    """A stored variant as :meth:`ChunkCache.use` hands it out.

    Attributes:
        kv: the stored KV tensor itself (clone it before changing it in place).
        scores: float32 ``[tokens]``, each token's attention to the chunks before it.
        prefix: the chunks it was computed after, in order, as ``(chunk_key, attention)``
            pairs: the key and the attention mass the chunk paid to it (Cache-Craft's inter).
    """

    kv: torch.Tensor
    scores: torch.Tensor
    prefix: list[tuple[int, float]]


def _pack_prefix(prefix: Sequence[tuple[int, float]] | None) -> torch.Tensor:
    """``(key, mass)`` pairs -> int64 ``[m, 2]``: the key's 64 bits, the mass's float64 bits."""
    prefix = list(prefix or ())
    if any(not (isinstance(p, (tuple, list)) and len(p) == 2) for p in prefix):
        raise ValueError("ChunkCache.put: prefix must be a sequence of (chunk_key, attention) pairs")
    keys = torch.tensor([int(k) & _MASK64 for k, _ in prefix], dtype=torch.uint64).view(torch.int64)
    mass = torch.tensor([float(m) for _, m in prefix], dtype=torch.float64)
    if not bool(torch.isfinite(mass).all()) or bool((mass < 0).any()):
        raise ValueError("ChunkCache.put: the attention masses in prefix must be finite and >= 0")
    return torch.stack([keys, mass.view(torch.int64)], dim=1).reshape(len(prefix), 2).contiguous()


def _unpack_prefix(packed: torch.Tensor) -> list[tuple[int, float]]:
    keys = packed[:, 0].tolist()
    mass = packed[:, 1].contiguous().view(torch.float64).tolist()
    return [(k & _MASK64, m) for k, m in zip(keys, mass)]


class ChunkCache:
    """Chunk KV-caches keyed by (chunk tokens, context variant), independent of position.

    Args:
        model_id: identity of the model the KV comes from (e.g. name + revision); part of
            every key, and checked on every call that passes one.
        device_bytes, host_bytes, disk_bytes: byte budget per tier (0 disables a tier). The
            budgets count the KV tensors; per-token scores (4 bytes a token) stay in host memory.
        directory: folder of the disk tier (safetensors files and an index); reopening it
            brings its entries back. Needs ``disk_bytes > 0``.
        eviction: ``"score"`` (lowest (hits + 1) x tokens x (1 - cci) / bytes first) or ``"lru"``.
        device: where the device tier keeps tensors (default: CUDA when available, else CPU).

    Eviction demotes device -> host -> disk and drops only from the last enabled tier; entries
    acquired with :meth:`use` are pinned (never evicted or demoted) until released.
    """

    def __init__(self, model_id: str, *, device_bytes: int, host_bytes: int = 0, disk_bytes: int = 0,
                 directory: str | os.PathLike[str] | None = None, eviction: str = "score",
                 device: str | torch.device | None = None) -> None:
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("ChunkCache: model_id must be a non-empty string")
        for name, value in (("device_bytes", device_bytes), ("host_bytes", host_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ChunkCache: {name} must be a non-negative int, got {value!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_id = model_id
        self.device = torch.device(device)
        self.directory = None if directory is None else os.fspath(directory)
        self._core = _C.ChunkCache(model_id, device_bytes, host_bytes, disk_bytes, self.directory or "", eviction,
                                   str(self.device))

    # ---- keys ----------------------------------------------------------------------------
    def chunk_key(self, tokens: torch.Tensor | Sequence[int]) -> int:
        """The position-independent 64-bit key of a chunk's token ids under this model."""
        t = _token_tensor("tokens", tokens)
        return self._core.chunk_hash(t.data_ptr(), t.numel())

    def context_key(self, context: torch.Tensor | Sequence[int] | int | None) -> int:
        """The variant key: 0 for a chunk computed alone, else a hash of the preceding tokens
        (or an int the caller chose)."""
        if context is None:
            return 0
        if isinstance(context, int):
            return context & _MASK64
        return self.chunk_key(context)

    def _key(self, tokens, context, model_id: str | None) -> tuple[int, int]:
        if model_id is not None and model_id != self.model_id:
            raise ValueError(f"ChunkCache: this cache holds KV of model {self.model_id!r}, not {model_id!r}")
        return self.chunk_key(tokens), self.context_key(context)

    # ---- entries -------------------------------------------------------------------------
    def put(self, tokens: torch.Tensor | Sequence[int], kv: torch.Tensor, *, context=None,
            scores: torch.Tensor | None = None, cci: float = 0.0,
            prefix: Sequence[tuple[int, float]] | None = None, model_id: str | None = None) -> None:
        """Stores a chunk's KV (any layout, e.g. ``[layers, 2, tokens, kv_heads, head_dim]``).

        ``scores``: per-token attention to the preceding context (float32 ``[tokens]``, default
        zeros); ``cci``: the chunk's contextual impact (Cache-Craft), >= 0; ``prefix``: the
        chunks it was computed after as ``(chunk_key, attention)`` pairs. Raises ``ValueError``
        when the entry fits no tier, ``RuntimeError`` when the key is in use.
        """
        chunk, variant = self._key(tokens, context, model_id)
        n = len(tokens) if not isinstance(tokens, torch.Tensor) else tokens.numel()
        if not isinstance(kv, torch.Tensor) or kv.numel() == 0:
            raise ValueError("ChunkCache.put: kv must be a non-empty tensor")
        if scores is None:
            scores = torch.zeros(n, dtype=torch.float32)
        scores = torch.as_tensor(scores)
        if scores.dim() != 1 or scores.numel() != n:
            raise ValueError(f"ChunkCache.put: scores must have one value per token ({n}), got {tuple(scores.shape)}")
        self._core.put(chunk, variant, to_dlpack(kv.detach()), to_dlpack(scores.detach().float().cpu().contiguous()),
                       to_dlpack(_pack_prefix(prefix)), float(cci))

    @contextlib.contextmanager
    def use(self, tokens, *, context=None, model_id: str | None = None) -> Iterator[StoredChunk | None]:
        """Pins a variant for the duration of the block and yields a :class:`StoredChunk`
        ``(kv, scores, prefix)``, or ``None`` on a miss. ``kv`` is the stored tensor itself
        (promoted to the device tier when there is room): clone it before changing it in
        place (e.g. before re-rotating keys)."""
        chunk, variant = self._key(tokens, context, model_id)
        got = self._core.acquire(chunk, variant)
        if got is None:
            yield None
            return
        try:
            yield StoredChunk(from_dlpack(got[0]), from_dlpack(got[1]), _unpack_prefix(from_dlpack(got[2])))
        finally:
            self._core.release(chunk, variant)

    def remove(self, tokens, *, context=None) -> bool:
        return self._core.remove(*self._key(tokens, context, None))

    def info(self, tokens, *, context=None) -> dict | None:
        """Tier, bytes, tokens, hits, pins, last access, cci and prefix (as in
        :class:`StoredChunk`) of a variant (None if absent); counts no hit and moves nothing."""
        return self._info(*self._key(tokens, context, None))

    def variants(self, tokens) -> list[int]:
        """The context keys stored for a chunk."""
        return self._core.variants(self.chunk_key(tokens))

    def variant_info(self, tokens, variant: int) -> dict | None:
        """:meth:`info` of a variant given by its context key (as :meth:`variants` lists them)."""
        return self._info(self.chunk_key(tokens), variant & _MASK64)

    def _info(self, chunk: int, variant: int) -> dict | None:
        got = self._core.info(chunk, variant)
        if got is not None:
            got["prefix"] = _unpack_prefix(from_dlpack(got["prefix"]))
        return got

    def stats(self) -> dict[str, int]:
        """Hits, misses, evictions (dropped), demotions, promotions, and bytes, entries and
        budget per tier."""
        return self._core.stats()

    def check_invariants(self) -> None:
        """Raises if a budget is exceeded, a byte count is off or a disk file is missing."""
        self._core.check_invariants()
