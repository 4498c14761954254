"""Prepacked prefill through a transformers Llama model equals running each prompt alone."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

from lmkernels import hf, hf_layers  # noqa: E402

from conftest import prompts_of, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@torch.no_grad()
def alone(model, prompt):
    out = model(input_ids=prompt[None], use_cache=True)
    return out.logits[0, -1], out.past_key_values


@pytest.mark.parametrize("lengths,capacity", [
    ([5, 13, 1, 9, 20, 3], None),   # everything in one packed row
    ([5, 13, 1, 9, 20, 3], 20),     # several rows, one prompt as long as the capacity
    ([7], None),                    # one prompt
    ([6, 6, 6, 6], 12),             # all the same length
    ([1, 1, 1], None),              # 1-token prompts
])
def test_prefill_equals_each_prompt_alone(model, lengths, capacity):
    prompts = prompts_of(lengths)
    result = hf.prefill(model, prompts, capacity)
    assert result.logits.shape == (len(prompts), 120)
    for i, p in enumerate(prompts):
        logits, cache = alone(model, p)
        torch.testing.assert_close(result.logits[i], logits, atol=1e-4, rtol=1e-4)
        assert result.caches[i].get_seq_length() == len(p)
        for mine, ref in zip(result.caches[i].layers, cache.layers):
            torch.testing.assert_close(mine.keys, ref.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mine.values, ref.values, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored


@torch.no_grad()
def test_greedy_continuation_equals_generate(model):
    prompts = prompts_of([4, 11, 7], seed=2)
    result = hf.prefill(model, prompts)
    for i, p in enumerate(prompts):
        cache = result.caches[i]
        token = result.logits[i].argmax()
        mine = [int(token)]
        for step in range(19):
            out = model(input_ids=token.view(1, 1), past_key_values=cache,
                        position_ids=torch.tensor([[len(p) + step]]), use_cache=True)
            token = out.logits[0, -1].argmax()
            mine.append(int(token))
        reference = model.generate(p[None], max_new_tokens=20, do_sample=False)[0, len(p):].tolist()
        assert mine == reference


@torch.no_grad()
def test_registered_attention_runs_a_plain_forward(model):
    """Without cu_seq_lens every batch row is one causal sequence: same as sdpa."""
    ids = torch.randint(0, 120, (2, 9))
    want = model(input_ids=ids).logits
    with hf.use_varlen_attention(model):
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_prefill_caches_are_views_of_one_buffer(model):
    """All prompts' keys and values land in one allocation, not one per packed row."""
    result = hf.prefill(model, prompts_of([5, 13, 1, 9, 20, 3]), 20)
    assert result.packing.num_rows > 1
    storages = {layer.keys.untyped_storage().data_ptr() for cache in result.caches for layer in cache.layers}
    storages |= {layer.values.untyped_storage().data_ptr() for cache in result.caches for layer in cache.layers}
    assert len(storages) == 1


def test_prefill_needs_layer_indices(model, monkeypatch):
    monkeypatch.delattr(model.model.layers[1].self_attn, "layer_idx")
    with pytest.raises(ValueError, match="has no layer_idx"):
        hf.prefill(model, prompts_of([4, 6]))
    assert model.config._attn_implementation == "sdpa"


def test_prefill_refuses_a_layer_that_bypasses_its_attention(model, monkeypatch):
    attention = model.model.layers[1].self_attn
    monkeypatch.setattr(attention, "forward", lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states), None))
    with pytest.raises(RuntimeError, match=r"layers \[1\] did not pass"):
        hf.prefill(model, prompts_of([4, 6]))


