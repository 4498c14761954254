"""lmkernels: fast CPU and CUDA kernels for LLM inference and continual training.

Importing the package loads the native module `lmkernels._C`, which registers every op under
`torch.ops.lmkernels` (CPU and, in CUDA builds, CUDA impls) plus fake impls for
`torch.compile`. The typed wrappers live in one module per core.
"""

from __future__ import annotations

import torch

from . import _native

_C = _native.load()

from . import _fake  # noqa: E402,F401  (registers fake impls for torch.compile)
from .attention import spliced_attention, varlen_attention  # noqa: E402
from .cpu import cpu_isa, set_cpu_isa, supported_cpu_isas  # noqa: E402
from .rope import RopeConfig, rope_apply_, rope_inv_freq, rope_rerotate_  # noqa: E402

__version__ = "0.1.0"

built_with_cuda: bool = bool(_C.built_with_cuda)

__all__ = [
    "RopeConfig",
    "built_with_cuda",
    "cpu_isa",
    "rope_apply_",
    "rope_inv_freq",
    "rope_rerotate_",
    "set_cpu_isa",
    "supported_cpu_isas",
    "spliced_attention",
    "varlen_attention",
]
del torch
