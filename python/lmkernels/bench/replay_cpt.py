"""Continual pre-training demonstration: a small Llama trained on English, then French, then
German manual pages (the corpora of `python -m lmkernels.data build-corpora`), with no
replay, replay at 25% and 50%, and replay 25% + MER (Reptile). Every step trains on the same
number of rows; replayed rows come from a reservoir ReplayBuffer that every new row enters.

Reports held-out loss per language after each phase, forgetting (loss increase on earlier
languages), the loss on the newest language, and wall time. Without the corpora (a clean CI
machine), three synthetic "languages" (different random Markov chains) stand in, so the code
path still runs; the table says which data was used.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

from lmkernels.replay import ReplayBuffer, ReplayMixer, Reptile

from .harness import Row, plot_series

CORE = "replay-cpt"
LANGS = ("en", "fr", "de")
CONFIGS = (("no replay", 0.0, False), ("replay 25%", 0.25, False), ("replay 50%", 0.5, False),
           ("replay 25% + MER", 0.25, True))
MER_K, MER_BETA = 20, 0.5


def _corpora_dir() -> Path | None:
    root = Path(os.environ.get("LMKERNELS_DATA", "data")) / "corpora"
    ok = all((root / lang / name).exists() for lang in LANGS for name in ("train.txt", "heldout.txt"))
    return root if ok else None


def _real_data(root: Path, vocab: int, max_tokens: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from tokenizers import Tokenizer

    from lmkernels.data.corpora import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        train_tokenizer([root / lang / "train.txt" for lang in LANGS], vocab, path)
        tokenizer = Tokenizer.from_file(str(path))
    data = {}
    for lang in LANGS:
        parts = []
        for name, limit in (("train.txt", max_tokens), ("heldout.txt", max_tokens // 8)):
            text = (root / lang / name).read_text(encoding="utf-8")[: limit * 6]  # ~4 bytes per token
            ids = torch.tensor(tokenizer.encode(text).ids[:limit], dtype=torch.long)
            parts.append(ids)
        data[lang] = (parts[0], parts[1])
    return data


def _synthetic_data(vocab: int, max_tokens: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    data = {}
    for lang in LANGS:
        # each "language" a sparse random Markov chain: 8 likely successors per token
        successors = torch.randint(0, vocab, (vocab, 8), generator=gen)
        ids = torch.empty(max_tokens + max_tokens // 8, dtype=torch.long)
        ids[0] = 0
        choice = torch.randint(0, 8, (ids.numel(),), generator=gen)
        for i in range(1, ids.numel()):
            ids[i] = successors[ids[i - 1], choice[i]]
        data[lang] = (ids[:max_tokens], ids[max_tokens:])
    return data


def _windows(ids: torch.Tensor, context: int, batch: int, seed: int):
    """Endless shuffled batches of non-overlapping windows [batch, context + 1]."""
    count = (ids.numel() - 1) // (context + 1)
    rows = ids[: count * (context + 1)].view(count, context + 1)
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=gen)
        for start in range(0, count - batch + 1, batch):
            yield rows[order[start:start + batch]]


@torch.no_grad()
def _heldout_loss(model, ids: torch.Tensor, context: int, windows: int) -> float:
    model.eval()
    count = min(windows, (ids.numel() - 1) // (context + 1))
    rows = ids[: count * (context + 1)].view(count, context + 1)
    losses = [float(model(input_ids=rows[i:i + 8, :-1], labels=rows[i:i + 8, :-1]).loss) for i in range(0, count, 8)]
    model.train()
    return sum(losses) / len(losses)


def _train_phase(model, optimizer, batches, steps: int, reptile: Reptile | None) -> None:
    for _ in range(steps):
        rows = next(batches)
        inputs, labels = rows[:, :-1], rows[:, 1:]
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if reptile is not None:
            reptile.step()


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, context, batch = 2048, 128, 16
    steps = 15 if quick else 200
    max_tokens = 60_000 if quick else 400_000
    root = _corpora_dir()
    data = _real_data(root, vocab, max_tokens) if root is not None and not quick else _synthetic_data(vocab, max_tokens)
    source = "man pages en/fr/de" if root is not None and not quick else "synthetic Markov chains"
    windows = 16 if quick else 64
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    buffer = ReplayBuffer(8192, context + 1, dtype=torch.uint16, seed=0)
    # Phase 1 (shared by every configuration): English, every row entering the buffer.
    en = ReplayMixer(_windows(data["en"][0], context, batch, 1), buffer, 0.0)
    t0 = time.perf_counter()
    _train_phase(model, optimizer, iter(en), steps, None)
    en_seconds = time.perf_counter() - t0
    after_en = {lang: _heldout_loss(model, data[lang][1], context, windows) for lang in LANGS}
    start_model, start_opt, start_buffer = (model.state_dict(), optimizer.state_dict(), buffer.state_dict())

    rows: list[Row] = []
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, rate, mer in CONFIGS:
        model.load_state_dict(start_model)
        optimizer.load_state_dict(start_opt)
        buffer.load_state_dict(start_buffer)
        reptile = Reptile(model, k=MER_K, beta=MER_BETA, optimizer=optimizer) if mer else None
        losses = {"en": dict(after_en)}
        t0 = time.perf_counter()
        for phase, lang in enumerate(LANGS[1:], start=2):
            mixer = ReplayMixer(_windows(data[lang][0], context, batch, phase), buffer, rate, batch_size=batch, seed=phase)
            _train_phase(model, optimizer, iter(mixer), steps, reptile)
            losses[lang] = {k: _heldout_loss(model, data[k][1], context, windows) for k in LANGS}
        seconds = time.perf_counter() - t0
        final = losses["de"]
        extra = {
            "data": source,
            "steps_per_language": steps,
            "en_after_en": round(after_en["en"], 3),
            "en_final": round(final["en"], 3),
            "forgetting_en": round(final["en"] - after_en["en"], 3),
            "fr_after_fr": round(losses["fr"]["fr"], 3),
            "forgetting_fr": round(final["fr"] - losses["fr"]["fr"], 3),
            "de_final": round(final["de"], 3),
            "new_rows_per_step": batch - round(rate * batch),
        }
        rows.append(Row(CORE, f"EN -> FR -> DE, batch {batch} x {context}, {source}", name, seconds * 1e3, 0.0, 1,
                        baseline="no replay", extra=extra))
        curves[name] = [(1, after_en["en"]), (2, losses["fr"]["en"]), (3, final["en"])]
    base = rows[0].median_ms
    for r in rows:
        r.ratio = base / r.median_ms
    rows[0].extra["en_phase_s"] = round(en_seconds, 1)
    if out_dir is not None and not quick:
        plot_series(out_dir / "replay_cpt_en.png", "English held-out loss while training EN, FR, DE",
                    "phase (1 = EN, 2 = FR, 3 = DE)", "loss (nats/token)", curves)
    assert all(math.isfinite(r.extra["de_final"]) for r in rows)
    return rows
