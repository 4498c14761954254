"""The package as a whole: every op is registered everywhere it must be, ISA selection works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lmkernels

OPS = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("lmkernels::"))


def test_ops_are_registered():
    assert "lmkernels::rope_rerotate_" in OPS


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_cpu_and_fake_impls(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), f"{op} has no CPU impl"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta"), f"{op} has no fake impl"


@pytest.mark.parametrize("op", OPS)
def test_cuda_builds_register_every_op_on_cuda(op):
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    assert has_cuda == lmkernels.built_with_cuda, f"{op}: CUDA impl {has_cuda}, CUDA build {lmkernels.built_with_cuda}"


def test_supported_isas_start_with_scalar():
    isas = lmkernels.supported_cpu_isas()
    assert isas[0] == "scalar"
    assert lmkernels.cpu_isa() == isas[-1]  # the best one by default


def test_set_cpu_isa_round_trip():
    try:
        for isa in lmkernels.supported_cpu_isas():
            lmkernels.set_cpu_isa(isa)
            assert lmkernels.cpu_isa() == isa
    finally:
        lmkernels.set_cpu_isa(None)
    assert lmkernels.cpu_isa() == lmkernels.supported_cpu_isas()[-1]


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="isa must be one of"):
        lmkernels.set_cpu_isa("sse2")


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LMKERNELS_CPU_ISA=value)
    code = "import lmkernels; print(lmkernels.cpu_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_forces_the_scalar_path():
    result = _isa_in_subprocess("scalar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scalar"


def test_environment_variable_typo_is_an_error():
    result = _isa_in_subprocess("avx9000")
    assert result.returncode != 0
    assert "cpu isa must be one of scalar, avx2, avx512, avx512_vnni, amx; got 'avx9000'" in result.stderr


@pytest.mark.parametrize("n", range(1, 8))
def test_bench_orders_give_every_impl_every_predecessor_equally(n):
    from collections import Counter

    from lmkernels.bench.harness import balanced_orders

    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    follows = Counter((order[i], order[i + 1]) for order in orders for i in range(n - 1))
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(follows.values())) <= 1
