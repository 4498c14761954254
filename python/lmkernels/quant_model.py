"""Quantizing whole models: every ``nn.Linear`` of any ``nn.Module`` (e.g. a transformers
model) to :class:`~lmkernels.quant.QuantLinear`, optionally calibrated (GPTQ or weighted round
to nearest from each layer's input statistics) with the 4-bit groups spread per layer under one
bit budget, and saving/loading the result as safetensors. Re-exported by :mod:`lmkernels.quant`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# lmkernels.quant imports this module at its end; so this one takes quant's names inside its
# functions, and either module can be imported first.

# Bytes of input statistics (float64 Hessians, or their diagonals) held at once while
# calibrating: layers beyond it are calibrated in further passes over the batches.
CALIBRATION_MEMORY = 4 << 30


def _matches(name: str, skip: Iterable[str]) -> bool:
    return any(name == s or name.startswith(s + ".") or name.endswith("." + s) or name.split(".")[-1] == s for s in skip)


def _token_mask(batch: Any) -> torch.Tensor | None:
    """The batch's ``attention_mask`` as a bool [batch, tokens] tensor, if it is a keyword
    dict that has a 2-D one (a padded batch of a transformers tokenizer)."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    return mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def _real_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of a layer input [..., K] at real tokens: where ``mask`` (from _token_mask) has
    the input's leading shape, only its unmasked positions; otherwise every row."""
    if mask is not None and tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _input_statistics(model: nn.Module, names: list[str], calibration: Iterable[Any],
                      full: bool) -> dict[str, torch.Tensor]:
    """Per named linear layer, over the calibration batches: the input Hessian sum of x x^T
    (float64 [K, K]) when `full`, else the mean squared input [K].

    Padding tokens are left out: where a batch has an attention mask and a layer's input is
    [batch, tokens, K] of the mask's shape, only the unmasked tokens count. A padded token's
    hidden state is whatever the model computes from nothing; on all-MiniLM-L6-v2 with
    padded batches of 32 sentences, counting them cost GPTQ 0.01 of embedding cosine.
    """
    stats: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    modules = dict(model.named_modules())
    mask: torch.Tensor | None = None
    # Layers fed the same tensor one after another (a transformer's q/k/v projections,
    # gate/up) share its product: the last one is kept, with a weak reference to its input so
    # that a freed input whose id comes back for another tensor is not taken for it.
    last: list[Any] = [None, None, None, 0]  # id, weak reference, product, rows
    for name in names:
        def hook(module, args, name=name):  # noqa: ANN001
            x = args[0].detach()
            if last[0] != id(args[0]) or last[1]() is not args[0]:
                # Each batch's product in float32 (a few thousand rows: ample precision, and
                # a fraction of float64's time), summed over batches in float64.
                x = _real_tokens(x, mask).to("cpu", torch.float32)
                part = (x.T @ x).double() if full else (x * x).sum(0, dtype=torch.float64)
                last[:] = [id(args[0]), weakref.ref(args[0]), part, x.shape[0]]
            part, rows = last[2], last[3]
            if name in stats:
                stats[name].add_(part)
            else:
                stats[name] = part.clone()
            counts[name] = counts.get(name, 0) + rows
        hooks.append(modules[name].register_forward_pre_hook(hook))
    try:
        for batch in calibration:
            mask = _token_mask(batch)
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
    finally:
        last[:] = [None, None, None, 0]
        for h in hooks:
            h.remove()
    return {name: stats[name] if full else (stats[name] / max(counts[name], 1)).float() for name in stats}


