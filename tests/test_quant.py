"""Mixed 2/4-bit quantization: format, quantizer, dequantizer, quant_linear and modules."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import CUDA, devices
from reference import QUANT_STRIP_ISAS, QUANT_STRIP_MIN_ROWS
from reference import dequantize_packed, group_ranges

import lmkernels
from lmkernels import quant

ops = torch.ops.lmkernels


def nmse(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b) ** 2).mean() / (b**2).mean().clamp_min(1e-30))


def student_t(n: int, k: int, df: float = 3.0) -> torch.Tensor:
    return (torch.distributions.StudentT(df).sample((n, k)) * 0.02).float()


# ---- format ------------------------------------------------------------------------------


def random_packed(n: int, k: int, group_size: int, num_hi: int):
    """Packed tensors with arbitrary codes (all of 0..3 and 0..15 occur) and scales."""
    s = lmkernels._fake._quant_shape(n, k, group_size, num_hi)
    lo = torch.randint(0, 256, (n, s["lo_stride"]), dtype=torch.uint8)
    hi = torch.randint(0, 256, (s["hi_quads"], 32), dtype=torch.uint8)
    hi_groups = torch.stack([torch.randperm(s["groups"])[:num_hi].sort().values for _ in range(n)]).to(torch.int16)
    scales = torch.randint(0, 256, (n, s["groups"]), dtype=torch.uint8)
    super_scales = (torch.rand(n, s["super_blocks"], 2) * 0.1).half()
    return lo, hi, hi_groups, scales, super_scales


@pytest.mark.parametrize("n,k,group_size,num_hi", [(5, 256, 32, 3), (3, 100, 32, 1), (4, 700, 64, 5), (2, 20, 32, 0),
                                                   (3, 512, 256, 2), (6, 384, 128, 3), (2, 96, 32, 3)])
def test_dequantize_matches_format_description(n, k, group_size, num_hi):
    packed = random_packed(n, k, group_size, num_hi)
    got = ops.dequantize_weight(*packed, k, group_size)
    assert torch.equal(got, dequantize_packed(*packed, k, group_size))


def test_boundary_codes_roundtrip():
    # Weights sitting exactly on the codes 0, 3 (2-bit) and 0, 15 (4-bit) of a group come back
    # exactly; the step 15/16 makes the fp16 super-scale d = step / 15 exact.
    k, step = 64, 15 / 16
    w = torch.zeros(2, k)
    w[:, :32] = torch.tensor([0.0, 3.0 * step] * 16)
    w[:, 32:] = torch.tensor([0.0, 15.0 * step] * 16)
    q = quant.quantize(w, group_size=32, frac_4bit=0.5)
    assert q.hi_groups.tolist() == [[1], [1]]
    assert torch.equal(quant.dequantize(q), w)


# ---- quantizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
def test_quantize_error_bounds(group_size):
    w = student_t(48, 1000)
    q = quant.quantize(w, group_size=group_size, frac_4bit=0.25)
    wd = quant.dequantize(q)
    # Per element: within half a step of its group's decoded grid, unless clamped to its ends.
    sc = (q.scales.long() & 15).float()
    mc = (q.scales.long() >> 4).float()
    upg = group_size // 32
    block = (torch.arange(sc.shape[1]) * upg) // 8
    step = (q.super_scales[:, :, 0].float()[:, block] * sc).repeat_interleave(group_size, 1)[:, :1000]
    low = -(q.super_scales[:, :, 1].float()[:, block] * mc).repeat_interleave(group_size, 1)[:, :1000]
    qmax = torch.full_like(sc, 3.0)
    qmax[torch.arange(48)[:, None], q.hi_groups.long()] = 15.0
    high = low + step * qmax.repeat_interleave(group_size, 1)[:, :1000]
    inside = (w >= low) & (w <= high)
    err = (wd - w).abs()
    assert bool((err[inside] <= step[inside] / 2 * (1 + 1e-5) + 1e-7).all())
    assert bool((err[~inside] <= torch.maximum(low - w, w - high)[~inside] + 1e-6).all())


def test_mixed_precision_sits_between_uniform_2_and_4_bit():
    w = student_t(64, 1024)

    def rel(frac: float) -> float:
        return float((quant.dequantize(quant.quantize(w, frac_4bit=frac)) - w).norm() / w.norm())

    e2, mixed, e4 = rel(0.0), rel(0.2), rel(1.0)
    assert e4 < mixed < e2
    assert e2 < 0.40 and mixed < 0.30 and e4 < 0.10  # fitted k-quant-style scales (RTN 2-bit: ~0.5)


def test_selected_groups_are_the_widest():
    w = student_t(16, 1000)
    q = quant.quantize(w, group_size=32, frac_4bit=0.2, select="range")
    ranges = group_ranges(w, 32)
    n4 = q.num_4bit_groups
    assert n4 == round(0.2 * 32)
    for r in range(16):
        order = sorted(range(ranges.shape[1]), key=lambda g: (-ranges[r, g].item(), g))
        assert q.hi_groups[r].tolist() == sorted(order[:n4])


def test_error_selection_reduces_error():
    w = student_t(32, 1024)
    err = {}
    for select in ("range", "error"):
        err[select] = float((quant.dequantize(quant.quantize(w, select=select)) - w).norm())
    assert err["error"] <= err["range"] * 1.01


def test_importance_weights_the_fit():
    w = student_t(16, 512)
    importance = torch.ones(512)
    importance[::4] = 100.0  # within every group, a quarter of the inputs matter most
    plain = quant.dequantize(quant.quantize(w))
    weighted = quant.dequantize(quant.quantize(w, importance=importance))
    hot = slice(0, None, 4)
    assert (weighted[:, hot] - w[:, hot]).norm() < 0.9 * (plain[:, hot] - w[:, hot]).norm()


def test_constant_and_zero_groups():
    w = torch.zeros(3, 96)
    w[1] = -0.5  # constant negative: the min alone
    w[2, :32] = 0.25  # constant positive: the top code
    q = quant.quantize(w, frac_4bit=0.34)
    wd = quant.dequantize(q)
    assert torch.isfinite(wd).all()
    assert torch.equal(wd[0], w[0])
    # Only the fp16 rounding of the super-block scales (d = value / 15) remains.
    assert torch.allclose(wd, w, rtol=1e-3, atol=0)


@pytest.mark.parametrize("k", [384, 1536, 4096, 14336])
def test_default_bits_per_weight(k):
    q = quant.quantize(torch.randn(8, k))
    assert q.bits_per_weight <= 2.9
    expected_bytes = sum(t.numel() * t.element_size() for t in q.tensors())
    assert math.isclose(q.bits_per_weight, 8 * expected_bytes / (8 * k))


def test_quantize_is_thread_count_invariant():
    w = student_t(40, 700)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = quant.quantize(w, frac_4bit=0.3).tensors()
        torch.set_num_threads(2)
        two = quant.quantize(w, frac_4bit=0.3).tensors()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


# ---- matmul ------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 7, 16, 33])
@pytest.mark.parametrize("n,k,group_size", [(17, 300, 32), (64, 1024, 32), (9, 20, 32), (33, 640, 64),
                                            (8, 1000, 128), (5, 512, 256)])
def test_linear_matches_dequantized_weight(isa, m, n, k, group_size):
    w = student_t(n, k)
    q = quant.quantize(w, group_size=group_size, frac_4bit=0.25)
    x = torch.randn(m, k)
    bias = torch.randn(n)
    got = quant.linear(x, q, bias)
    ref = torch.nn.functional.linear(x, quant.dequantize(q), bias)
    assert got.shape == (m, n) and got.dtype == torch.float32
    assert nmse(got, ref) <= 5e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_low_precision_activations(isa, dtype):
    w = student_t(48, 777)
    q = quant.quantize(w)
    x = torch.randn(2, 3, 777).to(dtype)
    got = quant.linear(x, q)
    ref = torch.nn.functional.linear(x.float(), quant.dequantize(q))
    assert got.shape == (2, 3, 48) and got.dtype == dtype
    assert nmse(got, ref) <= 5e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_non_contiguous_x_and_16_bit_rounding(isa, dtype):
    # The op reads strided x through a copy and rounds its float result itself: the same bits
    # as the float path's result rounded by Tensor.to.
    q = quant.quantize(student_t(40, 320))
    x = torch.randn(320, 6).to(dtype).T
    assert not x.is_contiguous()
    got = quant.linear(x, q)
    assert got.dtype == dtype and torch.equal(got, quant.linear(x.float().contiguous(), q).to(dtype))


def test_linear_activations_larger_than_the_kept_scratch(isa):
    # Over 4 MB of quantized activations: the op allocates for this call instead of growing the
    # buffer each thread keeps; a small call afterwards still reads its own activations.
    q = quant.quantize(student_t(8, 4096))
    x = torch.randn(1100, 4096)
    ref = torch.nn.functional.linear(x, quant.dequantize(q))
    assert nmse(quant.linear(x, q), ref) <= 5e-4
    assert nmse(quant.linear(x[:1], q), ref[:1]) <= 5e-4


@pytest.mark.parametrize("k, group_size, frac_4bit", [(1000, 32, 0.3), (2600, 32, 0.2), (2600, 64, 0.35), (3000, 128, 0.5),
                                                     (2100, 256, 0.7), (9000, 32, 0.23), (8300, 128, 0.5)])
def test_linear_every_isa_gives_the_same_bits(k, group_size, frac_4bit):
    # More than 8 super-blocks (several vector steps of the float combination), every units-per-group
    # case of the high plane's expansion, and rows whose 4-bit units start and end mid-quad; rows
    # over 8192 take the VNNI high pass over the pairs-ordered activations.
    w = student_t(37, k)
    q = quant.quantize(w, group_size=group_size, frac_4bit=frac_4bit)
    # 6 rows run chunks of 4 and 2 activation rows; 1 and 3 rows the single-row and 3-row forms.
    x = torch.randn(6, k)
    for rows in (6, 1, 3):
        outs = {}
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            outs[isa] = quant.linear(x[:rows], q)
        lmkernels.set_cpu_isa(None)
        for isa, out in outs.items():
            assert torch.equal(out, outs["scalar"]), (isa, rows)


STRIP_PATHS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in lmkernels.supported_cpu_isas(),
                                                           reason=f"needs the {isa} cpu path"))
               for isa in QUANT_STRIP_ISAS]


@pytest.mark.parametrize("strip_isa", STRIP_PATHS)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256])
@pytest.mark.parametrize("n, k, m", [(16, 256, 8), (37, 300, 17), (5, 40, 50), (130, 1000, 33)])
def test_linear_strips_match_the_row_kernels(strip_isa, n, k, m, group_size):
    # Partial strips (n % 16), partial tiles (m % 16), several activation tiles, k not a multiple
    # of 32 or of a super-block, every units-per-group case, bias.
    w = student_t(n, k)
    q = quant.quantize(w, group_size=group_size, frac_4bit=0.3)
    x, bias = torch.randn(m, k), torch.randn(n)
    ref = torch.nn.functional.linear(x.double(), quant.dequantize(q).double(), bias.double())
    try:
        lmkernels.set_cpu_isa(strip_isa)
        got = quant.linear(x, q, bias)
        with_bf16_x = quant.linear(x.bfloat16(), q, bias.bfloat16())
        lmkernels.set_cpu_isa("avx512")  # the row kernels (every ISA's give the same bits)
        rows = quant.linear(x, q, bias)
    finally:
        lmkernels.set_cpu_isa(None)
    # The same int8 activations and exact integer block sums as the row kernels; only the
    # float combination's order differs.
    assert nmse(got.double(), rows.double()) <= 1e-10
    assert not torch.equal(got, rows)  # the strips ran, not the row kernels: their float order differs
    assert nmse(got.double(), ref) <= 5e-4
    assert with_bf16_x.dtype == torch.bfloat16 and nmse(with_bf16_x.double(), ref) <= 5e-4


@pytest.mark.skipif("amx" not in lmkernels.supported_cpu_isas(), reason="needs AMX-INT8 (Sapphire Rapids or later)")
def test_linear_amx_and_vnni_strips_give_the_same_bits():
    q = quant.quantize(student_t(70, 1000), frac_4bit=0.3)
    x = torch.randn(40, 1000)
    try:
        lmkernels.set_cpu_isa("amx")
        amx = quant.linear(x, q)
        lmkernels.set_cpu_isa("avx512_vnni")
        vnni = quant.linear(x, q)
    finally:
        lmkernels.set_cpu_isa(None)
    assert torch.equal(amx, vnni)


@pytest.mark.parametrize("strip_isa", STRIP_PATHS)
def test_linear_strips_refuse_bad_hi_groups(strip_isa):
    q = quant.quantize(student_t(20, 256), frac_4bit=0.5)
    bad = q.hi_groups.clone()
    bad[3] = bad[3].flip(0)  # descending
    broken = quant.QuantizedWeight(q.codes_lo, q.codes_hi, bad, q.scales, q.super_scales,
                                   in_features=q.in_features, group_size=q.group_size)
    try:
        lmkernels.set_cpu_isa(strip_isa)
        with pytest.raises(RuntimeError, match="hi_groups"):
            quant.linear(torch.randn(QUANT_STRIP_MIN_ROWS, 256), broken)
    finally:
        lmkernels.set_cpu_isa(None)


@pytest.mark.parametrize("position", [0, 29, 30, 31, 61, 68])
def test_linear_row_kernels_refuse_unordered_hi_groups(isa, position):
    # 70 4-bit groups per row: the row check's vector steps (31 neighbour pairs each) and their
    # edges; equal neighbours are as wrong as descending ones.
    q = quant.quantize(student_t(4, 3200), frac_4bit=0.7)
    assert q.num_4bit_groups == 70
    x = torch.randn(1, 3200)
    quant.linear(x, q)
    bad = q.hi_groups.clone()
    bad[2, position + 1] = bad[2, position]
    broken = dataclasses.replace(q, hi_groups=bad)
    with pytest.raises(RuntimeError, match="strictly ascending"):
        quant.linear(x, broken)


@pytest.mark.parametrize("rows", [5, 40, 70])
def test_linear_is_thread_count_invariant(rows):
    # 5 rows: the row kernel; 40: the strips (VNNI and AMX); 70 x 512 values: activations
    # quantized by the threads too. Three threads on two cores: more per-thread scratch regions.
    q = quant.quantize(student_t(300, 512))
    x = torch.randn(rows, 512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = quant.linear(x, q)
        results = []
        for count in (2, 3):
            torch.set_num_threads(count)
            results.append(quant.linear(x, q))
    finally:
        torch.set_num_threads(threads)
    for other in results:
        assert torch.equal(one, other)


def test_linear_close_to_float_weights():
    w = torch.randn(64, 2048) * 0.02
    x = torch.randn(4, 2048)
    ref = x @ w.T
    e2 = nmse(quant.linear(x, quant.quantize(w, frac_4bit=0.0)), ref)
    e4 = nmse(quant.linear(x, quant.quantize(w, frac_4bit=1.0)), ref)
    assert e4 < 0.01 < e2 < 0.2


@pytest.mark.parametrize("device", devices())
def test_linear_zero_rows_and_devices(device):
    q = quant.quantize(student_t(16, 64)).to(device)
    x = torch.randn(0, 64, device=device)
    assert quant.linear(x, q).shape == (0, 16)
    x = torch.randn(3, 64, device=device)
    ref = torch.nn.functional.linear(x, quant.dequantize(q))
    assert nmse(quant.linear(x, q), ref) <= 5e-4


needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 33])
@pytest.mark.parametrize("n,k,group_size,frac_4bit", [(17, 300, 32, 0.25), (64, 1024, 32, 0.2), (9, 20, 32, 1.0),
                                                      (33, 640, 64, 0.0), (8, 1000, 128, 0.5), (5, 512, 256, 0.25)])
def test_linear_cuda_matches_dequantized_weight_and_cpu(dtype, m, n, k, group_size, frac_4bit):
    q = quant.quantize(student_t(n, k), group_size=group_size, frac_4bit=frac_4bit)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    got = quant.linear(x.cuda(), q.to("cuda"), bias.cuda())
    assert got.device.type == "cuda" and got.dtype == dtype and got.shape == (m, n)
    ref = torch.nn.functional.linear(x.float(), quant.dequantize(q), bias)
    assert nmse(got.cpu(), ref) <= 5e-4
    if m <= 8:
        # The GEMV takes the CPU's int8 activations and exact integer sums; only the fp32 order
        # of combining them (and so a 16-bit output's last bit) differs.
        assert nmse(got.cpu(), quant.linear(x, q, bias)) <= (1e-10 if dtype == torch.float32 else 1e-4)


@needs_cuda
@pytest.mark.parametrize("m", [1, 12])
def test_linear_cuda_nan_activation_poisons_its_row(m):
    q = quant.quantize(student_t(24, 512)).to("cuda")
    x = torch.randn(m, 512, device="cuda")
    x[0, 7] = float("nan")
    y = quant.linear(x, q)
    assert y[0].isnan().all() and not y[1:].isnan().any()


@needs_cuda
@pytest.mark.parametrize("m", [2, 12])  # the GEMV and the batched path
def test_opcheck_cuda(m):
    q = quant.quantize(student_t(24, 200), frac_4bit=0.3).to("cuda")
    torch.library.opcheck(ops.dequantize_weight, (*q.tensors(), q.in_features, q.group_size))
    x = torch.randn(m, 200, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(24, device="cuda")
    torch.library.opcheck(ops.quant_linear, (x, *q.tensors(), bias, q.in_features, q.group_size))


@needs_cuda
def test_linear_cuda_batched_path_spans_several_panels():
    # 600 x 65536 weights: more than one dequantized panel (2^25 elements), the last partial.
    q = quant.quantize(torch.randn(600, 65536) * 0.02, group_size=128)
    x = torch.randn(12, 65536, dtype=torch.bfloat16)
    got = quant.linear(x.cuda(), q.to("cuda"))
    ref = torch.nn.functional.linear(x.float(), quant.dequantize(q))
    assert nmse(got.cpu(), ref) <= 5e-4


# ---- modules, save/load, compile ---------------------------------------------------------


def test_quant_linear_module_state_dict_and_safetensors(tmp_path):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(96, 130), torch.nn.GELU(), torch.nn.Linear(130, 40, bias=False),
                                torch.nn.Linear(40, 7))
    quant.quantize_model(model, skip=("3",), progress=False)
    assert isinstance(model[0], quant.QuantLinear) and isinstance(model[2], quant.QuantLinear)
    assert type(model[3]) is torch.nn.Linear and not isinstance(model[3], quant.QuantLinear)
    x = torch.randn(5, 96)
    y = model(x)
    path = str(tmp_path / "model.safetensors")
    quant.save_quantized(model, path)
    fresh = torch.nn.Sequential(torch.nn.Linear(96, 130), torch.nn.GELU(), torch.nn.Linear(130, 40, bias=False),
                                torch.nn.Linear(40, 7))
    quant.load_quantized(fresh, path)
    assert torch.equal(fresh(x), y)
    rebuilt = quant.QuantLinear.from_state_dict(model[0].state_dict())
    assert torch.equal(rebuilt(x), model[0](x))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_model_with_calibration(method):
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16))
    scale = torch.ones(64)
    scale[:8] = 20.0  # a few inputs carry most of the activation energy
    batches = [torch.randn(32, 64) * scale for _ in range(4)]
    held_out = [torch.randn(32, 64) * scale for _ in range(4)]
    reference = [model(b) for b in held_out]
    import copy

    plain = quant.quantize_model(copy.deepcopy(model), progress=False)
    aware = quant.quantize_model(copy.deepcopy(model), calibration=batches, method=method, progress=False)
    err_plain = sum(nmse(plain(b), r) for b, r in zip(held_out, reference))
    err_aware = sum(nmse(aware(b), r) for b, r in zip(held_out, reference))
    assert err_aware < err_plain


class _TokenModel(torch.nn.Module):
    """A transformers-style module: input_ids and attention_mask in, hidden states out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 32)
        self.proj = torch.nn.Linear(32, 24)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Padded positions get a large, meaningless input, as a real model's padded hidden states.
        h = self.embed(input_ids) + 100.0 * (1 - attention_mask[..., None].float())
        return self.proj(h)


