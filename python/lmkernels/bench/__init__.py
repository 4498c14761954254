"""Microbenchmarks: `python -m lmkernels.bench [core ...] [--quick] [--json PATH]`.

Each core has a module here with `run(quick) -> list[Row]`; baselines and ours are timed in
the same process, and the report gives medians and ratios. Benchmarks never assert on time.
"""

from .harness import Row, compare

__all__ = ["Row", "compare"]
