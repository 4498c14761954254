"""Bin packing (pack_sequences) and packed batches (prepack)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from lmkernels import varlen_attention
from lmkernels.prepack import pack, prepack

from conftest import devices


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(0, 40), st.sampled_from(["bfd", "ffd"]))
def test_pack_matches_reference_and_is_valid(lengths, extra, algorithm):
    capacity = max(lengths) + extra
    p = pack(lengths, capacity, algorithm=algorithm)
    want_row, want_offset = reference.bin_pack(lengths, capacity, algorithm)
    assert p.row.tolist() == want_row and p.offset.tolist() == want_offset
    # Every sequence placed once, no overlaps, no row over capacity.
    used = {}
    for i, (r, o, n) in enumerate(zip(p.row.tolist(), p.offset.tolist(), lengths)):
        assert 0 <= o and o + n <= capacity
        for t in range(o, o + n):
            assert (r, t) not in used, f"sequences {used.get((r, t))} and {i} overlap"
            used[(r, t)] = i
    assert p.lower_bound <= p.num_rows == max(want_row) + 1


def test_pack_default_capacity_and_fill():
    p = pack(torch.tensor([4, 4, 2, 6]))
    assert p.capacity == 6 and p.num_rows == 3 and p.lower_bound == 3
    assert p.fill == pytest.approx(16 / 18)


@pytest.mark.parametrize("device", devices())
def test_pack_op_on_device(device):
    lengths = torch.tensor([7, 3, 5, 1, 9], device=device)
    row, offset = torch.ops.lmkernels.pack_sequences(lengths, 10, "bfd")
    want_row, want_offset = reference.bin_pack(lengths.tolist(), 10)
    assert row.device == lengths.device and row.tolist() == want_row and offset.tolist() == want_offset


def test_pack_opcheck_and_compile():
    lengths = torch.tensor([7, 3, 5, 1, 9])
    torch.library.opcheck(torch.ops.lmkernels.pack_sequences, (lengths, 10, "ffd"))
    compiled = torch.compile(lambda t: torch.ops.lmkernels.pack_sequences(t, 10, "bfd"), fullgraph=True, backend="aot_eager")
    assert [x.tolist() for x in compiled(lengths)] == list(reference.bin_pack(lengths.tolist(), 10))


@pytest.mark.parametrize("bad,error,match", [
    ([], ValueError, "lengths is empty"),
    ([3, 0], ValueError, "every length must be >= 1"),
    ([3, 11], ValueError, "does not fit the capacity 10"),
])
def test_pack_bad_lengths(bad, error, match):
    with pytest.raises(error, match=match):
        pack(bad, 10 if bad and max(bad) else None)


def test_pack_bad_arguments():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        pack([3], 4, algorithm="nfd")
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        pack([3], 0)
    with pytest.raises(TypeError, match="1-D integer tensor"):
        pack(torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="pack_sequences: algorithm must be 'bfd' or 'ffd'"):
        torch.ops.lmkernels.pack_sequences(torch.tensor([1]), 4, "best")
    with pytest.raises(RuntimeError, match=r"lengths\[1\] = 9 is longer than the capacity 4"):
        torch.ops.lmkernels.pack_sequences(torch.tensor([1, 9]), 4, "bfd")


def test_prepack_layout():
    prompts = [torch.tensor([1, 2, 3]), [4, 5], torch.arange(6, 12)]
    b = prepack(prompts, 8)
    assert b.input_ids.shape == (2, 8)
    for i, p in enumerate(prompts):
        p = torch.as_tensor(p)
        r, o, n = int(b.packing.row[i]), int(b.packing.offset[i]), len(p)
        assert torch.equal(b.input_ids[r, o:o + n], p)
        assert torch.equal(b.position_ids[r, o:o + n], torch.arange(n))
        assert int(b.last_token_index[i]) == r * 8 + o + n - 1
        assert torch.equal(b.input_ids.flatten()[b.token_index[b.prompt_cu_seqlens[i]:b.prompt_cu_seqlens[i + 1]]], p)
    # Segments tile the flat rows exactly, each prompt one segment.
    cu = b.cu_seqlens.tolist()
    assert cu[0] == 0 and cu[-1] == 16 and all(a < c for a, c in zip(cu, cu[1:]))
    assert set((b.packing.row * 8 + b.packing.offset).tolist()) <= set(cu)


def test_prepacked_attention_equals_attention_per_prompt():
    """Packed rows + cu_seqlens give each prompt exactly its own causal attention."""
    prompts = [torch.arange(n) for n in (5, 13, 1, 9, 20, 3)]
    b = prepack(prompts, 24)
    flat = b.input_ids.numel()
    q, k, v = (torch.randn(flat, 2, 32) for _ in range(3))
    packed_out = b.unpack(varlen_attention(q, k, v, b.cu_seqlens, b.cu_seqlens))
    for i, (qi, ki, vi) in enumerate(zip(b.unpack(q), b.unpack(k), b.unpack(v))):
        cu = torch.tensor([0, len(qi)], dtype=torch.int32)
        alone, _ = reference.varlen_attention(qi, ki, vi, cu, cu, True)
        torch.testing.assert_close(packed_out[i], alone, atol=2e-5, rtol=2e-5)


def test_prepack_bad_prompts():
    with pytest.raises(ValueError, match="prompts is empty"):
        prepack([])
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        prepack([[1, 2], []])
    with pytest.raises(TypeError, match=r"prompts\[0\] must be a 1-D integer sequence"):
        prepack([torch.zeros(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="does not fit the capacity 3"):
        prepack([[1, 2, 3, 4]], 3)
