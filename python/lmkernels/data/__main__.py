"""`python -m lmkernels.data build-corpora DIR` and `python -m lmkernels.data train-reference ...`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .train import TrainOptions

PRESETS = {
    # name -> TrainOptions overrides; "small" is the reference model, "tiny" the test fixture
    # small: 4 layers x 256, context 1024; ~2.4 s per 4096-token step on 2 Zen 1 cores, so
    # 480 steps (2M tokens) fill the 20-minute budget
    "small": dict(vocab=4096, context=1024, batch=4, lr=3e-3, steps=480, minutes=20.0),
    "tiny": dict(vocab=2048, layers=2, hidden=128, heads=4, kv_heads=2, intermediate=384, context=256, batch=16,
                 lr=3e-3, steps=800, minutes=8.0, eval_tokens=32768),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmkernels.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    corpora = sub.add_parser("build-corpora", help="render the Debian-packaged texts into DIR")
    corpora.add_argument("dir")
    corpora.add_argument("--sources", nargs="*", default=None, help="subset of en fr de pydoc (default: all)")
    train = sub.add_parser("train-reference", help="train a reference model on built corpora")
    train.add_argument("--corpora", required=True)
    train.add_argument("--out", required=True)
    train.add_argument("--preset", choices=sorted(PRESETS), default="small")
    for f in fields(TrainOptions):
        if f.name == "sources":
            train.add_argument("--sources", nargs="+", default=None)
        else:
            train.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(TrainOptions(), f.name)), default=None)
    args = parser.parse_args(argv)

    if args.command == "build-corpora":
        from .corpora import MissingPackageError, build_corpora

        try:
            build_corpora(args.dir, args.sources)
        except MissingPackageError as err:
            print(err, file=sys.stderr)
            return 2
        return 0

    from .train import train_reference

    opts = TrainOptions(**PRESETS[args.preset])
    for f in fields(TrainOptions):
        value = getattr(args, f.name)
        if value is not None:
            setattr(opts, f.name, value)
    train_reference(args.corpora, args.out, opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
