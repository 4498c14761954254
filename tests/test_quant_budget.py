"""quantize_model(bits_per_weight=...): per-layer 4-bit fractions under one bit budget."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from lmkernels import quant, quant_budget


@pytest.mark.parametrize("n,k,group_size,frac", [(7, 100, 32, 0.2), (64, 384, 32, 0.0), (33, 1000, 128, 0.6),
                                                 (5, 31, 64, 1.0), (96, 1536, 256, 0.3)])
def test_packed_bits_counts_every_byte(n, k, group_size, frac):
    q = quant.quantize(torch.randn(n, k), group_size=group_size, frac_4bit=frac)
    assert quant_budget.packed_bits(n, k, group_size, q.num_4bit_groups) == 8 * q.nbytes


def brute_force(options: dict[str, list[tuple[int, float]]], budget: float) -> float:
    best = float("inf")
    for combo in itertools.product(*[range(len(o)) for o in options.values()]):
        if sum(o[i][0] for o, i in zip(options.values(), combo)) <= budget:
            best = min(best, sum(o[i][1] for o, i in zip(options.values(), combo)))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_allocate_is_the_least_error_within_the_budget(seed):
    rng = random.Random(seed)
    options = {}
    for layer in range(rng.randint(1, 4)):
        size = rng.choice([100, 300, 1000])
        bits = sorted(rng.sample(range(2 * size, 5 * size), rng.randint(2, 6)))
        errors = sorted((rng.random() for _ in bits), reverse=True)
        if rng.random() < 0.3:  # not convex, not even monotone
            rng.shuffle(errors)
        options[f"layer{layer}"] = list(zip(bits, errors))
    cheapest = sum(o[0][0] for o in options.values())
    budget = rng.uniform(cheapest, sum(o[-1][0] for o in options.values()) + 100)
    choice = quant_budget.allocate(options, budget)
    assert sum(options[n][i][0] for n, i in choice.items()) <= budget
    error = sum(options[n][i][1] for n, i in choice.items())
    assert error == pytest.approx(brute_force(options, budget), rel=1e-9, abs=1e-12)


def test_budget_goes_to_the_layer_that_needs_it():
    torch.manual_seed(0)
    # Layer "exact" holds 4 values per group, which 2 bits represent almost exactly; layer
    # "rough" is Gaussian. The budget should buy 4-bit groups for "rough" only.
    exact = torch.nn.Linear(256, 64, bias=False)
    exact.weight.data = (torch.randint(0, 4, (64, 256)).float() - 1.5) * 0.02
    rough = torch.nn.Linear(256, 64, bias=False)
    rough.weight.data = torch.randn(64, 256) * 0.02
    model = torch.nn.Sequential(exact, rough)
    quant.quantize_model(model, bits_per_weight=3.0, progress=False)
    assert model[0].qweight.num_4bit_groups == 0
    assert model[1].qweight.num_4bit_groups > 0
    bits = sum(m.qweight.nbytes * 8 for m in model) / sum(m.in_features * m.out_features for m in model)
    assert bits <= 3.0


def held_out_layer_errors(model: torch.nn.Sequential, quantized: torch.nn.Sequential, x: torch.Tensor) -> float:
    """Sum over the linear layers of the relative error of their outputs, on the float model's inputs."""
    total = 0.0
    for float_layer, layer in zip(model, quantized):
        y = float_layer(x)
        if isinstance(float_layer, torch.nn.Linear):
            total += float((layer(x) - y).pow(2).sum() / (y - float_layer.bias).pow(2).sum())
        x = y
    return total


