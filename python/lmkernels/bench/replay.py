"""Replay buffer: sampling + gathering batches of 32 rows x 1024 int32 tokens from a 1 GB
disk-backed buffer (64 MB with --quick), against torchrl's ReplayBuffer(LazyMemmapStorage) and
plain numpy.memmap fancy indexing over the same rows; and the ReplayMixer's cost per batch
against one training step of a small Llama model.

All three buffers sit in the page cache (the machine has the RAM): this measures the sampler
and the gather, not the disk.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmkernels.replay import ReplayBuffer, ReplayMixer

from .harness import Row, compare

CORE = "replay"
SEQ, BATCH = 1024, 32


def _fill(buf_rows: int, directory: Path) -> tuple[ReplayBuffer, np.memmap]:
    ours = ReplayBuffer(buf_rows, SEQ, directory=directory / "ours", writer="reservoir", seed=0)
    flat = np.memmap(directory / "flat.bin", dtype=np.int32, mode="w+", shape=(buf_rows, SEQ))
    chunk = 4096
    for start in range(0, buf_rows, chunk):
        rows = torch.randint(0, 50000, (min(chunk, buf_rows - start), SEQ), dtype=torch.int32)
        ours.add(rows)
        flat[start:start + rows.shape[0]] = rows.numpy()
    flat.flush()
    return ours, flat


def _torchrl_buffer(flat: np.memmap, directory: Path):
    try:
        from torchrl.data import LazyMemmapStorage
        from torchrl.data import ReplayBuffer as RLReplayBuffer
    except ImportError:
        return None
    rb = RLReplayBuffer(storage=LazyMemmapStorage(flat.shape[0], scratch_dir=str(directory / "torchrl")),
                        batch_size=BATCH)
    for start in range(0, flat.shape[0], 4096):
        rb.extend(torch.from_numpy(np.asarray(flat[start:start + 4096])))
    return rb


def _mixer_rows(quick: bool) -> list[Row]:
    """Mixer time per batch vs a training step of a small Llama (4 layers, hidden 256)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    seq, batch = (128, 4) if quick else (512, 8)
    config = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    new_batches = (torch.randint(0, 8192, (batch, seq)) for _ in iter(int, 1))
    buffer = ReplayBuffer(4096, seq, dtype=torch.uint16, seed=0)
    buffer.add(torch.randint(0, 8192, (1024, seq)))
    mixer = iter(ReplayMixer(new_batches, buffer, 0.25, batch_size=batch))
    fixed = next(mixer)

    def train_step() -> None:
        loss = model(input_ids=fixed, labels=fixed).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    case = f"mixer vs train step, batch {batch} x {seq}, rate 0.25"
    rows = compare(CORE, case, {"train step": train_step, "mixer next batch": lambda: next(mixer)},
                   baseline="train step", quick=quick, min_rounds=3)
    step_ms = next(r.median_ms for r in rows if r.impl == "train step")
    for r in rows:
        r.extra["fraction_of_step"] = round(r.median_ms / step_ms, 5)
    return rows


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    buf_rows = (64 << 20) // (SEQ * 4) if quick else (1 << 30) // (SEQ * 4)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lmk-replay-bench-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        ours, flat = _fill(buf_rows, tmp_path)
        fill_s = time.perf_counter() - t0
        rb = _torchrl_buffer(flat, tmp_path)
        gen = np.random.default_rng(0)

        impls = {
            "numpy.memmap fancy index": lambda: torch.from_numpy(flat[np.sort(gen.integers(0, buf_rows, BATCH))]),
            "lmkernels": lambda: ours.sample(BATCH, dtype=torch.int32),
            "lmkernels (int64 out)": lambda: ours.sample(BATCH),
        }
        if rb is not None:
            impls["torchrl LazyMemmapStorage"] = rb.sample
        baseline = "torchrl LazyMemmapStorage" if rb is not None else "numpy.memmap fancy index"
        case = f"sample {BATCH} x {SEQ} int32 from {buf_rows * SEQ * 4 >> 20} MB on disk"
        timed = compare(CORE, case, impls, baseline=baseline, quick=quick)
        for r in timed:
            r.extra["rows_per_s"] = round(BATCH / (r.median_ms / 1e3))
            if r.impl == "lmkernels":
                r.extra["fill_1gb_s" if not quick else "fill_s"] = round(fill_s, 2)
            if rb is None:
                r.extra["note"] = "torchrl not installed: baseline is numpy.memmap"
        rows += timed
        ours.close()
        del flat, rb
    return rows + _mixer_rows(quick)
