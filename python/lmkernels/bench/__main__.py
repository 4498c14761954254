"""Command line: `python -m lmkernels.bench [core ...] [--quick] [--json PATH] [--out DIR]`."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .harness import environment, format_table, write_json

# core name -> module under lmkernels.bench
CORES = {"attention": "attention", "chunk-cache": "chunk_cache", "prefill": "prefill", "quant": "quant", "quant-accuracy": "quant_accuracy", "quant-llamacpp": "ggml_peer", "replay": "replay", "replay-cpt": "replay_cpt", "rope": "rope", "sparse": "sparse"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmkernels.bench", description=__doc__)
    parser.add_argument("cores", nargs="*", help=f"cores to run (default: all of {sorted(CORES)})")
    parser.add_argument("--quick", action="store_true", help="fewer cases and shorter timing (CI)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for per-core JSON and plots (default: bench/results)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every core's results into this one JSON file")
    parser.add_argument("--readme", type=Path, default=None,
                        help="only refresh the tables between <!-- bench:CORE --> markers in this file "
                             "from the results in --out, then exit")
    args = parser.parse_args(argv)
    if args.readme is not None:
        return update_readme(args.readme, args.out)
    unknown = [c for c in args.cores if c not in CORES]
    if unknown:
        parser.error(f"unknown core(s) {unknown}; choose from {sorted(CORES)}")

    env = environment()
    print(f"lmkernels bench: torch {env['torch']}, cpu path {env['cpu_isa']}, "
          f"{env['threads']} threads, {env['processor']}")
    all_rows = {}
    for core in args.cores or list(CORES):
        module = importlib.import_module(f"lmkernels.bench.{CORES[core]}")
        rows = module.run(quick=args.quick, out_dir=args.out)
        all_rows[core] = rows
        print(f"\n## {core}\n\n{format_table(rows)}")
        suffix = "_quick" if args.quick else ""
        write_json(args.out / f"{core}{suffix}.json", {core: rows}, args.quick)
        (args.out / f"{core}{suffix}.md").write_text(format_table(rows) + "\n")
    if args.json:
        write_json(args.json, all_rows, args.quick)
    return 0


def update_readme(readme: Path, results: Path) -> int:
    """Replace each `<!-- bench:CORE -->...<!-- /bench:CORE -->` block with results/CORE.md."""
    text = readme.read_text()
    for core in CORES:
        table = results / f"{core}.md"
        start, end = f"<!-- bench:{core} -->", f"<!-- /bench:{core} -->"
        if table.exists() and start in text and end in text:
            head, rest = text.split(start, 1)
            _, tail = rest.split(end, 1)
            text = f"{head}{start}\n{table.read_text().strip()}\n{end}{tail}"
            print(f"updated the {core} table from {table}")
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
