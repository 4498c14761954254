"""``ChunkedPrefill``: prefill a RAG prompt from stored chunk KV-caches, recomputing few tokens.

A prompt is ``chunks + question``. Each chunk's KV is looked up in a :class:`ChunkCache`
(position-independent key, one variant per context it was computed in), its keys re-rotated
to the chunk's new offset and spliced into one KV buffer; then only the *active* tokens (the
question, chunks with no usable variant, and the tokens a policy chose to fix) run through the
model, each layer writing their fresh K/V into the buffer and attending to all of it causally
by position. Chunks computed in full are stored back, with the metrics Cache-Craft needs.

Policies, all in the same code so they compare fairly:

- ``full``: plain prefill, nothing reused (the baseline).
- ``prefix``: reuse chunks only while the prompt matches a stored prefix exactly (vLLM and
  SGLang prefix caching); the rest is computed in full.
- ``reuse``: reuse every stored chunk as it is, fix nothing.
- ``cachecraft``: per chunk, pick the variant with the lowest cache-fix overhead (CFO, see
  :mod:`lmkernels.chunk_reuse`) and recompute its ``ceil(CFO * tokens)`` tokens that paid the
  most attention to their old context; with ``ratio`` set, that fraction of every reused chunk.
- ``cacheblend``: recompute all tokens up to ``check_layer``, there pick each reused chunk's
  ``ratio`` tokens whose keys deviate most from the cached ones, and carry only those on.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .attention import spliced_attention
from .chunk_cache import kv_deviation, scatter_kv_, select_tokens
from .chunk_reuse import cache_fix_overhead, contextual_impact
from .chunk_store import ChunkCache
from .hf import use_attention
from .rope import RopeConfig, rope_rerotate_

ATTENTION_NAME = "lmkernels_chunk_splice"
POLICIES = ("full", "prefix", "reuse", "cachecraft", "cacheblend")

__all__ = ["POLICIES", "ChunkReport", "ChunkedPrefill", "ChunkedPrefillResult", "greedy_decode"]


@dataclass
class ChunkReport:
    """What the prefill did with one chunk.

    Attributes:
        tokens: the chunk's length.
        hit: a stored variant was used.
        cfo: the cache-fix overhead of that variant (``cachecraft``), else ``None``.
        recomputed: tokens run through the model (every layer; for ``cacheblend`` the
            token-layers over the layer count).
        stored: the chunk was computed in full and stored as a new variant.
        positions: offsets inside the chunk that ran through every layer.
    """

    tokens: int
    hit: bool
    cfo: float | None = None
    recomputed: float = 0.0
    stored: bool = False
    positions: torch.Tensor | None = None


@dataclass
class ChunkedPrefillResult:
    """``logits``: ``[vocab]`` next-token logits after the question; ``cache``: a transformers
    ``DynamicCache`` over the whole prompt (positions ``0 .. prompt_tokens - 1``), ready for
    decoding; ``chunks``: one :class:`ChunkReport` per chunk."""

    logits: torch.Tensor
    cache: Any
    prompt_tokens: int
    chunks: list[ChunkReport] = field(default_factory=list)

    @property
    def chunk_tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)

    @property
    def recompute_fraction(self) -> float:
        """Chunk tokens recomputed over chunk tokens (the question is always computed)."""
        return sum(c.recomputed for c in self.chunks) / max(self.chunk_tokens, 1)


def _splice_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function for the active tokens: each attends to the spliced
    keys up to its own position (:func:`lmkernels.spliced_attention`), plus the attention
    measurement of chunks about to be stored."""
    state: _SpliceState = kwargs["chunk_splice"]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = spliced_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                            state.active.to(query.device), scale=scale)
    if state.stats_rows.numel():
        state.measure(query, key, scale)
    return out[None], None


