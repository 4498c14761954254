"""Fake (meta) impls of every op, so `torch.compile(fullgraph=True)` can trace them."""

from __future__ import annotations

import math

import torch


@torch.library.register_fake("lmkernels::rope_rerotate_")
def _rope_rerotate_fake(k, old_pos, new_pos, inv_freq, neox):
    return None


@torch.library.register_fake("lmkernels::varlen_attention")
def _varlen_attention_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, return_lse):
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[0] if return_lse else 0, q.shape[1]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("lmkernels::pack_sequences")
def _pack_sequences_fake(lengths, capacity, algorithm):
    return lengths.new_empty(lengths.shape, dtype=torch.int64), lengths.new_empty(lengths.shape, dtype=torch.int64)


@torch.library.register_fake("lmkernels::block_sparse_attention")
def _block_sparse_attention_fake(q, k, v, crow, col, block_size, causal, scale, return_lse):
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[0] if return_lse else 0, q.shape[1], q.shape[2]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("lmkernels::kv_deviation")
def _kv_deviation_fake(a, b):
    return a.new_empty(a.shape[:2], dtype=torch.float32)


@torch.library.register_fake("lmkernels::select_tokens")
def _select_tokens_fake(scores, ratio):
    tokens = scores.shape[1]
    k = 0 if tokens == 0 else max(int(math.floor(ratio * tokens)), 1)
    return scores.new_empty((scores.shape[0], k), dtype=torch.int64)


@torch.library.register_fake("lmkernels::scatter_kv_")
def _scatter_kv_fake(k_cache, v_cache, k, v, slot_mapping, old_pos, new_pos, inv_freq, neox):
    return None