@torch.no_grad()
def test_budget_with_calibration_beats_one_fraction_for_all():
    torch.manual_seed(1)
    # 512 inputs: 16 groups per row, so fractions of a tenth are distinct group counts.
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Tanh(), torch.nn.Linear(512, 512),
                                torch.nn.Tanh(), torch.nn.Linear(512, 512))
    # Layers as different as a transformer's: one with outlier groups (4 bits pay off there).
    outliers = torch.rand(512, 16, 1) < 0.15
    model[2].weight.data = (model[2].weight.data.view(512, 16, 32) * (1 + 9 * outliers)).view(512, 512)
    scale = torch.ones(512)
    scale[:6] = 25.0
    batches = [torch.randn(256, 512) * scale for _ in range(4)]
    held_out = torch.randn(512, 512) * scale
    import copy

    # Calibrated round to nearest: the quantizer the measurement uses, so the sum of the
    # layers' relative errors is exactly what the budget minimises.
    uniform = quant.quantize_model(copy.deepcopy(model), calibration=batches, method="rtn", frac_4bit=0.2,
                                   progress=False)
    layers = [m for m in uniform if isinstance(m, quant.QuantLinear)]
    target = sum(m.qweight.nbytes * 8 for m in layers) / (512 * 512 * 3)
    budgeted = quant.quantize_model(copy.deepcopy(model), calibration=batches, method="rtn", bits_per_weight=target,
                                    progress=False)
    layers = [m for m in budgeted if isinstance(m, quant.QuantLinear)]
    assert len({m.qweight.num_4bit_groups for m in layers}) > 1
    assert sum(m.qweight.nbytes * 8 for m in layers) / (512 * 512 * 3) <= target
    assert held_out_layer_errors(model, budgeted, held_out) < 0.97 * held_out_layer_errors(model, uniform, held_out)
    # Calibrated without frac_4bit: the same budget by default.
    default = quant.quantize_model(copy.deepcopy(model), calibration=batches, method="rtn", progress=False)
    assert [m.qweight.num_4bit_groups for m in default if isinstance(m, quant.QuantLinear)] == [
        m.qweight.num_4bit_groups for m in layers]


def test_budget_bad_inputs():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    with pytest.raises(ValueError, match="frac_4bit or bits_per_weight"):
        quant.quantize_model(model, bits_per_weight=3.0, frac_4bit=0.2, progress=False)
    with pytest.raises(ValueError, match="bits_per_weight must be a finite number"):
        quant.quantize_model(model, bits_per_weight=float("nan"), progress=False)
    with pytest.raises(ValueError, match="bits_per_weight=2.0 is below"):
        quant.quantize_model(model, bits_per_weight=2.0, progress=False)
    with pytest.raises(ValueError, match="group_size must be one of"):
        quant.quantize_model(model, bits_per_weight=3.0, group_size=48, progress=False)
    assert type(model[0]) is torch.nn.Linear  # nothing replaced after a refused call


def test_statistics_groups_fit_the_memory():
    from lmkernels.quant_model import _statistics_groups

    model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 128), torch.nn.Linear(128, 64),
                                torch.nn.Linear(64, 8))
    names = ["0", "1", "2", "3"]
    hessian = {"0": 8 * 64 * 64, "1": 8 * 8 * 8, "2": 8 * 128 * 128, "3": 8 * 64 * 64}
    groups = _statistics_groups(model, names, True, 8 * 128 * 128)
    assert [n for g in groups for n in g] == names
    assert all(len(g) == 1 or sum(hessian[n] for n in g) <= 8 * 128 * 128 for g in groups)
    assert groups == [["0", "1"], ["2"], ["3"]]
    assert _statistics_groups(model, names, True, 1) == [[n] for n in names]  # too small: one layer each
    assert _statistics_groups(model, names, False, 8 * (64 + 8 + 128 + 64)) == [names]  # diagonals only


@pytest.mark.parametrize("budget", [False, True])
@torch.no_grad()
def test_calibration_in_groups_when_statistics_do_not_fit(budget):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256),
                                torch.nn.Tanh(), torch.nn.Linear(256, 64))
    scale = torch.ones(256)
    scale[:5] = 20.0
    batches = [torch.randn(128, 256) * scale for _ in range(3)]
    held_out = torch.randn(256, 256) * scale
    passes = []
    model.register_forward_pre_hook(lambda *_: passes.append(1))
    import copy

    reference = model(held_out)
    plain = quant.quantize_model(copy.deepcopy(model), progress=False)
    opts = {} if budget else {"frac_4bit": 0.2}
    passes.clear()
    # Room for two Hessians of 256 inputs: groups ["0", "2"] and ["4"]; a generator of batches
    # is read once into a list for the second pass.
    grouped = quant.quantize_model(copy.deepcopy(model), calibration=(b for b in batches),
                                   calibration_memory=2 * 8 * 256 * 256, progress=False, **opts)
    assert len(passes) == (4 if budget else 2) * len(batches)
    assert all(isinstance(grouped[i], quant.QuantLinear) for i in (0, 2, 4))
    err_plain = float((plain(held_out) - reference).pow(2).mean())
    err_grouped = float((grouped(held_out) - reference).pow(2).mean())
    assert err_grouped < err_plain
    with pytest.raises(ValueError, match="calibration_memory must be a positive"):
        quant.quantize_model(copy.deepcopy(model), calibration=batches, calibration_memory=0, progress=False)
