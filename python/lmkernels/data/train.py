"""Training of small Llama-architecture reference models on the corpora, on the CPU.

The model directory holds what transformers loads offline (config.json, model.safetensors,
tokenizer files) plus training.json: the command's options, the sha256 of the data it read,
the steps and time taken, and the held-out perplexity per source.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

EOS = "<|endoftext|>"


@dataclass
class TrainOptions:
    sources: list[str] = field(default_factory=lambda: ["en"])
    vocab: int = 8192
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 768
    context: int = 1024
    batch: int = 8
    lr: float = 2e-3
    steps: int = 2000
    minutes: float = 20.0  # stops earlier when the time is up
    seed: int = 0
    eval_tokens: int = 65536


def _tokenize(tokenizer, path: Path) -> torch.Tensor:
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    # Documents are separated by a blank line after their last line (see corpora.build_corpora).
    for encoding in tokenizer.encode_batch(path.read_text(encoding="utf-8").split("\n\n\n")):
        ids += encoding.ids + [eos]
    return torch.tensor(ids, dtype=torch.int32)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, context: int, max_tokens: int) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the first max_tokens ids."""
    model.eval()
    total, count = 0.0, 0
    ids = ids[: max_tokens + 1].long()
    for start in range(0, ids.numel() - 1, context):
        window = ids[start : start + context + 1]
        if window.numel() < 2:
            break
        logits = model(window[None, :-1]).logits[0]
        total += float(torch.nn.functional.cross_entropy(logits.float(), window[1:], reduction="sum"))
        count += window.numel() - 1
    model.train()
    return math.exp(total / max(count, 1))


def train_reference(corpora: str | Path, out_dir: str | Path, opts: TrainOptions) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    from .corpora import train_tokenizer

    corpora, out_dir = Path(corpora), Path(out_dir)
    manifest_path = corpora / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"train-reference: {manifest_path} not found; run "
                                f"`python -m lmkernels.data build-corpora {corpora}` first")
    manifest = json.loads(manifest_path.read_text())
    missing = [s for s in opts.sources if s not in manifest["sources"]]
    if missing:
        raise ValueError(f"train-reference: sources {missing} are not in {manifest_path}")
    torch.manual_seed(opts.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_texts = [corpora / s / "train.txt" for s in opts.sources]
    train_tokenizer(train_texts, opts.vocab, out_dir / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    train_ids = torch.cat([_tokenize(tokenizer, t) for t in train_texts])
    held_out = {s: _tokenize(tokenizer, corpora / s / "heldout.txt") for s in opts.sources}

    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=opts.hidden,
                         intermediate_size=opts.intermediate, num_hidden_layers=opts.layers,
                         num_attention_heads=opts.heads, num_key_value_heads=opts.kv_heads,
                         max_position_embeddings=opts.context, tie_word_embeddings=True,
                         bos_token_id=tokenizer.token_to_id(EOS), eos_token_id=tokenizer.token_to_id(EOS))
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=opts.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(opts.seed)
    start, losses = time.perf_counter(), []
    step = 0
    for step in range(opts.steps):
        if time.perf_counter() - start > opts.minutes * 60:
            break
        for group in optimizer.param_groups:
            group["lr"] = opts.lr * _lr_factor(step, opts.steps, warmup=max(1, opts.steps // 20))
        offsets = torch.randint(0, train_ids.numel() - opts.context - 1, (opts.batch,), generator=generator)
        batch = torch.stack([train_ids[o : o + opts.context + 1] for o in offsets.tolist()]).long()
        logits = model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start

    ppl = {s: perplexity(model, ids, opts.context, opts.eval_tokens) for s, ids in held_out.items()}
    model.save_pretrained(out_dir, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_file=str(out_dir / "tokenizer.json"), eos_token=EOS, bos_token=EOS,
                            model_max_length=opts.context).save_pretrained(out_dir)
    record = {
        "options": asdict(opts),
        "data": {s: manifest["sources"][s] for s in opts.sources},
        "parameters": params,
        "steps": step + 1,
        "seconds": round(seconds, 1),
        "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "heldout_perplexity": ppl,
        "torch": torch.__version__,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"held-out perplexity: {ppl}")
    return record
