"""ChunkCache (C++ core): tiers, budgets, pinning, eviction order, disk reopen, threads, bad inputs."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from lmkernels.chunk_cache import ChunkCache


def kv_of(seed: int, tokens: int = 8, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 2, tokens, 2, 4, generator=g).to(dtype)  # [layers, k/v, tokens, heads, dim]


def chunk(i: int, tokens: int = 8) -> list[int]:
    return [1000 + i] + list(range(tokens - 1))


ENTRY = kv_of(0).nbytes  # 512 bytes


def test_keys_are_position_free_and_model_specific():
    a = ChunkCache("model-a", device_bytes=ENTRY * 4)
    b = ChunkCache("model-b", device_bytes=ENTRY * 4)
    assert a.chunk_key([1, 2, 3]) == a.chunk_key(torch.tensor([1, 2, 3]))
    assert a.chunk_key([1, 2, 3]) != a.chunk_key([1, 2, 3, 0])
    assert a.chunk_key([1, 2, 3]) != b.chunk_key([1, 2, 3])
    assert a.context_key(None) == 0 and a.context_key([5, 6]) == a.chunk_key([5, 6])


def test_variants_and_held_by_reference():
    cache = ChunkCache("m", device_bytes=ENTRY * 4, device="cpu")
    kv = kv_of(1)
    cache.put(chunk(0), kv, cci=0.3)
    cache.put(chunk(0), kv_of(2), context=[7, 7, 7])
    assert sorted(cache.variants(chunk(0))) == sorted([0, cache.context_key([7, 7, 7])])
    with cache.use(chunk(0)) as (got, scores, _prefix):
        assert got.data_ptr() == kv.data_ptr()  # the caller's tensor itself, no copy
        assert scores.shape == (8,) and cache.info(chunk(0))["pins"] == 1
    assert cache.info(chunk(0))["pins"] == 0 and cache.info(chunk(0))["cci"] == pytest.approx(0.3)
    with cache.use(chunk(5)) as got:
        assert got is None
    s = cache.stats()
    assert (s["hits"], s["misses"]) == (1, 1)


def test_demotion_and_promotion_preserve_bytes(tmp_path):
    cache = ChunkCache("m", device_bytes=ENTRY * 2, host_bytes=ENTRY * 2, disk_bytes=ENTRY * 8, directory=tmp_path,
                       eviction="lru", device="cpu")
    originals = {i: kv_of(i, dtype=[torch.bfloat16, torch.float32, torch.float16][i % 3]) for i in range(6)}
    for i, kv in originals.items():
        cache.put(chunk(i, kv.shape[2]), kv.clone(), scores=torch.arange(8.0) + i)
        cache.check_invariants()
    tiers = [cache.info(chunk(i))["tier"] for i in range(6)]
    assert tiers.count("disk") >= 1 and "device" in tiers  # fp32 entries take twice the bytes
    for i in range(6):  # each use promotes an entry and demotes another
        with cache.use(chunk(i)) as (kv, scores, _prefix):
            assert kv.dtype == originals[i].dtype and torch.equal(kv, originals[i])
            assert torch.equal(scores, torch.arange(8.0) + i)
            assert cache.info(chunk(i))["tier"] == "device"
        cache.check_invariants()
    s = cache.stats()
    assert s["promotions"] >= 3 and s["demotions"] >= 3 and s["evictions"] == 0


def test_budgets_hold_and_pinned_entries_stay(tmp_path):
    cache = ChunkCache("m", device_bytes=ENTRY * 3, host_bytes=ENTRY * 2, disk_bytes=ENTRY * 3, directory=tmp_path,
                       device="cpu")
    pinned = kv_of(99)
    cache.put(chunk(99), pinned.clone())
    with cache.use(chunk(99)) as (kv, _scores, _prefix):
        for i in range(40):
            cache.put(chunk(i), kv_of(i))
            cache.check_invariants()
            s = cache.stats()
            assert all(s[f"bytes_{t}"] <= s[f"budget_{t}"] for t in ("device", "host", "disk"))
        assert cache.info(chunk(99))["tier"] == "device" and torch.equal(kv, pinned)
    assert cache.stats()["evictions"] > 0
    with pytest.raises(RuntimeError, match="in use"):
        with cache.use(chunk(39)):
            cache.put(chunk(39), kv_of(1))


def test_score_eviction_keeps_the_valuable_entries():
    cache = ChunkCache("m", device_bytes=ENTRY * 3, device="cpu")
    for i in range(3):
        cache.put(chunk(i), kv_of(i), cci=0.0)
    for _ in range(5):  # chunk 0 is reused, chunk 1 was computed in a context that changes it a lot
        with cache.use(chunk(0)):
            pass
    cache.put(chunk(1), kv_of(1), cci=0.9)
    cache.put(chunk(3), kv_of(3))
    assert cache.info(chunk(1)) is None  # lowest (hits+1) * (1 - cci): dropped first
    assert cache.info(chunk(0)) is not None and cache.info(chunk(2)) is not None
    lru = ChunkCache("m", device_bytes=ENTRY * 2, eviction="lru", device="cpu")
    lru.put(chunk(0), kv_of(0))
    lru.put(chunk(1), kv_of(1))
    with lru.use(chunk(0)):
        pass
    lru.put(chunk(2), kv_of(2))
    assert lru.info(chunk(1)) is None and lru.info(chunk(0)) is not None


def test_disk_tier_survives_reopening(tmp_path):
    from safetensors.torch import load_file

    first = ChunkCache("m", device_bytes=0, disk_bytes=ENTRY * 10, directory=tmp_path)
    for i in range(4):
        prefix = [(2**64 - 1 - j, 0.5 + j) for j in range(i)]  # keys above 2^63 must survive too
        first.put(chunk(i), kv_of(i), scores=torch.full((8,), float(i)), cci=0.25 * i, prefix=prefix)
    with first.use(chunk(2)):
        pass
    del first
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 4 and set(load_file(files[0])) == {"kv", "scores", "prefix"}  # plain safetensors
    again = ChunkCache("m", device_bytes=0, disk_bytes=ENTRY * 10, directory=tmp_path)
    for i in range(4):
        info = again.info(chunk(i))
        assert info["tier"] == "disk" and info["cci"] == pytest.approx(0.25 * i)
        with again.use(chunk(i)) as (kv, scores, prefix):
            assert torch.equal(kv, kv_of(i)) and torch.equal(scores, torch.full((8,), float(i)))
            assert prefix == [(2**64 - 1 - j, 0.5 + j) for j in range(i)]
    assert again.info(chunk(2))["hits"] == 2
    again.check_invariants()
    with pytest.raises(ValueError, match="another model"):
        ChunkCache("other", device_bytes=0, disk_bytes=ENTRY, directory=tmp_path)
    smaller = ChunkCache("m", device_bytes=0, disk_bytes=ENTRY * 2, directory=tmp_path)
    assert smaller.stats()["entries_disk"] == 2 and len(list(tmp_path.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("with_disk,ops", [(False, 10_000), (True, 1_000)])  # disk ops cost file writes
def test_threads_mixed_operations(tmp_path, with_disk, ops):
    disk = {"disk_bytes": ENTRY * 6, "directory": tmp_path} if with_disk else {}
    cache = ChunkCache("m", device_bytes=ENTRY * 6, host_bytes=ENTRY * 4, device="cpu", **disk)
    payload = {i: kv_of(i) for i in range(24)}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(ops):
                i, op = rnd.randrange(24), rnd.random()
                try:
                    if op < 0.35:
                        cache.put(chunk(i), payload[i], cci=rnd.random())
                    elif op < 0.8:
                        with cache.use(chunk(i)) as got:
                            if got is not None:
                                assert torch.equal(got[0], payload[i])
                    elif op < 0.9:
                        cache.remove(chunk(i))
                    else:
                        cache.stats()
                except RuntimeError as e:  # a put or remove of a key another thread is using
                    if "in use" not in str(e):
                        raise
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    cache.check_invariants()
    s = cache.stats()
    assert s["hits"] + s["misses"] > 2 * ops


def test_bad_inputs_leave_the_cache_consistent(tmp_path):
    cache = ChunkCache("m", device_bytes=ENTRY * 2, device="cpu")
    cache.put(chunk(0), kv_of(0))
    before = cache.stats()
    with pytest.raises(ValueError, match="fits no tier"):
        cache.put(chunk(1), kv_of(1, tokens=64))
    with pytest.raises(ValueError, match="one value per token"):
        cache.put(chunk(1), kv_of(1), scores=torch.zeros(3))
    with pytest.raises(ValueError, match="cci"):
        cache.put(chunk(1), kv_of(1), cci=-1.0)
    with pytest.raises(ValueError, match="non-empty tensor"):
        cache.put(chunk(1), torch.zeros(0))
    with pytest.raises(ValueError, match="model 'm', not 'other'"):
        cache.put(chunk(1), kv_of(1), model_id="other")
    with pytest.raises(ValueError, match="token ids"):
        cache.put([0.5, 1.5], kv_of(1))
    with pytest.raises(ValueError, match="finite and >= 0"):
        cache.put(chunk(1), kv_of(1), prefix=[(3, -1.0)])
    with pytest.raises(ValueError, match="pairs"):
        cache.put(chunk(1), kv_of(1), prefix=[3, 4])
    assert cache.stats() == before
    cache.check_invariants()
    with pytest.raises(RuntimeError, match="not acquired"):
        cache._core.release(cache.chunk_key(chunk(0)), 0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RuntimeError, match="cannot create the directory"):
        ChunkCache("m", device_bytes=0, disk_bytes=ENTRY, directory=blocker / "cache")
    with pytest.raises(ValueError, match="directory and a disk budget"):
        ChunkCache("m", device_bytes=ENTRY, disk_bytes=ENTRY)
    with pytest.raises(ValueError, match="eviction"):
        ChunkCache("m", device_bytes=ENTRY, eviction="fifo")
    with pytest.raises(ValueError, match="device_bytes"):
        ChunkCache("m", device_bytes=-1)


def test_damaged_disk_file_raises_and_leaves_nothing_pinned(tmp_path):
    cache = ChunkCache("m", device_bytes=0, disk_bytes=ENTRY * 4, directory=tmp_path)
    cache.put(chunk(0), kv_of(0))
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:40])  # cut short behind the cache's back
    with pytest.raises(RuntimeError, match="damaged"):
        with cache.use(chunk(0)):
            pass
    assert cache.info(chunk(0))["pins"] == 0
    assert cache.remove(chunk(0))  # and it can still be dropped
    cache.check_invariants()
    (tmp_path / "index.txt").write_text("lmkernels-chunk-cache 1 zz\nnot-hex xx 1 0 0 6 1 8\n")
    with pytest.raises((RuntimeError, ValueError)):
        ChunkCache("m", device_bytes=0, disk_bytes=ENTRY * 4, directory=tmp_path)
