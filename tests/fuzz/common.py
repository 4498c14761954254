"""Strategies and checks shared by the fuzzers."""

from __future__ import annotations

import contextlib

import hypothesis.strategies as st
import torch

import lmkernels

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Exceptions a bad argument may raise; anything else (or a crash) fails the fuzz run.
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError)


@st.composite
def special_values(draw, shape, dtype):
    """A tensor of `shape` with normal values and, sometimes, NaN/Inf/denormals/huge values."""
    numel = 1
    for s in shape:
        numel *= s
    t = torch.randn(numel, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31))))
    if numel and draw(st.booleans()):
        specials = [float("nan"), float("inf"), -float("inf"), 1e-40, -1e-42, 3e38, 0.0, -0.0]
        for _ in range(draw(st.integers(1, 4))):
            t[draw(st.integers(0, numel - 1))] = draw(st.sampled_from(specials))
    return t.reshape(shape).to(dtype)


@st.composite
def layout_view(draw, shape, make):
    """A tensor of `shape` built by `make(shape)`, sometimes as a view with doubled strides on
    one leading dim or with a storage offset; the last dim stays contiguous."""
    kind = draw(st.sampled_from(["contiguous", "strided", "offset"]))
    if kind == "contiguous" or len(shape) < 2 or min(shape) == 0:
        return make(shape)
    if kind == "strided":
        dim = draw(st.integers(0, len(shape) - 2))
        bigger = list(shape)
        bigger[dim] *= 2
        index = [slice(None)] * len(shape)
        index[dim] = slice(None, None, 2)
        return make(tuple(bigger))[tuple(index)]
    return make((shape[0] + 1,) + tuple(shape[1:]))[1:]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Exact bit pattern of a float tensor, every NaN made one canonical NaN (a NaN's sign and
    payload depend on which instruction made it, and mean nothing)."""
    int_type = {4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()]
    if t.dtype.is_floating_point:
        t = torch.where(t.isnan(), torch.tensor(float("nan"), dtype=t.dtype), t)
    return t.contiguous().view(int_type)


@contextlib.contextmanager
def cpu_isa(isa: str):
    lmkernels.set_cpu_isa(isa)
    try:
        yield
    finally:
        lmkernels.set_cpu_isa(None)


@contextlib.contextmanager
def num_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
