"""Sparse prefill: FlexPrefill and block_sparse_attention against dense causal attention
(SDPA and our varlen path), on inputs with planted sparse structure: fp32 H=8 at N = 4k to
32k, GQA 32/8 in bf16 at 16k, and random inputs at 4k.

flex_prefill is timed end to end (index building included) and its index building alone;
the block-sparse kernel also runs on fixed masks (sink column, diagonal, random blocks) at
several densities, where its time should fall linearly with the density. When a trained
reference model is present, FlexPrefill's error and density are also measured on its real
attention (every layer's queries and keys over one full-context window of held-out text).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmkernels import varlen_attention
from lmkernels.flex_prefill import build_flex_index, flex_prefill_attention
from lmkernels.sparse import BlockIndex, block_sparse_attention

from .harness import Row, compare
from .reference_models import load_with_text, longest_context_model

CORE = "sparse"
PLANT_LOGIT = 12.0


def planted_inputs(batch: int, heads: int, n: int, dim: int, *, seed: int = 0, columns: int = 6,
                   logit: float = 8.0, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [batch, heads, n, dim] whose attention has planted sparse structure: a sink at
    token 0, `columns` strong key columns and a local band (keys of the query's own 64-token
    segment), each about `logit` above a noise background at scale 1/sqrt(dim). At +8 the
    noise's share of the attention grows with n (n noise keys against ~70 strong ones); at
    +12, closer to real models' sinks, the structure dominates at every n tested."""
    g = torch.Generator().manual_seed(seed)
    strength = dim ** 0.25 * logit ** 0.5  # strength^2 / sqrt(dim) = logit
    q = torch.randn(batch, heads, n, dim, generator=g) * 0.3
    k = torch.randn(batch, heads, n, dim, generator=g) * 0.3
    v = torch.randn(batch, heads, n, dim, generator=g)
    axis = torch.zeros(dim)
    axis[0] = 1.0
    strong = torch.cat([torch.tensor([0]), torch.randint(1, max(2, n), (columns,), generator=g)])
    q += strength * axis
    k[:, :, strong] += strength * axis
    segments = torch.randn(n // 64 + 1, dim, generator=g)
    segments[:, 0] = 0
    segments /= segments.norm(dim=-1, keepdim=True)
    code = segments[torch.arange(n) // 64]
    return (q + strength * code).to(dtype), (k + strength * code).to(dtype), v.to(dtype)


def planted_mask(heads: int, blocks: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    causal = torch.ones(blocks, blocks, dtype=torch.bool).tril()
    mask = (torch.rand(1, heads, blocks, blocks, generator=g) < density) & causal
    mask[..., 0] = True
    mask |= torch.eye(blocks, dtype=torch.bool)
    return mask


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    rows: list[Row] = []
    block = 128
    for n in ([4096] if quick else [4096, 8192, 16384, 32768]):
        heads, dim = 8, 128
        q, k, v = planted_inputs(1, heads, n, dim, seed=n, logit=PLANT_LOGIT)
        flat = [t[0].transpose(0, 1) for t in (q, k, v)]
        cu = torch.tensor([0, n], dtype=torch.int32)
        blocks = -(-n // block)
        flex_kwargs = dict(gamma=0.9, tau=0.1, min_budget=512, max_budget=None, block_size=block, scale=dim ** -0.5)
        dense_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        densities, errors = {}, {}
        impls = {
            "torch sdpa (dense)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            "lmkernels dense": lambda: varlen_attention(*flat, cu, cu),
        }
        for gamma in (0.9, 0.95):
            name = f"flex_prefill gamma={gamma} (index + kernel)"
            out, stats = flex_prefill_attention(q, k, v, gamma=gamma, return_stats=True)
            densities[name] = float(stats.density.mean())
            errors[name] = float((out - dense_out).norm() / dense_out.norm())
            impls[name] = lambda gamma=gamma: flex_prefill_attention(q, k, v, gamma=gamma)
        impls["flex index only (gamma=0.9)"] = lambda: build_flex_index(q, k, **flex_kwargs)
        densities["flex index only (gamma=0.9)"] = densities["flex_prefill gamma=0.9 (index + kernel)"]
        for target in ([0.1] if quick or n > 16384 else [0.05, 0.1, 0.2]):
            mask = planted_mask(heads, blocks, target)
            density = float(mask.sum()) / (heads * blocks * (blocks + 1) / 2)
            name = f"block sparse kernel {density:.0%}"
            densities[name] = density
            impls[name] = lambda idx=BlockIndex.from_mask(mask): block_sparse_attention(q, k, v, idx, block_size=block)
        rows += compare(CORE, f"causal N={n} H={heads} D={dim} fp32 block={block}, planted +{PLANT_LOGIT:g}", impls,
                        baseline="torch sdpa (dense)", quick=quick, min_rounds=3,
                        extra=lambda name, _ms: {"density": densities.get(name, 1.0), "rel err": errors.get(name, 0.0)})
    rows += _gqa_bf16_case(quick)
    rows += _random_inputs_case(quick)
    rows += _real_attention_rows()
    return rows


def _gqa_bf16_case(quick: bool) -> list[Row]:
    """GQA 32/8 in bf16 on planted inputs: FlexPrefill end to end and its index alone
    against SDPA (GQA by enable_gqa) and our dense varlen path."""
    n, heads, kv_heads, dim = (4096 if quick else 16384), 32, 8, 128  # bf16 SDPA at 16k: ~40 s per call on Zen 1
    q, k, v = planted_inputs(1, heads, n, dim, seed=n + 1, logit=PLANT_LOGIT, dtype=torch.bfloat16)
    k, v = k[:, ::4].contiguous(), v[:, ::4].contiguous()
    flat = [t[0].transpose(0, 1) for t in (q, k, v)]
    cu = torch.tensor([0, n], dtype=torch.int32)
    dense = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    out, stats = flex_prefill_attention(q, k, v, gamma=0.95, return_stats=True)
    density = float(stats.density.mean())
    error = float((out.float() - dense).norm() / dense.norm())
    impls = {
        "torch sdpa (dense)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "lmkernels dense": lambda: varlen_attention(*flat, cu, cu),
        "flex_prefill gamma=0.95 (index + kernel)": lambda: flex_prefill_attention(q, k, v, gamma=0.95),
        "flex index only (gamma=0.95)": lambda: build_flex_index(q, k, gamma=0.95, tau=0.1, min_budget=512,
                                                                 max_budget=None, block_size=128, scale=dim ** -0.5),
    }
    return compare(CORE, f"causal N={n} GQA {heads}/{kv_heads} D={dim} bf16 block=128, planted +{PLANT_LOGIT:g}",
                   impls, baseline="torch sdpa (dense)", quick=quick, min_rounds=3,
                   extra=lambda name, _ms: {"density": density if "flex" in name else 1.0,
                                            "rel err": error if name.startswith("flex_prefill") else 0.0})


def _real_attention_rows() -> list[Row]:
    """FlexPrefill against dense attention on a trained model's own q/k/v, every layer: one
    window of its full context over held-out text. Block 64 and min_budget 256, since the
    reference models' contexts (1-3k tokens) are short for FlexPrefill's 128/512 defaults."""
    model_dir = longest_context_model()
    loaded = load_with_text(model_dir) if model_dir is not None else None
    if loaded is None:
        return []
    model, ids, name = loaded
    n = model.config.max_position_embeddings
    captured = _capture_qkv(model, ids[:n])
    rows = []
    for gamma in (0.8, 0.9, 0.95):
        errors, densities, aware = [], [], []
        for q, k, v in captured:
            dense = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            out, stats = flex_prefill_attention(q, k, v, gamma=gamma, block_size=64, min_budget=256, return_stats=True)
            errors.append(float((out - dense).norm() / dense.norm()))
            densities.append(float(stats.density.mean()))
            aware.append(float(stats.query_aware.float().mean()))
        rows.append(Row(CORE, f"{name}: real attention, N={n}, {len(captured)} layers, block 64", f"flex gamma={gamma}",
                        0.0, 0.0, 1, extra={"density": sum(densities) / len(densities),
                                             "rel err": sum(errors) / len(errors), "worst layer err": max(errors),
                                             "query-aware heads": sum(aware) / len(aware)}))
    return rows


@torch.no_grad()
def _capture_qkv(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each layer's (q, k, v) after RoPE, [1, heads, N, D], from one forward pass."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    captured = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured.append((query.clone(), key.clone(), value.clone()))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("lmkernels_capture", capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation("lmkernels_capture")
    try:
        model(input_ids=ids[None])
    finally:
        model.set_attn_implementation(previous)
    return captured


def _random_inputs_case(quick: bool) -> list[Row]:
    """No structure at all: flex_prefill keeps most blocks and pays its index on top."""
    n, heads, dim = 4096, 8, 128
    q, k, v = (torch.randn(1, heads, n, dim, generator=torch.Generator().manual_seed(i)) for i in range(3))
    _, stats = flex_prefill_attention(q, k, v, gamma=0.9, return_stats=True)
    impls = {
        "torch sdpa (dense)": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "flex_prefill (index + kernel)": lambda: flex_prefill_attention(q, k, v, gamma=0.9),
    }
    density = float(stats.density.mean())
    return compare(CORE, f"causal N={n} H={heads} D={dim} fp32, random inputs", impls, baseline="torch sdpa (dense)",
                   quick=quick, min_rounds=3, extra=lambda name, _ms: {"density": density if name.startswith("flex") else 1.0})
