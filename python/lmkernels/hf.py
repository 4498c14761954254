"""transformers integration: lmkernels attention inside Llama/Mistral/Qwen-family models.

``register()`` adds ``"lmkernels_varlen"`` and ``"lmkernels_flex_prefill"`` (FlexPrefill for
long prefills, varlen attention for the rest) to transformers' attention registry. With it, a
forward call that passes ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (and position ids restarting
per prompt) runs packed prompts through :func:`lmkernels.varlen_attention`, each prompt
attending only to itself, without building any mask. ``prefill`` uses it to prefill many
prompts at once and hands back a standard ``DynamicCache`` per prompt.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from .attention import varlen_attention
from .hf_layers import ChunkedMLP, FusedRope, LastLayerRows, OneDnnLinear
from .prepack import Packing, pack, prompt_tensors

ATTENTION_NAME = "lmkernels_varlen"
FLEX_ATTENTION_NAME = "lmkernels_flex_prefill"
DEFAULT_ROW_TOKENS = 2048
DEFAULT_MLP_CHUNK = 512
KV_SINK_KWARG = "lmkernels_kv_sink"
RELEASE_MEMORY_CHOICES = ("layer", "row", "off")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols: glibc's malloc_trim where the C library is glibc
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # macOS, musl, Windows: nothing to trim
        return None


def _release_free_heap() -> None:
    """Hands the heap's free pages back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    A forward frees tens of MB of temporaries of assorted sizes; glibc keeps the freed pages
    resident and the next layer's tensors fit its holes only partly, so without this the
    process's peak grows by the fragmentation. Nothing else changes: the pages come back, as
    page faults, when they are used again.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _release_mode(release_memory: str, device: torch.device) -> str:
    """``release_memory`` for a model on ``device``: a GPU forward's temporaries live in the
    device's caching allocator, not in the host heap, so there is nothing to trim."""
    return release_memory if device.type == "cpu" else "off"


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query [batch, heads, q_len, dim]`` (keys and values
    with their own KV heads) -> ``([batch, q_len, heads, dim], None)``.

    With ``cu_seq_lens_q``/``cu_seq_lens_k`` in kwargs the batch is one packed row of
    several sequences; without them every batch row is one sequence, causal and aligned
    at the bottom right (so decoding with a KV cache works too). A padding mask is not
    supported: pack instead of padding.
    """
    if dropout and module.training:
        raise NotImplementedError("lmkernels_varlen attention has no dropout; use it for inference")
    batch, heads, q_len, dim = query.shape
    k_len = key.shape[2]
    cu_q = kwargs.get("cu_seq_lens_q")
    cu_k = kwargs.get("cu_seq_lens_k")
    if cu_q is None or cu_k is None:
        if attention_mask is not None and attention_mask.dtype == torch.bool and not bool(attention_mask.all()):
            raise ValueError("lmkernels_varlen attention: padded batches are not supported; pack the prompts")
        cu_q = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=query.device)
        cu_k = torch.arange(0, (batch + 1) * k_len, k_len, dtype=torch.int32, device=query.device)
    _offer_to_sink(kwargs, module, key, value)
    q = query.transpose(1, 2).reshape(batch * q_len, heads, dim)
    k = key.transpose(1, 2).reshape(batch * k_len, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * k_len, value.shape[1], dim)
    causal = getattr(module, "is_causal", True)
    rows = _needed_query_rows(kwargs, module)
    if rows is not None and batch == 1 and causal and torch.equal(cu_q, cu_k):
        # Only these queries' outputs are read: each is its prompt's last, which sees the
        # whole prompt (bottom-right causal alignment with one query per prompt).
        one_each = torch.arange(rows.numel() + 1, dtype=cu_q.dtype, device=cu_q.device)
        out = q.new_zeros(q.shape)
        out[rows] = varlen_attention(q[rows], k, v, one_each, cu_k, causal=True, scale=scaling)
    else:
        out = varlen_attention(q, k, v, cu_q, cu_k, causal=causal, scale=scaling)
    return out.view(batch, q_len, heads, dim), None


def flex_prefill_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: FlexPrefill for a prefill of at least
    ``flex_prefill_min_len`` tokens (module or model config attribute, default 4096;
    FlexPrefill options from ``config.flex_prefill`` as a dict), varlen attention otherwise
    (short prompts, decoding). In packed rows (``cu_seq_lens_q``), each prompt of at least
    that length gets FlexPrefill and the rest dense attention."""
    from .flex_prefill import flex_prefill_attention, flex_prefill_varlen

    config = getattr(module, "config", None)
    min_len = getattr(config, "flex_prefill_min_len", 4096)
    is_prefill = query.shape[2] == key.shape[2]
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    packed_prefill = cu_q is not None and cu_k is not None and torch.equal(cu_q, cu_k)
    long_enough = query.shape[2] >= min_len
    if not is_prefill or not long_enough or (cu_q is not None and not packed_prefill):
        return varlen_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if dropout and module.training:
        raise NotImplementedError("lmkernels_flex_prefill attention has no dropout; use it for inference")
    _offer_to_sink(kwargs, module, key, value)
    options = dict(getattr(config, "flex_prefill", None) or {})
    if packed_prefill:
        batch, heads, q_len, dim = query.shape
        flat = [t.transpose(1, 2).reshape(batch * q_len, t.shape[1], dim) for t in (query, key, value)]
        out = flex_prefill_varlen(*flat, cu_q, min_len=min_len, scale=scaling, **options)
        return out.view(batch, q_len, heads, dim), None
    out = flex_prefill_attention(query, key, value, scale=scaling, **options)
    return out.transpose(1, 2), None