class _SpliceState:
    """The KV buffer ``[2, tokens, layers, kv_heads, head_dim]`` and the active tokens; plays
    the part of the transformers cache for the layers (``update`` writes the active tokens'
    K/V at their positions and returns the whole buffer of that layer)."""

    def __init__(self, buffer: torch.Tensor, active: torch.Tensor, segments: torch.Tensor):
        self.buffer = buffer
        self.active = active  # positions of the tokens running through the model, ascending
        self.segment_bounds = segments  # chunk starts and the question's start, then the end
        self.stats_rows = torch.empty(0, dtype=torch.int64)  # rows of `active` to measure
        self.mass: torch.Tensor | None = None  # [stats rows, segments], summed over layers
        self.blend: tuple[int, list[tuple[int, int]], float] | None = None  # check layer, spans, ratio
        self.keep: torch.Tensor | None = None  # rows of `active` carried on after the check layer
        self._one_hot_cache: tuple[int, torch.Tensor] | None = None

    def layer_view(self, kind: int, layer: int) -> torch.Tensor:
        return self.buffer[kind, :, layer].permute(1, 0, 2).unsqueeze(0)  # [1, kv_heads, tokens, dim]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys = self.buffer[0, :, layer_idx]
        if self.blend is not None and self.blend[0] == layer_idx:
            self._choose_by_deviation(key[0].transpose(0, 1), keys)
        rows = self.active.to(keys.device)
        keys.index_copy_(0, rows, key[0].transpose(0, 1).to(keys.dtype))
        self.buffer[1, :, layer_idx].index_copy_(0, rows, value[0].transpose(0, 1).to(keys.dtype))
        return self.layer_view(0, layer_idx), self.layer_view(1, layer_idx)

    def _choose_by_deviation(self, fresh: torch.Tensor, cached: torch.Tensor) -> None:
        """CacheBlend: among each reused span, keep the ``ratio`` tokens whose fresh keys are
        farthest from the cached ones; every other active row (misses, question) stays."""
        _, spans, ratio = self.blend
        row_of = torch.full((cached.shape[0],), -1, dtype=torch.int64)
        row_of[self.active] = torch.arange(self.active.numel())
        drop = torch.zeros(self.active.numel(), dtype=torch.bool)
        for start, end in spans:
            rows = row_of[start:end]
            deviation = kv_deviation(fresh[rows.to(fresh.device)], cached[start:end].to(fresh.dtype)).cpu()
            drop[rows] = True
            drop[rows[select_tokens(deviation, ratio)]] = False
        self.keep = torch.nonzero(~drop).flatten()

    def measure(self, query: torch.Tensor, key: torch.Tensor, scale: float) -> None:
        """Adds, for the rows in ``stats_rows``, the attention mass (mean over heads) each
        segment of the prompt receives at this layer: attention whose values are the one-hot
        segment of each key gives exactly that, in one more pass of the attention kernel."""
        keys = key[0].transpose(0, 1)  # [tokens, kv_heads, dim]
        rows = self.stats_rows.to(query.device)
        q = query[0].transpose(0, 1).index_select(0, rows)
        positions = self.active.to(query.device).index_select(0, rows)
        dim, segments = keys.shape[-1], self.segment_bounds.numel() - 1
        for first in range(0, segments, dim):  # one pass per head_dim segments
            last = min(first + dim, segments)
            mass = spliced_attention(q, keys, self._one_hot(keys, first, last), positions, scale=scale)
            self.mass[:, first:last] += mass[..., : last - first].float().mean(1).cpu()

    def _one_hot(self, keys: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """``[tokens, kv_heads, dim]``: 1 in column ``s - first`` for the keys of segment s."""
        if self._one_hot_cache is not None and self._one_hot_cache[0] == first:
            return self._one_hot_cache[1]
        values = torch.zeros_like(keys, memory_format=torch.contiguous_format)
        bounds = self.segment_bounds.tolist()
        for s in range(first, last):
            values[bounds[s]:bounds[s + 1], :, s - first] = 1
        self._one_hot_cache = (first, values)
        return values


def greedy_decode(model: torch.nn.Module, result: ChunkedPrefillResult, steps: int) -> list[int]:
    """``steps`` greedy tokens continuing a prefill (the first from ``result.logits``); the
    result's cache grows by ``steps - 1`` tokens."""
    device = result.logits.device
    tokens = [int(result.logits.argmax())]
    with torch.no_grad():
        for step in range(steps - 1):
            out = model(input_ids=torch.tensor([[tokens[-1]]], device=device),
                        position_ids=torch.tensor([[result.prompt_tokens + step]], device=device),
                        past_key_values=result.cache, use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def _token_list(name: str, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    t = torch.as_tensor(tokens)
    if t.dim() != 1 or t.numel() == 0 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"ChunkedPrefill: {name} must be a non-empty 1-D sequence of token ids")
    return t.to(torch.int64).cpu()


class ChunkedPrefill:
    """Prefill ``chunks + question`` prompts of a transformers causal LM from a chunk cache.

    Args:
        model: a Llama/Mistral/Qwen-family ``...ForCausalLM`` (``model.model.layers``,
            ``embed_tokens``, ``rotary_emb``, ``norm`` and ``lm_head``) with RoPE whose
            frequencies do not depend on the length.
        cache: where chunk KV-caches are stored; its ``model_id`` names this model.
        policy: one of :data:`POLICIES` (see the module docs).
        alpha: Cache-Craft's scale of the cache-fix overhead (``cachecraft``).
        ratio: fraction of each reused chunk to recompute: fixed for ``cachecraft`` when given
            (``1.0`` recomputes everything, equal to ``full``), CacheBlend's budget for
            ``cacheblend`` (default 0.15).
        check_layer: the layer where ``cacheblend`` compares keys (default 1, as CacheBlend).
        store: store chunks computed in full as new variants.
        measure: when storing, measure each stored chunk's attention to the chunks before it
            (per token and per chunk, all layers): what ``cachecraft`` needs to pick variants
            and tokens, at the cost of one more ``Q K^T`` for those chunks. Default: only for
            ``cachecraft``; unmeasured variants count every preceding chunk alike.
    """

    def __init__(self, model: torch.nn.Module, cache: ChunkCache, *, policy: str = "cachecraft",
                 alpha: float = 0.2, ratio: float | None = None, check_layer: int = 1, store: bool = True,
                 measure: bool | None = None):
        if policy not in POLICIES:
            raise ValueError(f"ChunkedPrefill: policy must be one of {POLICIES}, got {policy!r}")
        if not isinstance(cache, ChunkCache):
            raise TypeError(f"ChunkedPrefill: cache must be a ChunkCache, got {type(cache).__name__}")
        inner = getattr(model, "model", None)
        needed = ("embed_tokens", "layers", "rotary_emb", "norm")
        if inner is None or not hasattr(model, "lm_head") or any(not hasattr(inner, a) for a in needed):
            raise TypeError("ChunkedPrefill: model must be a Llama-family transformers causal LM "
                            "(model.model.{embed_tokens,layers,rotary_emb,norm} and model.lm_head)")
        if not 0.0 <= alpha:
            raise ValueError(f"ChunkedPrefill: alpha must be >= 0, got {alpha!r}")
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ChunkedPrefill: ratio must be in [0, 1], got {ratio!r}")
        layers = len(inner.layers)
        if policy == "cacheblend" and not 0 <= check_layer < layers:
            raise ValueError(f"ChunkedPrefill: check_layer must be in [0, {layers}), got {check_layer!r}")
        self.model, self.cache, self.policy = model, cache, policy
        self.alpha, self.check_layer, self.store = float(alpha), check_layer, store
        self.measure = policy == "cachecraft" if measure is None else bool(measure)
        self.ratio = 0.15 if ratio is None and policy == "cacheblend" else ratio
        self.rope = RopeConfig.from_hf_config(model.config)
        self.kv_heads = model.config.num_key_value_heads
        self.layers = layers

    # ---- offline ingestion ---------------------------------------------------------------
    @torch.no_grad()
    def ingest(self, chunks: Sequence[torch.Tensor | Sequence[int]]) -> int:
        """Computes each chunk alone (positions 0..) and stores it as its context-free
        variant, as a RAG system precomputes its corpus; chunks already stored that way are
        skipped. Returns how many were stored. Such a variant has no measured context, so
        ``cachecraft`` fixes ``ceil(alpha * 0.5 * tokens)`` of it wherever it follows other
        chunks, starting with its first tokens (the attention sink of a chunk computed alone).
        """
        device = self.model.lm_head.weight.device
        stored = 0
        for i, chunk in enumerate(chunks):
            ids = _token_list(f"chunks[{i}]", chunk)
            if self.cache.variant_info(ids, 0) is not None:
                continue
            self._check_vocab(f"chunks[{i}]", ids)
            out = self.model.model(input_ids=ids.to(device)[None], use_cache=True)
            kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in out.past_key_values.layers])
            kv = kv.permute(1, 3, 0, 2, 4).contiguous()  # [2, tokens, layers, kv_heads, dim]
            self.cache.put(ids, kv, context=0, cci=0.5)
            stored += 1
        return stored

    def _check_vocab(self, name: str, ids: torch.Tensor) -> None:
        vocab = self.model.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"ChunkedPrefill: {name} has token ids outside [0, {vocab})")

    # ---- the request ---------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, chunks: Sequence[torch.Tensor | Sequence[int]],
                question: torch.Tensor | Sequence[int]) -> ChunkedPrefillResult:
        """Prefill ``chunks`` (token ids each, in prompt order) then ``question``; returns the
        next-token logits, a ``DynamicCache`` of the whole prompt and a report per chunk."""
        if len(chunks) == 0:
            raise ValueError("ChunkedPrefill.prefill: chunks must not be empty")
        pieces = [_token_list(f"chunks[{i}]", c) for i, c in enumerate(chunks)] + [_token_list("question", question)]
        for i, piece in enumerate(pieces):
            self._check_vocab("question" if i == len(chunks) else f"chunks[{i}]", piece)
        if self.policy == "full":
            return self._full(pieces)
        return self._spliced(pieces)

    def _full(self, pieces: list[torch.Tensor]) -> ChunkedPrefillResult:
        device = self.model.lm_head.weight.device
        ids = torch.cat(pieces).to(device)[None]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        reports = [ChunkReport(tokens=p.numel(), hit=False, recomputed=float(p.numel())) for p in pieces[:-1]]
        return ChunkedPrefillResult(out.logits[0, -1], out.past_key_values, ids.shape[1], reports)

    def _spliced(self, pieces: list[torch.Tensor]) -> ChunkedPrefillResult:
        weight = self.model.lm_head.weight
        chunks = pieces[:-1]
        sizes = [c.numel() for c in chunks]
        starts = [0] + torch.tensor(sizes).cumsum(0).tolist()
        total = starts[-1] + pieces[-1].numel()
        config = self.model.config
        window = getattr(config, "sliding_window", None)
        if window is not None and getattr(config, "use_sliding_window", True) and total > window:
            raise ValueError(f"ChunkedPrefill: the prompt ({total} tokens) is longer than the model's sliding window "
                             f"({window}); spliced attention sees every earlier token, so it would not match the model")
        keys = [self.cache.chunk_key(c) for c in chunks]
        buffer = torch.zeros(2, total, self.layers, self.kv_heads, self.rope.head_dim, dtype=weight.dtype,
                             device=weight.device)

        reports = [ChunkReport(tokens=n, hit=False) for n in sizes]
        active_parts = [torch.arange(starts[-1], total)]
        blend_spans: list[tuple[int, int]] = []
        with contextlib.ExitStack() as pins:
            for i, chunk in enumerate(chunks):
                variant, cfo = self._choose_variant(i, chunk, keys, reports)
                if variant is None:
                    active_parts.append(torch.arange(starts[i], starts[i + 1]))
                    continue
                stored = pins.enter_context(self.cache.use(chunk, context=variant))
                if stored is None:  # removed since we looked: compute it
                    active_parts.append(torch.arange(starts[i], starts[i + 1]))
                    continue
                self._splice(buffer, stored.kv, starts[i])
                reports[i].hit, reports[i].cfo = True, cfo
                fix = self._tokens_to_fix(stored.scores, cfo)
                if self.policy == "cacheblend":
                    blend_spans.append((starts[i], starts[i + 1]))
                elif fix is not None:
                    active_parts.append(starts[i] + fix)
                    reports[i].recomputed, reports[i].positions = float(fix.numel()), fix
            active = torch.sort(torch.cat(active_parts)).values
            if self.policy == "cacheblend":  # every token runs up to the check layer
                active = torch.arange(total)
            misses = [i for i, r in enumerate(reports) if not r.hit]
            state = _SpliceState(buffer, active, torch.tensor(starts + [total]))
            if self.store and self.measure:
                self._plan_measurement(state, misses, starts)
            if blend_spans:
                state.blend = (self.check_layer, blend_spans, float(self.ratio))
            logits = self._run_active(state, pieces)
        for i in misses:
            reports[i].recomputed, reports[i].positions = float(sizes[i]), torch.arange(sizes[i])
        if blend_spans:
            self._count_blend(state, reports, starts)
        if self.store:
            self._store_misses(state, misses, chunks, keys, starts, reports)
        cache = self._dynamic_cache(buffer)
        return ChunkedPrefillResult(logits, cache, total, reports)

    # ---- choosing what to reuse ----------------------------------------------------------
    def _choose_variant(self, i: int, chunk: torch.Tensor, keys: list[int],
                        reports: list[ChunkReport]) -> tuple[int | None, float | None]:
        """The variant to splice for chunk ``i`` and its CFO, or ``(None, None)`` to compute it."""
        if self.policy == "prefix":
            if i > 0 and not reports[i - 1].hit:
                return None, None
            variant = self._context_key(keys[:i])
            return (variant, 0.0) if self.cache.variant_info(chunk, variant) is not None else (None, None)
        best: tuple[float, int] | None = None
        for variant in self.cache.variants(chunk):
            info = self.cache.variant_info(chunk, variant)
            if info is None:
                continue
            cfo = cache_fix_overhead(info["cci"], info["prefix"], keys[:i], self.alpha)
            if best is None or cfo < best[0]:
                best = (cfo, variant)
        if best is None:
            return None, None
        return best[1], best[0]

    def _tokens_to_fix(self, scores: torch.Tensor, cfo: float | None) -> torch.Tensor | None:
        """Offsets inside the chunk to recompute (``cachecraft``), highest stored attention to
        the old context first; ties go to the earliest tokens, which also undoes the attention
        sink of a chunk stored alone (as EPIC's LegoLink does)."""
        if self.policy != "cachecraft":
            return None
        n = scores.numel()
        count = math.ceil(self.ratio * n) if self.ratio is not None else math.ceil((cfo or 0.0) * n - 1e-9)
        if count <= 0:
            return None
        return select_tokens(scores.float(), min((count + 0.5) / n, 1.0))

    def _context_key(self, prefix_keys: list[int]) -> int:
        if not prefix_keys:
            return 0
        return self.cache.context_key(torch.tensor(prefix_keys, dtype=torch.uint64).view(torch.int64))

    # ---- the forward pass ----------------------------------------------------------------
    def _splice(self, buffer: torch.Tensor, kv: torch.Tensor, start: int) -> None:
        """Writes a stored chunk ``[2, tokens, layers, kv_heads, dim]`` (keys at positions
        ``0 ..``) at ``start``, keys rotated there in the same pass."""
        expected = (2, kv.shape[1] if kv.dim() == 5 else -1) + tuple(buffer.shape[2:])
        if kv.dim() != 5 or tuple(kv.shape) != expected:
            raise ValueError(f"ChunkedPrefill: a stored chunk has KV of shape {tuple(kv.shape)}, this model needs "
                             f"[2, tokens, {self.layers}, {self.kv_heads}, {self.rope.head_dim}]; was the cache "
                             "filled by another model?")
        n = kv.shape[1]
        flat = buffer.flatten(2, 3)
        stored = kv.to(buffer.device, buffer.dtype).flatten(2, 3)
        positions = torch.arange(n, device=buffer.device)
        scatter_kv_(flat[0], flat[1], stored[0], stored[1], positions + start, old_pos=positions,
                    new_pos=positions + start, rope=self.rope)

    def _plan_measurement(self, state: _SpliceState, misses: list[int], starts: list[int]) -> None:
        row_of = torch.full((starts[-1],), -1, dtype=torch.int64)
        row_of[state.active[state.active < starts[-1]]] = torch.nonzero(state.active < starts[-1]).flatten()
        # A chunk at the front has no context to measure (its CCI is 0.5 by definition).
        rows = [row_of[starts[i]:starts[i + 1]] for i in misses if i > 0]
        state.stats_rows = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64)
        state.mass = torch.zeros(state.stats_rows.numel(), len(starts))

    def _run_active(self, state: _SpliceState, pieces: list[torch.Tensor]) -> torch.Tensor:
        model, inner = self.model, self.model.model
        device = model.lm_head.weight.device
        ids = torch.cat(pieces).to(device)
        hidden = inner.embed_tokens(ids[state.active])[None]
        positions = state.active.to(device)[None]
        with use_attention(model, ATTENTION_NAME, _splice_attention):
            position_embeddings = inner.rotary_emb(hidden, positions)
            for layer in inner.layers:
                hidden = layer(hidden, attention_mask=None, position_ids=positions, past_key_values=state,
                               use_cache=True, position_embeddings=position_embeddings, chunk_splice=state)
                if state.keep is not None:  # CacheBlend: carry only the chosen tokens on
                    keep = state.keep
                    hidden, state.active, state.keep = hidden[:, keep.to(device)], state.active[keep], None
                    positions = state.active.to(device)[None]
                    position_embeddings = inner.rotary_emb(hidden, positions)
                    state.stats_rows = torch.nonzero(torch.isin(keep, state.stats_rows)).flatten()
        last = inner.norm(hidden[:, -1:])
        return model.lm_head(last)[0, -1]

    def _count_blend(self, state: _SpliceState, reports: list[ChunkReport], starts: list[int]) -> None:
        """Token-layers over layers: all tokens up to the check layer, the kept ones after."""
        early = (self.check_layer + 1) / self.layers
        for i, report in enumerate(reports):
            if report.hit:
                inside = (state.active >= starts[i]) & (state.active < starts[i + 1])
                report.positions = state.active[inside] - starts[i]
                report.recomputed = early * report.tokens + (1.0 - early) * report.positions.numel()

    # ---- storing -------------------------------------------------------------------------
    def _store_misses(self, state: _SpliceState, misses: list[int], chunks: list[torch.Tensor],
                      keys: list[int], starts: list[int], reports: list[ChunkReport]) -> None:
        mass = state.mass / self.layers if state.mass is not None else None
        row = 0
        for i in misses:
            n = chunks[i].numel()
            if i > 0 and mass is None:
                scores, inter, cci = torch.zeros(n), [1.0] * i, 0.5
            elif i > 0:
                chunk_mass = mass[row:row + n]
                row += n
                scores = chunk_mass[:, :i].sum(1)
                inter = chunk_mass[:, :i].sum(0).tolist()
                cci = contextual_impact(inter, [c.numel() for c in chunks[:i]], float(chunk_mass[:, i].sum()), n)
            else:
                scores, inter, cci = torch.zeros(n), [], 0.5
            kv = state.buffer[:, starts[i]:starts[i + 1]].clone()
            positions = torch.arange(n, device=kv.device)
            rope_rerotate_(kv[0].flatten(1, 2), positions + starts[i], positions, rope=self.rope, layout="thd")
            context = self._context_key(keys[:i])
            if self.cache.variant_info(chunks[i], context) is not None:
                continue
            try:
                self.cache.put(chunks[i], kv, context=context, scores=scores, cci=cci,
                               prefix=list(zip(keys[:i], inter)))
            except (ValueError, RuntimeError):
                continue  # no room or in use: the prompt was served, only the saving is lost
            reports[i].stored = True

    def _dynamic_cache(self, buffer: torch.Tensor):
        from transformers import DynamicCache

        from .hf import _cache_from_views

        per_layer = [(buffer[0, :, l].permute(1, 0, 2)[None], buffer[1, :, l].permute(1, 0, 2)[None])
                     for l in range(self.layers)]
        return _cache_from_views(DynamicCache(config=self.model.config), per_layer)
