"""Mixed 2/4-bit quant_linear against torch.nn.functional.linear with fp32, bf16 and fp16
weights, and against our own dequantize-then-linear, on Llama-3-8B projection shapes.

Speed-up is over bf16 `F.linear` (the usual way to run a model on CPU). Effective bandwidth
is the packed weight's bytes over the time; "of read bw" divides it by the machine's read
bandwidth, measured in the same run by summing a large buffer. The "copies in turn" rows time
batch 1 with the weights streamed from DRAM, as in a model's forward pass.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmkernels import quant

from .harness import Row, compare

CORE = "quant"
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336)]  # [out_features, in_features]


def read_bandwidth_gbs(megabytes: int = 512) -> float:
    """Read bandwidth in GB/s: the median of timed sums over a buffer far larger than the caches."""
    buf = torch.ones(megabytes * 2**20 // 4)
    buf.sum()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(times) / 1e9


def _bandwidth_extra(qw: quant.QuantizedWeight, bandwidth: float):
    """Our row's extra columns: bits per weight, effective GB/s and its share of read bandwidth."""
    def extra(name: str, ms: float) -> dict:
        if name != "lmkernels":
            return {}
        gbs = qw.nbytes / (ms * 1e-3) / 1e9
        return {"bits/weight": qw.bits_per_weight, "GB/s": gbs, "of read bw": gbs / bandwidth}

    return extra


def _last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The largest CPU cache's size from sysfs (Linux), else `default`."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            pass
    return max(sizes, default=default)


def streamed_rows(weights: list[tuple[torch.Tensor, quant.QuantizedWeight]], bandwidth: float,
                  quick: bool) -> list[Row]:
    """Batch 1 as a model's forward pass sees it: each call takes the next of several copies of
    the weight, together twice the last-level cache or more, so every call reads its weights
    from DRAM (in the rows above, one weight is reused and may stay in L3)."""
    rows = []
    total_bytes = (64 if quick else max(160 * 2**20, 2 * _last_level_cache_bytes()))
    for w, qw in weights:
        out_features, in_features = w.shape
        copies = max(2, -(-total_bytes // qw.nbytes))
        packed = [dataclasses.replace(qw, **{f: getattr(qw, f).clone() for f in quant._PACKED}) for _ in range(copies)]
        bf16 = [w.bfloat16() for _ in range(copies)]
        x = torch.randn(1, in_features)
        xb = x.bfloat16()

        def rotating(call):
            turn = itertools.count()
            return lambda: call(next(turn) % copies)

        impls = {
            "F.linear bf16": rotating(lambda i: F.linear(xb, bf16[i])),
            "lmkernels": rotating(lambda i: quant.linear(x, packed[i])),
        }

        case = f"{out_features}x{in_features} batch 1 x float32, {copies} copies in turn (weights from DRAM)"
        rows += compare(CORE, case, impls, baseline="F.linear bf16", quick=quick, extra=_bandwidth_extra(qw, bandwidth))
    return rows


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    shapes = SHAPES[:1] if quick else SHAPES
    batches = [1, 16] if quick else [1, 4, 16, 64]
    dtypes = [torch.bfloat16] if quick else [torch.float32, torch.bfloat16]
    bandwidth = read_bandwidth_gbs(128 if quick else 512)
    rows: list[Row] = []
    quantized = []
    for out_features, in_features in shapes:
        w = torch.randn(out_features, in_features) * 0.02
        qw = quant.quantize(w)
        quantized.append((w, qw))
        weights = {torch.float32: w, torch.bfloat16: w.bfloat16(), torch.float16: w.half()}
        for dtype in dtypes:
            for batch in batches:
                x = torch.randn(batch, in_features).to(dtype)
                xs = {d: x.to(d) for d in weights}
                bf16_linear = lambda: F.linear(xs[torch.bfloat16], weights[torch.bfloat16])  # noqa: E731
                impls = {
                    "F.linear bf16": bf16_linear,
                    "F.linear fp32": lambda: F.linear(xs[torch.float32], weights[torch.float32]),
                    "lmkernels": lambda: quant.linear(x, qw),
                }
                if not quick:
                    impls["F.linear fp16"] = lambda: F.linear(xs[torch.float16], weights[torch.float16])
                dtype_name = str(dtype).removeprefix("torch.")
                case = f"{out_features}x{in_features} batch {batch} x {dtype_name}"
                rows += compare(CORE, case, impls, baseline="F.linear bf16", quick=quick,
                                extra=_bandwidth_extra(qw, bandwidth))
                # Our dequantize-then-linear gets rounds of its own, against bf16 F.linear timed
                # in them too (its row's ratio; that second bf16 row is not shown). Each call
                # allocates and fills a new float32 weight (67 MB at 4096x4096, most of its time
                # page faults), and in the same rounds its aftermath slowed every call after
                # it by a third (4096x4096 batch 1: bf16 F.linear 1.44 -> 1.91 ms, ours 0.36 ->
                # 0.47), which no model's forward pass has between its matmuls.
                dequantized = {"F.linear bf16": bf16_linear,
                               "dequantize + F.linear": lambda: F.linear(x, quant.dequantize(qw).to(dtype))}
                rows += [r for r in compare(CORE, case, dequantized, baseline="F.linear bf16", quick=quick)
                         if r.impl != "F.linear bf16"]
    rows += streamed_rows(quantized, bandwidth, quick)
    rows.append(Row(CORE, "machine read bandwidth", "torch.sum over 512 MB" if not quick else "torch.sum over 128 MB",
                    0.0, 0.0, 7, extra={"GB/s": bandwidth}))
    return rows