def register() -> str:
    """Register ``"lmkernels_varlen"`` and ``"lmkernels_flex_prefill"`` with transformers
    (idempotent); returns the varlen name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, varlen_attention_forward)
    AttentionInterface.register(FLEX_ATTENTION_NAME, flex_prefill_attention_forward)
    return ATTENTION_NAME


@contextlib.contextmanager
def use_attention(model: torch.nn.Module, name: str, function: Callable | None = None) -> Iterator[None]:
    """Run `model` with the attention implementation `name` inside the block (registering
    `function` under it first when given), then restore the model's own."""
    if function is not None:
        from transformers import AttentionInterface

        AttentionInterface.register(name, function)
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def use_varlen_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run `model` with lmkernels varlen attention inside the block, then restore its own."""
    register()
    with use_attention(model, ATTENTION_NAME):
        yield


@dataclass
class PrefillResult:
    """Outputs of :func:`prefill`, in prompt order.

    Attributes:
        logits: ``[n, vocab]`` next-token logits after each prompt's last token.
        caches: one ``DynamicCache`` per prompt holding that prompt's keys and values
            (positions ``0 .. len - 1``), ready for ``model(..., past_key_values=cache)``.
            They are views of one buffer shared by all prompts, freed once no prompt's
            cache refers to it (a cache's first decode step moves it to its own memory).
        packing: how prompts were grouped into forward passes.
    """

    logits: torch.Tensor
    caches: list
    packing: Packing


class _PackedKVSink:
    """Receives every layer's keys and values of the packed rows (from the attention function,
    through the ``lmkernels_kv_sink`` kwarg) into one buffer sized for all prompts.

    A ``DynamicCache`` per forward would leave row-sized blocks behind after each row,
    interleaved with that forward's temporaries; one allocation made up front (and only
    touched as rows are written) keeps the heap free for the temporaries to reuse (median
    peak on the short prefill bench: about 195 MB -> 170 MB).
    """

    def __init__(self, num_layers: int, total_tokens: int, release_each_layer: bool = False) -> None:
        self.num_layers, self.total_tokens = num_layers, total_tokens
        self.release_each_layer = release_each_layer
        self.buffer: torch.Tensor | None = None  # [layers, 2, kv_heads, total_tokens, dim]
        self.start = 0  # token offset of the row being run
        self.stored = [0] * num_layers  # tokens each layer has written
        # (layer, the row's last positions) while prefill reads only those of that layer's
        # attention output
        self.trimmed_layer: tuple[int, torch.Tensor] | None = None

    def store(self, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor) -> None:
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise ValueError(f"prefill: attention module {type(module).__name__} has no layer_idx in "
                             f"[0, {self.num_layers}); prefill needs it to collect the cache")
        if self.buffer is None:
            self.buffer = key.new_empty((self.num_layers, 2, key.shape[1], self.total_tokens, key.shape[3]))
        end = self.start + key.shape[2]
        self.buffer[layer, 0, :, self.start:end].copy_(key[0])
        self.buffer[layer, 1, :, self.start:end].copy_(value[0])
        self.stored[layer] += key.shape[2]
        if self.release_each_layer:
            _release_free_heap()

    def check_complete(self) -> None:
        """Refuses (instead of handing back an unwritten cache) when a layer's attention bypassed
        the registered function for some tokens."""
        missing = [layer for layer, n in enumerate(self.stored) if n != self.total_tokens]
        if self.buffer is None or missing:
            raise RuntimeError(f"prefill: layers {missing} did not pass all {self.total_tokens} tokens' keys and "
                               "values through lmkernels attention; this model is not supported by prefill")

    def layer_views(self, start: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values ``[1, kv_heads, length, dim]`` of tokens ``start ..``
        (after `check_complete`)."""
        assert self.buffer is not None
        return [(kv[0, :, start:start + length][None], kv[1, :, start:start + length][None]) for kv in self.buffer]


