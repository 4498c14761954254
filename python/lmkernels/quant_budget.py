"""Per-layer 4-bit fractions under one model-wide bit budget (``quantize_model(bits_per_weight=...)``).

Layers differ in how much a 4-bit group buys: on all-MiniLM-L6-v2 the attention value and
output projections lose far more output accuracy at 2 bits than the feed-forward layers. As
exllamav2 measures each layer before choosing its bit rate, each layer here is measured at
every fraction of :data:`FRACTIONS` (round to nearest on a strided sample of its rows, which
is cheap: rows quantize independently), and the fractions are chosen to minimise the sum of
the layers' relative output errors while the packed bits of all layers stay within the
budget: a knapsack, solved exactly up to a 2^-14 share of the spare budget.

Round to nearest measures even for GPTQ: GPTQ's error on its own calibration Hessian flatters
the layers it overfits, and on MiniLM choosing by it gave embedding cosine 0.907 against 0.917
(and costs a Cholesky factorisation per layer and fraction).
"""

from __future__ import annotations

import math

import torch

from ._fake import _quantize_weight_fake

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
SAMPLE_ROWS = 128
BUDGET_STEPS = 1 << 14


def packed_bits(out_features: int, in_features: int, group_size: int, num_4bit_groups: int) -> int:
    """Bits of the packed layer (every tensor of QuantizedWeight, padding included), from the
    shapes quantize_weight's fake implementation gives (meta tensors: nothing allocated)."""
    weight = torch.empty(out_features, in_features, device="meta")
    packed = _quantize_weight_fake(weight, group_size, num_4bit_groups, "range", None)
    return 8 * sum(t.numel() * t.element_size() for t in packed)


def layer_errors(weight: torch.Tensor, stat: torch.Tensor | None, group_size: int, select: str) -> list[float]:
    """Relative output error ``tr(E H E^T) / tr(W H W^T)`` of the layer quantized at each of
    FRACTIONS (E: quantization error, on up to SAMPLE_ROWS evenly spaced rows), where H is the
    input Hessian ``stat`` ([K, K]), its diagonal ([K]), or the identity (None)."""
    from . import quant

    w = weight.detach().to("cpu", torch.float32)
    rows = torch.linspace(0, w.shape[0] - 1, min(w.shape[0], SAMPLE_ROWS)).round().long().unique()
    w = w[rows].contiguous()
    h = None if stat is None else stat.detach().to("cpu", torch.float32)
    importance = None if h is None else (h if h.dim() == 1 else torch.diagonal(h).clone())
    errors = []
    for frac in FRACTIONS:
        q = quant.quantize(w, group_size=group_size, frac_4bit=frac, select=select, importance=importance)
        errors.append(w - quant.dequantize(q))
    e = torch.stack(errors)

    def energy(x: torch.Tensor) -> torch.Tensor:
        if h is None:
            return (x * x).sum((-2, -1))
        if h.dim() == 1:
            return (x * x * h).sum((-2, -1))
        return ((x @ h) * x).sum((-2, -1))

    total = float(energy(w))
    return [float(v) / total if total > 0 else 0.0 for v in energy(e)]


def allocate(options: dict[str, list[tuple[int, float]]], budget_bits: float) -> dict[str, int]:
    """Per layer, the index of its chosen option, ``options[name] = [(bits, error), ...]``: the
    least total error whose total bits stay within ``budget_bits``. A knapsack over the bits
    above every layer's cheapest option, cut into BUDGET_STEPS steps; each option's extra bits
    are rounded down to whole steps, so every choice that fits exactly also fits the steps
    (a budget set to a uniform fraction's bits keeps that choice open). Should the winner
    overrun the exact budget, the steps shrink by the overrun and the search repeats; then
    single upgrades spend what the rounding left over. The caller checks that the cheapest
    options fit."""
    names = list(options)
    base = sum(options[n][0][0] for n in names)
    spare_bits = budget_bits - base
    if spare_bits < 0:
        raise ValueError("allocate: the cheapest options exceed the budget")
    step = max(spare_bits, 1.0) / BUDGET_STEPS
    costs = {n: [int((bits - options[n][0][0]) // step) for bits, _ in options[n]] for n in names}

    def total_bits(choice: dict[str, int]) -> float:
        return sum(options[n][i][0] for n, i in choice.items())

    limit = BUDGET_STEPS
    while True:
        choice = _least_error_within(options, costs, limit)
        overrun = total_bits(choice) - budget_bits
        if overrun <= 0:
            break
        limit -= max(1, math.ceil(overrun / step))
    spare = budget_bits - total_bits(choice)
    while True:  # the best error saved per bit among the upgrades that still fit
        upgrade, best_rate = None, 0.0
        for n, o in options.items():
            cur_bits, cur_err = o[choice[n]]
            for j in range(choice[n] + 1, len(o)):
                extra, saved = o[j][0] - cur_bits, cur_err - o[j][1]
                if 0 < extra <= spare and saved > 0 and saved / extra > best_rate:
                    upgrade, best_rate = (n, j, extra), saved / extra
        if upgrade is None:
            return choice
        n, j, extra = upgrade
        choice[n] = j
        spare -= extra


def _least_error_within(options: dict[str, list[tuple[int, float]]], costs: dict[str, list[int]],
                        limit: int) -> dict[str, int]:
    """The choice of least total error whose summed costs are at most ``limit`` (>= 0; the
    first option of every layer costs 0), by dynamic programming over the cost."""
    inf = float("inf")
    best = torch.full((limit + 1,), inf, dtype=torch.float64)
    best[0] = 0.0  # best[c]: least error of the layers so far at a summed cost of exactly c
    picks = []
    for name, option in options.items():
        nxt = torch.full_like(best, inf)
        pick = torch.zeros(limit + 1, dtype=torch.int8)
        for j, ((_, error), cost) in enumerate(zip(option, costs[name])):
            if cost > limit:
                continue
            cand = torch.full_like(best, inf)
            cand[cost:] = best[: limit + 1 - cost] + error
            better = cand < nxt  # dense selects: boolean-mask indexing took seconds here
            nxt = torch.where(better, cand, nxt)
            pick = torch.where(better, torch.tensor(j, dtype=torch.int8), pick)
        best = nxt
        picks.append(pick)
    c = int(torch.argmin(best))
    choice = {}
    for name, pick in zip(reversed(list(options)), reversed(picks)):
        choice[name] = int(pick[c])
        c -= costs[name][choice[name]]
    return choice
