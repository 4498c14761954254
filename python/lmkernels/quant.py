"""Mixed 2/4-bit grouped weight quantization (about 2.85 bits per weight) and its matmul.

- :func:`quantize`: a float ``[out, in]`` weight to a :class:`QuantizedWeight`. Groups of
  ``group_size`` along the input dimension, asymmetric (scale + min, fitted by a least-squares
  search), second-order (4-bit scale and min codes under fp16 per-256-weight super-scales).
  In every row the ``frac_4bit`` groups with the widest range (``select="range"``) or the largest
  error reduction (``select="error"``) get 4 bits, the rest 2. Runs in multithreaded C++.
- :func:`linear`: ``x @ W.T + bias`` straight from the packed format (int8 activations,
  integer dot products, AVX2 / AVX-512 / scalar chosen at run time; CUDA when built).
- :class:`QuantLinear`, :func:`quantize_model`: drop-in ``nn.Linear`` replacements for any
  ``nn.Module``; their state round-trips through ``state_dict`` and safetensors
  (:func:`save_quantized`, :func:`load_quantized`).

The packed layout (cpp/quant/quant_format.h) keeps 2- and 4-bit data in separate, 32-byte
aligned bit planes with the same number of 4-bit groups in every row, so a kernel's offsets
are static and the dense plane has no per-group branch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "QuantLinear",
    "QuantizedWeight",
    "dequantize",
    "linear",
    "load_quantized",
    "quantize",
    "quantize_model",
    "save_quantized",
]

GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 32
DEFAULT_FRAC_4BIT = 0.2
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_PACKED = ("codes_lo", "codes_hi", "hi_groups", "scales", "super_scales")


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A packed mixed 2/4-bit weight; see the module docstring for the format."""

    codes_lo: torch.Tensor  # uint8 [N, lo_stride]: low 2 bits of every weight
    codes_hi: torch.Tensor  # uint8 [quads, 32]: high 2 bits of the 4-bit groups, rows back to back
    hi_groups: torch.Tensor  # int16 [N, num_4bit_groups]: each row's 4-bit groups, ascending
    scales: torch.Tensor  # uint8 [N, groups]: scale code | min code << 4
    super_scales: torch.Tensor  # float16 [N, super_blocks, 2]: (d, dmin)
    in_features: int
    group_size: int

    @property
    def out_features(self) -> int:
        return self.hi_groups.shape[0]

    @property
    def num_4bit_groups(self) -> int:
        """4-bit groups per row (the same in every row)."""
        return self.hi_groups.shape[1]

    @property
    def device(self) -> torch.device:
        return self.codes_lo.device

    @property
    def nbytes(self) -> int:
        """Every byte of the packed format, padding included."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def bits_per_weight(self) -> float:
        """Average bits per weight counting codes, scales, mins, super-scales and group maps."""
        return 8.0 * self.nbytes / max(self.out_features * self.in_features, 1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in _PACKED)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        return dataclasses.replace(self, **{name: getattr(self, name).to(device) for name in _PACKED})


def _num_4bit_groups(in_features: int, group_size: int, frac_4bit: float) -> int:
    groups = math.ceil(in_features / group_size)
    return min(groups, int(math.floor(frac_4bit * groups + 0.5)))


def quantize(
    weight: torch.Tensor,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    frac_4bit: float = DEFAULT_FRAC_4BIT,
    select: str = "range",
    importance: torch.Tensor | None = None,
    hessian: torch.Tensor | None = None,
    damp: float = 0.01,
) -> QuantizedWeight:
    """Quantize a float ``[out_features, in_features]`` weight to mixed 2/4 bits.

    Args:
        weight: float32/bfloat16/float16, finite. in_features need not divide by the group
            size (the last group is zero-padded and only its real weights are fitted).
        group_size: 32, 64, 128 or 256 weights per group along the input dimension.
        frac_4bit: fraction of each row's groups stored at 4 bits, in ``[0, 1]`` (0: uniform
            2-bit, 1: uniform 4-bit); rounded to a whole number of groups per row.
        select: ``"range"`` (widest groups get 4 bits, as in the paper) or ``"error"``
            (groups whose squared error 4 bits reduce most).
        importance: optional non-negative ``[in_features]`` weights of each input's squared
            error, e.g. the mean squared activation (the Hessian diagonal); used for fitting
            and for ``select="error"``.
        hessian: optional ``[in_features, in_features]`` sum of ``x x^T`` over calibration
            inputs of the layer. Given it, quantization uses GPTQ error feedback (each
            column's rounding error is compensated on the columns after it) and ``diag(hessian)``
            as importance; ``importance`` must then be None.
        damp: GPTQ damping, added to the Hessian diagonal as ``damp * mean(diag)``.

    The result is on the weight's device (quantization itself runs on the CPU).
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("quantize: weight must be a 2-D [out_features, in_features] tensor")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"quantize: weight must be float32, bfloat16 or float16, got {weight.dtype}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"quantize: group_size must be one of {GROUP_SIZES}, got {group_size!r}")
    if not (isinstance(frac_4bit, (int, float)) and 0.0 <= frac_4bit <= 1.0):
        raise ValueError(f"quantize: frac_4bit must be in [0, 1], got {frac_4bit!r}")
    if select not in ("range", "error"):
        raise ValueError(f"quantize: select must be 'range' or 'error', got {select!r}")
    out_features, in_features = weight.shape
    if in_features == 0:
        raise ValueError("quantize: in_features must be positive")
    if importance is not None:
        if not isinstance(importance, torch.Tensor) or importance.shape != (in_features,):
            raise ValueError(f"quantize: importance must be a [{in_features}] tensor")
        importance = importance.detach().to("cpu", torch.float32).contiguous()
    if hessian is not None:
        if importance is not None:
            raise ValueError("quantize: pass importance or hessian, not both (the hessian's diagonal is the importance)")
        if not isinstance(hessian, torch.Tensor) or hessian.shape != (in_features, in_features):
            raise ValueError(f"quantize: hessian must be a [{in_features}, {in_features}] tensor")
        if not (isinstance(damp, (int, float)) and 0.0 <= damp <= 1.0):
            raise ValueError(f"quantize: damp must be in [0, 1], got {damp!r}")
    num_hi = _num_4bit_groups(in_features, group_size, frac_4bit)
    host = weight.detach().to("cpu", torch.float32).contiguous()
    if hessian is not None:
        h = hessian.detach().to("cpu", torch.float64).contiguous()
        packed = torch.ops.lmkernels.quantize_weight_gptq(host, h, group_size, num_hi, select, float(damp))
    else:
        packed = torch.ops.lmkernels.quantize_weight(host, group_size, num_hi, select, importance)
    qweight = QuantizedWeight(*packed, in_features=in_features, group_size=group_size)
    return qweight if weight.device.type == "cpu" else qweight.to(weight.device)


def _check_qweight(qweight: Any, op: str) -> QuantizedWeight:
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"{op}: qweight must be a QuantizedWeight, got {type(qweight).__name__}")
    return qweight


