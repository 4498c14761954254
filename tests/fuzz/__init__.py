"""Fuzzers for every public op: `FUZZERS[op_name]` is a hypothesis-driven test body.

Each fuzzer draws arbitrary (often invalid) arguments and checks that the op either returns
the reference result or raises a clear Python exception naming the op; never a crash, a
hang, or a silent wrong answer. For valid draws it also checks invariance across CPU paths,
thread counts and memory layouts.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

# op name -> fuzz body taking hypothesis' `data` object
FUZZERS: dict[str, Callable] = {}
# op name -> Counter of outcomes ("ok", "error"), reported at the end of the run
OUTCOMES: dict[str, Counter] = {}


def fuzzer(op_name: str):
    def register(fn: Callable) -> Callable:
        FUZZERS[op_name] = fn
        return fn

    return register


def record(op_name: str, outcome: str) -> None:
    OUTCOMES.setdefault(op_name, Counter())[outcome] += 1


def attempt(op_name: str, call: Callable):
    """Run `call`. A clear error (a ValueError/TypeError/RuntimeError naming the op) counts as a
    rejected case and gives None; anything else propagates and fails the run."""
    from .common import CLEAR_ERRORS

    try:
        result = call()
    except CLEAR_ERRORS as err:
        assert op_name.split("::")[1] in str(err), f"unclear error: {err}"
        record(op_name, "error")
        return None
    record(op_name, "ok")
    return result


from . import attention, kvcache, prepack, quant, rope, sparse  # noqa: E402,F401  (registers)
