"""rope_rerotate_: re-rotation of cached keys, against the float64 reference in reference.py."""

from __future__ import annotations

import pytest
import torch

import lmkernels
from lmkernels import RopeConfig, rope_rerotate_

from conftest import devices
from reference import apply_rope, rope_rerotate

# Error of one rounding to the storage dtype, relative to |x| ~ 1 values.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def cached_keys(shape, rope, pos, dtype, device="cpu"):
    """Raw keys x and the cache content RoPE(x, pos) stored in `dtype`."""
    x = torch.randn(shape, dtype=torch.float64)
    k = apply_rope(x, pos, rope.inv_freq, rope.neox).to(dtype).to(device)
    return x, k


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (80, 40), (34, 34), (2, 2), (6, 4)])
def test_equals_rope_at_new_positions(isa, device, dtype, neox, head_dim, rotary_dim):
    rope = RopeConfig.standard(head_dim, rotary_dim=rotary_dim, neox=neox)
    batch, tokens, heads = 2, 7, 3
    old = torch.randint(0, 4000, (batch, tokens))
    new = torch.randint(0, 4000, (batch, tokens))
    x, k = cached_keys((batch, tokens, heads, head_dim), rope, old, dtype, device)
    rope_rerotate_(k, old.to(device), new.to(device), rope=rope)
    expected = apply_rope(x, new, rope.inv_freq, neox)
    torch.testing.assert_close(k.cpu().double(), expected, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
def test_matches_reference_to_one_rounding(isa, device, dtype, neox):
    """Against the reference applied to the same stored keys: at most one ulp of the dtype."""
    rope = RopeConfig.standard(96, rotary_dim=72, neox=neox)
    k = torch.randn(3, 33, 4, 96).to(dtype)
    old = torch.randint(0, 10_000, (3, 33))
    new = old + 517  # a whole chunk moved: one table for every row
    new[1] = torch.randint(0, 10_000, (33,))  # and one batch row with a delta per token
    expected = rope_rerotate(k, old, new, rope.inv_freq, neox)
    out = k.clone().to(device)
    rope_rerotate_(out, old.to(device), new.to(device), rope=rope)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.cpu(), expected, atol=eps, rtol=eps)
    # The values past rotary_dim are never touched.
    assert torch.equal(out.cpu()[..., 72:], k[..., 72:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
def test_every_cpu_path_gives_the_same_bits(dtype, neox):
    rope = RopeConfig.standard(128, rotary_dim=120, neox=neox)  # 60 pairs: SIMD tails too
    k = torch.randn(2, 19, 5, 128).to(dtype)
    old = torch.randint(0, 5000, (2, 19))
    new = torch.randint(0, 5000, (2, 19))
    results = {}
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            out = k.clone()
            rope_rerotate_(out, old, new, rope=rope)
            results[isa] = out
    finally:
        lmkernels.set_cpu_isa(None)
    for isa, out in results.items():
        assert torch.equal(bits(out), bits(results["scalar"])), f"{isa} differs from scalar"


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_the_result(threads):
    rope = RopeConfig.standard(64)
    k = torch.randn(4, 300, 8, 64)
    old = torch.randint(0, 9000, (4, 300))
    new = torch.randint(0, 9000, (4, 300))
    reference_out = rope_rerotate(k, old, new, rope.inv_freq, True)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = rope_rerotate_(k.clone(), old, new, rope=rope)
    finally:
        torch.set_num_threads(saved)
    single = k.clone()
    torch.set_num_threads(1)
    try:
        rope_rerotate_(single, old, new, rope=rope)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(out, single)
    torch.testing.assert_close(out, reference_out, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_shift_is_the_identity_bit_for_bit(isa, device, dtype):
    rope = RopeConfig.standard(32)
    k = torch.randn(1, 9, 2, 32).to(dtype)
    k[0, 3, 1, 5] = float("inf")
    k[0, 4, 0, 17] = float("nan")
    pos = torch.arange(9) + 100
    out = k.clone().to(device)
    rope_rerotate_(out, pos.to(device), pos.to(device), rope=rope)
    assert torch.equal(out.cpu().isnan(), k.isnan())
    assert torch.equal(out.cpu().nan_to_num(), k.nan_to_num())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("neox", [True, False])
def test_shifts_compose(isa, device, neox):
    rope = RopeConfig.standard(64, neox=neox)
    k = torch.randn(1, 16, 2, 64, device=device)
    p = torch.arange(16, device=device)
    q, s = p + 1000, p + 37
    two_steps = rope_rerotate_(rope_rerotate_(k.clone(), p, q, rope=rope), q, s, rope=rope)
    one_step = rope_rerotate_(k.clone(), p, s, rope=rope)
    torch.testing.assert_close(two_steps, one_step, atol=2e-6, rtol=2e-6)


def test_long_distance_shift_keeps_fp32_accuracy(isa):
    """A shift of 10^6 positions: the angle is reduced in float64, so fp32 keeps 1e-5."""
    rope = RopeConfig.standard(128, base=500000.0)
    old = torch.arange(8)
    new = old + 1_000_000
    x, k = cached_keys((1, 8, 2, 128), rope, old, torch.float32)
    rope_rerotate_(k, old, new, rope=rope)
    torch.testing.assert_close(k.double(), apply_rope(x, new, rope.inv_freq, True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_layouts_and_strided_views(isa, device):
    rope = RopeConfig.standard(64)
    base = torch.randn(2, 6, 11, 64, device=device)  # transformers cache: [batch, heads, tokens, dim]
    old = torch.arange(11, device=device)
    new = old + 250
    expected = rope_rerotate(base.transpose(1, 2).cpu(), old.cpu(), new.cpu(), rope.inv_freq, True)

    bhtd = base.clone()
    rope_rerotate_(bhtd, old, new, rope=rope, layout="bhtd")
    torch.testing.assert_close(bhtd.transpose(1, 2).cpu(), expected, atol=1e-6, rtol=1e-6)

    # Every other head of a larger cache: the other heads must stay untouched.
    strided = base.clone()
    view = strided[:, ::2]
    rope_rerotate_(view, old, new, rope=rope, layout="bhtd")
    torch.testing.assert_close(strided[:, ::2].transpose(1, 2).cpu(), expected[:, :, ::2], atol=1e-6, rtol=1e-6)
    assert torch.equal(strided[:, 1::2], base[:, 1::2])

    # One sequence as [tokens, heads, dim].
    thd = base[0].transpose(0, 1).contiguous()
    rope_rerotate_(thd, old, new, rope=rope, layout="thd")
    torch.testing.assert_close(thd.cpu(), expected[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 16), (3, 1, 1, 8), (1, 0, 4, 16), (0, 5, 4, 16), (2, 5, 0, 16)])
def test_odd_and_empty_shapes(isa, shape):
    rope = RopeConfig.standard(shape[-1])
    k = torch.randn(shape)
    old = torch.zeros(shape[:2], dtype=torch.int64)
    new = torch.full(shape[:2], 3, dtype=torch.int64)
    out = rope_rerotate_(k.clone(), old, new, rope=rope)
    torch.testing.assert_close(out, rope_rerotate(k, old, new, rope.inv_freq, True), atol=1e-6, rtol=1e-6)


def test_int32_positions_and_negative_deltas(isa):
    rope = RopeConfig.standard(32)
    k = torch.randn(1, 5, 2, 32)
    old = torch.tensor([50, 60, 70, 80, 90], dtype=torch.int32)
    new = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
    out = rope_rerotate_(k.clone(), old, new, rope=rope)
    expected = rope_rerotate(k, old.long(), new.long(), rope.inv_freq, True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_opcheck():
    inv_freq = RopeConfig.standard(32).inv_freq
    for dtype in DTYPES:
        k = torch.randn(2, 5, 3, 32).to(dtype)
        old = torch.randint(0, 100, (2, 5))
        new = torch.randint(0, 100, (2, 5))
        for neox in (True, False):
            torch.library.opcheck(torch.ops.lmkernels.rope_rerotate_, (k.clone(), old, new, inv_freq, neox))


def test_torch_compile_fullgraph():
    rope = RopeConfig.standard(64)

    def step(k, old, new):
        k = k * 2.0
        rope_rerotate_(k, old, new, rope=rope, layout="bhtd")
        return k + 1.0

    k = torch.randn(1, 4, 10, 64)
    old = torch.arange(10)
    new = old + 77
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(k, old, new), step(k, old, new), atol=0, rtol=0)


class TestBadInputs:
    rope = RopeConfig.standard(32)

    def call(self, k=None, old=None, new=None, **kw):
        k = torch.randn(1, 4, 2, 32) if k is None else k
        old = torch.arange(4) if old is None else old
        new = torch.arange(4) + 1 if new is None else new
        return rope_rerotate_(k, old, new, rope=self.rope, **kw)

    def test_wrong_k_dtype(self):
        with pytest.raises(TypeError, match="k must be float32, bfloat16 or float16"):
            self.call(k=torch.zeros(1, 4, 2, 32, dtype=torch.int32))

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="k must have 4 dims"):
            self.call(k=torch.randn(4, 2, 32))

    def test_head_dim_mismatch(self):
        with pytest.raises(ValueError, match="head_dim 16 but rope.head_dim is 32"):
            self.call(k=torch.randn(1, 4, 2, 16))

    def test_float_positions(self):
        with pytest.raises(TypeError, match="old_pos must hold integers"):
            self.call(old=torch.arange(4.0))

    def test_positions_wrong_length(self):
        with pytest.raises(ValueError, match=r"new_pos must be \[tokens\]"):
            self.call(new=torch.arange(5))

    def test_positions_on_other_device(self):
        with pytest.raises(ValueError, match="old_pos is on meta"):
            self.call(old=torch.arange(4, device="meta"))

    def test_bad_layout(self):
        with pytest.raises(ValueError, match="layout must be"):
            self.call(layout="tbhd")

    def test_head_dim_not_contiguous(self):
        k = torch.randn(1, 4, 2, 64)[..., ::2]
        with pytest.raises(RuntimeError, match="unit stride on head_dim"):
            self.call(k=k)

    def test_overlapping_view(self):
        k = torch.randn(1, 1, 2, 32).expand(1, 4, 2, 32)
        with pytest.raises(RuntimeError, match="overlapping"):
            self.call(k=k)

    def test_not_a_rope_config(self):
        with pytest.raises(TypeError, match="rope must be a RopeConfig"):
            rope_rerotate_(torch.randn(1, 4, 2, 32), torch.arange(4), torch.arange(4), rope=None)

    def test_raw_op_checks_inv_freq(self):
        k = torch.randn(1, 4, 2, 32)
        pos = torch.zeros(1, 4, dtype=torch.int64)
        with pytest.raises(RuntimeError, match="inv_freq must have between 1 and head_dim / 2"):
            torch.ops.lmkernels.rope_rerotate_(k, pos, pos, torch.ones(17), True)
        with pytest.raises(RuntimeError, match="inv_freq must be a contiguous 1-D float32"):
            torch.ops.lmkernels.rope_rerotate_(k, pos, pos, torch.ones(8, dtype=torch.float64), True)

    def test_raw_op_checks_positions(self):
        k = torch.randn(1, 4, 2, 32)
        inv_freq = self.rope.inv_freq
        with pytest.raises(RuntimeError, match=r"old_pos must be \[batch, tokens\]"):
            torch.ops.lmkernels.rope_rerotate_(k, torch.zeros(4, dtype=torch.int64),
                                               torch.zeros(1, 4, dtype=torch.int64), inv_freq, True)
        with pytest.raises(RuntimeError, match="new_pos must be int64"):
            torch.ops.lmkernels.rope_rerotate_(k, torch.zeros(1, 4, dtype=torch.int64),
                                               torch.zeros(1, 4, dtype=torch.int32), inv_freq, True)

    def test_k_unchanged_after_a_rejected_call(self):
        k = torch.randn(1, 4, 2, 32)
        before = k.clone()
        with pytest.raises(ValueError):
            self.call(k=k, new=torch.arange(3))
        assert torch.equal(k, before)