@pytest.mark.parametrize("full", [True, False])
def test_calibration_statistics_leave_out_padding(full):
    torch.manual_seed(3)
    model = _TokenModel()
    lengths = [5, 9, 2]
    ids = [torch.randint(1, 50, (n,)) for n in lengths]
    padded = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, seq in enumerate(ids):
        padded[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    one_by_one = [dict(input_ids=seq[None], attention_mask=torch.ones(1, len(seq), dtype=torch.long)) for seq in ids]
    with_mask = quant._input_statistics(model, ["proj"], [dict(input_ids=padded, attention_mask=mask)], full)
    unpadded = quant._input_statistics(model, ["proj"], one_by_one, full)
    torch.testing.assert_close(with_mask["proj"], unpadded["proj"], rtol=1e-5, atol=1e-6)
    # Given as positional inputs there is no mask to read: every position counts.
    every = quant._input_statistics(model, ["proj"], [(padded, mask)], full)
    assert not torch.allclose(every["proj"], unpadded["proj"])


class _SharedInputs(torch.nn.Module):
    """q and k read one tensor; v and o read tensors made and freed in turn, so a freed one's
    id can come back for the next."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(16, 16) for _ in range(4))
        self.seen: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.q(x) + self.k(x)
        for name, layer, scale in (("v", self.v, 2.0), ("o", self.o, -3.0)):
            temp = x.mul(scale)  # one new tensor: it takes the id the last one freed
            self.seen[name] = temp.detach().clone()
            out = out + layer(temp)
            del temp
        return out


@pytest.mark.parametrize("full", [True, False])
def test_calibration_statistics_of_shared_and_reused_inputs(full):
    torch.manual_seed(4)
    model = _SharedInputs()
    batches = [torch.randn(8, 16) for _ in range(3)]
    stats = quant._input_statistics(model, ["q", "k", "v", "o"], batches, full)
    inputs = {"q": list(batches), "k": list(batches), "v": [], "o": []}
    for b in batches:
        model(b)
        inputs["v"].append(model.seen["v"])
        inputs["o"].append(model.seen["o"])
    for name, xs in inputs.items():
        x = torch.cat(xs).double()
        expected = x.T @ x if full else (x * x).mean(0).float()
        torch.testing.assert_close(stats[name], expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def correlated_inputs(rows: int, k: int, seed: int) -> torch.Tensor:
    """Samples of one fixed distribution with correlated features (the mix depends on k only)."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(k)) / k**0.5
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g) @ mix + 0.1 * torch.randn(rows, k, generator=g)


