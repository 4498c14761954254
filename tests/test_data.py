"""Reference corpora and models (lmkernels.data): corpus building, tokenizer, training script,
and the committed tiny model."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lmkernels.data import corpora
from lmkernels.data.train import TrainOptions, perplexity, train_reference

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-llama"


def test_missing_package_error_says_how_to_fix():
    with pytest.raises(corpora.MissingPackageError, match="apt-get install -y --no-install-recommends lmk-no-such-pkg"):
        corpora._package_files("lmk-no-such-pkg")


def test_held_out_split_is_deterministic_and_small():
    paths = [f"/usr/share/man/man1/page{i}.1.gz" for i in range(4000)]
    held = [corpora.is_held_out(p) for p in paths]
    assert held == [corpora.is_held_out(p) for p in reversed(paths)][::-1]
    assert 0.03 < sum(held) / len(held) < 0.07


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff renders manual pages (apt-get install groff-base)")
def test_render_man_gives_plain_text(tmp_path):
    page = tmp_path / "demo.1.gz"
    page.write_bytes(gzip.compress(b'.TH DEMO 1\n.SH NAME\ndemo \\- show \\fBbold\\fR words\n.SH DESCRIPTION\n'
                                   b'Caf\xc3\xa9 and \\fIitalic\\fP text.\n'))
    text = corpora.clean_text(corpora.render_man(str(page)))
    assert "demo - show bold words" in text and "Café and italic text." in text
    assert "\\f" not in text and ".SH" not in text and "\b" not in text
    link = tmp_path / "link.1"
    link.write_bytes(b".so man1/demo.1\n")
    assert corpora.render_man(str(link)) == ""


def test_build_corpora_splits_and_hashes(tmp_path, monkeypatch):
    docs = {}
    for i in range(60):
        f = tmp_path / "src" / f"doc{i}.rst.txt"
        f.parent.mkdir(exist_ok=True)
        docs[str(f)] = f"Document {i} first line.\n\n\n\nSecond paragraph   with  spaces.   \n"
        f.write_text(docs[str(f)])
    monkeypatch.setattr(corpora, "source_files", lambda source: sorted(docs))
    manifest = corpora.build_corpora(tmp_path / "out", ["pydoc"])
    entry = manifest["sources"]["pydoc"]
    held = [p for p in sorted(docs) if corpora.is_held_out(p)]
    assert entry["heldout"]["documents"] == len(held) and entry["train"]["documents"] == 60 - len(held)
    for split in ("train", "heldout"):
        body = (tmp_path / "out" / "pydoc" / f"{split}.txt").read_bytes()
        assert hashlib.sha256(body).hexdigest() == entry[split]["sha256"]
    train = (tmp_path / "out" / "pydoc" / "train.txt").read_text()
    assert "\n\n\n\n" not in train.replace("\n\n\n", "|") and "Second paragraph with spaces." in train
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_tokenizer_round_trips_any_text(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 50 + "Größe, café, 東京\n")
    corpora.train_tokenizer([text], 300, tmp_path / "tok.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "tok.json"))
    for s in ["The lazy fox.", "naïve ünïcödé ✓ \t tabs", "unseen: Ωμέγα 123"]:
        assert tok.decode(tok.encode(s).ids) == s


def test_train_reference_script_runs_and_saves(tmp_path):
    # A miniature run of the real script: a model transformers reloads, and its record.
    text = "".join(f"line {i % 17} says {'abc'[i % 3]} and more words here.\n" for i in range(400))
    (tmp_path / "c" / "en").mkdir(parents=True)
    for split in ("train", "heldout"):
        (tmp_path / "c" / "en" / f"{split}.txt").write_text(text)
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"sources": {"en": {"package": "test"}}}))
    opts = TrainOptions(vocab=300, layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, context=32, batch=4,
                        steps=40, lr=1e-2, eval_tokens=512)
    record = train_reference(tmp_path / "c", tmp_path / "m", opts)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert record["steps"] == 40 and set(record["heldout_perplexity"]) == {"en"}
    assert record["heldout_perplexity"]["en"] < 300 / 4  # learned something beyond uniform over the vocab
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]


def test_tiny_fixture_loads_offline_and_beats_a_unigram_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(FIXTURE, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(FIXTURE, local_files_only=True)
    assert (FIXTURE / "model.safetensors").stat().st_size <= 5 * 2**20
    ids = torch.tensor(tokenizer((FIXTURE / "heldout_sample.txt").read_text())["input_ids"])
    ppl = perplexity(model, ids, model.config.max_position_embeddings, 4096)
    # A unigram model fitted on this very sample (an optimistic baseline) must do worse.
    counts = torch.bincount(ids[: 4097], minlength=model.config.vocab_size).double()
    probs = counts / counts.sum()
    unigram = math.exp(-float((counts[counts > 0] * probs[counts > 0].log()).sum() / counts.sum()))
    assert ppl < 0.6 * unigram, (ppl, unigram)
    record = json.loads((FIXTURE / "training.json").read_text())
    assert record["options"]["layers"] == model.config.num_hidden_layers
