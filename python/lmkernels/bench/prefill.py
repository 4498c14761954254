"""Prefill of many prompts through a Llama-architecture transformers model (random weights):
lmkernels prepacking against the strongest plain-transformers baselines, all computing only
the last position's logits (``logits_to_keep=1``).

Baselines: the left-padded batch (SDPA), one prompt at a time, and length-sorted batches of
8. Time to first token covers the whole batch, packing and unpacking included. Peak memory
is measured in a fresh subprocess per method (peak RSS above the loaded model, VmHWM).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import torch

from .harness import Row, compare

CORE = "prefill"
WORKLOADS = {"short": (32, 165.0, 500), "long": (32, 600.0, 2048)}  # prompts, mean, max length


def make_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
                         attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def make_prompts(workload: str) -> list[torch.Tensor]:
    count, mean, longest = WORKLOADS[workload]
    gen = torch.Generator().manual_seed(0)
    sigma = 0.7
    lengths = torch.exp(torch.randn(count, generator=gen) * sigma + torch.log(torch.tensor(mean)) - sigma**2 / 2)
    lengths = lengths.round().clamp(4, longest).long()
    return [torch.randint(1, 32000, (int(n),), generator=gen) for n in lengths]


@torch.no_grad()
def padded_batch(model, prompts: list[torch.Tensor]) -> torch.Tensor:
    """Left-padded batch, so position -1 is every prompt's last token."""
    longest = max(p.numel() for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - p.numel():] = p
        mask[i, longest - p.numel():] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=True).logits[:, -1]


@torch.no_grad()
def one_at_a_time(model, prompts):
    return torch.stack([model(input_ids=p[None], logits_to_keep=1, use_cache=True).logits[0, -1] for p in prompts])


@torch.no_grad()
def sorted_batches(model, prompts, size: int = 8):
    order = sorted(range(len(prompts)), key=lambda i: prompts[i].numel())
    out = [None] * len(prompts)
    for start in range(0, len(order), size):
        members = order[start:start + size]
        logits = padded_batch(model, [prompts[i] for i in members])
        for slot, i in enumerate(members):
            out[i] = logits[slot]
    return torch.stack(out)


def prepacked(model, prompts):
    from lmkernels import hf

    return hf.prefill(model, prompts).logits


def prepacked_only(model, prompts):
    """Prepacking alone: the last layer runs every position and the model's own RoPE and
    F.linear run, as in the baselines; only the packing and the varlen attention differ."""
    from lmkernels import hf

    return hf.prefill(model, prompts, trim_last_layer=False, fuse_rope=False, onednn_linear=False).logits


METHODS = {
    "padded batch (sdpa)": padded_batch,
    "one at a time (sdpa)": one_at_a_time,
    "sorted batches of 8": sorted_batches,
    "lmkernels prefill": prepacked,
    "lmkernels prefill, packing only": prepacked_only,
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    # ru_maxrss survives fork + exec (a child would report its parent's peak); writing 5 to
    # clear_refs resets this process's VmHWM instead.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory_mb(method: str, workload: str) -> float:
    """Peak RSS above the loaded model while `method` prefills `workload`, in a fresh process."""
    code = (
        "import json, torch; from lmkernels.bench import prefill as b; "
        f"m = b.make_model(); p = b.make_prompts({workload!r}); before = b._rss_bytes(); b._reset_peak_rss(); "
        f"b.METHODS[{method!r}](m, p); "
        "print(json.dumps(max(0, b._peak_rss_bytes() - before) / 2**20))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    model = make_model()
    rows: list[Row] = []
    for workload in (["short"] if quick else ["short", "long"]):
        prompts = make_prompts(workload)
        lengths = [p.numel() for p in prompts]
        reference = one_at_a_time(model, prompts)
        for name, fn in METHODS.items():  # every method must give the same logits
            got = fn(model, prompts)
            err = (got - reference).abs().max().item()
            if err > 1e-3:
                raise AssertionError(f"prefill bench: {name} differs from one-at-a-time by {err}")
        impls = {name: (lambda fn=fn: fn(model, prompts)) for name, fn in METHODS.items()}
        memory = {} if quick else {name: peak_memory_mb(name, workload) for name in METHODS}
        case = f"{workload}: {len(prompts)} prompts, mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}"
        # Five interleaved rounds: with three, one noisy round moved the long workload's
        # one-at-a-time median by 15%.
        rows += compare(CORE, case, impls, baseline="padded batch (sdpa)", quick=True, min_rounds=3 if quick else 5,
                        extra=lambda name, _ms: {"peak MB": memory[name]} if memory else {})
    return rows
