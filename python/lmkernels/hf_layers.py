"""Per-layer changes to a transformers decoder during a packed prefill: its token-wise parts
reshaped (the last layer trimmed, the MLPs chunked) and RoPE applied by one fused op.

The contexts rely on what Llama/Mistral/Qwen-family decoder layers share: a ``self_attn``
with an int ``layer_idx`` beside an ``mlp`` that acts on each token independently.
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

import torch

from .rope import rope_apply_


def decoder_layers(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    """The model's decoder layers that have an ``mlp`` module, by ``self_attn.layer_idx``."""
    layers = {}
    for module in model.modules():
        index = getattr(getattr(module, "self_attn", None), "layer_idx", None)
        if isinstance(index, int) and isinstance(getattr(module, "mlp", None), torch.nn.Module):
            layers[index] = module
    return layers


class LastLayerRows:
    """Runs the last decoder layer's token-wise parts (its MLP and attention output and query
    projections) on each prompt's last position only.

    The cache needs every token's keys and values from every layer, but nothing reads the last
    layer's output at other positions: only the last positions reach the LM head. Hooks gather
    those rows before each part and scatter its output back into a zero tensor of the full
    shape, so the residual adds around the parts see the shapes they expect. With the bench
    model's 4 layers this skips about a fifth of the prefill's matmul work. The attention
    function computes that layer's attention for those queries only
    (``trims_attention_output``).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.positions: torch.Tensor | None = None  # the row's last positions, set per row
        self.row_tokens = 0  # the row's length, read off the first part's input
        layer = decoder_layers(model).get(model.config.num_hidden_layers - 1)
        parts = [] if layer is None else [layer.mlp, getattr(layer.self_attn, "o_proj", None)]
        self.parts = [p for p in parts if isinstance(p, torch.nn.Module)]
        # With o_proj gathered, only the last positions' attention outputs are ever read, so
        # only their queries are: q_proj runs on those rows too (the others stay zero).
        self.trims_attention_output = len(self.parts) == 2
        q_proj = getattr(layer.self_attn, "q_proj", None) if self.trims_attention_output else None
        if isinstance(q_proj, torch.nn.Module):
            self.parts.append(q_proj)
        self.handles: list = []

    def __enter__(self) -> LastLayerRows:
        for part in self.parts:
            self.handles.append(part.register_forward_pre_hook(self._gather))
            self.handles.append(part.register_forward_hook(self._scatter))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _gather(self, module: torch.nn.Module, args: tuple) -> tuple:
        self.row_tokens = args[0].shape[1]
        return (args[0][:, self.positions], *args[1:])

    def _scatter(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        full = output.new_zeros(output.shape[0], self.row_tokens, *output.shape[2:])
        full[:, self.positions] = output
        return full


class ForwardSwap:
    """Gives each module the forward ``wrap(module, module.forward)`` for the duration (an
    instance attribute shadows the class's), then restores what the instance had."""

    def __init__(self, modules: list[torch.nn.Module], wrap: Any) -> None:
        self.modules = modules
        self.wrap = wrap
        self.own_forwards: list[Any] = []  # each module's instance-level forward, if it had one

    def __enter__(self) -> ForwardSwap:
        for module in self.modules:
            self.own_forwards.append(module.__dict__.get("forward"))
            module.forward = self.wrap(module, module.forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for module, own in zip(self.modules, self.own_forwards):
            if own is None:
                del module.forward
            else:
                module.forward = own
        self.own_forwards.clear()


class ChunkedMLP:
    """Runs every decoder layer's MLP over at most ``chunk`` tokens at a time.

    A packed row of a couple of thousand tokens gives the MLP intermediates of tens of MB
    (gate, up and their product), which raise the prefill's peak memory and miss the caches
    in the elementwise steps; chunks of a few hundred tokens keep them small while the GEMMs
    stay large enough to run at full rate. An MLP that does not return a tensor (a mixture
    of experts returning router logits) runs unchunked.
    """

    def __init__(self, model: torch.nn.Module, chunk: int) -> None:
        self.chunk = chunk
        self.swap = ForwardSwap([layer.mlp for layer in decoder_layers(model).values()], self._chunked)

    def __enter__(self) -> ChunkedMLP:
        self.swap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.swap.__exit__()

    def _chunked(self, module: torch.nn.Module, forward: Any) -> Any:
        chunk = self.chunk

        def chunked_forward(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            tokens = hidden.shape[1] if hidden.dim() >= 3 else 0
            if tokens <= chunk:
                return forward(hidden, *args, **kwargs)
            out = None
            for start in range(0, tokens, chunk):
                part = forward(hidden[:, start:start + chunk], *args, **kwargs)
                if not isinstance(part, torch.Tensor) or part.shape[:2] != hidden[:, start:start + chunk].shape[:2]:
                    return forward(hidden, *args, **kwargs)
                if out is None:
                    out = part.new_empty(part.shape[0], tokens, *part.shape[2:])
                out[:, start:start + chunk] = part
            return out

        return chunked_forward


class FusedRope:
    """Applies RoPE to the attention layers' queries and keys with :func:`rope_apply_` (one
    in-place pass each) instead of transformers' ``apply_rotary_pos_emb`` (half a dozen
    elementwise ops, each a pass over memory: about 7 ms against 0.2 ms for a 2048-token row of
    the prefill bench model).

    The attention layers call ``apply_rotary_pos_emb`` from their modeling module's namespace,
    so that name is swapped for the duration. Only a function that computes half-split RoPE is
    swapped (checked on a probe, so a model family with another pairing keeps its own). Calls
    that the fused path does not cover (autograd through the inputs, other shapes or
    arguments, tables whose halves differ) go to the original. The fused path rotates ``q``
    and ``k`` in place: transformers' attention layers only read the returned tensors.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.swaps: list[tuple[Any, Any]] = []  # (modeling module, its original function)
        for layer in decoder_layers(model).values():
            module = sys.modules.get(type(layer.self_attn).__module__)
            # Unwrapped: another prefill (another thread) may have its swap in place right now.
            original = inspect.unwrap(getattr(module, "apply_rotary_pos_emb", None))
            if module is None or any(m is module for m, _ in self.swaps) or not callable(original):
                continue
            if computes_half_split_rope(original):
                self.swaps.append((module, original))

    def __enter__(self) -> FusedRope:
        for module, original in self.swaps:
            module.apply_rotary_pos_emb = _fused_rope(original)
        return self

    def __exit__(self, *exc: object) -> None:
        for module, original in self.swaps:
            module.apply_rotary_pos_emb = original


def computes_half_split_rope(apply_rotary: Any) -> bool:
    """Whether ``apply_rotary(q, k, cos, sin)`` is transformers' half-split RoPE on a probe."""
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 2, 3, 8, generator=gen).double()
    angle = torch.rand(1, 3, 4, generator=gen).double() * 6
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    try:
        out = apply_rotary(q.clone(), k.clone(), cos, sin)
    except Exception:  # noqa: BLE001 - any failure means "not this function"
        return False
    if not (isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        return False
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    expected = [x * c + torch.cat([-x[..., 4:], x[..., :4]], -1) * s for x in (q, k)]
    return all(t.shape == e.shape and torch.allclose(t.double(), e, atol=1e-9) for t, e in zip(out, expected))


def _fused_rope(original: Any) -> Any:
    @functools.wraps(original)
    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not _fusable(q, k, cos, sin):
            return original(q, k, cos, sin, *args, **kwargs)
        half = cos.shape[-1] // 2
        rope_apply_(q, cos[..., :half], sin[..., :half])
        rope_apply_(k, cos[..., :half], sin[..., :half])
        return q, k

    return apply_rotary_pos_emb


def _fusable(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    tensors = (q, k, cos, sin)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # rope_apply_ is in place and has no backward
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        return False
    if q.dtype not in _ROPE_DTYPES or k.dtype not in _ROPE_DTYPES or not cos.dtype.is_floating_point:
        return False
    if len({t.device for t in tensors}) != 1 or q.stride(-1) != 1 or k.stride(-1) != 1:
        return False
    dim, tokens = cos.shape[-1], cos.shape[-2]
    if dim % 2 or q.shape[-1] != dim or k.shape[-1] != dim or q.shape[2] != tokens or k.shape[2] != tokens:
        return False
    if cos.shape[0] not in (1, q.shape[0]) or k.shape[0] != q.shape[0]:
        return False
    half = dim // 2
    return torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:])


_ROPE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class OneDnnLinear:
    """Runs the model's float32 ``nn.Linear`` layers on CPU through oneDNN's matmul
    (``torch.ops.mkldnn._linear_pointwise``, what ``torch.compile`` uses for CPU linears)
    instead of ``F.linear``'s BLAS call.

    On the Zen 4 bench machine oneDNN's fp32 GEMM ran the bench model's projections 1.25-1.7x
    faster than MKL's sgemm (180-200 against 115-165 GFLOP/s at 512-2048 rows), and the LM head
    on a row's few last positions up to 5x faster. The result is the same float32 product up to
    summation order. Anything else (other dtypes or devices, autograd, empty or 1-D inputs, a
    torch without the op) goes to ``F.linear``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        linears = [
            m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
        ]
        self.swap = ForwardSwap(linears if onednn_linear_available() else [], self._wrap)

    def __enter__(self) -> OneDnnLinear:
        self.swap.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.swap.__exit__()

    @staticmethod
    def _wrap(linear: torch.nn.Module, forward: Any) -> Any:
        def onednn_forward(x: torch.Tensor) -> torch.Tensor:
            weight, bias = linear.weight, linear.bias
            if (
                x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2 or x.numel() == 0
                or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32)
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            ):
                return forward(x)
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

        return onednn_forward


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's linear op and it computes ``F.linear`` (checked once)."""
    if not torch.backends.mkldnn.is_available():
        return False
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 16, generator=gen), torch.randn(5, 16, generator=gen), torch.randn(5, generator=gen)
    try:
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except Exception:  # noqa: BLE001 - missing or broken op: use F.linear
        return False
    return torch.allclose(out, torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)