@pytest.mark.parametrize("k,group_size,frac", [(768, 32, 0.2), (300, 64, 0.0), (1000, 128, 1.0), (200, 256, 0.5)])
def test_gptq_reduces_output_error(k, group_size, frac):
    w = student_t(96, k)
    x, x_test = correlated_inputs(4 * k, k, 0), correlated_inputs(1024, k, 1)
    hessian = x.double().T @ x.double()
    ref = x_test @ w.T
    rtn = quant.quantize(w, group_size=group_size, frac_4bit=frac, importance=(x * x).mean(0))
    gptq = quant.quantize(w, group_size=group_size, frac_4bit=frac, hessian=hessian)
    err_rtn = nmse(x_test @ quant.dequantize(rtn).T, ref)
    err_gptq = nmse(x_test @ quant.dequantize(gptq).T, ref)
    assert err_gptq < 0.85 * err_rtn, (err_gptq, err_rtn)
    # Same bit budget and the same 4-bit groups (chosen on the original weights).
    assert gptq.bits_per_weight == rtn.bits_per_weight
    top = torch.sort(group_ranges(w, group_size), dim=1, descending=True, stable=True).indices[:, : gptq.num_4bit_groups]
    assert torch.equal(gptq.hi_groups.long(), top.sort(1).values)


