"""rope_rerotate_ and scatter_kv_: moving a cached chunk's keys to new positions, in place or
while writing them into a paged cache (the chunk-reuse hot path).

Shapes follow a Llama-3-8B layer (8 KV heads x 128) for a 512-token chunk. Baseline: the
same delta rotation written in plain torch (fp32 math, as transformers and LMCache do it),
eager and, in the full run, torch.compile'd.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmkernels import RopeConfig, rope_rerotate_
from lmkernels.chunk_cache import scatter_kv_

from .harness import Row, compare

CORE = "rope"


def torch_rerotate_(k: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor,
                    inv_freq: torch.Tensor) -> torch.Tensor:
    """Plain-torch NeoX delta rotation of k [tokens, heads, dim] in place."""
    half = inv_freq.numel()
    angle = (new_pos - old_pos).to(torch.float32)[:, None] * inv_freq  # [tokens, half]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    x = k[..., :half].float()
    y = k[..., half : 2 * half].float()
    k[..., :half] = (x * cos - y * sin).to(k.dtype)
    k[..., half : 2 * half] = (y * cos + x * sin).to(k.dtype)
    return k


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    cases = [
        # (tokens, kv heads, head_dim, dtype, shift kind)
        (512, 8, 128, torch.bfloat16, "chunk"),
        (512, 8, 128, torch.float32, "chunk"),
        (512, 8, 128, torch.bfloat16, "per-token"),
    ]
    if not quick:
        cases += [(4096, 8, 128, torch.bfloat16, "chunk"), (512, 32, 128, torch.float16, "chunk")]
    rows: list[Row] = []
    for tokens, heads, dim, dtype, shift in cases:
        rope = RopeConfig.standard(dim, base=500000.0)
        k = torch.randn(tokens, heads, dim).to(dtype)
        old = torch.arange(tokens)
        new = old + 1234 if shift == "chunk" else torch.randperm(8 * tokens)[:tokens]
        inv_freq = rope.inv_freq
        bytes_moved = 2 * k.numel() * k.element_size()  # read + write

        impls = {
            "torch eager": lambda: torch_rerotate_(k, old, new, inv_freq),
            "lmkernels": lambda: rope_rerotate_(k, old, new, rope=rope, layout="thd"),
        }
        if not quick:
            compiled = torch.compile(torch_rerotate_, dynamic=False)
            impls["torch.compile"] = lambda: compiled(k, old, new, inv_freq)
        case = f"{tokens}x{heads}x{dim} {str(dtype).removeprefix('torch.')} {shift}"
        rows += compare(CORE, case, impls, baseline="torch eager", quick=quick,
                        extra=lambda _name, ms: {"GB/s": bytes_moved / (ms * 1e-3) / 1e9})
    rows += _scatter_case(quick)
    return rows


def _scatter_case(quick: bool) -> list[Row]:
    """A stored 512-token chunk written into a paged cache (16-slot blocks) at a new offset."""
    tokens, heads, dim, dtype = 512, 8, 128, torch.bfloat16
    rope = RopeConfig.standard(dim, base=500000.0)
    k, v = (torch.randn(tokens, heads, dim).to(dtype) for _ in range(2))
    k_cache, v_cache = (torch.zeros(256, 16, heads, dim, dtype=dtype) for _ in range(2))
    block_table = torch.randperm(256)
    new = torch.arange(tokens) + 1500
    old = torch.arange(tokens)
    slots = block_table[new // 16] * 16 + new % 16
    flat_k, flat_v = k_cache.flatten(0, 1), v_cache.flatten(0, 1)

    def torch_scatter():
        flat_k[slots] = torch_rerotate_(k.clone(), old, new, rope.inv_freq)
        flat_v[slots] = v

    impls = {
        "torch eager": torch_scatter,
        "lmkernels": lambda: scatter_kv_(k_cache, v_cache, k, v, slots, old_pos=old, new_pos=new, rope=rope),
    }
    moved = 4 * k.numel() * k.element_size()  # read k, v; write both
    return compare(CORE, f"scatter {tokens}x{heads}x{dim} bfloat16 into paged cache", impls, baseline="torch eager",
                   quick=quick, extra=lambda _n, ms: {"GB/s": moved / (ms * 1e-3) / 1e9})
