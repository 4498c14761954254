"""ChunkedPrefill against plain transformers prefill on a small Llama."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lmkernels.chunk_prefill import POLICIES, ChunkedPrefill, greedy_decode  # noqa: E402
from lmkernels.chunk_reuse import cache_fix_overhead  # noqa: E402
from lmkernels.chunk_store import ChunkCache  # noqa: E402
from lmkernels.rope import RopeConfig, rope_rerotate_  # noqa: E402

VOCAB = 200


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval()


def chunks_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g) for n in lengths]


QUESTION = torch.tensor([5, 17, 3, 99, 42])


@torch.no_grad()
def plain(model, chunks, question=QUESTION):
    out = model(input_ids=torch.cat(list(chunks) + [question])[None], use_cache=True)
    return out.logits[0, -1], out.past_key_values


def new_cache(**kw):
    return ChunkCache("test-llama", device_bytes=kw.pop("device_bytes", 1 << 26), **kw)


def assert_same_prefill(result, model, chunks, atol=1e-4):
    logits, cache = plain(model, chunks)
    torch.testing.assert_close(result.logits, logits, atol=atol, rtol=0)
    for ours, theirs in zip(result.cache.layers, cache.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=atol, rtol=0)
        torch.testing.assert_close(ours.values, theirs.values, atol=atol, rtol=0)


def test_full_and_cold_cache_equal_plain_prefill(model):
    chunks = chunks_of([23, 1, 40, 17])
    assert_same_prefill(ChunkedPrefill(model, new_cache(), policy="full").prefill(chunks, QUESTION), model, chunks)
    cache = new_cache()
    cold = ChunkedPrefill(model, cache).prefill(chunks, QUESTION)
    assert not any(c.hit for c in cold.chunks) and all(c.stored for c in cold.chunks)
    assert cold.recompute_fraction == 1.0
    assert_same_prefill(cold, model, chunks)
    cache.check_invariants()


@pytest.mark.parametrize("policy", ["cachecraft", "reuse", "cacheblend"])
def test_ratio_one_equals_full_prefill_after_reordering(model, policy):
    chunks = chunks_of([23, 31, 40, 17])
    cache = new_cache()
    ChunkedPrefill(model, cache).prefill(chunks, QUESTION)
    shuffled = [chunks[2], chunks[0], chunks[3], chunks[1]]
    result = ChunkedPrefill(model, cache, policy="cachecraft" if policy == "reuse" else policy, ratio=1.0,
                            check_layer=0).prefill(shuffled, QUESTION)
    assert all(c.hit for c in result.chunks) and result.recompute_fraction == pytest.approx(1.0)
    assert_same_prefill(result, model, shuffled)


def test_prefix_policy_equals_plain_prefill_and_stops_at_the_first_miss(model):
    chunks = chunks_of([23, 31, 40, 17])
    cache = new_cache()
    ChunkedPrefill(model, cache, policy="prefix").prefill(chunks[:3], QUESTION)
    result = ChunkedPrefill(model, cache, policy="prefix").prefill(chunks, torch.tensor([7, 8]))
    assert [c.hit for c in result.chunks] == [True, True, True, False]
    logits, _ = plain(model, chunks, torch.tensor([7, 8]))
    torch.testing.assert_close(result.logits, logits, atol=1e-4, rtol=0)
    # The same chunks in another order share no prefix beyond the first.
    moved = ChunkedPrefill(model, cache, policy="prefix").prefill([chunks[0], chunks[2], chunks[1]], QUESTION)
    assert [c.hit for c in moved.chunks] == [True, False, False]
    assert_same_prefill(moved, model, [chunks[0], chunks[2], chunks[1]])


def test_reuse_computes_only_the_question_and_cachecraft_the_cfo_share(model):
    chunks = chunks_of([23, 31, 40, 17])
    cache = new_cache()
    ChunkedPrefill(model, cache).prefill(chunks, QUESTION)
    shuffled = [chunks[3], chunks[1], chunks[0], chunks[2]]
    reuse = ChunkedPrefill(model, cache, policy="reuse").prefill(shuffled, QUESTION)
    assert reuse.recompute_fraction == 0.0 and all(c.hit for c in reuse.chunks)
    craft = ChunkedPrefill(model, cache, policy="cachecraft", alpha=0.8).prefill(shuffled, QUESTION)
    keys = [cache.chunk_key(c) for c in shuffled]
    for i, (chunk, report) in enumerate(zip(shuffled, craft.chunks)):
        # The variant used is the cheapest one by CFO, recomputed as ceil(CFO * tokens) tokens.
        cfos = [cache_fix_overhead(info["cci"], info["prefix"], keys[:i], 0.8)
                for info in (cache.variant_info(chunk, v) for v in cache.variants(chunk))]
        assert report.cfo == pytest.approx(min(cfos))
        assert report.recomputed == math.ceil(report.cfo * chunk.numel() - 1e-9)
        if report.positions is not None:  # the tokens with the highest stored attention to context
            with cache.use(chunk, context=_variant_with_cfo(cache, chunk, keys[:i], report.cfo)) as stored:
                # Ties (a chunk stored alone has all-zero scores) go to the earliest tokens.
                order = torch.sort(-stored.scores, stable=True).indices
                top = torch.sort(order[:report.positions.numel()]).values
                assert torch.equal(report.positions, top)
    assert 0.0 < craft.recompute_fraction < 1.0
    # Fixing tokens moves the answer towards full prefill.
    full, _ = plain(model, shuffled)
    kl = lambda r: float(torch.nn.functional.kl_div(r.logits.log_softmax(-1), full.log_softmax(-1),  # noqa: E731
                                                     log_target=True, reduction="sum"))
    assert kl(craft) < kl(reuse)


def _variant_with_cfo(cache, chunk, prefix_keys, cfo):
    for v in cache.variants(chunk):
        info = cache.variant_info(chunk, v)
        if cache_fix_overhead(info["cci"], info["prefix"], prefix_keys, 0.8) == pytest.approx(cfo):
            return v
    raise AssertionError("no variant with that CFO")


@torch.no_grad()
def test_stored_attention_metrics_match_eager_attention(model):
    chunks = chunks_of([19, 26, 33])
    cache = new_cache()
    ChunkedPrefill(model, cache).prefill(chunks, QUESTION)
    ids = torch.cat(chunks + [QUESTION])[None]
    model.set_attn_implementation("eager")
    try:
        attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    probs = torch.stack([a[0] for a in attentions]).mean((0, 1))  # mean over layers and heads: [T, T]
    starts = [0, 19, 45, 78]
    keys = [cache.chunk_key(c) for c in chunks]
    for i in (1, 2):
        rows = probs[starts[i]:starts[i + 1]]
        info = cache.info(chunks[i], context=torch.tensor(keys[:i], dtype=torch.uint64).view(torch.int64))
        expected = [(keys[j], float(rows[:, starts[j]:starts[j + 1]].sum())) for j in range(i)]
        assert [k for k, _ in info["prefix"]] == [k for k, _ in expected]
        assert [m for _, m in info["prefix"]] == pytest.approx([m for _, m in expected], rel=1e-4)
        with cache.use(chunks[i], context=torch.tensor(keys[:i], dtype=torch.uint64).view(torch.int64)) as stored:
            torch.testing.assert_close(stored.scores, rows[:, :starts[i]].sum(1), atol=1e-5, rtol=1e-4)
            # Stored at positions 0..: rotated back to the chunk's offset, K and V are the plain prefill's.
            _, full = plain(model, chunks)
            kv = stored.kv.clone()
            pos = torch.arange(chunks[i].numel())
            rope_rerotate_(kv[0].flatten(1, 2), pos, pos + starts[i], rope=RopeConfig.from_hf_config(model.config),
                           layout="thd")
            for layer in range(3):
                span = slice(starts[i], starts[i + 1])
                torch.testing.assert_close(kv[0, :, layer], full.layers[layer].keys[0, :, span].transpose(0, 1),
                                           atol=1e-5, rtol=0)
                torch.testing.assert_close(kv[1, :, layer], full.layers[layer].values[0, :, span].transpose(0, 1),
                                           atol=1e-5, rtol=0)


def test_cacheblend_keeps_the_most_deviating_tokens(model):
    chunks = chunks_of([30, 30])
    cache = new_cache()
    for c in chunks:  # each chunk stored alone
        ChunkedPrefill(model, cache).prefill([c], QUESTION)
    result = ChunkedPrefill(model, cache, policy="cacheblend", ratio=0.2, check_layer=0).prefill(chunks, QUESTION)
    assert all(c.hit for c in result.chunks)
    # Layer 0 sees only embeddings: its fresh keys equal the plain prefill's.
    _, full = plain(model, chunks)
    fresh = full.layers[0].keys[0].transpose(0, 1)
    with cache.use(chunks[1]) as stored:
        cached = stored.kv[0, :, 0].clone()
    pos = torch.arange(30)
    rope_rerotate_(cached, pos, pos + 30, rope=RopeConfig.from_hf_config(model.config), layout="thd")
    deviation = ((fresh[30:60] - cached) ** 2).sum((1, 2))
    expected = torch.sort(torch.topk(deviation, 6).indices).values
    assert torch.equal(result.chunks[1].positions, expected)
    assert result.chunks[1].recomputed == pytest.approx(30 / 3 + 6 * 2 / 3)


def test_greedy_decode_from_the_spliced_cache(model):
    chunks = chunks_of([23, 31, 40])
    cache = new_cache()
    ChunkedPrefill(model, cache).prefill(chunks, QUESTION)
    result = ChunkedPrefill(model, cache, ratio=1.0).prefill(chunks[::-1], QUESTION)
    reference = ChunkedPrefill(model, cache, policy="full").prefill(chunks[::-1], QUESTION)
    assert greedy_decode(model, result, 12) == greedy_decode(model, reference, 12)


def test_trained_model_keeps_its_greedy_answer_under_cachecraft():
    """On the committed trained tiny model, cachecraft at its default budget gives the greedy
    continuation of full prefill far more often than plain reuse (reported, and a floor)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(Path(__file__).parent / "fixtures" / "tiny-llama").eval()
    text = (Path(__file__).parent / "fixtures" / "tiny-llama" / "heldout_sample.txt").read_text()
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(Path(__file__).parent / "fixtures" / "tiny-llama" / "tokenizer.json"))
    ids = torch.tensor(tokens.encode(text).ids)
    pool = [ids[i * 40:(i + 1) * 40] for i in range(8)]
    cache = new_cache()
    g = torch.Generator().manual_seed(0)
    agree = {"reuse": 0, "cachecraft": 0}
    kl = {"reuse": 0.0, "cachecraft": 0.0}
    for request in range(6):
        chosen = [pool[int(i)] for i in torch.randperm(8, generator=g)[:3]]
        question = ids[400 + 10 * request:405 + 10 * request]
        full = ChunkedPrefill(tiny, cache, policy="full").prefill(chosen, question)
        target = full.logits.log_softmax(-1)
        reference = greedy_decode(tiny, full, 8)
        for policy in agree:
            result = ChunkedPrefill(tiny, cache, policy=policy).prefill(chosen, question)
            kl[policy] += float(torch.nn.functional.kl_div(result.logits.log_softmax(-1), target, log_target=True,
                                                           reduction="sum"))
            agree[policy] += sum(a == b for a, b in zip(greedy_decode(tiny, result, 8), reference))
    assert kl["cachecraft"] < kl["reuse"], kl
    assert agree["cachecraft"] >= agree["reuse"] and agree["cachecraft"] >= 0.6 * 48, agree


