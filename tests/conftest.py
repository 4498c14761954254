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
