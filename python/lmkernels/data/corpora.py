"""Plain-text corpora from Debian packages that install offline, and a byte-level BPE tokenizer.

Sources (each a language or domain, each split into train and held-out by a hash of the
source file's path, so the split does not depend on the order files are found in):
  en: manual pages of the `manpages` package       fr: `manpages-fr`      de: `manpages-de`
  pydoc: Python's documentation sources (`python3-doc`, the reST text under html/_sources)
Manual pages are rendered to text with groff (as `man` does), so no troff markup remains.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_PERCENT = 5  # files whose path hashes below this go to held-out


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    kind: str  # "man" or "text"


SOURCES = [Source("en", "manpages", "man"), Source("fr", "manpages-fr", "man"), Source("de", "manpages-de", "man"),
           Source("pydoc", "python3-doc", "text")]


class MissingPackageError(RuntimeError):
    """A Debian package a corpus needs is not installed."""


def _package_files(package: str) -> list[str]:
    try:
        out = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise MissingPackageError(f"build-corpora: dpkg not found; the corpora need a Debian system "
                                  f"with `apt-get install {package}`") from err
    if out.returncode != 0:
        raise MissingPackageError(f"build-corpora: package {package} is not installed; "
                                  f"run: apt-get install -y --no-install-recommends {package}")
    return [line for line in out.stdout.splitlines() if os.path.isfile(line)]


def source_files(source: Source) -> list[str]:
    """The files of one source, sorted."""
    if source.kind == "man":
        files = [f for f in _package_files(source.package) if re.search(r"/man/(?:[a-z]{2}(?:\.UTF-8)?/)?man\d/", f)]
    else:
        _package_files(source.package)  # installed?
        # Several doc folders link to the same html tree: one copy of each file.
        files = list({os.path.realpath(f) for f in glob.glob("/usr/share/doc/python3*/html/_sources/**/*.txt",
                                                             recursive=True)})
        if not files:
            raise MissingPackageError("build-corpora: python3-doc is installed but no html/_sources found; "
                                      "run: apt-get install -y --no-install-recommends python3-doc")
    return sorted(files)


def is_held_out(path: str) -> bool:
    return int(hashlib.sha256(path.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def render_man(path: str) -> str:
    """A manual page as plain UTF-8 text (groff, no overstrike or colour)."""
    raw = gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_bytes()
    if raw.startswith(b".so "):  # a link to another page: no text of its own
        return ""
    # -K: UTF-8 input; HY=0 and AD=l: no hyphenation or justification spaces in the text.
    command = ["groff", "-K", "utf-8", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=80n", "-rHY=0", "-dAD=l"]
    # groff gets a clean environment: no LD_PRELOAD (a sanitizer runtime would break it).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"LC_ALL": "C.UTF-8"}
    out = subprocess.run(command, input=raw, capture_output=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"build-corpora: groff failed on {path}: {out.stderr.decode(errors='replace')[-500:]}")
    return out.stdout.decode("utf-8", errors="replace")


def clean_text(text: str) -> str:
    """Collapse runs of blank lines, trailing spaces and runs of inner spaces; keep indentation
    and paragraphs."""
    lines = [re.sub(r"(?<=\S) {2,}", " ", line.rstrip()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def build_corpora(out_dir: str | Path, sources: list[str] | None = None, workers: int | None = None) -> dict:
    """Write DIR/<source>/{train,heldout}.txt and DIR/manifest.json; returns the manifest."""
    out_dir = Path(out_dir)
    chosen = [s for s in SOURCES if sources is None or s.name in sources]
    if any(s.kind == "man" for s in chosen) and shutil.which("groff") is None:
        raise MissingPackageError("build-corpora: groff not found; run: apt-get install -y groff-base")
    manifest_path = out_dir / "manifest.json"
    manifest: dict = {"held_out_percent": HELD_OUT_PERCENT, "sources": {}}
    if manifest_path.exists():  # rebuilding some sources keeps the others' entries
        manifest["sources"] = json.loads(manifest_path.read_text()).get("sources", {})
    for source in chosen:
        files = source_files(source)
        if source.kind == "man":
            with ThreadPoolExecutor(workers or os.cpu_count()) as pool:
                texts = list(pool.map(render_man, files))
        else:
            texts = [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]
        parts: dict[str, list[str]] = {"train": [], "heldout": []}
        for path, text in zip(files, texts):
            if text.strip():
                parts["heldout" if is_held_out(path) else "train"].append(clean_text(text))
        entry = {"package": source.package, "files": len(files)}
        (out_dir / source.name).mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        for split, docs in parts.items():
            body = "\n\n".join(docs)
            target = out_dir / source.name / f"{split}.txt"
            target.write_text(body, encoding="utf-8")
            entry[split] = {"documents": len(docs), "bytes": len(body.encode()),
                            "sha256": hashlib.sha256(body.encode()).hexdigest()}
        manifest["sources"][source.name] = entry
        print(f"{source.name}: {entry['train']['documents']} train / {entry['heldout']['documents']} held-out "
              f"documents, {entry['train']['bytes'] / 1e6:.1f} MB train")
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def train_tokenizer(texts: list[Path], vocab_size: int, out_path: str | Path) -> None:
    """A byte-level BPE tokenizer (every byte is a token, so nothing is ever unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train([str(t) for t in texts], trainer)
    tokenizer.save(str(out_path))