def test_bad_inputs_raise_clearly_and_leave_the_cache_consistent(model):
    cache = new_cache()
    chunks = chunks_of([10, 12])
    with pytest.raises(ValueError, match="policy"):
        ChunkedPrefill(model, cache, policy="lru")
    with pytest.raises(ValueError, match="ratio"):
        ChunkedPrefill(model, cache, ratio=1.5)
    with pytest.raises(ValueError, match="check_layer"):
        ChunkedPrefill(model, cache, policy="cacheblend", check_layer=3)
    with pytest.raises(TypeError, match="Llama-family"):
        ChunkedPrefill(torch.nn.Linear(2, 2), cache)
    with pytest.raises(TypeError, match="ChunkCache"):
        ChunkedPrefill(model, {})
    flow = ChunkedPrefill(model, cache)
    with pytest.raises(ValueError, match="chunks must not be empty"):
        flow.prefill([], QUESTION)
    with pytest.raises(ValueError, match=r"chunks\[1\] has token ids outside"):
        flow.prefill([chunks[0], torch.tensor([3, VOCAB])], QUESTION)
    with pytest.raises(ValueError, match="question must be a non-empty"):
        flow.prefill(chunks, [])
    # KV of another shape under this cache (e.g. another model's): a clear error, nothing pinned.
    cache.put(chunks[0], torch.zeros(2, 10, 3, 2, 8))
    with pytest.raises(ValueError, match="another model"):
        flow.prefill(chunks, QUESTION)
    assert cache.info(chunks[0])["pins"] == 0
    cache.check_invariants()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_serves_a_one_chunk_prompt(model, policy):
    chunk = chunks_of([9])
    cache = new_cache()
    ChunkedPrefill(model, cache).prefill(chunk, QUESTION)
    result = ChunkedPrefill(model, cache, policy=policy).prefill(chunk, QUESTION)
    logits, _ = plain(model, chunk)
    torch.testing.assert_close(result.logits, logits, atol=1e-4, rtol=0)  # a first chunk needs no fixing


