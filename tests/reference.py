"""Plain-torch references for every op, computed in float64 where it matters."""

from __future__ import annotations

import torch

# quant_linear's batch size from which the "avx512_vnni" and "amx" paths run int8 GEMMs on
# unpacked strips of the weight instead of the row kernels (kQuantStripMinRows).
QUANT_STRIP_MIN_ROWS = 8
QUANT_STRIP_ISAS = ("avx512_vnni", "amx")


def apply_rope(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor, neox: bool) -> torch.Tensor:
    """RoPE at integer positions, in float64.

    x: [batch, tokens, heads, head_dim]; pos: [tokens] or [batch, tokens]; inv_freq: [rot/2].
    """
    half = inv_freq.numel()
    rot = 2 * half
    angle = pos.to(torch.float64)[..., None] * inv_freq.to(torch.float64)  # [(batch,) tokens, half]
    cos = angle.cos().unsqueeze(-2)  # broadcast over heads
    sin = angle.sin().unsqueeze(-2)
    out = x.to(torch.float64).clone()
    if neox:
        first, second = out[..., :half], out[..., half:rot]
    else:
        first, second = out[..., 0:rot:2], out[..., 1:rot:2]
    new_first = first * cos - second * sin
    new_second = second * cos + first * sin
    if neox:
        out[..., :half], out[..., half:rot] = new_first, new_second
    else:
        out[..., 0:rot:2], out[..., 1:rot:2] = new_first, new_second
    return out


def rope_rerotate(k: torch.Tensor, old_pos: torch.Tensor, new_pos: torch.Tensor,
                  inv_freq: torch.Tensor, neox: bool) -> torch.Tensor:
    """Reference for lmkernels.rope_rerotate_ on [batch, tokens, heads, head_dim] (not in place)."""
    return apply_rope(k, new_pos - old_pos, inv_freq, neox).to(k.dtype)


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=True, scale=None):
    """Per-sequence float64 softmax attention; returns (out in q.dtype, lse float32).

    Causal masking is aligned at the bottom right (query i sees keys j <= i + len_k - len_q);
    rows that see no key give 0 and lse -inf.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cu_q) - 1):
        qs = q[cu_q[b]:cu_q[b + 1]].transpose(0, 1).double()
        ks = k[cu_k[b]:cu_k[b + 1]].transpose(0, 1).double().repeat_interleave(group, 0)
        vs = v[cu_k[b]:cu_k[b + 1]].transpose(0, 1).double().repeat_interleave(group, 0)
        s = qs @ ks.transpose(1, 2) * scale
        if causal:
            len_q, len_k = qs.shape[1], ks.shape[1]
            hidden = torch.arange(len_k)[None, :] > torch.arange(len_q)[:, None] + (len_k - len_q)
            s = s.masked_fill(hidden, float("-inf"))
        lse = torch.logsumexp(s, -1)
        p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
        outs.append((p @ vs).transpose(0, 1))
        lses.append(lse.transpose(0, 1))
    if not outs:
        return q.new_empty(q.shape), torch.empty(0, q.shape[1])
    return torch.cat(outs).to(q.dtype), torch.cat(lses).float()


def spliced_attention(q, k, v, q_positions, scale=None):
    """Float64 attention of query i over keys 0 .. q_positions[i]; out in q.dtype."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    ks = k.transpose(0, 1).double().repeat_interleave(group, 0)
    vs = v.transpose(0, 1).double().repeat_interleave(group, 0)
    s = q.transpose(0, 1).double() @ ks.transpose(1, 2) * scale
    hidden = torch.arange(k.shape[0])[None, :] > q_positions.long()[:, None]
    p = s.masked_fill(hidden, float("-inf")).softmax(-1)
    return (p @ vs).transpose(0, 1).to(q.dtype)


def keep_until(scores, gamma, lo, hi):
    """Bool mask over the last dim: the top entries (descending, ties to the lower index)
    whose cumulative share first reaches gamma of the total, their count clamped to [lo, hi]."""
    scores = scores.double()
    ordered, order = scores.sort(dim=-1, descending=True, stable=True)
    total = ordered.sum(-1, keepdim=True).clamp_min(1e-38)
    reached = (ordered.cumsum(-1) / total) >= gamma
    count = ((~reached).sum(-1, keepdim=True) + 1).clamp(min=lo, max=hi)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1]).expand_as(order))
    return ranks < count


