"""The trained reference models (``python -m lmkernels.data train-reference``) that quality
benchmarks use when they are present, and text to feed them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def reference_model_dirs() -> list[Path]:
    """Every ``models/*`` folder with a ``training.json`` under ``$LMKERNELS_DATA`` or ./data."""
    root = Path(os.environ.get("LMKERNELS_DATA", "data"))
    return sorted(p.parent for p in root.glob("models/*/training.json"))


def longest_context_model() -> Path | None:
    """The reference model trained with the longest context, or None."""
    best = None
    for model_dir in reference_model_dirs():
        context = json.loads((model_dir / "training.json").read_text())["options"]["context"]
        if best is None or context > best[0]:
            best = (context, model_dir)
    return None if best is None else best[1]


def load_with_text(model_dir: Path):
    """(model in eval mode, token ids of text it was not trained on first, name), or None when
    its corpora are missing: the held-out text of its sources, then the end of their training
    text (for workloads that need more)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads((model_dir / "training.json").read_text())
    corpora = model_dir.parent.parent / "corpora"  # DATA/models/NAME -> DATA/corpora
    sources = record["options"]["sources"]
    paths = [corpora / s / "heldout.txt" for s in sources] + [corpora / s / "train.txt" for s in sources]
    if not all(path.exists() for path in paths):
        return None
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = "\n".join(p.read_text() for p in paths[:len(sources)])
    text += "\n".join(p.read_text()[-400_000:] for p in paths[len(sources):])
    return model, torch.tensor(tokenizer(text)["input_ids"]), model_dir.name
