"""ReplayBuffer core: writers, samplers, state, crash safety, threads, bad inputs."""

from __future__ import annotations

import math
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import torch

from lmkernels.replay import ReplayBuffer

SEQ = 16


def id_rows(ids) -> torch.Tensor:
    """Self-checking rows: row i holds SEQ * id + [0, SEQ), so a torn or shifted row is visible."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    return (ids[:, None] * SEQ + torch.arange(SEQ)).to(torch.int32)


def row_ids(rows: torch.Tensor) -> torch.Tensor:
    rows = rows.long()
    assert torch.equal(rows - rows[:, :1], torch.arange(SEQ).expand_as(rows)), "a row is torn"
    assert bool((rows[:, 0] % SEQ == 0).all()), "a row is shifted"
    return rows[:, 0] // SEQ


def all_ids(buf: ReplayBuffer) -> torch.Tensor:
    return row_ids(buf.gather(torch.arange(len(buf))))


def chi_square_ok(counts: np.ndarray, expected: np.ndarray) -> bool:
    """Pearson's statistic within mean + 5 sd of chi-square(k-1) (fails on a real bias, almost never by chance)."""
    stat = float(((counts - expected) ** 2 / expected).sum())
    dof = len(counts) - 1
    return stat < dof + 5 * math.sqrt(2 * dof)


# ---- writers -------------------------------------------------------------------------------
def test_reservoir_keeps_every_offered_row_with_equal_probability():
    capacity, offered, trials = 40, 400, 300
    hits = np.zeros(offered)
    for seed in range(trials):
        buf = ReplayBuffer(capacity, SEQ, writer="reservoir", seed=seed)
        for start in range(0, offered, 7):  # several rows per add: exercises the per-add slot plan
            buf.add(id_rows(range(start, min(start + 7, offered))))
        ids = all_ids(buf)
        assert len(buf) == capacity and buf.seen == offered and len(set(ids.tolist())) == capacity
        hits[ids.numpy()] += 1
    assert chi_square_ok(hits, np.full(offered, trials * capacity / offered))
    # a biased writer (keep the first or the last rows) fails the same check
    biased = np.zeros(offered)
    biased[-capacity:] = trials
    assert not chi_square_ok(biased, np.full(offered, trials * capacity / offered))


def test_fifo_keeps_the_newest_rows():
    buf = ReplayBuffer(10, SEQ, writer="fifo")
    for start in range(0, 37, 5):
        buf.add(id_rows(range(start, min(start + 5, 37))))
    assert sorted(all_ids(buf).tolist()) == list(range(27, 37))


def test_random_writer_replaces_a_uniform_slot():
    capacity, trials = 12, 3000
    buf = ReplayBuffer(capacity, SEQ, writer="random", seed=3)
    buf.add(id_rows(range(capacity)))
    slots = np.zeros(capacity)
    before = all_ids(buf)
    for t in range(trials):
        buf.add(id_rows([capacity + t]))
        after = all_ids(buf)
        changed = (after != before).nonzero().flatten()
        assert changed.numel() == 1 and after[changed].item() == capacity + t
        slots[changed.item()] += 1
        before = after
    assert chi_square_ok(slots, np.full(capacity, trials / capacity))


def test_one_add_larger_than_capacity_keeps_the_last_write_per_slot():
    buf = ReplayBuffer(8, SEQ, writer="fifo")
    buf.add(id_rows(range(21)))
    assert sorted(all_ids(buf).tolist()) == list(range(13, 21))
    assert buf.seen == 21


# ---- samplers ------------------------------------------------------------------------------
def test_uniform_sampling_is_uniform_and_widens_dtype():
    buf = ReplayBuffer(50, SEQ, dtype=torch.uint16, seed=1)
    buf.add(id_rows(range(20)))
    sample = buf.sample(20000, return_info=True)
    assert sample.rows.dtype == torch.long and sample.rows.shape == (20000, SEQ)
    assert torch.equal(row_ids(sample.rows), sample.indices)  # slot i holds id i here
    counts = np.bincount(sample.indices.numpy(), minlength=20)
    assert chi_square_ok(counts, np.full(20, 1000.0))
    assert torch.equal(sample.weights, torch.ones(20000))
    assert buf._core.total_priority == 20.0  # uniform: every row weighs 1
    raw = buf.sample(4, dtype=torch.uint16)
    assert raw.dtype == torch.uint16


def test_prioritized_sampling_is_proportional_and_weights_match():
    buf = ReplayBuffer(16, SEQ, sampler="prioritized", priority_exponent=0.5, seed=2)
    buf.add(id_rows(range(10)))
    raw = torch.arange(10, dtype=torch.float64) ** 2  # exponent 0.5 -> priorities 0, 1, ..., 9
    buf.update_priorities(torch.arange(10), raw)
    stored = buf.priorities(torch.arange(10))
    torch.testing.assert_close(stored, torch.arange(10, dtype=torch.float64))
    sample = buf.sample(30000, return_info=True, beta=0.4)
    counts = np.bincount(sample.indices.numpy(), minlength=10)
    assert counts[0] == 0  # zero priority: never drawn
    p = np.arange(1, 10) / 45.0
    assert chi_square_ok(counts[1:], 30000 * p)
    probs = stored[sample.indices] / stored.sum()
    expected = (10 * probs) ** -0.4
    torch.testing.assert_close(sample.weights, (expected / expected.max()).float())


