"""ReplayMixer (exact replay counts), Reptile (MER) and GeRe's threshold-margin loss."""

from __future__ import annotations

import copy

import pytest
import torch

from lmkernels.replay import ReplayBuffer, ReplayMixer, Reptile, ThresholdMarginLoss, replay_count

SEQ = 8


def stream(batches: int, rows: int, start: int = 0):
    """New-data batches whose rows are numbered (token 0 = row id), to trace every row."""
    for b in range(batches):
        ids = torch.arange(start + b * rows, start + (b + 1) * rows)
        yield ids[:, None].expand(rows, SEQ).clone()


# ---- mixer ---------------------------------------------------------------------------------
def test_replay_count_rounds_half_up():
    assert [replay_count(0.25, n) for n in (1, 2, 4, 6, 10)] == [0, 1, 1, 2, 3]
    assert replay_count(0.5, 7) == 4 and replay_count(0.0, 9) == 0


@pytest.mark.parametrize("rate,batch_size,incoming", [(0.25, 10, 7), (0.5, 8, 8), (0.3, 13, 5), (0.0, 6, 4)])
def test_mixer_replays_exactly_the_rate_and_uses_every_new_row_once(rate, batch_size, incoming):
    buf = ReplayBuffer(1000, SEQ, seed=1)
    mixer = ReplayMixer(stream(23, incoming), buf, rate, batch_size=batch_size, warmup_batches=2,
                        return_mask=True, seed=0)
    seen_new: list[int] = []
    for step, (rows, is_replay) in enumerate(mixer):
        ids = rows[:, 0]
        assert bool((rows == ids[:, None]).all())
        new = ids[~is_replay].tolist()
        replayed = ids[is_replay].tolist()
        if step < 2:
            assert not replayed  # warm-up
        elif rows.shape[0] == batch_size:
            assert len(replayed) == replay_count(rate, batch_size)
        else:  # the last, partial batch keeps the rate too
            assert len(replayed) == replay_count(rate, rows.shape[0])
        assert all(r in seen_new for r in replayed)  # replay only from earlier batches
        seen_new += new
    assert sorted(seen_new) == list(range(23 * incoming))  # every new row exactly once
    assert buf.seen == 23 * incoming


def test_mixer_shuffles_within_the_batch():
    buf = ReplayBuffer(100, SEQ)
    rows = [r for r in ReplayMixer(stream(20, 8), buf, 0.5, seed=3)][5]
    assert rows.shape == (8, SEQ)
    is_sorted = bool((rows[1:, 0] >= rows[:-1, 0]).all())
    assert not is_sorted


def test_mixer_state_dict_resumes_exactly():
    source = list(stream(12, 5))

    def mixer_over(batches):
        return ReplayMixer(iter(batches), ReplayBuffer(64, SEQ, seed=9), 0.4, batch_size=6, seed=2)

    straight = list(mixer_over(source))
    first = mixer_over(source)
    head = []
    for rows in first:
        head.append(rows)
        if len(head) == 4:
            break
    state = first.state_dict()
    pending = 0 if state["pending"] is None else state["pending"].shape[0]
    batches_read = (state["buffer"]["counters"]["seen"] + pending) // 5  # the new-data source resumes there
    resumed = mixer_over(source[batches_read:])
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(straight)
    for a, b in zip(straight, head + tail):
        assert torch.equal(a, b)


def test_mixer_bad_inputs():
    buf = ReplayBuffer(10, SEQ)
    for rate in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            ReplayMixer(stream(1, 4), buf, rate)
    with pytest.raises(ValueError, match="batch_size"):
        ReplayMixer(stream(1, 4), buf, 0.2, batch_size=0)
    with pytest.raises(ValueError, match=r"shape \[b, 8\]"):
        list(ReplayMixer([torch.zeros(4, SEQ + 1, dtype=torch.long)], buf, 0.2))
    assert len(buf) == 0


# ---- Reptile -------------------------------------------------------------------------------
def test_reptile_interpolates_every_k_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    theta0 = [p.detach().clone() for p in model.parameters()]
    reptile = Reptile(model, k=3, beta=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 5)
    for step in range(1, 4):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
        if step < 3:
            before = [p.detach().clone() for p in model.parameters()]
            assert not reptile.step()
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    theta_k = [p.detach().clone() for p in model.parameters()]
    assert reptile.step()
    for p, t0, tk in zip(model.parameters(), theta0, theta_k):
        torch.testing.assert_close(p.detach(), t0 + 0.25 * (tk - t0))
    # the result is the next anchor
    anchor = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        reptile.step()
    for p, a in zip(model.parameters(), anchor):
        torch.testing.assert_close(p.detach(), a + 0.25 * 3.0)  # three +1 moves, a quarter kept


