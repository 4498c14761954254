"""Chunk KV-cache reuse on a RAG-style workload: every policy of ``ChunkedPrefill`` on the same
requests, against ``full`` prefill measured in the same run.

Workload: a pool of 200 chunks of 256-512 tokens cut from the held-out text of the model's
training sources (then from the end of their training text, when held-out text runs out); 100 requests, each
5 distinct chunks drawn by Zipf popularity (s = 1) in random order plus a 16-token question.
Each policy keeps its own cache; the first 20 requests warm it and are not reported.
Reported per policy: median time to first token (the prefill), recomputed share of chunk
tokens (misses included), the share of chunk tokens served from the cache and the share of
those recomputed, KL(full || policy) of the first-token distribution, greedy 32-token
agreement with ``full`` (position by position), and memory: the stored KV bytes and the
request's working KV.

Model: the trained reference model with the longest context under ``$LMKERNELS_DATA/models``
(``python -m lmkernels.data train-reference``); chunks shrink to fit a context shorter than
5 x 512 + 16. Without one, a random-weight Llama of the same shape on random tokens (timings
only; its quality numbers mean little).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from lmkernels.chunk_prefill import ChunkedPrefill, greedy_decode
from lmkernels.chunk_store import ChunkCache

from .harness import Row
from .reference_models import load_with_text, longest_context_model

CORE = "chunk-cache"
POOL, PER_REQUEST, QUESTION, ANSWER = 200, 5, 16, 32
POLICIES = ("full", "prefix", "reuse", "cacheblend", "cachecraft")


def _model_and_text():
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir = longest_context_model()
    loaded = load_with_text(model_dir) if model_dir is not None else None
    if loaded is not None:
        return loaded
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
    return LlamaForCausalLM(config).eval(), torch.randint(0, 4096, (400_000,)), "random-weight llama"


def _workload(ids: torch.Tensor, context: int, requests: int):
    g = torch.Generator().manual_seed(0)
    longest = min(512, (context - QUESTION) // PER_REQUEST)
    lengths = torch.randint(longest // 2, longest + 1, (POOL,), generator=g).tolist()
    starts = torch.tensor(lengths).cumsum(0) - torch.tensor(lengths)
    if int(starts[-1]) + lengths[-1] + requests * QUESTION > ids.numel():
        raise RuntimeError("chunk-cache bench: not enough held-out text for the chunk pool")
    pool = [ids[s:s + n] for s, n in zip(starts.tolist(), lengths)]
    questions_at = int(starts[-1]) + lengths[-1]
    popularity = 1.0 / torch.arange(1, POOL + 1, dtype=torch.float64)  # Zipf, s = 1
    work = []
    for r in range(requests):
        chosen = torch.multinomial(popularity, PER_REQUEST, replacement=False, generator=g).tolist()
        question = ids[questions_at + r * QUESTION:questions_at + (r + 1) * QUESTION]
        work.append(([pool[i] for i in chosen], question))
    return work, (longest // 2, longest)


def _kl(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.nn.functional.kl_div(logits.float().log_softmax(-1), reference.float().log_softmax(-1),
                                            log_target=True, reduction="sum"))


def run(quick: bool, out_dir: Path | None = None) -> list[Row]:
    model, ids, model_name = _model_and_text()
    requests, warmup = (30, 10) if quick else (100, 20)
    work, (shortest, longest) = _workload(ids, model.config.max_position_embeddings, requests)
    bytes_per_token = (2 * model.config.num_hidden_layers * model.config.num_key_value_heads
                       * model.config.head_dim * model.lm_head.weight.element_size())
    flows = {p: ChunkedPrefill(model, ChunkCache(model_name, device_bytes=1 << 34), policy=p) for p in POLICIES}
    ttft: dict[str, list[float]] = {p: [] for p in POLICIES}
    recomputed = {p: [0.0, 0] for p in POLICIES}
    fixed = {p: [0.0, 0] for p in POLICIES}  # recomputed tokens of reused chunks, their tokens
    kl = {p: [] for p in POLICIES}
    agree = {p: [] for p in POLICIES}
    working = {p: 0 for p in POLICIES}
    for index, (chunks, question) in enumerate(work):
        results = {}
        for policy, flow in flows.items():
            t0 = time.perf_counter()
            results[policy] = flow.prefill(chunks, question)
            elapsed = (time.perf_counter() - t0) * 1e3
            if index >= warmup:
                ttft[policy].append(elapsed)
                result = results[policy]
                recomputed[policy][0] += sum(c.recomputed for c in result.chunks)
                recomputed[policy][1] += result.chunk_tokens
                fixed[policy][0] += sum(c.recomputed for c in result.chunks if c.hit)
                fixed[policy][1] += sum(c.tokens for c in result.chunks if c.hit)
                working[policy] = max(working[policy], result.prompt_tokens * bytes_per_token)
        if index < warmup:
            continue
        reference = results["full"]
        answer = greedy_decode(model, reference, ANSWER)
        for policy, result in results.items():
            kl[policy].append(_kl(result.logits, reference.logits))
            got = answer if policy == "full" else greedy_decode(model, result, ANSWER)
            agree[policy].append(sum(a == b for a, b in zip(got, answer)) / ANSWER)
    full_ms = statistics.median(ttft["full"])
    prefix_ms = statistics.median(ttft["prefix"])
    case = (f"{model_name}: {requests - warmup} requests x {PER_REQUEST} chunks of {shortest}-{longest} tokens "
            f"(pool {POOL}, Zipf) + {QUESTION}-token question")
    rows = []
    for policy in POLICIES:
        times = ttft[policy]
        q = statistics.quantiles(times, n=4)
        median = statistics.median(times)
        stats = flows[policy].cache.stats()
        rows.append(Row(CORE, case, policy, median, q[2] - q[0], len(times), baseline="full",
                        ratio=full_ms / median, extra={
                            "vs prefix": prefix_ms / median,
                            "recomputed": recomputed[policy][0] / max(recomputed[policy][1], 1),
                            "hit tokens": fixed[policy][1] / max(recomputed[policy][1], 1),
                            "fixed of hits": fixed[policy][0] / max(fixed[policy][1], 1),
                            "KL": statistics.mean(kl[policy]),
                            "greedy agreement": statistics.mean(agree[policy]),
                            "stored MB": (stats["bytes_device"] + stats["bytes_host"]) / 2**20,
                            "working KV MB": working[policy] / 2**20,
                        }))
    return rows