def test_gptq_without_correlations_is_round_to_nearest():
    # A diagonal Hessian has no off-diagonal terms to carry errors: GPTQ rounds to nearest,
    # with the diagonal as importance.
    w = student_t(40, 320)
    diag = torch.rand(320) + 0.5
    gptq = quant.quantize(w, frac_4bit=0.25, hessian=torch.diag(diag).double())
    rtn = quant.quantize(w, frac_4bit=0.25, importance=diag)
    assert torch.equal(quant.dequantize(gptq), quant.dequantize(rtn))


def test_gptq_handles_dead_inputs_and_is_thread_invariant():
    w = student_t(33, 200)
    x = correlated_inputs(800, 200, 3)
    x[:, 10:20] = 0  # inputs that never fire: zero Hessian rows and columns
    hessian = x.double().T @ x.double()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = quant.quantize(w, hessian=hessian)
        torch.set_num_threads(2)
        two = quant.quantize(w, hessian=hessian)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one.tensors(), two.tensors()))
    assert torch.isfinite(quant.dequantize(one)).all()


def test_transformers_model_quantizes():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        ref = model(ids).logits
        quant.quantize_model(model, frac_4bit=1.0, progress=False)
        got = model(ids).logits
    assert isinstance(model.model.layers[0].mlp.down_proj, quant.QuantLinear)
    assert type(model.lm_head) is torch.nn.Linear
    assert nmse(got, ref) < 0.05


