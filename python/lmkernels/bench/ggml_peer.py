"""llama.cpp's k-quants as a peer: their quality (ggml's own quantizer, used by quant-accuracy)
and, as the bench core `quant-llamacpp`, their matrix-vector speed against quant_linear.

Optional: set ``LMKERNELS_GGML_LIB`` to a ``libggml-base.so`` of a llama.cpp build. One way,
from the package registry only: ``pip download llama-cpp-python --no-binary :all: --no-deps``,
unpack it, then in ``vendor/llama.cpp`` run ``cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
-DLLAMA_BUILD_TESTS=ON && cmake --build build --target test-backend-ops`` (a few minutes).
The speed comparison runs that build's ``test-backend-ops perf`` (ggml's own benchmark: the
4096x14336 MUL_MAT cases of Llama-3-8B's down projection, weights reused from call to call) in
alternation with quant_linear on the same shape, both at the thread count test-backend-ops
uses (half the hardware threads), and reports medians over the rounds. lmkernels itself never
needs any of this.
"""

from __future__ import annotations

import ctypes
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .harness import Row

CORE = "quant-llamacpp"
ENV_LIB = "LMKERNELS_GGML_LIB"


@dataclass(frozen=True)
class GgmlType:
    name: str
    code: int  # enum ggml_type
    bits_per_weight: float  # every byte of a 256-weight block, scales included


K_QUANTS = (GgmlType("Q2_K", 10, 2.625), GgmlType("Q3_K", 11, 3.4375), GgmlType("Q4_K", 12, 4.5))


def load_library() -> ctypes.CDLL | None:
    """The ggml library named by LMKERNELS_GGML_LIB, or None when unset."""
    path = os.environ.get(ENV_LIB)
    if not path:
        return None
    lib = ctypes.CDLL(path)
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    for t in K_QUANTS:
        fn = _dequantize_row(lib, t)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _dequantize_row(lib: ctypes.CDLL, kind: GgmlType):
    return getattr(lib, f"dequantize_row_q{kind.name[1]}_K")  # e.g. dequantize_row_q2_K


def padded_width(k: int) -> int:
    """in_features rounded up to ggml's 256-wide super-blocks."""
    return -(-k // 256) * 256


def quantize_dequantize(lib: ctypes.CDLL, weight: torch.Tensor, kind: GgmlType,
                        imatrix: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` [rows, k] through ggml's quantizer and back to float.

    ggml's k-quants need k divisible by 256, so other widths are zero-padded (llama.cpp itself
    would fall back to a 4.5-bit type for such a tensor). A padded column changes no real
    weight's codes: its 16-wide groups are all zero and do not move the super-block's scale.
    It does cost bits: ``bits_per_weight * padded_width(k) / k`` per real weight.
    ``imatrix``: llama.cpp's importance matrix for this layer, the mean squared input per
    column (what ``llama-imatrix`` collects); None quantizes without one.
    """
    rows, k = weight.shape
    width = padded_width(k)
    src = torch.nn.functional.pad(weight.detach().float(), (0, width - k)).contiguous()
    weights = None
    if imatrix is not None:
        if imatrix.shape != (k,):
            raise ValueError(f"imatrix must have shape ({k},), got {tuple(imatrix.shape)}")
        weights = torch.nn.functional.pad(imatrix.detach().float(), (0, width - k), value=1.0).contiguous()
    row_bytes = lib.ggml_row_size(kind.code, width)
    packed = torch.empty(rows * row_bytes, dtype=torch.uint8)
    written = lib.ggml_quantize_chunk(kind.code, src.data_ptr(), packed.data_ptr(), 0, rows, width,
                                      None if weights is None else weights.data_ptr())
    if written != rows * row_bytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {rows * row_bytes}")
    out = torch.empty(rows, width)
    _dequantize_row(lib, kind)(packed.data_ptr(), out.data_ptr(), rows * width)
    return out[:, :k].to(weight.dtype)


def _test_backend_ops() -> Path | None:
    lib = os.environ.get(ENV_LIB)
    if not lib:
        return None
    tool = Path(lib).parent / "test-backend-ops"
    return tool if tool.exists() else None


def _ggml_times(tool: Path, batches: list[int]) -> dict[tuple[str, int], float]:
    """One `test-backend-ops perf` run: ms per MUL_MAT call for each (type, batch)."""
    names = "|".join(f"q{t.name[1]}_K" for t in K_QUANTS)  # ggml's type names: q2_K, ...
    pattern = f"type_a=({names}),type_b=f32,m=4096,n=({'|'.join(map(str, batches))}),k=14336,"
    out = subprocess.run([str(tool), "perf", "-o", "MUL_MAT", "-b", "CPU", "-p", pattern],
                         capture_output=True, text=True, check=True).stdout
    times = {}
    for m in re.finditer(r"type_a=(\w+),type_b=f32,m=4096,n=(\d+),k=14336,.*?([0-9.]+) us/run", out):
        times[(m.group(1).upper(), int(m.group(2)))] = float(m.group(3)) / 1e3
    if not times:
        raise RuntimeError(f"no MUL_MAT timings in the output of {tool} (another llama.cpp version?):\n{out[-2000:]}")
    return times


def _ours_ms(qw, x: torch.Tensor, seconds: float) -> float:
    from lmkernels import quant

    for _ in range(5):
        quant.linear(x, qw)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        quant.linear(x, qw)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    from lmkernels import quant

    tool = _test_backend_ops()
    if tool is None:
        print(f"{CORE}: skipped; set {ENV_LIB} to the libggml-base.so of a llama.cpp build with "
              "test-backend-ops beside it (see lmkernels/bench/ggml_peer.py)")
        return []
    batches = [1, 4] if quick else [1, 4, 8]
    threads = max(1, (os.cpu_count() or 2) // 2)  # what test-backend-ops gives the CPU backend
    qw = quant.quantize(torch.randn(4096, 14336, generator=torch.Generator().manual_seed(0)) * 0.02)
    xs = {b: torch.randn(b, 14336) for b in batches}
    samples: dict[tuple[str, int], list[float]] = {}
    saved_threads = torch.get_num_threads()
    for _ in range(3 if quick else 7):
        for key, ms in _ggml_times(tool, batches).items():
            samples.setdefault(key, []).append(ms)
        torch.set_num_threads(threads)
        try:
            for b in batches:
                samples.setdefault(("lmkernels", b), []).append(_ours_ms(qw, xs[b], 0.3 if quick else 1.0))
        finally:
            torch.set_num_threads(saved_threads)
    rows = []
    bits = {t.name: t.bits_per_weight for t in K_QUANTS} | {"lmkernels": qw.bits_per_weight}
    for b in batches:
        case = f"4096x14336 batch {b}, {threads} thread{'s' if threads > 1 else ''}, weights reused"
        for impl in [t.name for t in K_QUANTS] + ["lmkernels"]:
            times = samples.get((impl, b), [])
            if not times:
                continue
            q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
            name = impl if impl == "lmkernels" else f"llama.cpp {impl}"
            rows.append(Row(CORE, case, name, statistics.median(times), q[2] - q[0], len(times),
                            baseline="llama.cpp Q2_K", extra={"bits/weight": bits[impl]}))
        base = next((r.median_ms for r in rows if r.case == case and r.impl == "llama.cpp Q2_K"), None)
        for r in rows:
            if r.case == case and base:
                r.ratio = base / r.median_ms
    return rows
