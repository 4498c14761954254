"""Fuzzers for lmkernels::rope_rerotate_ and rope_apply_ (raw ops: every check must hold in C++ too)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import lmkernels
from reference import rope_rerotate

from . import attempt, fuzzer
from .common import FLOAT_DTYPES, bits, cpu_isa, layout_view, num_threads, special_values

OP = "lmkernels::rope_rerotate_"


def draw_heads(draw, fault, name):
    """The rotated tensor [batch, tokens, heads, head_dim] (sometimes a strided view) and the
    pair count; fault "dtype", "half" or "<name> layout" breaks that part."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES if fault != "dtype" else [torch.float64, torch.int32]), label="dtype")
    batch = draw(st.integers(0, 3), label="batch")
    tokens = draw(st.integers(0, 40), label="tokens")
    heads = draw(st.integers(0, 4), label="heads")
    head_dim = draw(st.integers(2, 80), label="head_dim")
    half = draw(st.integers(1, head_dim // 2) if fault != "half" else st.sampled_from([0, head_dim // 2 + 1]),
                label="half")
    value_dtype = dtype if dtype.is_floating_point else torch.float32

    def make(shape):
        return draw(special_values(shape, value_dtype)).to(dtype)

    x = draw(layout_view((batch, tokens, heads, head_dim), make), label=name)
    if fault == f"{name} layout":  # overlapping rows, or head_dim not contiguous
        x = x[:1].expand(2, *x.shape[1:]) if batch >= 1 and draw(st.booleans()) else x.transpose(-1, -2)
    return x, half


@fuzzer(OP)
def fuzz_rope_rerotate(data):
    draw = data.draw
    # Mostly valid calls (checked against the reference), else exactly one argument broken.
    fault = draw(st.sampled_from([None] * 8 + ["dtype", "half", "k layout", "pos shape", "pos dtype", "inv_freq"]),
                 label="fault")
    k, half = draw_heads(draw, fault, "k")
    batch, tokens = k.shape[0], k.shape[1]
    neox = draw(st.booleans(), label="neox")

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


APPLY_OP = "lmkernels::rope_apply_"


@fuzzer(APPLY_OP)
def fuzz_rope_apply(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 8 + ["dtype", "half", "x layout", "table shape", "table dtype"]),
                 label="fault")
    x, half = draw_heads(draw, fault, "x")
    batch, tokens = x.shape[0], x.shape[1]

    table_batch = draw(st.sampled_from([1, batch]), label="table batch")
    table_shape = (table_batch, tokens, half)
    if fault == "table shape":
        table_shape = draw(st.sampled_from([(table_batch, tokens + 1, half), (tokens, half), (batch + 2, tokens, half)]))
    angle = torch.rand(table_shape, dtype=torch.float64) * 2e4 - 1e4
    table_dtype = torch.float64 if fault == "table dtype" else torch.float32
    cos, sin = angle.cos().to(table_dtype), angle.sin().to(table_dtype)
    if draw(st.booleans(), label="table views"):  # the first half of transformers' [.., 2 * half] tables
        cos, sin = torch.cat([cos, cos], -1)[..., :half], torch.cat([sin, sin], -1)[..., :half]

    original = x.clone()
    if attempt(APPLY_OP, lambda: torch.ops.lmkernels.rope_apply_(x, cos, sin) or True) is None:
        assert torch.equal(bits(x), bits(original)), "x changed by a rejected call"
        return
    check_apply_result(x, original, cos, sin)
    for isa in lmkernels.supported_cpu_isas():
        with cpu_isa(isa):
            again = original.clone()
            torch.ops.lmkernels.rope_apply_(again, cos, sin)
        assert torch.equal(bits(again), bits(x)), f"cpu path {isa} differs"
    with num_threads(1):
        single = original.contiguous()
        torch.ops.lmkernels.rope_apply_(single, cos.contiguous(), sin.contiguous())
    assert torch.equal(bits(single), bits(x)), "1 thread or contiguous copies differ"


def check_apply_result(out, original, cos, sin):
    half = cos.shape[-1]
    c, s = cos.double().unsqueeze(-2), sin.double().unsqueeze(-2)  # broadcast over heads
    first, second = original[..., :half].double(), original[..., half:2 * half].double()
    expected = torch.cat([first * c - second * s, second * c + first * s], -1)
    finite = torch.isfinite(original.float()[..., :2 * half]).all(-1, keepdim=True)
    eps = torch.finfo(original.dtype).eps
    got = torch.where(finite, out[..., :2 * half].double(), 0.0)
    want = torch.where(finite, expected, 0.0)
    scale = original[..., :2 * half].double().abs().nan_to_num(0.0, 0.0, 0.0).amax(-1, keepdim=True).clamp_min(1.0)
    assert ((got - want).abs() <= 4 * eps * scale).all(), "rope_apply_ differs from the reference"
    assert torch.equal(bits(out[..., 2 * half:]), bits(original[..., 2 * half:])), "values past rotary_dim changed"