def flex_pattern_scores(q, k, block_size, scale):
    """FlexPrefill's pattern estimation in float64 torch ops: (vertical [B, Hq, nb], slash
    [B, Hq, nb], block_attn [B, Hq, nb, nb], sqrt-JSD [B, Hq])."""
    batch, heads, n, dim = q.shape
    group = heads // k.shape[1]
    blocks = -(-n // block_size)
    qf, kf = q.double(), k.double().repeat_interleave(group, 1)
    last = min(block_size, n)
    pos = torch.arange(n)
    scores = (qf[:, :, n - last:] @ kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(pos[None, :] > pos[n - last:, None], float("-inf"))
    probs = scores.softmax(-1)                                                  # [B, H, L, N]
    block_of = pos // block_size
    vertical = torch.zeros(batch, heads, blocks, dtype=torch.float64).index_add_(-1, block_of, probs.mean(-2))
    offset = ((pos[n - last:, None] - pos[None, :]).clamp_min(0) // block_size).expand(batch, heads, last, n)
    slash = torch.zeros(batch, heads, last, blocks, dtype=torch.float64).scatter_add_(-1, offset, probs).sum(-2) / last
    pooled = [torch.stack([x[..., block_of == c, :].mean(-2) for c in range(blocks)], -2) for x in (qf, kf)]
    estimate = ((qf[:, :, n - last:].mean(-2, keepdim=True) @ pooled[1].transpose(-1, -2)) * scale).softmax(-1)[..., 0, :]
    truth = vertical / vertical.sum(-1, keepdim=True).clamp_min(1e-30)
    mid = 0.5 * (truth + estimate)

    def kl(p, m):
        return torch.where(p > 0, p * (p.clamp_min(1e-30).log() - m.clamp_min(1e-30).log()), 0.0).sum(-1)

    jsd = (0.5 * kl(truth, mid) + 0.5 * kl(estimate, mid)).clamp_min(0).sqrt()
    causal = torch.arange(blocks)[None, :] <= torch.arange(blocks)[:, None]
    block_attn = ((pooled[0] @ pooled[1].transpose(-1, -2)) * scale).masked_fill(~causal, float("-inf")).softmax(-1)
    return vertical, slash, block_attn, jsd


def flex_select_blocks(vertical, slash, block_attn, query_aware, gamma, lo, hi):
    """FlexPrefill's block mask [B, H, nb, nb] (query block, key block), float64 selection."""
    blocks = vertical.shape[-1]
    lo, hi = min(lo, blocks), min(hi, blocks)
    off_diagonal = vertical.clone()
    off_diagonal[..., -1] = 0
    vertical_keep = keep_until(off_diagonal, gamma, lo, hi)
    slash_keep = keep_until(slash, gamma, lo, hi)
    vertical_keep[..., 0] = True
    slash_keep[..., 0] = True
    row = torch.arange(blocks)
    causal = row[None, :] <= row[:, None]
    offset = (row[:, None] - row[None, :]).clamp_min(0)
    mask = vertical_keep[:, :, None, :] | slash_keep[:, :, offset]
    aware = keep_until(block_attn.flatten(-2), gamma, 1, blocks * blocks).unflatten(-1, (blocks, blocks))
    mask = torch.where(query_aware[..., None, None], aware | mask, mask)
    mask = (mask | torch.eye(blocks, dtype=torch.bool)) & causal
    mask[..., 0] = True
    return mask


def bin_pack(lengths, capacity, algorithm="bfd"):
    """O(n^2) best-fit / first-fit decreasing: (row, offset) lists. Longest first, ties by index."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    space = []
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        fits = [r for r, s in enumerate(space) if s >= lengths[i]]
        if not fits:
            space.append(capacity)
            r = len(space) - 1
        elif algorithm == "bfd":
            r = min(fits, key=lambda r: (space[r], r))
        else:
            r = fits[0]
        row[i], offset[i] = r, capacity - space[r]
        space[r] -= lengths[i]
    return row, offset


def block_sparse_attention(q, k, v, block_mask, block_size, causal=True, scale=None):
    """Dense float64 attention of q [B, Hq, N, D] with the block mask [B, Hq, nb, nb] materialised.

    Rows that see no key give 0 and lse -inf. Returns (out in q.dtype, lse float32 [B, Hq, N]).
    """
    n = q.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    group = q.shape[1] // k.shape[1]
    kd = k.double().repeat_interleave(group, 1)
    vd = v.double().repeat_interleave(group, 1)
    token_mask = block_mask.repeat_interleave(block_size, -2).repeat_interleave(block_size, -1)[..., :n, :n]
    if causal:
        token_mask = token_mask & torch.ones(n, n, dtype=torch.bool).tril()
    s = (q.double() @ kd.transpose(-1, -2) * scale).masked_fill(~token_mask, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return (p @ vd).to(q.dtype), lse.float()


def kv_deviation(a, b):
    """[batch, tokens, heads, dim] -> float64 [batch, tokens]: sum of squared differences."""
    return ((a.double() - b.double()) ** 2).sum((-1, -2))


def select_tokens(scores, ratio):
    """Per row: the max(floor(ratio * n), 1) best indices (score desc, then index asc), ascending."""
    n = scores.shape[-1]
    k = 0 if n == 0 else max(int(ratio * n // 1), 1)
    rows = []
    for row in scores.float().tolist():
        best = sorted(range(n), key=lambda i: (-row[i], i))[:k]
        rows.append(sorted(best))
    return torch.tensor(rows, dtype=torch.int64).view(len(rows), k)


def scatter_kv(k_cache, v_cache, k, v, slots, old_pos, new_pos, inv_freq, neox):
    """Reference for scatter_kv_ (returns new caches): rows of k rotated by new - old, v copied."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    rotated = rope_rerotate(k[None], old_pos[None], new_pos[None], inv_freq, neox)[0]
    keep = slots >= 0
    k_cache[slots[keep]] = rotated[keep]
    v_cache[slots[keep]] = v[keep]
    return k_cache, v_cache


def unpack_quad_plane(plane: torch.Tensor, units: int) -> torch.Tensor:
    """The 2-bit codes [units, 32] of a plane of 32-byte quads: unit 4q+i is bits 2i..2i+1."""
    quads = plane.reshape(-1, 32).to(torch.int64)
    shifts = torch.arange(4) * 2
    codes = (quads[:, None, :] >> shifts[None, :, None]) & 3  # [quads, 4, 32]
    return codes.reshape(-1, 32)[:units]


def dequantize_packed(codes_lo, codes_hi, hi_groups, scales, super_scales, in_features, group_size):
    """Float32 [N, K] from the packed mixed 2/4-bit tensors, written from the format description."""
    n = hi_groups.shape[0]
    groups = -(-in_features // group_size)
    upg = group_size // 32
    units = groups * upg
    num_hi = hi_groups.shape[1]
    if n == 0:
        return torch.zeros(0, in_features)
    q = torch.stack([unpack_quad_plane(codes_lo[r], units) for r in range(n)]).reshape(n, groups, group_size)
    hi = unpack_quad_plane(codes_hi, n * num_hi * upg).reshape(n, num_hi, group_size)
    rows = torch.arange(n)[:, None].expand(n, num_hi)
    q = q.clone()
    q[rows, hi_groups.long()] += 4 * hi
    sc = (scales.long() & 15).float()
    mc = (scales.long() >> 4).float()
    block = (torch.arange(groups) * upg) // 8
    d = super_scales[:, :, 0].float()[:, block]
    dmin = super_scales[:, :, 1].float()[:, block]
    w = (d * sc)[:, :, None] * q.float() - (dmin * mc)[:, :, None]
    return w.reshape(n, -1)[:, :in_features]


def group_ranges(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """max - min of each group's real weights, [N, groups] (the 'range' selection criterion)."""
    n, k = weight.shape
    groups = -(-k // group_size)
    out = torch.empty(n, groups, dtype=torch.float64)
    for g in range(groups):
        part = weight[:, g * group_size:(g + 1) * group_size].double()
        out[:, g] = part.amax(1) - part.amin(1)
    return out