def _needed_query_rows(kwargs: dict, module: torch.nn.Module) -> torch.Tensor | None:
    """The packed row's query positions whose attention output is read, when prefill trims
    this (the last) layer to each prompt's last position; None: all of them."""
    sink = kwargs.get(KV_SINK_KWARG)
    trimmed = getattr(sink, "trimmed_layer", None)
    if trimmed is None or getattr(module, "layer_idx", None) != trimmed[0]:
        return None
    return trimmed[1]


def _offer_to_sink(kwargs: dict, module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor) -> None:
    """Hands a layer's keys and values to prefill's packed buffer when the forward carries one."""
    sink = kwargs.get(KV_SINK_KWARG)
    if sink is not None:
        sink.store(module, key, value)


def _cache_from_views(cache: Any, per_layer: list) -> Any:
    """Fill an empty DynamicCache with one prompt's per-layer views of the packed cache.

    Plain layers take the views as they are (their first decode step concatenates anyway);
    other layer types (sliding windows, ...) go through their own `update`.
    """
    from transformers.cache_utils import DynamicLayer

    for layer, (keys, values) in zip(cache.layers, per_layer):
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        else:
            layer.update(keys, values)
    return cache


@torch.no_grad()
def prefill(
    model: torch.nn.Module,
    prompts: Sequence[torch.Tensor | Sequence[int]],
    capacity: int | None = None,
    *,
    algorithm: str = "bfd",
    release_memory: str = "row",
    trim_last_layer: bool = True,
    mlp_chunk: int | None = DEFAULT_MLP_CHUNK,
    fuse_rope: bool = True,
    onednn_linear: bool = True,
) -> PrefillResult:
    """Prefill many prompts with packed forward passes instead of a padded batch.

    Prompts are bin-packed into rows of at most ``capacity`` tokens (default: the longest
    prompt or 2048, whichever is larger). Rows of a couple of thousand tokens keep the
    projections' GEMMs efficient (one giant row streams them through memory and was 1.45x
    slower on a 19k-token workload; rows of 1024 were 5% slower than 2048 on the prefill
    bench) while bounding the activations of one forward pass (2048 instead of 4096 cut the
    bench's peak memory from about 260 MB to 170 MB at the same speed). Each row is one
    forward pass with position ids restarting per prompt and varlen attention keeping
    prompts apart; only each prompt's last position goes through the LM head.

    ``release_memory`` returns a CPU forward's freed temporaries to the OS (glibc's
    ``malloc_trim``; nothing happens on other C libraries or for a model on a GPU) after each
    row (``"row"``), after each layer (``"layer"``) or never (``"off"``). Freed pages come
    back as page faults in the next forward: on the short prefill bench (Zen 3) ``"layer"``
    took about 20% longer than ``"row"`` and ``"off"``, which run at the same speed; ``"row"``
    keeps the peak near ``"layer"``'s (fresh processes, with ``mlp_chunk``: about 145 against
    140 MB above the loaded model; ``"off"``: up to 180 MB).

    ``trim_last_layer`` runs the last layer's MLP and attention query and output projections
    on each prompt's last position only (nothing else reads them; the cache needs only that
    layer's keys and values), which on the prefill bench's 4-layer model skips about a fifth
    of the matmul work. Models whose last layer has no ``mlp`` beside its ``self_attn`` run in full.

    ``mlp_chunk`` runs each layer's MLP over at most that many tokens at a time (``None``: the
    whole row), so that its intermediate activations (3 x tokens x intermediate_size) stay a
    few MB instead of 33 MB for a 2048-token row of the bench model: the same speed, a lower
    and steadier peak.

    ``fuse_rope`` applies RoPE to each layer's queries and keys with :func:`~lmkernels.rope_apply_`
    (one in-place pass) instead of transformers' elementwise ops, where the model's modeling
    module computes standard half-split RoPE (Llama, Mistral, Qwen families); on the long prefill
    bench those ops took about a tenth of the packed forward.

    ``onednn_linear`` runs the model's float32 linear layers on CPU through oneDNN's matmul
    (:class:`~lmkernels.hf_layers.OneDnnLinear`) instead of ``F.linear``'s BLAS call: 1.25-1.7x
    faster GEMMs on the bench's Zen 4 machine, the same product up to summation order.
    """
    from transformers import DynamicCache

    if release_memory not in RELEASE_MEMORY_CHOICES:
        raise ValueError(f"prefill: release_memory must be one of {RELEASE_MEMORY_CHOICES}, got {release_memory!r}")
    if mlp_chunk is not None and (isinstance(mlp_chunk, bool) or not isinstance(mlp_chunk, int) or mlp_chunk < 1):
        raise ValueError(f"prefill: mlp_chunk must be a positive int or None, got {mlp_chunk!r}")

    device = next(model.parameters()).device
    release_memory = _release_mode(release_memory, device)
    tensors = prompt_tensors(prompts, "prefill", device)
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    capacity = max(DEFAULT_ROW_TOKENS, int(lengths.max())) if capacity is None else capacity
    packing = pack(lengths, capacity, algorithm=algorithm)

    logits: list[torch.Tensor | None] = [None] * len(tensors)
    caches: list[Any] = [None] * len(tensors)
    order = torch.argsort(packing.row * packing.capacity + packing.offset).tolist()
    rows = [[i for i in order if int(packing.row[i]) == r] for r in range(packing.num_rows)]
    sink = _PackedKVSink(model.config.num_hidden_layers, int(lengths.sum()), release_each_layer=release_memory == "layer")
    starts = [0] * len(tensors)  # each prompt's first token in the sink
    trim = LastLayerRows(model) if trim_last_layer else contextlib.nullcontext()
    chunked = ChunkedMLP(model, mlp_chunk) if mlp_chunk is not None else contextlib.nullcontext()
    rope = FusedRope(model) if fuse_rope else contextlib.nullcontext()
    linears = OneDnnLinear(model) if onednn_linear else contextlib.nullcontext()
    with use_varlen_attention(model), trim, chunked, rope, linears:
        for members in rows:
            member_lengths = [tensors[i].numel() for i in members]
            cu = torch.tensor([0] + torch.tensor(member_lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
            input_ids = torch.cat([tensors[i] for i in members])[None]
            position_ids = torch.cat([torch.arange(n, device=device) for n in member_lengths])[None]
            last_positions = (cu[1:] - 1).long()
            if trim_last_layer:
                trim.positions = last_positions
                if trim.trims_attention_output:
                    sink.trimmed_layer = (model.config.num_hidden_layers - 1, last_positions)
            out = model(
                input_ids=input_ids,
                position_ids=position_ids,
                cu_seq_lens_q=cu,
                cu_seq_lens_k=cu,
                max_length_q=max(member_lengths),
                max_length_k=max(member_lengths),
                logits_to_keep=last_positions,
                use_cache=False,
                **{KV_SINK_KWARG: sink},
            )
            for slot, i in enumerate(members):
                logits[i] = out.logits[0, slot]
                starts[i] = sink.start
                sink.start += member_lengths[slot]
            del out
            if release_memory == "row":
                _release_free_heap()
    sink.check_complete()
    for i, t in enumerate(tensors):
        caches[i] = _cache_from_views(DynamicCache(config=model.config), sink.layer_views(starts[i], t.numel()))
    return PrefillResult(torch.stack(logits), caches, packing)
