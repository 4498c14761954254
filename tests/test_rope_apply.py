"""rope_apply_: RoPE from per-token cos/sin tables, against transformers' formula in float64."""

from __future__ import annotations

import pytest
import torch

import lmkernels
from lmkernels import RopeConfig, rope_apply_

from conftest import devices
from reference import apply_rope

TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def tables(pos: torch.Tensor, inv_freq: torch.Tensor, dtype=torch.float32):
    """transformers' position_embeddings: cos and sin [batch, tokens, rotary_dim], both halves equal."""
    angle = pos.double()[..., None] * inv_freq.double()
    angle = torch.cat([angle, angle], dim=-1)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def hf_formula(x_bhtd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb on one tensor, in float64 (rot = cos.shape[-1])."""
    rot = cos.shape[-1]
    x = x_bhtd.double()
    c, s = cos.double().unsqueeze(1), sin.double().unsqueeze(1)
    return torch.cat([x[..., :rot] * c + rotate_half(x[..., :rot]) * s, x[..., rot:]], dim=-1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (128, 128), (80, 40), (34, 34), (2, 2), (6, 4)])
def test_equals_transformers_formula(isa, device, dtype, head_dim, rotary_dim):
    batch, heads, tokens = 2, 3, 37
    inv_freq = RopeConfig.standard(head_dim, rotary_dim=rotary_dim).inv_freq
    pos = torch.randint(0, 4000, (batch, tokens))
    cos, sin = tables(pos, inv_freq)
    x = torch.randn(batch, heads, tokens, head_dim).to(dtype)
    expected = hf_formula(x, cos, sin)
    out = x.clone().to(device)
    half = rotary_dim // 2
    assert rope_apply_(out, cos[..., :half].to(device), sin[..., :half].to(device)) is out
    torch.testing.assert_close(out.cpu().double(), expected, atol=TOL[dtype], rtol=TOL[dtype])
    assert torch.equal(out.cpu()[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("device", devices())
def test_matches_rope_at_positions(isa, device):
    """Tables built from positions give RoPE at those positions (the reference of rope_rerotate_)."""
    rope = RopeConfig.standard(64)
    pos = torch.randint(0, 9000, (2, 21))
    cos, sin = tables(pos, rope.inv_freq)
    x = torch.randn(2, 21, 4, 64)
    out = x.clone().to(device)
    rope_apply_(out, cos[..., :32].to(device), sin[..., :32].to(device), layout="bthd")
    torch.testing.assert_close(out.cpu().double(), apply_rope(x, pos, rope.inv_freq, True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_cpu_path_gives_the_same_bits(dtype):
    inv_freq = RopeConfig.standard(128, rotary_dim=120).inv_freq  # 60 pairs: SIMD tails too
    cos, sin = tables(torch.randint(0, 5000, (2, 19)), inv_freq)
    x = torch.randn(2, 5, 19, 128).to(dtype)
    results = {}
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            results[isa] = rope_apply_(x.clone(), cos[..., :60], sin[..., :60])
    finally:
        lmkernels.set_cpu_isa(None)
    for isa, out in results.items():
        assert torch.equal(out, results["scalar"]), f"{isa} differs from scalar"


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_the_result(threads):
    cos, sin = tables(torch.arange(700)[None], RopeConfig.standard(64).inv_freq)
    x = torch.randn(1, 8, 700, 64)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = rope_apply_(x.clone(), cos[..., :32], sin[..., :32])
        torch.set_num_threads(1)
        single = rope_apply_(x.clone(), cos[..., :32], sin[..., :32])
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(out, single)


@pytest.mark.parametrize("device", devices())
def test_layouts_broadcast_tables_and_strided_views(isa, device):
    pos = torch.arange(11)
    cos, sin = tables(pos[None], RopeConfig.standard(64).inv_freq)  # batch 1: shared by the batch
    base = torch.randn(3, 6, 11, 64, device=device)
    expected = hf_formula(base.cpu(), cos.expand(3, -1, -1), sin.expand(3, -1, -1))
    c, s = cos[..., :32].to(device), sin[..., :32].to(device)

    bhtd = rope_apply_(base.clone(), c, s)
    torch.testing.assert_close(bhtd.cpu().double(), expected, atol=1e-5, rtol=1e-5)

    # Every other head: the others stay untouched. 2-D tables: one sequence.
    strided = base.clone()
    rope_apply_(strided[:, ::2], c[0], s[0])
    torch.testing.assert_close(strided[:, ::2].cpu().double(), expected[:, ::2], atol=1e-5, rtol=1e-5)
    assert torch.equal(strided[:, 1::2], base[:, 1::2])

    thd = base[0].transpose(0, 1).contiguous()
    rope_apply_(thd, c[0], s[0], layout="thd")
    torch.testing.assert_close(thd.transpose(0, 1).cpu().double(), expected[0], atol=1e-5, rtol=1e-5)

    # Tables of different strides and in bfloat16 (converted to float32).
    wide = torch.zeros(1, 11, 40, device=device)
    wide[..., :32] = s
    other = rope_apply_(base.clone(), c, wide[..., :32])
    assert torch.equal(other, bhtd)
    bf16 = rope_apply_(base.clone(), c.bfloat16(), s.bfloat16())
    torch.testing.assert_close(bf16.cpu().double(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("shape", [(1, 1, 1, 16), (3, 1, 1, 8), (1, 4, 0, 16), (0, 4, 5, 16), (2, 0, 5, 16)])
def test_odd_and_empty_shapes(isa, shape):
    cos, sin = tables(torch.arange(shape[2])[None].expand(max(shape[0], 1), -1), RopeConfig.standard(shape[-1]).inv_freq)
    cos, sin = cos[: shape[0]], sin[: shape[0]]
    x = torch.randn(shape)
    half = shape[-1] // 2
    out = rope_apply_(x.clone(), cos[..., :half], sin[..., :half])
    torch.testing.assert_close(out.double(), hf_formula(x, cos, sin), atol=1e-5, rtol=1e-5)


def test_opcheck():
    cos, sin = tables(torch.arange(5)[None], RopeConfig.standard(32).inv_freq)
    for dtype in DTYPES:
        x = torch.randn(2, 5, 3, 32).to(dtype)
        args = (x, cos[..., :16].contiguous(), sin[..., :16].contiguous())
        torch.library.opcheck(torch.ops.lmkernels.rope_apply_, args)


def test_torch_compile_fullgraph():
    cos, sin = tables(torch.arange(10)[None], RopeConfig.standard(64).inv_freq)
    c, s = cos[..., :32], sin[..., :32]

    def step(q):
        q = q * 2.0
        rope_apply_(q, c, s)
        return q + 1.0

    q = torch.randn(1, 4, 10, 64)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q), step(q), atol=0, rtol=0)


class TestBadInputs:
    cos, sin = tables(torch.arange(4)[None], RopeConfig.standard(32).inv_freq)

    def call(self, x=None, cos=None, sin=None, **kw):
        x = torch.randn(1, 2, 4, 32) if x is None else x
        cos = self.cos[..., :16] if cos is None else cos
        sin = self.sin[..., :16] if sin is None else sin
        return rope_apply_(x, cos, sin, **kw)

    def test_wrong_x_dtype(self):
        with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
            self.call(x=torch.zeros(1, 2, 4, 32, dtype=torch.int32))

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="x must have 4 dims"):
            self.call(x=torch.randn(2, 4, 32))

    def test_bad_layout(self):
        with pytest.raises(ValueError, match="layout must be"):
            self.call(layout="tbhd")

    def test_integer_table(self):
        with pytest.raises(TypeError, match="cos must be a floating-point tensor"):
            self.call(cos=torch.ones(1, 4, 16, dtype=torch.int64))

    def test_table_wrong_tokens(self):
        with pytest.raises(RuntimeError, match=r"sin must be \[batch or 1, tokens, rotary_dim / 2\]"):
            self.call(sin=torch.ones(1, 5, 16))

    def test_table_wrong_rank(self):
        with pytest.raises(ValueError, match="cos must be"):
            self.call(cos=torch.ones(16))

    def test_too_many_pairs(self):
        with pytest.raises(RuntimeError, match="between 1 and head_dim / 2 = 16 pairs"):
            self.call(cos=torch.ones(1, 4, 17), sin=torch.ones(1, 4, 17))

    def test_mismatched_tables(self):
        with pytest.raises(RuntimeError, match="cos and sin must have the same shape"):
            self.call(sin=self.sin[..., :8])

    def test_table_on_other_device(self):
        with pytest.raises(ValueError, match="cos is on meta"):
            self.call(cos=torch.ones(1, 4, 16, device="meta"))

    def test_head_dim_not_contiguous(self):
        with pytest.raises(RuntimeError, match="unit stride on head_dim"):
            self.call(x=torch.randn(1, 2, 4, 64)[..., ::2])

    def test_overlapping_view(self):
        with pytest.raises(RuntimeError, match="overlapping"):
            self.call(x=torch.randn(1, 2, 1, 32).expand(1, 2, 4, 32))

    def test_table_aliasing_x(self):
        x = torch.randn(1, 4, 1, 32)  # [batch, tokens, heads, head_dim]
        with pytest.raises(RuntimeError, match="cos must not share memory with x"):
            torch.ops.lmkernels.rope_apply_(x, x.view(-1)[:64].view(1, 4, 16), self.sin[..., :16].contiguous())

    def test_x_unchanged_after_a_rejected_call(self):
        x = torch.randn(1, 2, 4, 32)
        before = x.clone()
        with pytest.raises(RuntimeError):
            self.call(x=x, sin=torch.ones(1, 4, 8), cos=torch.ones(1, 4, 8, dtype=torch.float32)[..., :7])
        assert torch.equal(x, before)
