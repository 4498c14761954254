"""Fuzzing of every public op (see tests/fuzz). CI runs a bounded number of cases per op;
`make fuzz` (LMKERNELS_FUZZ_EXAMPLES, default 2000) runs many more."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import FUZZERS

EXAMPLES = int(os.environ.get("LMKERNELS_FUZZ_EXAMPLES", "60"))
REGISTERED = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("lmkernels::"))


def test_every_registered_op_has_a_fuzzer():
    missing = [op for op in REGISTERED if op not in FUZZERS]
    assert not missing, f"ops without a fuzz entry in tests/fuzz: {missing}"


@pytest.mark.parametrize("op", sorted(FUZZERS))
def test_fuzz(op):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 200,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        FUZZERS[op](data)

    run()
