"""Fake (meta) impls of every op, so `torch.compile(fullgraph=True)` can trace them."""

from __future__ import annotations

import math

import torch


@torch.library.register_fake("lmkernels::rope_rerotate_")
def _rope_rerotate_fake(k, old_pos, new_pos, inv_freq, neox):
    return None


@torch.library.register_fake("lmkernels::rope_apply_")
def _rope_apply_fake(x, cos, sin):
    return None


@torch.library.register_fake("lmkernels::varlen_attention")
def _varlen_attention_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, return_lse):
    out = q.new_empty(q.shape)
    lse = q.new_empty((q.shape[0] if return_lse else 0, q.shape[1]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("lmkernels::spliced_attention")
def _spliced_attention_fake(q, k, v, q_positions, scale):
    return q.new_empty(q.shape)


@torch.library.register_fake("lmkernels::_flex_pattern_scores_tensor_ops")
@torch.library.register_fake("lmkernels::flex_pattern_scores")
def _flex_pattern_scores_fake(q, k, block_size, scale):
    batch, heads, n, _ = q.shape
    blocks = -(-n // block_size)
    f32 = dict(dtype=torch.float32)
    return (q.new_empty((batch, heads, blocks), **f32), q.new_empty((batch, heads, blocks), **f32),
            q.new_empty((batch, heads, blocks, blocks), **f32), q.new_empty((batch, heads), **f32))


@torch.library.register_fake("lmkernels::flex_select_blocks")
def _flex_select_blocks_fake(vertical, slash, block_attn, query_aware, gamma, min_blocks, max_blocks):
    batch, heads, blocks = vertical.shape
    width = torch.library.get_ctx().new_dynamic_size()
    return (vertical.new_empty((batch, heads, blocks + 1), dtype=torch.int64),
            vertical.new_empty((batch, heads, width), dtype=torch.int64),
            vertical.new_empty((batch, heads), dtype=torch.float32))


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


def _quant_shape(out_features: int, in_features: int, group_size: int, num_hi: int) -> dict[str, int]:
    """Mirror of make_quant_shape in cpp/quant/quant_format.h."""
    groups = -(-in_features // group_size)
    units_per_group = group_size // 32
    units = groups * units_per_group
    return {
        "groups": groups,
        "super_blocks": -(-units // 8),
        "lo_stride": -(-units // 4) * 32,
        "hi_quads": -(-(out_features * num_hi * units_per_group) // 4),
    }


@torch.library.register_fake("lmkernels::quantize_weight")
def _quantize_weight_fake(weight, group_size, num_4bit_groups, select, importance):
    n, k = weight.shape
    s = _quant_shape(n, k, group_size, num_4bit_groups)
    u8 = dict(dtype=torch.uint8)
    return (
        weight.new_empty((n, s["lo_stride"]), **u8),
        weight.new_empty((s["hi_quads"], 32), **u8),
        weight.new_empty((n, num_4bit_groups), dtype=torch.int16),
        weight.new_empty((n, s["groups"]), **u8),
        weight.new_empty((n, s["super_blocks"], 2), dtype=torch.float16),
    )


@torch.library.register_fake("lmkernels::quantize_weight_gptq")
def _quantize_weight_gptq_fake(weight, hessian, group_size, num_4bit_groups, select, damp):
    return _quantize_weight_fake(weight, group_size, num_4bit_groups, select, None)


@torch.library.register_fake("lmkernels::dequantize_weight")
def _dequantize_weight_fake(codes_lo, codes_hi, hi_groups, scales, super_scales, in_features, group_size):
    return codes_lo.new_empty((hi_groups.shape[0], in_features), dtype=torch.float32)


@torch.library.register_fake("lmkernels::quant_linear")
def _quant_linear_fake(x, codes_lo, codes_hi, hi_groups, scales, super_scales, bias, in_features, group_size):
    torch._check(x.shape[-1] == in_features, lambda: "quant_linear: x must be [..., in_features]")
    return x.new_empty((*x.shape[:-1], hi_groups.shape[0]))
