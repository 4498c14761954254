from __future__ import annotations

import pytest
import torch

import lmkernels

CUDA = torch.cuda.is_available() and lmkernels.built_with_cuda


def devices() -> list:
    """'cpu', plus 'cuda' (skipped without a GPU or a CUDA build)."""
    return [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a GPU and a CUDA build")),
    ]


def tiny_llama():
    """A randomly initialised 2-layer Llama (GQA 4/2, vocab 120) for the transformers tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval()


def prompts_of(lengths, seed=1):
    """Random prompts of `lengths` tokens from tiny_llama's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 120, (n,), generator=g) for n in lengths]


@pytest.fixture(params=lmkernels.supported_cpu_isas())
def isa(request):
    """Runs the test once per CPU path this machine supports."""
    lmkernels.set_cpu_isa(request.param)
    yield request.param
    lmkernels.set_cpu_isa(None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """Report how many fuzz cases ran per op, and how many were valid vs rejected."""
    try:
        from fuzz import OUTCOMES
    except ImportError:
        return
    if OUTCOMES:
        terminalreporter.section("fuzz cases per op")
        for op, counts in sorted(OUTCOMES.items()):
            total = sum(counts.values())
            terminalreporter.write_line(f"{op}: {total} cases ({counts['ok']} valid, {counts['error']} rejected)")
