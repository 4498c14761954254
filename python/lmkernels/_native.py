"""Loading of the compiled module, with errors that say how to fix a broken install."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch


def load() -> ModuleType:
    try:
        module = importlib.import_module("lmkernels._C")
    except ImportError as err:
        raise ImportError(
            "lmkernels: the native module lmkernels._C could not be loaded "
            f"({err}). Build it with `pip install --no-build-isolation .` in the source tree, "
            "against the same torch you import."
        ) from err
    built_for = module.torch_version
    running = torch.__version__.split("+")[0]
    if built_for != running:
        raise ImportError(
            f"lmkernels was built against torch {built_for} but torch {running} is installed; "
            "rebuild lmkernels (pip install --no-build-isolation --force-reinstall .) or install "
            f"torch=={built_for}. The C++ ABI of torch is not stable across versions."
        )
    return module
