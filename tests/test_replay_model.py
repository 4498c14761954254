"""ReplayBuffer against an independent Python model of its writers and sampler (the same
xoshiro256** streams written out here), driven by hypothesis through adds, samples, reopens
and state-dict round trips."""

from __future__ import annotations

import tempfile

import hypothesis.strategies as st
import torch
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lmkernels.replay import ReplayBuffer

MASK = (1 << 64) - 1
SEQ = 3


class Xoshiro:
    def __init__(self, seed: int) -> None:
        x = seed & MASK
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (64 - k))) & MASK

    def next(self) -> int:
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def below(self, bound: int) -> int:
        m = self.next() * bound
        if (m & MASK) < bound:
            threshold = ((1 << 64) - bound) % bound
            while (m & MASK) < threshold:
                m = self.next() * bound
        return m >> 64


class Model:
    """The documented semantics, row ids only."""

    def __init__(self, capacity: int, writer: str, seed: int) -> None:
        self.capacity, self.writer = capacity, writer
        self.slots: list[int] = []
        self.seen = self.cursor = 0
        self.write_rng = Xoshiro(seed)
        self.sample_rng = Xoshiro(seed ^ 0x632BE59BD9B4E019)

    def add(self, ids: list[int]) -> None:
        for row in ids:
            if len(self.slots) < self.capacity:
                self.slots.append(row)
                self.cursor = len(self.slots) % self.capacity
            elif self.writer == "fifo":
                self.slots[self.cursor] = row
                self.cursor = (self.cursor + 1) % self.capacity
            elif self.writer == "reservoir":
                j = self.write_rng.below(self.seen + 1)
                if j < self.capacity:
                    self.slots[j] = row
            else:
                self.slots[self.write_rng.below(self.capacity)] = row
            self.seen += 1

    def sample(self, n: int) -> list[int]:
        return [self.slots[self.sample_rng.below(len(self.slots))] for _ in range(n)]


def rows_of(ids: list[int]) -> torch.Tensor:
    ids_t = torch.tensor(ids, dtype=torch.int64)
    return (ids_t[:, None] * SEQ + torch.arange(SEQ)).to(torch.int32)


class BufferMachine(RuleBasedStateMachine):
    @initialize(capacity=st.integers(1, 12), writer=st.sampled_from(["fifo", "reservoir", "random"]),
                seed=st.integers(0, 2**64 - 1), on_disk=st.booleans(), shard_rows=st.integers(1, 5))
    def setup(self, capacity, writer, seed, on_disk, shard_rows):
        self.kwargs = {"writer": writer}
        if on_disk:
            self.tmp = tempfile.TemporaryDirectory()
            self.kwargs.update(directory=self.tmp.name, shard_rows=shard_rows)
        self.capacity = capacity
        self.buf = ReplayBuffer(capacity, SEQ, seed=seed, **self.kwargs)
        self.model = Model(capacity, writer, seed)
        self.next_id = 0

    @rule(n=st.integers(0, 20))
    def add(self, n):
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        if n:
            self.buf.add(rows_of(ids))
        self.model.add(ids)

    @precondition(lambda self: len(self.model.slots) > 0)
    @rule(n=st.integers(1, 6))
    def sample(self, n):
        got = (self.buf.sample(n)[:, 0] // SEQ).tolist()
        assert got == self.model.sample(n)

    @precondition(lambda self: "directory" in self.kwargs)
    @rule()
    def reopen(self):
        state = self.buf.state_dict()
        self.buf.close()
        self.buf = ReplayBuffer(self.capacity, SEQ, **self.kwargs)
        self.buf.load_state_dict(state)

    @rule()
    def state_round_trip(self):
        if "directory" in self.kwargs:
            return
        fresh = ReplayBuffer(self.capacity, SEQ, seed=12345, **self.kwargs)
        fresh.load_state_dict(self.buf.state_dict())
        self.buf = fresh

    @invariant()
    def same_rows(self):
        if not hasattr(self, "buf"):
            return
        ids = (self.buf.gather(torch.arange(len(self.buf)))[:, 0] // SEQ).tolist()
        assert ids == self.model.slots
        assert self.buf.seen == self.model.seen

    def teardown(self):
        if hasattr(self, "buf"):
            self.buf.close()
        if hasattr(self, "tmp"):
            self.tmp.cleanup()


BufferMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestBufferAgainstModel = BufferMachine.TestCase