def test_new_rows_get_the_largest_priority_seen():
    buf = ReplayBuffer(8, SEQ, sampler="prioritized")
    buf.add(id_rows(range(3)))
    buf.update_priorities([0, 1, 2], [5.0, 0.5, 0.0])
    buf.add(id_rows([3]))
    assert buf.priorities([3]).item() == 5.0


# ---- state ---------------------------------------------------------------------------------
def _drive(buf: ReplayBuffer, steps: range) -> list[torch.Tensor]:
    out = []
    for step in steps:
        buf.add(id_rows(range(step * 5, step * 5 + 5)))
        sample = buf.sample(6, return_info=True)
        if buf.sampler == "prioritized":
            buf.update_priorities(sample.indices, sample.rows[:, 0].double() % 7)
        out.append(sample.rows)
    return out


@pytest.mark.parametrize("sampler", ["uniform", "prioritized"])
@pytest.mark.parametrize("writer", ["reservoir", "random", "fifo"])
def test_resume_from_state_dict_samples_exactly_as_uninterrupted(writer, sampler):
    make = lambda: ReplayBuffer(12, SEQ, writer=writer, sampler=sampler, seed=7)  # noqa: E731
    straight = make()
    expected = _drive(straight, range(20))
    first = make()
    _drive(first, range(8))
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    got = _drive(resumed, range(8, 20))
    for a, b in zip(expected[8:], got):
        assert torch.equal(a, b)


def test_resume_on_disk_reopens_the_directory(tmp_path):
    straight = ReplayBuffer(12, SEQ, directory=tmp_path / "a", seed=5)
    expected = _drive(straight, range(15))
    first = ReplayBuffer(12, SEQ, directory=tmp_path / "b", seed=5)
    _drive(first, range(6))
    state = first.state_dict()
    first.sample(3)  # moves the sampler on; the state dict puts it back
    first.close()
    reopened = ReplayBuffer(12, SEQ, directory=tmp_path / "b")
    reopened.load_state_dict(state)
    for a, b in zip(expected[6:], _drive(reopened, range(6, 15))):
        assert torch.equal(a, b)
    # a state from an older commit is refused unless strict=False
    reopened.add(id_rows([999]))
    seen, ids = reopened.seen, all_ids(reopened)
    with pytest.raises(RuntimeError, match="commit"):
        reopened.load_state_dict(state)
    reopened.load_state_dict(state, strict=False)
    assert reopened.seen == seen and torch.equal(all_ids(reopened), ids)  # the directory's rows stay


def test_shards_and_reopen_keep_rows(tmp_path):
    buf = ReplayBuffer(50, SEQ, dtype=torch.uint16, directory=tmp_path, shard_rows=7, writer="fifo")
    buf.add(id_rows(range(45)))
    before = all_ids(buf)
    buf.close()
    assert len(list(tmp_path.glob("rows-*.bin"))) == 7
    again = ReplayBuffer(50, SEQ, dtype=torch.uint16, directory=tmp_path, writer="fifo")
    assert torch.equal(all_ids(again), before) and again.seen == 45


# ---- crash safety --------------------------------------------------------------------------
MAX_WRITE = 40  # rows per add in the killed writer


def _writer_child(directory: str, report_fd: int, seed: int) -> None:
    torch.set_num_threads(1)  # no OpenMP team in a forked child
    buf = ReplayBuffer(64, SEQ, directory=directory, writer="fifo", shard_rows=10)
    rng = random.Random(seed)
    next_id = buf.seen
    while True:
        n = rng.randint(1, MAX_WRITE)
        buf.add(id_rows(np.arange(next_id, next_id + n)))
        next_id += n
        os.write(report_fd, f"{len(buf)} {buf.seen}\n".encode())