def test_reptile_updates_fp32_masters_and_the_next_forward():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(torch.bfloat16)
    masters = [p.detach().float().clone().requires_grad_(True) for p in model.parameters()]
    opt = torch.optim.SGD(masters, lr=0.5)
    reptile = Reptile(model, k=2, beta=0.5, optimizer=opt)
    x = torch.randn(3, 8)
    theta0 = [m.detach().clone() for m in masters]
    for _ in range(2):
        opt.zero_grad()
        for m in masters:
            m.grad = torch.ones_like(m)
        opt.step()
        with torch.no_grad():  # the usual mixed-precision copy: masters -> model weights
            for p, m in zip(model.parameters(), masters):
                p.copy_(m)
        reptile.step()
    for m, t0 in zip(masters, theta0):
        torch.testing.assert_close(m.detach(), t0 + 0.5 * (t0 - 1.0 - t0))  # two steps of -0.5, halved
    expected = torch.nn.functional.linear(x.bfloat16(), masters[0].detach().bfloat16(), masters[1].detach().bfloat16())
    assert torch.equal(model(x.bfloat16()), expected)  # the forward pass sees the interpolation
    # and the next optimizer step starts from the interpolated masters
    opt.zero_grad()
    for m in masters:
        m.grad = torch.zeros_like(m)
    opt.step()
    torch.testing.assert_close(masters[0].detach(), theta0[0] - 0.5)


def test_reptile_state_dict_and_bad_arguments():
    model = torch.nn.Linear(2, 2)
    r = Reptile(model, k=2, beta=0.5)
    r.step()
    clone = Reptile(copy.deepcopy(model), k=5, beta=0.1)
    clone.load_state_dict(r.state_dict())
    assert (clone.k, clone.beta, clone.count) == (2, 0.5, 1)
    for k, beta in [(0, 0.5), (2, 0.0), (2, 1.5), (2, float("inf"))]:
        with pytest.raises(ValueError):
            Reptile(model, k=k, beta=beta)
    with pytest.raises(ValueError, match="one to one"):
        Reptile(model, k=2, beta=0.5, master_params=[torch.zeros(3)])
    with pytest.raises(ValueError, match="anchors"):
        Reptile(torch.nn.Linear(3, 3), k=2, beta=0.5).load_state_dict(r.state_dict())


# ---- GeRe ----------------------------------------------------------------------------------
def test_threshold_margin_loss_matches_the_definition():
    torch.manual_seed(0)
    reference = torch.randn(4, 6, 10)
    loss_fn = ThresholdMarginLoss.from_reference(reference)
    flat = reference.reshape(-1, 10)
    pos, neg = flat.mean(0) + flat.std(0), flat.mean(0) - flat.std(0)
    hidden = reference + 0.8 * torch.randn_like(reference)
    expected_terms = []
    for h, r in zip(hidden.reshape(-1, 10), flat):
        for j in range(10):
            if r[j] <= neg[j]:
                t = max(h[j] - neg[j], 0.0)
            elif r[j] >= pos[j]:
                t = max(pos[j] - h[j], 0.0)
            else:
                t = max(h[j] - pos[j], 0.0) + max(neg[j] - h[j], 0.0)
            expected_terms.append(float(t))
    nonzero = [t for t in expected_terms if t > 0]
    torch.testing.assert_close(loss_fn(hidden, reference), torch.tensor(sum(nonzero) / len(nonzero)))
    assert loss_fn(reference, reference).item() == 0.0  # activations where the reference had them: no penalty
    hidden.requires_grad_(True)
    loss_fn(hidden, reference).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="must match"):
        loss_fn(hidden[:, :3], reference)


def test_gere_loss_on_the_replayed_rows_of_a_mixed_batch():
    """GeRe with the mixer: general rows in the buffer, TM loss on the replayed rows only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ)
    model = LlamaForCausalLM(config)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    general = torch.randint(0, 64, (32, SEQ))
    buf = ReplayBuffer(32, SEQ)
    buf.add(general)
    with torch.no_grad():
        tm = ThresholdMarginLoss.from_reference(reference(general, output_hidden_states=True).hidden_states[-1])
    new = (torch.randint(0, 64, (6, SEQ)) for _ in range(3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for rows, is_replay in ReplayMixer(new, buf, 0.5, batch_size=8, return_mask=True):
        out = model(rows, labels=rows, output_hidden_states=True)
        replayed = rows[is_replay]
        with torch.no_grad():
            ref_hidden = reference(replayed, output_hidden_states=True).hidden_states[-1]
        margin = tm(out.hidden_states[-1][is_replay], ref_hidden)
        (out.loss + margin).backward()
        opt.step()
        opt.zero_grad()
        assert int(is_replay.sum()) == replay_count(0.5, rows.shape[0]) and torch.isfinite(margin)
    # training moved the model, so the replayed rows' activations now leave their regions
    with torch.no_grad():
        drift = tm(model(general, output_hidden_states=True).hidden_states[-1],
                   reference(general, output_hidden_states=True).hidden_states[-1])
    assert drift > 0
