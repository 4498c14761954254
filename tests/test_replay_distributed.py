"""Replay across data-parallel ranks: disjoint parts, exact global replay rate."""

from __future__ import annotations

import os

import pytest
import torch

from lmkernels.replay import ReplayBuffer, ReplayMixer, replay_count
from lmkernels.replay.distributed import rank_capacity, rank_replay_count

SEQ = 4


def rank_stream(rank: int, batches: int, rows: int):
    for b in range(batches):
        ids = 10**6 * (rank + 1) + b * rows + torch.arange(rows)
        yield ids[:, None].expand(rows, SEQ).clone()


def test_rank_shares_sum_exactly():
    for world in (1, 2, 3, 8):
        assert sum(rank_capacity(101, r, world) for r in range(world)) == 101
        for total in range(0, 30):
            for step in range(world + 1):
                parts = [rank_replay_count(total, r, world, step) for r in range(world)]
                assert sum(parts) == total and max(parts) - min(parts) <= 1


@pytest.mark.parametrize("rate", [0.25, 0.3, 0.5])
def test_simulated_ranks_keep_the_global_rate(tmp_path, rate):
    world, batch = 4, 10
    buffers = [ReplayBuffer.for_rank(400, SEQ, directory=tmp_path / "buf", rank=r, world_size=world) for r in range(world)]
    mixers = [iter(ReplayMixer(rank_stream(r, 12, 7), buffers[r], rate, batch_size=batch, return_mask=True,
                               rank=r, world_size=world)) for r in range(world)]
    expected = replay_count(rate, batch * world)
    for step in range(8):
        outs = [next(m) for m in mixers]
        replayed = sum(int(mask.sum()) for _, mask in outs)
        assert replayed == (0 if step == 0 else expected)  # step 0: empty buffers
        for r, (rows, mask) in enumerate(outs):
            owner = rows[mask, 0] // 10**6 - 1
            assert bool((owner == r).all())  # a rank replays only rows it stored
    folders = sorted(p.name for p in (tmp_path / "buf").iterdir())
    assert folders == [f"rank-{r:05d}" for r in range(world)]
    assert sum(b.capacity for b in buffers) == 400


def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    buf = ReplayBuffer.for_rank(64, SEQ, directory=os.path.join(out_dir, "buf"))
    mixer = iter(ReplayMixer(rank_stream(rank, 10, 6), buf, 0.3, batch_size=6, return_mask=True))
    counts = []
    for _ in range(6):
        _, mask = next(mixer)
        total = torch.tensor([int(mask.sum())])
        dist.all_reduce(total)
        counts.append(int(total))
    torch.save(counts, os.path.join(out_dir, f"counts-{rank}.pt"))
    dist.destroy_process_group()


def test_torch_distributed_two_ranks(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    expected = [0] + [replay_count(0.3, 12)] * 5
    for rank in range(2):
        assert torch.load(tmp_path / f"counts-{rank}.pt") == expected
    assert sorted(p.name for p in (tmp_path / "buf").iterdir()) == ["rank-00000", "rank-00001"]
