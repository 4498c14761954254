"""Per-layer reshaping of a transformers decoder's token-wise parts during a packed prefill.

Both contexts rely on what Llama/Mistral/Qwen-family decoder layers share: a ``self_attn``
with an int ``layer_idx`` beside an ``mlp`` that acts on each token independently.
"""

from __future__ import annotations

from typing import Any

import torch


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
        self.mlps = [layer.mlp for layer in decoder_layers(model).values()]
        self.own_forwards: list[Any] = []  # each MLP's instance-level forward, if it had one

    def __enter__(self) -> ChunkedMLP:
        for mlp in self.mlps:
            self.own_forwards.append(mlp.__dict__.get("forward"))
            mlp.forward = self._chunked(mlp.forward)  # an instance attribute shadows the class's
        return self

    def __exit__(self, *exc: object) -> None:
        for mlp, own in zip(self.mlps, self.own_forwards):
            if own is None:
                del mlp.forward
            else:
                mlp.forward = own
        self.own_forwards.clear()

    def _chunked(self, forward: Any) -> Any:
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
