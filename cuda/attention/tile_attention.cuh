// The CUDA attention engine, FA2-style: one CTA of 4 warps takes one work item of the host
// schedule (attention/schedule.h): up to 64 query rows (query positions x the query heads of one
// KV group, so each K/V tile is read once per group) against the item's key spans in tiles of
// 64 keys. Q K^T and P V run on tensor cores (WMMA, fp16/bf16 in, fp32 accumulate); the online
// softmax runs in fp32 on the scores staged in shared memory, two lanes per row. The next K tile
// is fetched with cp.async while the softmax and P V of the current tile run, the next V tile
// while the next Q K^T runs (FA2's single-buffer K/V pipeline).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <cstring>

#include "common/async_copy.cuh"

namespace lmkernels::attention::tile {

constexpr int kRows = 64;  // query rows per CTA, 16 per warp
constexpr int kKeys = 64;  // keys per K/V tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kItemFields = 13;  // see TileItemField

// Fields of one work item in the device schedule buffer (int64 each).
enum TileItemField {
  kQOff, kKOff, kVOff, kOOff, kLseOff,  // element offsets of the item's sequence
  kKvHead, kQBegin, kQEnd, kLenQ, kLenK,
  kSpanBegin, kNumSpans, kMasked,
};

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;               // natural-log LSE or nullptr
  const int64_t* items;     // kItemFields per CTA, heaviest first
  const int64_t* spans;     // [begin, end) pairs, positions within the sequence
  const uint64_t* heads;    // per span: bit g set when query head g of the group sees it
  int64_t q_tok, q_head, k_tok, k_head, v_tok, v_head, o_tok, o_head, lse_tok, lse_head;
  int group, dim;
  float scale_log2;
  bool causal;
  bool aligned;  // every row starts 16-byte aligned and dim % 8 == 0: cp.async whole chunks
};

template <int kDim>
struct Layout {
  static constexpr int kLd = kDim + 8;   // 16-bit elements; the pad staggers shared-memory banks
  static constexpr int kSLd = kKeys + 4;  // floats
  static constexpr int kPLd = kKeys + 8;  // 16-bit elements
  static constexpr int kTileBytes = kRows * kLd * 2;
  static constexpr int kQ = 0, kK = kTileBytes, kV = 2 * kTileBytes, kS = 3 * kTileBytes;
  static constexpr int kP = kS + kRows * kSLd * 4;
  static constexpr int kScratch = kP + kRows * kPLd * 2;
  static constexpr int kBytes = kScratch + kWarps * 16 * 16 * 4;
  static_assert(kKeys == kRows, "K/V tiles share the Q tile's shape");
  static_assert(kTileBytes % 128 == 0 && (kRows * kSLd * 4) % 128 == 0 && (kRows * kPLd * 2) % 128 == 0,
                "shared-memory regions stay 128-byte aligned");
};

template <class T>
__device__ inline T to_storage(float x);
template <>
__device__ inline __half to_storage<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 to_storage<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Fills a [64][kLd] tile of 16-bit elements: row r from row_src(r) (nullptr: a zero row), its
// first `dim` elements, zeros up to kDim. Zero rows and columns keep masked keys' V finite and
// padded head dims out of the dot products.
template <int kDim, class RowSource>
__device__ inline void load_tile(uint16_t* tile, int dim, bool aligned, RowSource row_src) {
  constexpr int kChunks = kDim / 8;
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, d0 = (c % kChunks) * 8;
    uint16_t* dst = tile + r * Layout<kDim>::kLd + d0;
    const uint16_t* src = row_src(r);
    if (src != nullptr && aligned && d0 + 8 <= dim) {
      cp_async16(dst, src + d0);
    } else {
      uint16_t vals[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) vals[e] = (src != nullptr && d0 + e < dim) ? src[d0 + e] : uint16_t{0};
      uint4 packed;
      memcpy(&packed, vals, sizeof(packed));
      *reinterpret_cast<uint4*>(dst) = packed;
    }
  }
}