def test_opcheck_and_compile():
    w = student_t(24, 200)
    torch.library.opcheck(ops.quantize_weight, (w, 32, 2, "range", None))
    x = correlated_inputs(400, 200, 0).double()
    torch.library.opcheck(ops.quantize_weight_gptq, (w, x.T @ x, 32, 2, "error", 0.01))
    q = quant.quantize(w, frac_4bit=0.3)
    torch.library.opcheck(ops.dequantize_weight, (*q.tensors(), q.in_features, q.group_size))
    x = torch.randn(3, 200)
    bias = torch.randn(24)
    torch.library.opcheck(ops.quant_linear, (x, *q.tensors(), bias, q.in_features, q.group_size))
    compiled = torch.compile(lambda x: quant.linear(x, q, bias), fullgraph=True)
    assert torch.equal(compiled(x), quant.linear(x, q, bias))


# ---- bad inputs --------------------------------------------------------------------------


def test_quantize_rejects_bad_input():
    w = torch.randn(4, 64)
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize(w[0])
    with pytest.raises(TypeError, match="float32"):
        quant.quantize(w.to(torch.int32))
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(w, group_size=48)
    with pytest.raises(ValueError, match="frac_4bit"):
        quant.quantize(w, frac_4bit=1.5)
    with pytest.raises(ValueError, match="select"):
        quant.quantize(w, select="best")
    with pytest.raises(ValueError, match="importance"):
        quant.quantize(w, importance=torch.ones(3))
    bad = w.clone()
    bad[2, 5] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        quant.quantize(bad)
    bad[2, 5] = float("inf")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        quant.quantize(bad)
    with pytest.raises(RuntimeError, match="importance must be finite"):
        quant.quantize(w, importance=-torch.ones(64))
    with pytest.raises(RuntimeError, match="num_4bit_groups"):
        ops.quantize_weight(w, 32, 3, "range", None)
    with pytest.raises(RuntimeError, match="too large"):
        quant.quantize(w * 1e8)
    h = torch.eye(64, dtype=torch.float64)
    with pytest.raises(ValueError, match="hessian must be a \\[64, 64\\]"):
        quant.quantize(w, hessian=h[:5])
    with pytest.raises(ValueError, match="not both"):
        quant.quantize(w, hessian=h, importance=torch.ones(64))
    with pytest.raises(ValueError, match="damp"):
        quant.quantize(w, hessian=h, damp=-1.0)
    bad_h = h.clone()
    bad_h[3, 4] = float("nan")
    with pytest.raises(RuntimeError, match="quantize_weight_gptq: hessian contains NaN"):
        quant.quantize(w, hessian=bad_h)
    with pytest.raises(RuntimeError, match="negative diagonal"):
        quant.quantize(w, hessian=-h)
    with pytest.raises(RuntimeError, match="hessian must be floating point"):
        ops.quantize_weight_gptq(w, h.long(), 32, 0, "range", 0.01)
    with pytest.raises(ValueError, match="method"):
        quant.quantize_model(torch.nn.Linear(4, 4), method="awq")


