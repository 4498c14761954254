from __future__ import annotations

import pytest
import torch

import lmkernels

CUDA = torch.cuda.is_available() and lmkernels.built_with_cuda


def devices() -> list:
    """'cpu', plus 'cuda' (skipped without a GPU or a CUDA build)."""
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build")),
    ]


@pytest.fixture(params=lmkernels.supported_cpu_isas())
def isa(request):
    """Runs the test once per CPU path this machine supports."""
    lmkernels.set_cpu_isa(request.param)
    yield request.param
    lmkernels.set_cpu_isa(None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Report how many fuzz cases ran per op, and how many were valid vs rejected."""
    try:
        from fuzz import OUTCOMES
    except ImportError:
        return
    if OUTCOMES:
        terminalreporter.section("fuzz cases per op")
        for op, counts in sorted(OUTCOMES.items()):
            total = sum(counts.values())
            terminalreporter.write_line(f"{op}: {total} cases ({counts['ok']} valid, {counts['error']} rejected)")
