"""varlen_attention against torch's scaled_dot_product_attention (same run, same inputs).

Dense causal: one sequence of N tokens, where SDPA runs its own flash kernel; the target is
to stay within 1.2x of it. Varlen: a batch of prompts with log-normal lengths, where SDPA
needs either padding plus a mask or one call per prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmkernels import varlen_attention

from .harness import Row, compare, plot_series

CORE = "attention"


def _dense_case(n: int, heads_q: int, heads_kv: int, dim: int, dtype: torch.dtype, quick: bool) -> list[Row]:
    q = torch.randn(n, heads_q, dim, dtype=dtype)
    k = torch.randn(n, heads_kv, dim, dtype=dtype)
    v = torch.randn(n, heads_kv, dim, dtype=dtype)
    cu = torch.tensor([0, n], dtype=torch.int32)
    qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))
    gqa = heads_q != heads_kv
    flops = 4 * n * n * dim * heads_q / 2
    impls = {
        "torch sdpa": lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa),
        "lmkernels": lambda: varlen_attention(q, k, v, cu, cu),
    }
    case = f"causal N={n} H={heads_q}/{heads_kv} D={dim} {str(dtype).removeprefix('torch.')}"
    return compare(CORE, case, impls, baseline="torch sdpa", quick=quick,
                   extra=lambda _n, ms: {"GFLOP/s": flops / (ms * 1e-3) / 1e9})


def _varlen_case(prompts: int, mean: float, dim: int, quick: bool) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    sigma = 0.6
    lengths = torch.exp(torch.randn(prompts, generator=gen) * sigma + torch.log(torch.tensor(mean)) - sigma**2 / 2)
    lengths = lengths.round().clamp(1, 4 * mean).long().tolist()
    heads_q, heads_kv = 8, 8
    total = sum(lengths)
    q = torch.randn(total, heads_q, dim)
    k = torch.randn(total, heads_kv, dim)
    v = torch.randn(total, heads_kv, dim)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    longest = max(lengths)

    def pad(t):
        out = t.new_zeros(prompts, longest, t.shape[1], dim)
        for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            out[i, : b - a] = t[a:b]
        return out.transpose(1, 2)

    qp, kp, vp = pad(q), pad(k), pad(v)
    valid = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    causal = torch.ones(longest, longest, dtype=torch.bool).tril()
    mask = (causal[None] & valid[:, None, :])[:, None]  # [prompts, 1, L, L]
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))

    def per_prompt():
        return [F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                               v[a:b].transpose(0, 1), is_causal=True) for a, b in spans]

    impls = {
        "sdpa padded+mask": lambda: F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask),
        "sdpa per prompt": per_prompt,
        "lmkernels": lambda: varlen_attention(q, k, v, cu, cu),
    }
    case = f"varlen {prompts} prompts mean={mean:.0f} max={longest} D={dim}"
    return compare(CORE, case, impls, baseline="sdpa padded+mask", quick=quick)


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    rows: list[Row] = []
    sizes = [1024] if quick else [2048, 4096, 8192]
    for n in sizes:
        rows += _dense_case(n, 8, 8, 128, torch.float32, quick)
        rows += _dense_case(n, 8, 8, 128, torch.bfloat16, quick)
    rows += _dense_case(sizes[0], 32, 8, 128, torch.bfloat16, quick)
    rows += _varlen_case(32, 165, 64, quick)
    if not quick:
        rows += _varlen_case(32, 600, 64, quick)
    if out_dir is not None and len(sizes) > 1:
        for dtype in ("float32", "bfloat16"):
            series: dict[str, list[tuple[float, float]]] = {}
            for r in rows:
                if r.case.startswith("causal") and "H=8/8" in r.case and r.case.endswith(dtype):
                    n = int(r.case.split("N=")[1].split()[0])
                    series.setdefault(r.impl, []).append((n, r.extra["GFLOP/s"]))
            plot_series(out_dir / f"attention_{dtype}.png", f"causal attention, 8 heads x 128, {dtype}, 2 threads",
                        "sequence length N", "GFLOP/s (useful causal work)", series)
    return rows
