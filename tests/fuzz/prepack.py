"""Fuzzer for lmkernels::pack_sequences (raw op)."""

from __future__ import annotations

import hypothesis.strategies as st
import torch

import reference

from . import attempt, fuzzer

OP = "lmkernels::pack_sequences"


@fuzzer(OP)
def fuzz_pack_sequences(data):
    draw = data.draw
    fault = draw(st.sampled_from([None] * 6 + ["length", "capacity", "algorithm", "dtype", "shape"]), label="fault")
    lengths = draw(st.lists(st.integers(1, 70), max_size=80), label="lengths")
    capacity = max(lengths, default=1) + draw(st.integers(0, 30), label="slack")
    algorithm = draw(st.sampled_from(["bfd", "ffd"]), label="algorithm")
    dtype = draw(st.sampled_from([torch.int64, torch.int32]), label="dtype")
    if fault == "length" and lengths:
        lengths[draw(st.integers(0, len(lengths) - 1))] = draw(st.sampled_from([0, -1, capacity + 1]))
    elif fault == "capacity":
        capacity = draw(st.sampled_from([0, -5, max(lengths, default=2) - 1]))
    elif fault == "algorithm":
        algorithm = draw(st.sampled_from(["BFD", "", "nfd"]))
    elif fault == "dtype":
        dtype = torch.float32
    t = torch.tensor(lengths, dtype=dtype)
    if fault == "shape":
        t = t[None]
    result = attempt(OP, lambda: torch.ops.lmkernels.pack_sequences(t, capacity, algorithm))
    if result is None:
        return
    row, offset = result
    assert (row.tolist(), offset.tolist()) == reference.bin_pack(lengths, capacity, algorithm)