// Walks an item's key spans in tiles of at most kKeys keys; empty spans are skipped.
struct KeyTileWalk {
  const int64_t* spans;
  int64_t num_spans;
  int64_t span = -1;
  int64_t begin = 0, end = 0;

  __device__ bool next_span() {
    while (++span < num_spans) {
      const int64_t b = spans[2 * span], e = spans[2 * span + 1];
      if (b < e) {
        begin = b;
        end = b + kKeys < e ? b + kKeys : e;
        return true;
      }
    }
    return false;
  }
  __device__ bool next() {
    const int64_t span_end = spans[2 * span + 1];
    if (end < span_end) {
      begin = end;
      end = begin + kKeys < span_end ? begin + kKeys : span_end;
      return true;
    }
    return next_span();
  }
};

template <class T, int kDim>
__global__ void __launch_bounds__(kThreads) tile_attention_kernel(Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host only launches this on compute capability 8.0 and newer
#else
  namespace wmma = nvcuda::wmma;
  using L = Layout<kDim>;
  extern __shared__ __align__(128) unsigned char smem[];
  uint16_t* q_tile = reinterpret_cast<uint16_t*>(smem + L::kQ);
  uint16_t* k_tile = reinterpret_cast<uint16_t*>(smem + L::kK);
  uint16_t* v_tile = reinterpret_cast<uint16_t*>(smem + L::kV);
  float* s_tile = reinterpret_cast<float*>(smem + L::kS);
  T* p_tile = reinterpret_cast<T*>(smem + L::kP);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* scratch = reinterpret_cast<float*>(smem + L::kScratch) + warp * 256;

  const int64_t* item = p.items + static_cast<int64_t>(blockIdx.x) * kItemFields;
  const int64_t kv_head = item[kKvHead], q_begin = item[kQBegin], q_end = item[kQEnd];
  const int64_t len_q = item[kLenQ], len_k = item[kLenK];
  const int group = p.group;
  const int rows = static_cast<int>((q_end - q_begin) * group);  // <= kRows by construction

  const uint16_t* q = static_cast<const uint16_t*>(p.q) + item[kQOff];
  const uint16_t* k = static_cast<const uint16_t*>(p.k) + item[kKOff] + kv_head * p.k_head;
  const uint16_t* v = static_cast<const uint16_t*>(p.v) + item[kVOff] + kv_head * p.v_head;
  load_tile<kDim>(q_tile, p.dim, p.aligned, [&](int r) -> const uint16_t* {
    if (r >= rows) return nullptr;
    return q + (q_begin + r / group) * p.q_tok + (kv_head * group + r % group) * p.q_head;
  });
  auto load_keys = [&](uint16_t* tile, const uint16_t* base, int64_t tok, const KeyTileWalk& w) {
    load_tile<kDim>(tile, p.dim, p.aligned, [&](int r) -> const uint16_t* {
      return w.begin + r < w.end ? base + (w.begin + r) * tok : nullptr;
    });
  };

  KeyTileWalk cur{p.spans + 2 * item[kSpanBegin], item[kNumSpans]};
  bool have = cur.next_span();
  if (have) load_keys(k_tile, k, p.k_tok, cur);
  cp_async_commit();  // group: Q and the first K tile
  if (have) load_keys(v_tile, v, p.v_tok, cur);
  cp_async_commit();  // group: the first V tile

  // Lanes 2r and 2r + 1 own row 16 * warp + r: 32 score columns each in the softmax, 8 output
  // columns each per 16-column fragment.
  const int row = 16 * warp + lane / 2, half = lane % 2;
  const bool row_valid = row < rows;
  const int64_t pos = q_begin + row / group;
  const int head_in_group = row % group;
  const int64_t limit = p.causal ? pos + len_k - len_q : INT64_MAX;
  float m = -INFINITY, l = 0.0f;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[kDim / 16];
#pragma unroll
  for (int j = 0; j < kDim / 16; ++j) wmma::fill_fragment(o[j], 0.0f);
  const T* q_warp = reinterpret_cast<const T*>(q_tile) + 16 * warp * L::kLd;

  while (have) {
    KeyTileWalk nxt = cur;
    const bool more = nxt.next();
    cp_async_wait<1>();
    __syncthreads();  // K tile (and Q) visible to every warp

    // S = Q K^T for this warp's 16 rows.
#pragma unroll
    for (int n = 0; n < kKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int kk = 0; kk < kDim / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a, q_warp + kk * 16, L::kLd);
        wmma::load_matrix_sync(b, reinterpret_cast<const T*>(k_tile) + 16 * n * L::kLd + kk * 16, L::kLd);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(s_tile + 16 * warp * L::kSLd + 16 * n, acc, L::kSLd, wmma::mem_row_major);
    }
    __syncthreads();  // every warp is done with the K tile
    if (more) load_keys(k_tile, k, p.k_tok, nxt);
    cp_async_commit();

    // Online softmax in base 2 (scale * log2(e) folded into the scores).
    const uint64_t heads = item[kMasked] ? p.heads[item[kSpanBegin] + cur.span] : ~uint64_t{0};
    const bool sees = row_valid && ((heads >> head_in_group) & 1u);
    const float* s_row = s_tile + row * L::kSLd + 32 * half;
    const int64_t key0 = cur.begin + 32 * half;
    const int64_t visible_end = limit < cur.end - 1 ? limit + 1 : cur.end;  // keys < visible_end
    float tile_max = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      if (sees && key0 + c < visible_end) tile_max = fmaxf(tile_max, s_row[c] * p.scale_log2);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m - m_new);
    T* p_row = p_tile + row * L::kPLd + 32 * half;
    float sum = 0.0f;
    for (int c = 0; c < 32; ++c) {
      const float prob = sees && key0 + c < visible_end ? exp2f(s_row[c] * p.scale_log2 - m_new) : 0.0f;
      sum += prob;
      p_row[c] = to_storage<T>(prob);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = m_new;

    // Rescale the output rows whose running max moved (the accumulator layout is opaque, so
    // each fragment takes a round trip through the warp's scratch).
    if (__any_sync(0xffffffffu, alpha != 1.0f)) {
#pragma unroll
      for (int j = 0; j < kDim / 16; ++j) {
        wmma::store_matrix_sync(scratch, o[j], 16, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int e = 0; e < 8; ++e) scratch[(lane / 2) * 16 + 8 * half + e] *= alpha;
        __syncwarp();
        wmma::load_matrix_sync(o[j], scratch, 16, wmma::mem_row_major);
        __syncwarp();
      }
    }

    cp_async_wait<1>();
    __syncthreads();  // V tile visible; P rows written
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, p_tile + 16 * warp * L::kPLd + kk * 16, L::kPLd);
#pragma unroll
      for (int j = 0; j < kDim / 16; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, reinterpret_cast<const T*>(v_tile) + 16 * kk * L::kLd + 16 * j, L::kLd);
        wmma::mma_sync(o[j], a, b, o[j]);
      }
    }
    __syncthreads();  // every warp is done with the V tile
    if (more) load_keys(v_tile, v, p.v_tok, nxt);
    cp_async_commit();
    cur = nxt;
    have = more;
  }
  cp_async_wait<0>();

  // Rows that saw no key write zeros and LSE -inf.
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* out = static_cast<T*>(p.out) + item[kOOff] + pos * p.o_tok + (kv_head * group + head_in_group) * p.o_head;
#pragma unroll
  for (int j = 0; j < kDim / 16; ++j) {
    wmma::store_matrix_sync(scratch, o[j], 16, wmma::mem_row_major);
    __syncwarp();
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int d = 16 * j + 8 * half + e;
      if (row_valid && d < p.dim) out[d] = to_storage<T>(scratch[(lane / 2) * 16 + 8 * half + e] * inv);
    }
    __syncwarp();
  }
  if (p.lse != nullptr && row_valid && half == 0) {
    p.lse[item[kLseOff] + pos * p.lse_tok + (kv_head * group + head_in_group) * p.lse_head] =
        l > 0.0f ? (m + log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
#endif
}

}  // namespace lmkernels::attention::tile