def test_linear_rejects_bad_input():
    q = quant.quantize(torch.randn(8, 64), frac_4bit=0.5)
    with pytest.raises(RuntimeError, match="in_features=64"):
        quant.linear(torch.randn(2, 65), q)
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        quant.linear(torch.randn(2, 64).double(), q)
    with pytest.raises(RuntimeError, match="bias must be"):
        quant.linear(torch.randn(2, 64), q, torch.randn(9))
    with pytest.raises(TypeError, match="QuantizedWeight"):
        quant.linear(torch.randn(2, 64), torch.randn(8, 64))
    lo, hi, hg, sc, ss = q.tensors()
    with pytest.raises(RuntimeError, match="codes_lo must have shape"):
        ops.quant_linear(torch.randn(1, 64), lo[:, :-1].contiguous(), hi, hg, sc, ss, None, 64, 32)
    with pytest.raises(RuntimeError, match="super_scales must be"):
        ops.quant_linear(torch.randn(1, 64), lo, hi, hg, sc, ss.float(), None, 64, 32)
    with pytest.raises(RuntimeError, match="scales must have shape"):
        ops.quant_linear(torch.randn(1, 65), lo, hi, hg, sc, ss, None, 65, 32)
    bad_groups = hg.clone()
    bad_groups[3, 0] = 7
    with pytest.raises(RuntimeError, match="quant_linear: hi_groups rows must hold strictly ascending"):
        ops.quant_linear(torch.randn(1, 64), lo, hi, bad_groups, sc, ss, None, 64, 32)
    with pytest.raises(RuntimeError, match="strictly ascending"):
        ops.dequantize_weight(lo, hi, bad_groups, sc, ss, 64, 32)
    with pytest.raises(RuntimeError, match="group_size"):
        ops.dequantize_weight(lo, hi, hg, sc, ss, 64, 48)
