"""save_quantized / load_quantized beyond the plain round trip: tied weights, meta-device
models, and files that do not fit the model."""

from __future__ import annotations

import pytest
import torch

from lmkernels import quant


class TiedLM(torch.nn.Module):
    """Embedding, a hidden layer, and an output head sharing the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 64)
        self.hidden = torch.nn.Linear(64, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.head = torch.nn.Linear(64, 50, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.hidden(self.embed(ids))))


def saved_tied_lm(tmp_path) -> tuple[str, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = quant.quantize_model(TiedLM(), skip=("head",), progress=False)
    ids = torch.randint(0, 50, (3, 7))
    path = str(tmp_path / "tied.safetensors")
    quant.save_quantized(model, path)
    return path, ids, model(ids)


def test_tied_weights_save_once_and_load_tied(tmp_path):
    path, ids, expected = saved_tied_lm(tmp_path)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert len({"embed.weight", "head.weight"} & keys) == 1  # stored once
    fresh = quant.load_quantized(TiedLM(), path)
    assert torch.equal(fresh(ids), expected)
    assert fresh.head.weight.data_ptr() == fresh.embed.weight.data_ptr()


def test_meta_model_loads_without_float_weights(tmp_path):
    path, ids, expected = saved_tied_lm(tmp_path)
    with torch.device("meta"):
        empty = TiedLM()
    model = quant.load_quantized(empty, path)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert isinstance(model.hidden, quant.QuantLinear)
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert torch.equal(model(ids), expected)


def test_transformers_tied_llama_round_trip(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = quant.quantize_model(transformers.LlamaForCausalLM(config).eval(), progress=False)
    ids = torch.randint(0, 96, (2, 9))
    expected = model(ids).logits
    path = str(tmp_path / "llama.safetensors")
    quant.save_quantized(model, path)
    fresh = quant.load_quantized(transformers.LlamaForCausalLM(config).eval(), path)
    assert torch.equal(fresh(ids).logits, expected)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()

    # Built wholly on the meta device, the rotary embedding's inv_freq (a buffer that is not
    # saved) would stay there: refused before the model changes.
    with torch.device("meta"):
        empty = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="inv_freq"):
        quant.load_quantized(empty, path)
    assert type(empty.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_file_that_does_not_fit_the_model(tmp_path):
    path, _, _ = saved_tied_lm(tmp_path)

    class Renamed(TiedLM):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = torch.nn.Identity()  # "hidden" is no longer a linear layer

    with pytest.raises(KeyError, match="'hidden' .* is not a linear layer"):
        quant.load_quantized(Renamed(), path)

    class Extra(TiedLM):
        def __init__(self) -> None:
            super().__init__()
            self.extra = torch.nn.Linear(4, 4)

    with pytest.raises(RuntimeError, match="extra.weight"):
        quant.load_quantized(Extra(), path)