def test_prefill_trims_the_last_layer_to_the_last_positions(model, monkeypatch):
    """The last layer's MLP, o_proj, q_proj and attention see one query per prompt (its
    k_proj and v_proj every token); the caches stay identical and the logits equal the
    untrimmed prefill's."""
    prompts = prompts_of([5, 13, 1, 9, 20, 3])
    seen = {}
    attention_queries = []

    def recording_attention(q, k, v, cu_q, cu_k, **kwargs):
        attention_queries.append((q.shape[0], k.shape[0]))
        return varlen_attention(q, k, v, cu_q, cu_k, **kwargs)

    varlen_attention = hf.varlen_attention
    monkeypatch.setattr(hf, "varlen_attention", recording_attention)
    last = model.model.layers[-1]
    # Registered before prefill's own hooks: a forward hook sees the args as gathered.
    hooks = [part.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0].shape[1]))
             for name, part in (("mlp", last.mlp), ("o_proj", last.self_attn.o_proj), ("q_proj", last.self_attn.q_proj),
                                ("k_proj", last.self_attn.k_proj), ("first mlp", model.model.layers[0].mlp))]
    try:
        got = hf.prefill(model, prompts, 30)
    finally:
        for hook in hooks:
            hook.remove()
    rows = [[len(prompts[i]) for i in range(len(prompts)) if int(got.packing.row[i]) == r] for r in range(got.packing.num_rows)]
    assert seen["mlp"] == seen["o_proj"] == seen["q_proj"] == [len(r) for r in rows]
    assert seen["first mlp"] == seen["k_proj"] == [sum(r) for r in rows]  # the cache needs every key
    layers = model.config.num_hidden_layers
    assert attention_queries == [q for r in rows for q in [(sum(r), sum(r))] * (layers - 1) + [(len(r), sum(r))]]
    assert not last.mlp._forward_pre_hooks and not last.mlp._forward_hooks  # removed again
    assert not last.self_attn.q_proj._forward_pre_hooks and not last.self_attn.q_proj._forward_hooks
    full = hf.prefill(model, prompts, 30, trim_last_layer=False)
    torch.testing.assert_close(got.logits, full.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(got.caches, full.caches):
        for la, lb in zip(a.layers, b.layers):
            assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_prefill_chunks_the_mlp(model):
    """Each layer's MLP sees at most mlp_chunk tokens per call; logits and caches match the
    unchunked prefill and the MLPs' forwards are restored afterwards."""
    prompts = prompts_of([5, 13, 1, 9, 20, 3])
    seen = []
    gate = model.model.layers[0].mlp.gate_proj
    hook = gate.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        got = hf.prefill(model, prompts, 30, mlp_chunk=8)
    finally:
        hook.remove()
    rows = [sum(len(prompts[i]) for i in range(len(prompts)) if int(got.packing.row[i]) == r) for r in range(got.packing.num_rows)]
    assert seen == [min(8, n - start) for n in rows for start in range(0, n, 8)]
    assert all("forward" not in layer.mlp.__dict__ for layer in model.model.layers)
    whole = hf.prefill(model, prompts, 30, mlp_chunk=None)
    torch.testing.assert_close(got.logits, whole.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(got.caches, whole.caches):
        for la, lb in zip(a.layers, b.layers):
            torch.testing.assert_close(la.keys, lb.keys, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(la.values, lb.values, atol=1e-6, rtol=1e-6)


def test_chunked_mlp_keeps_an_instance_forward_and_runs_tuple_mlps_whole():
    class Layer(torch.nn.Module):
        def __init__(self, mlp):
            super().__init__()
            self.self_attn, self.mlp = torch.nn.Module(), mlp
            self.self_attn.layer_idx = 0

    class RouterMLP(torch.nn.Module):  # a mixture of experts' (hidden, router logits)
        def forward(self, x):
            calls.append(x.shape[1])
            return 2 * x, x.sum(-1)

    calls = []
    own = torch.nn.Linear(4, 4)
    own.forward = lambda x: x + 1  # e.g. set by an offloading library
    for mlp, check in ((RouterMLP(), lambda out, x: torch.equal(out[0], 2 * x) and calls[-1] == x.shape[1]),
                       (own, lambda out, x: torch.equal(out, x + 1))):
        with hf_layers.ChunkedMLP(Layer(mlp), 4):
            x = torch.randn(1, 10, 4)
            assert check(mlp(x), x)
        assert mlp.__dict__.get("forward") is (own.__dict__["forward"] if mlp is own else None)
    assert own(torch.zeros(1, 10, 4)).eq(1).all()


def test_prefill_runs_an_unrecognised_last_layer_in_full(model, monkeypatch):
    monkeypatch.delattr(model.model.layers[-1], "mlp")
    assert hf_layers.LastLayerRows(model).parts == []


@pytest.mark.parametrize("release_memory, trims", [("layer", 2 * 3), ("row", 3), ("off", 0)])
def test_prefill_release_memory_trims_the_heap_and_changes_nothing_else(model, monkeypatch, release_memory, trims):
    """Two layers, three rows of capacity 8: one trim per layer and row, one per row, none."""
    prompts = prompts_of([8, 5, 3, 7])
    want = hf.prefill(model, prompts, 8, release_memory="off")
    calls = []
    monkeypatch.setattr(hf, "_malloc_trim", lambda: calls.append)
    got = hf.prefill(model, prompts, 8, release_memory=release_memory)
    assert got.packing.num_rows == 3
    assert len(calls) == trims and all(pad == 0 for pad in calls)
    assert torch.equal(got.logits, want.logits)
    for a, b in zip(got.caches, want.caches):
        for la, lb in zip(a.layers, b.layers):
            assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)


def test_prefill_release_memory_only_trims_for_a_cpu_model():
    """The heap holds a CPU forward's temporaries only; a GPU model's live in its allocator."""
    assert hf._release_mode("layer", torch.device("cpu")) == "layer"
    assert hf._release_mode("row", torch.device("cpu")) == "row"
    assert hf._release_mode("layer", torch.device("cuda", 0)) == "off"
    assert hf._release_mode("row", torch.device("meta")) == "off"


def test_prefill_release_memory_without_malloc_trim(model, monkeypatch):
    """A C library without malloc_trim (macOS, musl): the option is accepted and does nothing."""
    monkeypatch.setattr(hf, "_malloc_trim", lambda: None)
    got = hf.prefill(model, prompts_of([3, 4]), release_memory="layer")
    assert got.logits.shape[0] == 2


def test_prefill_bad_inputs(model):
    with pytest.raises(ValueError, match="prompts is empty"):
        hf.prefill(model, [])
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        hf.prefill(model, [[1, 2], []])
    with pytest.raises(ValueError, match="does not fit the capacity 3"):
        hf.prefill(model, [[1, 2, 3, 4]], 3)
    with pytest.raises(ValueError, match="release_memory must be one of"):
        hf.prefill(model, [[1, 2]], release_memory="sometimes")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="mlp_chunk must be a positive int or None"):
            hf.prefill(model, [[1, 2]], mlp_chunk=bad)
    assert model.config._attn_implementation == "sdpa"


@torch.no_grad()
def test_flex_prefill_attention_implementation(model):
    """Above the length threshold the model runs FlexPrefill; gamma=1 makes it exact."""
    hf.register()
    ids = torch.randint(0, 120, (1, 200))
    want = model(input_ids=ids).logits
    model.config.flex_prefill_min_len = 100
    model.config.flex_prefill = {"gamma": 1.0, "min_budget": 0, "block_size": 16}
    model.set_attn_implementation(hf.FLEX_ATTENTION_NAME)
    try:
        got = model(input_ids=ids).logits
        short = model(input_ids=ids[:, :50]).logits  # below the threshold: varlen path
    finally:
        model.set_attn_implementation("sdpa")
        del model.config.flex_prefill_min_len, model.config.flex_prefill
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(short, model(input_ids=ids[:, :50]).logits, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_flex_prefill_attention_in_packed_rows(model, monkeypatch):
    """Packed prompts: the long one runs FlexPrefill (its own index), the short one dense;
    with gamma=1 both equal running each prompt alone."""
    import lmkernels.flex_prefill as flex

    built = []
    original = flex.build_flex_index
    monkeypatch.setattr(flex, "build_flex_index", lambda q, k, **kw: built.append(q.shape[2]) or original(q, k, **kw))
    hf.register()
    prompts = prompts_of([200, 60], seed=4)
    cu = torch.tensor([0, 200, 260], dtype=torch.int32)
    position_ids = torch.cat([torch.arange(200), torch.arange(60)])[None]
    model.config.flex_prefill_min_len = 100
    model.config.flex_prefill = {"gamma": 1.0, "min_budget": 0, "block_size": 16}
    model.set_attn_implementation(hf.FLEX_ATTENTION_NAME)
    try:
        got = model(input_ids=torch.cat(prompts)[None], position_ids=position_ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                    max_length_q=200, max_length_k=200).logits[0]
    finally:
        model.set_attn_implementation("sdpa")
        del model.config.flex_prefill_min_len, model.config.flex_prefill
    assert built == [200] * model.config.num_hidden_layers  # only the long prompt, once per layer
    torch.testing.assert_close(got[:200], model(input_ids=prompts[0][None]).logits[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[200:], model(input_ids=prompts[1][None]).logits[0], atol=1e-4, rtol=1e-4)