def test_killed_writer_reopens_consistent(tmp_path):
    directory = str(tmp_path / "buf")
    recovered = 0
    for trial in range(20):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                os.close(read_fd)
                _writer_child(directory, write_fd, trial)
            finally:
                os._exit(1)
        os.close(write_fd)
        first = os.read(read_fd, 64)  # the buffer is open and has committed once
        time.sleep(random.Random(trial).uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reports = first
        while chunk := os.read(read_fd, 1 << 16):
            reports += chunk
        os.close(read_fd)
        last_size, last_seen = map(int, reports.decode().strip().splitlines()[-1].split())
        buf = ReplayBuffer(64, SEQ, directory=directory, writer="fifo")
        ids = all_ids(buf)  # every row intact
        assert len(set(ids.tolist())) == len(buf)
        assert buf.seen >= last_seen
        # At most the write in flight is lost: the rows it announced it would overwrite.
        assert len(buf) >= last_size - MAX_WRITE
        assert bool((ids < buf.seen).all())
        recovered += buf.recovered_rows
        buf.add(id_rows(range(buf.seen, buf.seen + 3)))  # and it takes new rows
        buf.close()
    print(f"rows dropped by recovery over 20 kills: {recovered}")


# ---- threads -------------------------------------------------------------------------------
def test_concurrent_add_and_sample():
    buf = ReplayBuffer(200, SEQ, writer="random", sampler="prioritized")
    buf.add(id_rows(range(50)))
    errors: list[BaseException] = []
    offered = [50]
    lock = threading.Lock()
    stop = time.monotonic() + 1.0

    def adder(base: int) -> None:
        try:
            k = 0
            while time.monotonic() < stop:
                buf.add(id_rows(range(base + k, base + k + 9)))
                with lock:
                    offered[0] += 9
                k += 9
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def sampler() -> None:
        try:
            while time.monotonic() < stop:
                s = buf.sample(32, return_info=True)
                row_ids(s.rows)
                buf.update_priorities(s.indices, torch.rand(32, dtype=torch.float64) + 0.1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=adder, args=(10**6 * (i + 1),)) for i in range(2)]
    threads += [threading.Thread(target=sampler) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert buf.seen == offered[0] and len(buf) == 200
    row_ids(buf.gather(torch.arange(200)))


def test_sample_async_keeps_order():
    a = ReplayBuffer(30, SEQ, seed=4)
    b = ReplayBuffer(30, SEQ, seed=4)
    for buf in (a, b):
        buf.add(id_rows(range(30)))
    futures = [a.sample_async(5) for _ in range(4)]
    for f in futures:
        assert torch.equal(f.result(), b.sample(5))
    a.close()


# ---- bad inputs ----------------------------------------------------------------------------
def test_bad_inputs_raise_and_keep_rows(tmp_path):
    buf = ReplayBuffer(10, SEQ, dtype=torch.uint16, directory=tmp_path / "d")
    buf.add(id_rows(range(4)))
    before = all_ids(buf)
    with pytest.raises(ValueError, match=r"shape \[n, 16\]"):
        buf.add(torch.zeros(3, SEQ + 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="integer token ids"):
        buf.add(torch.zeros(3, SEQ))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        buf.add(torch.full((2, SEQ), 70000))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        buf.add(torch.full((2, SEQ), -1))
    with pytest.raises(IndexError, match="out of range"):
        buf.gather([4])
    with pytest.raises(RuntimeError, match="uniform"):
        buf.update_priorities([0], [1.0])
    with pytest.raises(ValueError, match="dtype"):
        buf.sample(2, dtype=torch.float32)
    assert torch.equal(all_ids(buf), before) and buf.seen == 4
    with pytest.raises(RuntimeError, match="in use"):
        ReplayBuffer(10, SEQ, dtype=torch.uint16, directory=tmp_path / "d")
    buf.close()
    with pytest.raises(ValueError, match="capacity=10, seq_len=16, item_bytes=2"):
        ReplayBuffer(10, SEQ, dtype=torch.int32, directory=tmp_path / "d")
    with pytest.raises(RuntimeError, match="closed"):
        buf.sample(1)
    again = ReplayBuffer(10, SEQ, dtype=torch.uint16, directory=tmp_path / "d")
    assert torch.equal(all_ids(again), before)


def test_bad_constructor_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RuntimeError, match="cannot create the directory"):
        ReplayBuffer(10, SEQ, directory=blocker / "buf")
    for kwargs, match in [
        ({"capacity": 0}, "capacity"), ({"seq_len": -1}, "seq_len"), ({"dtype": torch.int64}, "dtype"),
        ({"writer": "lru"}, "writer"), ({"sampler": "greedy"}, "sampler"), ({"priority_exponent": -1.0}, "exponent"),
    ]:
        args = {"capacity": 10, "seq_len": SEQ, **kwargs}
        with pytest.raises(ValueError, match=match):
            ReplayBuffer(args.pop("capacity"), args.pop("seq_len"), **args)
    empty = ReplayBuffer(4, SEQ)
    with pytest.raises(RuntimeError, match="empty"):
        empty.sample(1)
    prio = ReplayBuffer(4, SEQ, sampler="prioritized")
    prio.add(id_rows([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        prio.update_priorities([0], [float("nan")])
    with pytest.raises(ValueError, match="finite"):
        prio.update_priorities([0], [-1.0])
    prio.update_priorities([0, 1], [0.0, 0.0])
    with pytest.raises(RuntimeError, match="zero"):
        prio.sample(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs a CUDA device")
def test_sample_into_pinned_memory():
    buf = ReplayBuffer(8, SEQ)
    buf.add(id_rows(range(8)))
    rows = buf.sample(4, pin_memory=True)
    assert rows.is_pinned()
    row_ids(rows)
