"""RopeConfig reads the model's own frequencies; re-rotation matches transformers' forward RoPE."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmkernels import RopeConfig, rope_inv_freq, rope_rerotate_

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}


def llama_config(**rope) -> LlamaConfig:
    return LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                       rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0})


def test_default_frequencies_match_transformers():
    config = llama_config()
    expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    assert torch.equal(RopeConfig.from_hf_config(config).inv_freq, expected)
    assert torch.equal(rope_inv_freq(64, 10000.0), expected)


@pytest.mark.parametrize("scaling", [LLAMA3, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}])
def test_scaled_frequencies_match_transformers(scaling):
    config = llama_config(**scaling)
    expected, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    assert torch.equal(RopeConfig.from_hf_config(config).inv_freq, expected)
    torch.testing.assert_close(rope_inv_freq(64, scaling["rope_theta"], scaling), expected, atol=0, rtol=1e-6)


def test_partial_rotary_factor():
    config = llama_config(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)
    rope = RopeConfig.from_hf_config(config)
    assert (rope.head_dim, rope.rotary_dim) == (64, 32)


@pytest.mark.parametrize("rope_type", ["dynamic", "longrope"])
def test_length_dependent_rope_is_refused(rope_type):
    config = SimpleNamespace(head_dim=64, rope_parameters={"rope_type": rope_type, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="cannot be re-rotated"):
        RopeConfig.from_hf_config(config)


@pytest.mark.parametrize("scaling", [None, LLAMA3])
def test_rerotation_matches_transformers_forward_rope(scaling):
    """Keys rotated by a Llama model at old positions, moved by us, equal the model's keys at new."""
    config = llama_config(**scaling) if scaling else llama_config()
    rotary = LlamaRotaryEmbedding(config)
    rope = RopeConfig.from_hf_config(config)
    raw_k = torch.randn(1, 2, 12, 64)  # [batch, kv_heads, tokens, head_dim]
    old = torch.arange(12)[None] + 3
    new = torch.arange(12)[None] + 40

    def model_rope(pos):
        cos, sin = rotary(raw_k, pos)
        _, k = apply_rotary_pos_emb(raw_k, raw_k, cos, sin)
        return k

    moved = rope_rerotate_(model_rope(old), old, new, rope=rope, layout="bhtd")
    torch.testing.assert_close(moved, model_rope(new), atol=2e-5, rtol=2e-5)


def test_bad_configs():
    with pytest.raises(ValueError, match="rotary_dim must be an int <= head_dim"):
        RopeConfig.standard(32, rotary_dim=64)
    with pytest.raises(ValueError, match="rotary_dim must be an even int"):
        rope_inv_freq(7)
    with pytest.raises(ValueError, match="inv_freq has NaN or Inf"):
        RopeConfig(8, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="not built in"):
        rope_inv_freq(8, scaling={"rope_type": "yarn", "factor": 2.0})
