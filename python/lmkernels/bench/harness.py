"""Timing and reporting shared by every core's benchmark."""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class Row:
    """One timed implementation on one case. `ratio` is baseline time / this time (>1: faster)."""

    core: str
    case: str
    impl: str
    median_ms: float
    iqr_ms: float
    repeats: int
    baseline: str | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of range(n) in which each ordered pair (a, b) is adjacent equally often: a
    Williams design (row 0 = 0, 1, n-1, 2, n-2, ..., row i = row 0 + i mod n; for odd n each
    row is followed by its reverse)."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(v + i) % n for v in first] for i in range(n)]
    if n % 2:
        rows = [r for row in rows for r in (row, row[::-1])]
    return rows


def compare(core: str, case: str, impls: dict[str, Callable[[], Any]], *, baseline: str,
            quick: bool, device: str = "cpu", min_rounds: int = 5,
            extra: Callable[[str, float], dict[str, Any]] | None = None) -> list[Row]:
    """Time every impl of one case in interleaved rounds, so drift and noise hit all alike.

    The rounds' orders form a balanced Latin square (`balanced_orders`), so every impl
    follows every other one equally often: what one leaves in the caches (a baseline that
    writes a large temporary leaves dirty lines that cost the next impl's reads up to 2x on a
    4 MB-L2 Xeon) is shared out instead of always charged to the same neighbour. (Rotating
    one order, as this did before, keeps each impl's predecessor fixed within a round: the
    quant bench's kernel always followed dequantize + F.linear and its 67 MB of dirty lines,
    0.55 ms where it took 0.49 ms after F.linear fp32.) At least `min_rounds` rounds, then
    more until each impl had about 0.3 s (quick) or 1.5 s of samples, at most 200. The machine
    is noisy: medians, never means.
    """
    min_time_s = 0.3 if quick else 1.5
    for fn in impls.values():
        fn()
        fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in impls}
    start = time.perf_counter()
    rounds = 0
    names = list(impls)
    orders = balanced_orders(len(names))
    while rounds < min_rounds or (time.perf_counter() - start < min_time_s * len(impls) and rounds < 200):
        for name in (names[i] for i in orders[rounds % len(orders)]):
            fn = impls[name]
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    rows = []
    for name, times in samples.items():
        q = statistics.quantiles(times, n=4)
        median = statistics.median(times)
        rows.append(Row(core, case, name, median, q[2] - q[0], len(times), baseline=baseline,
                        extra=extra(name, median) if extra else {}))
    base = next(r.median_ms for r in rows if r.impl == baseline)
    for r in rows:
        r.ratio = base / r.median_ms
    return rows


def environment() -> dict[str, Any]:
    import lmkernels

    return {
        "torch": torch.__version__,
        "lmkernels": lmkernels.__version__,
        "cpu_isa": lmkernels.cpu_isa(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(rows: list[Row]) -> str:
    """A Markdown table: case, impl, median, IQR, speed-up over the case's baseline, extras."""
    extra_keys: list[str] = []
    for r in rows:
        extra_keys += [k for k in r.extra if k not in extra_keys]
    header = ["case", "impl", "median ms", "IQR ms", "speed-up"] + extra_keys
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratio = "baseline" if r.impl == r.baseline else ("" if r.ratio is None else f"{r.ratio:.2f}x")
        cells = [r.case, r.impl, f"{r.median_ms:.3f}", f"{r.iqr_ms:.3f}", ratio]
        cells += [_fmt(r.extra.get(k, "")) for k in extra_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_json(path: Path, core_rows: dict[str, list[Row]], quick: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment(),
        "quick": quick,
        "results": {core: [asdict(r) for r in rows] for core, rows in core_rows.items()},
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def plot_series(path: Path, title: str, x_label: str, y_label: str,
                series: dict[str, list[tuple[float, float]]]) -> None:
    """One line per series (matplotlib, headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