def quantize_model(
    model: nn.Module,
    *,
    skip: Iterable[str] = ("lm_head",),
    calibration: Iterable[Any] | None = None,
    method: str = "gptq",
    bits_per_weight: float | None = None,
    calibration_memory: int = CALIBRATION_MEMORY,
    progress: bool = True,
    **opts: Any,
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`.

    Args:
        skip: layer names to keep in float: an exact name, a prefix, or a last name component
            (the default keeps a language model's output head).
        calibration: optional iterable of model inputs (tensors, tuples or keyword dicts), run
            through the model to collect each layer's input statistics. A keyword dict's
            ``attention_mask`` (e.g. a padded tokenizer batch) keeps padding tokens out of them.
        method: with calibration, ``"gptq"`` (error feedback under each layer's input Hessian,
            ``8 * in_features**2`` bytes per layer while calibrating) or ``"rtn"`` (round to
            nearest, fitted and 4-bit groups chosen with the mean squared input as importance).
            Without calibration: round to nearest.
        bits_per_weight: budget for the average packed bits per weight over the quantized
            layers (every byte counted, as :attr:`QuantizedWeight.bits_per_weight`). Each
            layer then gets its own ``frac_4bit``: every layer is measured at each fraction of
            ``quant_budget.FRACTIONS`` (round to nearest on a sample of its rows; relative
            output error under the calibration statistics, or relative weight error without
            calibration) and the fractions minimising the summed relative errors within the
            budget are used. Excludes ``frac_4bit``. None (the default): with calibration and
            no ``frac_4bit``, the budget is what the default fraction would take (so the
            model is no larger, and on MiniLM GPTQ's embedding cosine goes from 0.904 to
            0.918); otherwise one fraction for every layer.
        calibration_memory: bytes of statistics held at once. When all layers' statistics do
            not fit, the layers are calibrated in groups that do, in model order, one pass
            over the batches per group (two with a budget: the measurement needs every layer
            first); each group's inputs then come from the model with the earlier groups
            already quantized, as in GPTQ's layer-by-layer form. A one-shot iterator of
            batches is read into a list for the extra passes.
        progress: show tqdm progress bars.
        opts: :func:`quantize` options (group_size, frac_4bit, select, damp).

    Returns the model.
    """
    from .quant import DEFAULT_GROUP_SIZE, GROUP_SIZES, QuantLinear

    if method not in ("gptq", "rtn"):
        raise ValueError(f"quantize_model: method must be 'gptq' or 'rtn', got {method!r}")
    if bits_per_weight is not None:
        if "frac_4bit" in opts:
            raise ValueError("quantize_model: pass frac_4bit or bits_per_weight, not both")
        if not isinstance(bits_per_weight, (int, float)) or not math.isfinite(bits_per_weight):
            raise ValueError(f"quantize_model: bits_per_weight must be a finite number, got {bits_per_weight!r}")
    if not isinstance(calibration_memory, int) or calibration_memory <= 0:
        raise ValueError(f"quantize_model: calibration_memory must be a positive number of bytes, got "
                         f"{calibration_memory!r}")
    group_size = opts.get("group_size", DEFAULT_GROUP_SIZE)
    if group_size not in GROUP_SIZES:
        raise ValueError(f"quantize: group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    skip = tuple(skip)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _matches(n, skip)]
    full = method == "gptq"
    groups = [names]
    if calibration is not None:
        groups = _statistics_groups(model, names, full, calibration_memory)
        if len(groups) > 1 and iter(calibration) is calibration:
            calibration = list(calibration)
    key = "hessian" if full else "importance"
    from tqdm.auto import tqdm

    def statistics(group: list[str]) -> dict[str, torch.Tensor]:
        return _input_statistics(model, group, calibration, full) if calibration is not None else {}

    fractions: dict[str, float] = {}
    stats: dict[str, torch.Tensor] = {}
    spread = bits_per_weight is not None or (calibration is not None and "frac_4bit" not in opts)
    if spread and names:
        options = {}
        with tqdm(total=len(names), desc="measure", disable=not progress) as bar:
            for group in groups:
                stats = statistics(group)
                for name in group:
                    options[name] = _layer_options(model.get_submodule(name).weight, stats.get(name), group_size,
                                                   opts.get("select", "range"))
                    bar.update()
                if len(groups) > 1:
                    stats = {}  # one group's statistics at a time
        weights = sum(model.get_submodule(name).weight.numel() for name in names)
        fractions = _choose_fractions(options, weights, bits_per_weight, group_size)
    with tqdm(total=len(names), desc="quantize", disable=not progress) as bar:
        for group in groups:
            if not (spread and len(groups) == 1):  # else the measurement's statistics serve
                stats = statistics(group)
            for name in group:
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                layer_opts = dict(opts, frac_4bit=fractions[name]) if name in fractions else opts
                setattr(parent, child, QuantLinear.from_linear(getattr(parent, child), **{key: stats.pop(name, None)},
                                                               **layer_opts))
                bar.update()
    return model


def _statistics_groups(model: nn.Module, names: list[str], full: bool, memory: int) -> list[list[str]]:
    """``names`` cut, in order, into runs whose statistics (float64, ``K * K`` or ``K`` values
    per layer) fit ``memory`` bytes; a layer larger than that is a run of its own."""
    groups: list[list[str]] = []
    held = 0
    for name in names:
        k = model.get_submodule(name).in_features
        need = 8 * (k * k if full else k)
        if groups and held + need <= memory:
            groups[-1].append(name)
            held += need
        else:
            groups.append([name])
            held = need
    return groups


def _layer_options(weight: torch.Tensor, stat: torch.Tensor | None, group_size: int,
                   select: str) -> list[tuple[int, float]]:
    """(packed bits, relative error) of a layer at each of quant_budget.FRACTIONS."""
    from . import quant_budget
    from .quant import _num_4bit_groups

    n, k = weight.shape
    errors = quant_budget.layer_errors(weight, stat, group_size, select)
    bits = [quant_budget.packed_bits(n, k, group_size, _num_4bit_groups(k, group_size, f))
            for f in quant_budget.FRACTIONS]
    return list(zip(bits, errors))


def _choose_fractions(options: dict[str, list[tuple[int, float]]], weights: int, bits_per_weight: float | None,
                      group_size: int) -> dict[str, float]:
    """Each layer's frac_4bit under the model-wide budget of these ``weights`` (see
    quant_budget); None: the bits these layers take at DEFAULT_FRAC_4BIT. ``options`` from
    _layer_options."""
    from . import quant_budget
    from .quant import DEFAULT_FRAC_4BIT

    if bits_per_weight is None:
        default = quant_budget.FRACTIONS.index(DEFAULT_FRAC_4BIT)
        bits_per_weight = sum(o[default][0] for o in options.values()) / weights
    floor = sum(o[0][0] for o in options.values()) / weights
    if bits_per_weight < floor:
        raise ValueError(f"quantize_model: bits_per_weight={bits_per_weight} is below {floor:.4f}, the size of these "
                         f"layers with every group at 2 bits (group_size={group_size})")
    choice = quant_budget.allocate(options, bits_per_weight * weights)
    return {name: quant_budget.FRACTIONS[i] for name, i in choice.items()}


def save_quantized(model: nn.Module, path: str) -> None:
    """Save a quantized model's whole state to a safetensors file (tied weights, such as an
    output head sharing the embedding, are stored once)."""
    from safetensors.torch import save_model

    save_model(model, path, metadata={"format": "lmkernels-quant-v1"})


def load_quantized(model: nn.Module, path: str, *, device: torch.device | str = "cpu") -> nn.Module:
    """Load a file from :func:`save_quantized` into a float ``model`` of the same architecture.

    Every ``nn.Linear`` the file holds packed tensors for becomes a :class:`QuantLinear`; then
    the state is loaded strictly, so any mismatch raises. The model may have its parameters
    on the meta device (``with torch.device("meta"): model = ...``), so that its float
    weights are never allocated: they are then replaced by the file's tensors, read onto
    ``device``. Buffers that are not saved (non-persistent ones, such as a rotary embedding's
    ``inv_freq``) cannot come from the file: a model that has them on the meta device is
    refused before anything changes. Weights tied in the model (one parameter under two
    names, saved once) get the one tensor.
    """
    from safetensors.torch import load_file

    from .quant import QuantLinear

    state = load_file(path, device=str(device))
    layers = {}
    for key in [k for k in state if k.endswith(".codes_lo") or k == "codes_lo"]:
        prefix = key[: -len("codes_lo")]
        parent_name, _, child = prefix[:-1].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not isinstance(getattr(parent, child, None), (nn.Linear, QuantLinear)):
            raise KeyError(f"load_quantized: {prefix[:-1]!r} in {path} is not a linear layer of the model")
        layers[prefix] = (parent, child)
    kept = [(name, t) for name, t in [*model.named_parameters(remove_duplicate=False),
                                      *model.named_buffers(remove_duplicate=False)]
            if not any(name.startswith(prefix) for prefix in layers)]
    names_of: dict[int, list[str]] = {}
    for name, t in kept:
        names_of.setdefault(id(t), []).append(name)
    for names in names_of.values():  # a tied tensor is saved under one of its names
        saved = [n for n in names if n in state]
        for name in names:
            if saved and name not in state:
                state[name] = state[saved[0]]
    stranded = [name for name, t in kept if t.is_meta and name not in state]
    if stranded:
        raise ValueError(f"load_quantized: {stranded} are on the meta device and not in {path} (buffers that are "
                         "not saved): build the model with only its parameters on the meta device")
    for prefix, (parent, child) in layers.items():
        setattr(parent, child, QuantLinear.from_state_dict(state, prefix))
    on_meta = any(t.is_meta for _, t in kept)
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model