def test_ingest_stores_chunks_alone_and_cachecraft_fixes_their_first_tokens(model):
    chunks = chunks_of([20, 33])
    cache = new_cache()
    flow = ChunkedPrefill(model, cache, alpha=0.5)
    assert flow.ingest(chunks) == 2 and flow.ingest(chunks) == 0
    assert cache.variants(chunks[0]) == [0] and cache.info(chunks[1])["cci"] == 0.5
    # A chunk alone at the front of the prompt is exact: reuse equals plain prefill.
    alone = ChunkedPrefill(model, cache, policy="reuse").prefill(chunks[:1], QUESTION)
    torch.testing.assert_close(alone.logits, plain(model, chunks[:1])[0], atol=1e-4, rtol=0)
    result = flow.prefill(chunks, QUESTION)
    assert all(c.hit for c in result.chunks) and result.chunks[0].positions is None
    fixed = math.ceil(0.5 * 0.5 * 33)
    assert result.chunks[1].cfo == pytest.approx(0.25)
    assert torch.equal(result.chunks[1].positions, torch.arange(fixed))
    with pytest.raises(ValueError, match=r"chunks\[0\] has token ids outside"):
        flow.ingest([torch.tensor([VOCAB + 3])])


def test_sliding_window_models_are_refused_beyond_their_window():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=16,
                           attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=None)
    mistral = MistralForCausalLM(config).eval()
    flow = ChunkedPrefill(mistral, ChunkCache("mistral", device_bytes=1 << 24))
    assert flow.prefill(chunks_of([6]), torch.tensor([1, 2])).prompt_tokens == 8  # inside the window
    with pytest.raises(ValueError, match="sliding window"):
        flow.prefill(chunks_of([20]), torch.tensor([1, 2]))