def dequantize(qweight: QuantizedWeight) -> torch.Tensor:
    """The float32 ``[out_features, in_features]`` weight the packed one stands for."""
    q = _check_qweight(qweight, "dequantize")
    return torch.ops.lmkernels.dequantize_weight(*q.tensors(), q.in_features, q.group_size)


def linear(x: torch.Tensor, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ dequantize(qweight).T + bias`` without materialising the weight.

    Args:
        x: ``[..., in_features]`` float32/bfloat16/float16 on the weight's device.
        bias: optional ``[out_features]``.

    Returns ``[..., out_features]`` in x's dtype. On CPU, and on CUDA up to 8 rows, each
    activation row is quantized to int8 per 256-wide block (absmax), so results match the float
    product within about 1e-4 relative mean squared error; larger CUDA batches multiply by the
    weight dequantized to x's dtype.
    """
    _check_qweight(qweight, "linear")
    if not isinstance(x, torch.Tensor):
        raise TypeError("linear: x must be a tensor")
    return _quant_linear(x, qweight, bias)


def _quant_linear(x: torch.Tensor, packed: Any, bias: torch.Tensor | None) -> torch.Tensor:
    # `packed`: a QuantizedWeight or a QuantLinear (same attribute names). Spelled out instead of
    # `*q.tensors()` through the op packet: at batch 1 with the caches flushed by the previous
    # layer's weights, that Python path cost 30 us of a 4096x4096 call's 0.5 ms.
    return torch.ops.lmkernels.quant_linear.default(
        x, packed.codes_lo, packed.codes_hi, packed.hi_groups, packed.scales, packed.super_scales, bias,
        packed.in_features, packed.group_size,
    )


class QuantLinear(nn.Module):
    """An ``nn.Linear`` whose weight is stored in the mixed 2/4-bit format.

    The packed tensors are buffers, so ``state_dict()`` carries them and a module rebuilt
    with :meth:`from_state_dict` gives bit-identical outputs.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        _check_qweight(qweight, "QuantLinear")
        self.in_features = qweight.in_features
        self.out_features = qweight.out_features
        self.group_size = qweight.group_size
        for name, tensor in zip(_PACKED, qweight.tensors()):
            self.register_buffer(name, tensor)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, module: nn.Linear, **opts: Any) -> QuantLinear:
        """Quantize ``module.weight`` with :func:`quantize` options (group_size, frac_4bit, ...)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"QuantLinear.from_linear: expected nn.Linear, got {type(module).__name__}")
        return cls(quantize(module.weight, **opts), module.bias)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], prefix: str = "") -> QuantLinear:
        """Rebuild from tensors saved by ``state_dict()`` (keys ``prefix + codes_lo`` ...)."""
        missing = [prefix + n for n in (*_PACKED, "_extra_state") if prefix + n not in state]
        if missing:
            raise KeyError(f"QuantLinear.from_state_dict: missing {missing}")
        meta = state[prefix + "_extra_state"]
        qweight = QuantizedWeight(
            *(state[prefix + n] for n in _PACKED), in_features=int(meta[0]), group_size=int(meta[1])
        )
        return cls(qweight, state.get(prefix + "bias"))

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(
            *(getattr(self, n) for n in _PACKED), in_features=self.in_features, group_size=self.group_size
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quant_linear(x, self, self.bias)

    # Shapes alone do not give in_features (the last group is padded): it travels as the
    # module's extra state, a tensor so safetensors can hold it.
    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.in_features, self.group_size], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        saved = tuple(int(v) for v in state.tolist())
        if saved != (self.in_features, self.group_size):
            raise ValueError(
                f"QuantLinear: saved (in_features, group_size) {saved} != this module's "
                f"({self.in_features}, {self.group_size})"
            )

    def extra_repr(self) -> str:
        q = self.qweight
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
            f"num_4bit_groups={q.num_4bit_groups}, bits_per_weight={q.bits_per_weight:.3f}, bias={self.bias is not None}"
        )


# The model-level API lives in quant_model (imported last: it builds on the names above).
from .quant_model import _input_statistics, load_quantized, quantize_model, save_quantized  # noqa: E402
