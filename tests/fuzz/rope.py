"""Fuzzer for lmkernels::rope_rerotate_ (raw op: every check must hold in C++ too)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
from reference import rope_rerotate

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, bits, cpu_isa, layout_view, num_threads, special_values

OP = "lmkernels::rope_rerotate_"


@fuzzer(OP)
def fuzz_rope_rerotate(data):
    draw = data.draw
    # Mostly valid calls (checked against the reference), else exactly one argument broken.
    fault = draw(st.sampled_from([None] * 8 + ["dtype", "half", "k layout", "pos shape", "pos dtype", "inv_freq"]),
                 label="fault")
    dtype = draw(st.sampled_from(FLOAT_DTYPES if fault != "dtype" else [torch.float64, torch.int32]), label="dtype")
    batch = draw(st.integers(0, 3), label="batch")
    tokens = draw(st.integers(0, 40), label="tokens")
    heads = draw(st.integers(0, 4), label="heads")
    head_dim = draw(st.integers(2, 80), label="head_dim")
    half = draw(st.integers(1, head_dim // 2) if fault != "half" else st.sampled_from([0, head_dim // 2 + 1]),
                label="half")
    neox = draw(st.booleans(), label="neox")
    value_dtype = dtype if dtype.is_floating_point else torch.float32

    def make(shape):
        return draw(special_values(shape, value_dtype)).to(dtype)

    k = draw(layout_view((batch, tokens, heads, head_dim), make), label="k")
    if fault == "k layout":  # overlapping rows, or head_dim not contiguous
        k = k[:1].expand(2, *k.shape[1:]) if batch >= 1 and draw(st.booleans()) else k.transpose(-1, -2)

    pos_shape = (batch, tokens)
    if fault == "pos shape":
        pos_shape = (tokens,) if draw(st.booleans()) else (batch, tokens + 1)
    pos_dtype = draw(st.sampled_from([torch.int32, torch.float32]), label="pos dtype") if fault == "pos dtype" else torch.int64
    span = draw(st.sampled_from([10, 10_000, 2**40]), label="position span")
    old = torch.randint(-span, span, pos_shape).to(pos_dtype)
    new = old + torch.randint(-span, span, pos_shape).to(pos_dtype) if draw(st.booleans()) else old + 17
    inv_freq = (1.0 / (10000.0 ** (torch.arange(half) / max(half, 1)))).float()
    if fault == "inv_freq":
        inv_freq = inv_freq.double() if draw(st.booleans()) else inv_freq[:, None]

    original = k.clone()
    out = k
    # The op returns None in place; "or True" tells success from rejection.
    if attempt(OP, lambda: torch.ops.lmkernels.rope_rerotate_(out, old, new, inv_freq, neox) or True) is None:
        assert torch.equal(bits(k), bits(original)), "k changed by a rejected call"
        return
    check_result(out, original, old, new, inv_freq, neox)
    check_invariance(out, original, old, new, inv_freq, neox)


def check_result(out, original, old, new, inv_freq, neox):
    expected = rope_rerotate(original, old, new, inv_freq, neox)
    rot = 2 * inv_freq.numel()
    # Heads holding a non-finite input have no well-defined result; every other one must match.
    finite = torch.isfinite(original.float()[..., :rot]).all(-1, keepdim=True)
    eps = torch.finfo(original.dtype).eps
    got = torch.where(finite, out[..., :rot].double(), 0.0)
    want = torch.where(finite, expected[..., :rot].double(), 0.0)
    # Values near fp32's top can overflow in the rotation; bound relative to the head's scale.
    scale = original[..., :rot].double().abs().nan_to_num(0.0, 0.0, 0.0).amax(-1, keepdim=True).clamp_min(1.0)
    assert ((got - want).abs() <= 4 * eps * scale).all(), "rope_rerotate_ differs from the reference"
    assert torch.equal(bits(out[..., rot:]), bits(original[..., rot:])), "values past rotary_dim changed"


def check_invariance(out, original, old, new, inv_freq, neox):
    """Same bits on every CPU path, with 1 thread, and from a contiguous copy."""
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again = original.clone()
            torch.ops.lmkernels.rope_rerotate_(again, old, new, inv_freq, neox)
        assert torch.equal(bits(again), bits(out)), f"cpu path {isa} differs"
    with num_threads(1):
        single = original.contiguous()
        torch.ops.lmkernels.rope_rerotate_(single, old, new, inv_freq, neox)
    assert torch.equal(bits(single), bits(out)), "1 thread or contiguous copy differs"
