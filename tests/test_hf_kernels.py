"""The kernels prefill swaps into a transformers model: fused RoPE and oneDNN linears."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from transformers.models.llama import modeling_llama  # noqa: E402

from lmkernels import hf, hf_layers  # noqa: E402

from conftest import prompts_of, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def linear_forwards_swapped(model) -> bool:
    return any("forward" in m.__dict__ for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_prefill_kernels_change_only_rounding(model):
    prompts = prompts_of([5, 40, 1, 17, 60])
    fast = hf.prefill(model, prompts, capacity=64)
    plain = hf.prefill(model, prompts, capacity=64, fuse_rope=False, onednn_linear=False)
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.caches, plain.caches):
        for layer in range(model.config.num_hidden_layers):
            torch.testing.assert_close(a.layers[layer].keys, b.layers[layer].keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.layers[layer].values, b.layers[layer].values, atol=1e-5, rtol=1e-5)


def test_prefill_uses_the_fused_rope_and_restores_the_module(model, monkeypatch):
    calls = []
    real = hf_layers.rope_apply_

    def counting(x, cos, sin, **kw):
        calls.append(tuple(x.shape))
        return real(x, cos, sin, **kw)

    monkeypatch.setattr(hf_layers, "rope_apply_", counting)
    original = modeling_llama.apply_rotary_pos_emb
    result = hf.prefill(model, prompts_of([9, 30, 4]), capacity=32)  # two rows
    assert len(calls) == 2 * model.config.num_hidden_layers * result.packing.num_rows  # q and k per layer and row
    assert modeling_llama.apply_rotary_pos_emb is original
    calls.clear()
    hf.prefill(model, prompts_of([9, 30, 4]), capacity=32, fuse_rope=False)
    assert calls == []


def test_prefill_uses_onednn_linears_and_restores_them(model):
    if not hf_layers.onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear op")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        hf.prefill(model, prompts_of([9, 30, 4]))
    assert any("_linear_pointwise" in e.name for e in prof.events())
    assert not linear_forwards_swapped(model)


def test_swaps_are_undone_when_the_forward_fails(model, monkeypatch):
    original = modeling_llama.apply_rotary_pos_emb

    def failing(*args, **kwargs):
        raise RuntimeError("attention failed")

    monkeypatch.setattr(hf, "varlen_attention", failing)
    with pytest.raises(RuntimeError, match="attention failed"):
        hf.prefill(model, prompts_of([9, 30, 4]))
    assert modeling_llama.apply_rotary_pos_emb is original
    assert not linear_forwards_swapped(model)


def test_overlapping_rope_swaps_restore_the_original(model):
    """A second prefill entering while the first holds its swap (another thread) must not
    take the first's wrapper for the original."""
    original = modeling_llama.apply_rotary_pos_emb
    first = hf_layers.FusedRope(model).__enter__()
    second = hf_layers.FusedRope(model).__enter__()
    assert second.swaps[0][1] is original
    first.__exit__()
    second.__exit__()
    assert modeling_llama.apply_rotary_pos_emb is original


def interleaved_rope(q, k, cos, sin, unsqueeze_dim=1):
    """GPT-J pairing (2i, 2i + 1): not what rope_apply_ computes."""
    def rotate(x):
        c, s = cos.unsqueeze(unsqueeze_dim)[..., ::2], sin.unsqueeze(unsqueeze_dim)[..., ::2]
        even, odd = x[..., ::2], x[..., 1::2]
        return torch.stack([even * c - odd * s, odd * c + even * s], -1).flatten(-2)
    return rotate(q), rotate(k)


def test_only_half_split_rope_functions_are_swapped():
    assert hf_layers.computes_half_split_rope(modeling_llama.apply_rotary_pos_emb)
    assert not hf_layers.computes_half_split_rope(interleaved_rope)
    assert not hf_layers.computes_half_split_rope(lambda q, k, cos, sin: q)
    assert not hf_layers.computes_half_split_rope(lambda q, k, cos, sin: 1 / 0)


def rope_inputs(requires_grad=False, tokens=6):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, tokens, 4, 16, generator=g).transpose(1, 2).requires_grad_(requires_grad)
    k = torch.randn(2, tokens, 2, 16, generator=g).transpose(1, 2)
    angle = torch.rand(1, tokens, 8, generator=g) * 6
    return q, k, torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)


def test_fused_rope_matches_transformers_and_falls_back_where_it_must():
    original = modeling_llama.apply_rotary_pos_emb
    fused = hf_layers._fused_rope(original)
    q, k, cos, sin = rope_inputs()
    expected = original(q, k, cos, sin)
    with torch.no_grad():
        got = fused(q.clone(), k.clone(), cos, sin)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)

    # Autograd through q: transformers' ops, q left as it was, gradients flow.
    q, k, cos, sin = rope_inputs(requires_grad=True)
    before = q.detach().clone()
    out_q, _ = fused(q, k, cos, sin)
    out_q.sum().backward()
    assert torch.equal(q.detach(), before) and q.grad is not None

    # Tables whose halves differ, and an explicit unsqueeze_dim: the original, untouched inputs.
    q, k, cos, sin = rope_inputs()
    sin[..., 0] += 0.5
    for args in ((q, k, cos, sin), (q, k, cos[..., :8].repeat(1, 1, 2), sin[..., :8].repeat(1, 1, 2), 1)):
        q_before = q.clone()
        with torch.no_grad():
            got = fused(*args)
        for a, b in zip(got, original(*args)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert torch.equal(q, q_before)


def test_onednn_linear_matches_f_linear_and_falls_back():
    if not hf_layers.onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear op")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.Linear(24, 8, bias=False))
    x = torch.randn(3, 40, 32)[:, ::2]  # not contiguous
    expected = model(x)
    with hf_layers.OneDnnLinear(model), torch.no_grad():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            got = model(x)
        assert sum("_linear_pointwise" in e.name for e in prof.events()) == 2
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # bfloat16 and 1-D inputs: F.linear.
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model[0](torch.randn(32))
            model.bfloat16()(x.bfloat16())
        assert not any("_linear_pointwise" in e.name for e in prof.events())
        model.float()
    with hf_layers.OneDnnLinear(model):  # autograd: F.linear, gradients flow
        model(x).sum().backward()
    assert model[0].weight.grad is not None
    assert not linear_forwards_swapped(model)


def test_onednn_linear_keeps_an_instance_forward_and_skips_a_missing_op(monkeypatch):
    if not hf_layers.onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear op")
    lin = torch.nn.Linear(8, 4)
    own = lin.forward
    lin.forward = own  # an instance-level forward set by someone else
    with hf_layers.OneDnnLinear(lin):
        assert lin.forward is not own
    assert lin.__dict__["forward"] is own

    hf_layers.onednn_linear_available.cache_clear()
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    try:
        assert not hf_layers.onednn_linear_available()
        with hf_layers.OneDnnLinear(lin):
            assert lin.forward is own
    finally:
        hf_layers.onednn_linear_available.cache_clear()
