// The attention engine: flash-style tiles of queries against tiles of keys, online softmax in
// fp32. Varlen attention (prepacking), block-sparse attention (FlexPrefill) and chunk-reuse
// recompute differ only in which key spans each work item visits (the schedule).
//
// Plain data only: the per-ISA translation units include this, never torch headers.
#pragma once

#include <cstdint>

#include "lmkernels/dtype.h"

namespace lmkernels::attention {

// Keys [begin, end) of one sequence (positions within the sequence) that a work item visits.
struct KeySpan {
  int64_t begin, end;
};

// One unit of work: the query positions [q_begin, q_end) of sequence `seq`, for every query
// head of KV head `kv_head` (GQA: the group shares each K/V tile, read once).
struct WorkItem {
  int64_t seq;
  int64_t kv_head;
  int64_t q_begin, q_end;
  const KeySpan* spans;       // visited in order; causal masking applies inside them
  int64_t num_spans;
  const uint64_t* span_heads;  // per span, bit g: query head g of the group sees it; nullptr: all
};

struct Args {
  const void* q;   // total_q x heads_q x head_dim, `dtype`
  const float* k;  // total_k x heads_kv x head_dim (widened to fp32 once by the caller)
  const float* v;  // total_k x heads_kv x head_dim
  void* out;       // total_q x heads_q x head_dim, `dtype`
  float* lse;      // total_q x heads_q natural-log LSE, or nullptr
  StorageDtype dtype;
  // Element (seq, position, head) of q lives at
  //   seq * q_stride_seq + (q_base[seq] + position) * q_stride_token + head * q_stride_head
  // (head_dim contiguous): packed varlen inputs use q_base = cu_seqlens and no seq stride,
  // batched [B, H, N, D] inputs a seq stride and q_base = 0. Likewise k, v, out and lse.
  int64_t q_stride_seq, q_stride_token, q_stride_head;
  int64_t k_stride_seq, k_stride_token, k_stride_head;
  int64_t v_stride_seq, v_stride_token, v_stride_head;
  int64_t out_stride_seq, out_stride_token, out_stride_head;
  int64_t lse_stride_seq, lse_stride_token, lse_stride_head;
  const int64_t* q_base;        // batch
  const int64_t* k_base;        // batch
  const int64_t* cu_seqlens_q;  // batch + 1: sequence lengths as differences
  const int64_t* cu_seqlens_k;  // batch + 1
  int64_t heads_q, heads_kv, head_dim;
  bool causal;  // bottom-right aligned: query i sees keys j <= i + len_k - len_q
  float scale;  // softmax scale applied to q.k
  // When set (causal only): query i of a sequence sees keys j <= q_pos[q_base[seq] + i]
  // instead, non-decreasing in i (chunk reuse recomputes tokens scattered over the prompt).
  const int64_t* q_pos = nullptr;
};

// Tile geometry; the dispatcher sizes per-thread scratch with scratch_floats().
constexpr int64_t kKeyTile = 64;
constexpr int64_t kRowTarget = 128;  // query rows (positions x group heads) per work item
constexpr int64_t kPad = 32;        // head_dim and row counts are padded to this multiple

inline int64_t padded(int64_t n, int64_t to = kPad) { return (n + to - 1) / to * to; }
inline int64_t positions_per_item(int64_t group) {
  return group >= kRowTarget ? 1 : kRowTarget / group;
}
inline int64_t scratch_floats(int64_t group, int64_t head_dim) {
  const int64_t rows = padded(positions_per_item(group) * group);
  const int64_t dim = padded(head_dim);
  // q^T: dim x rows; out: rows x dim; k, v tiles: key tile x dim each; scores^T: key tile x
  // rows; running max, sum, rescale factor and key limit: rows each.
  return 2 * rows * dim + 2 * kKeyTile * dim + kKeyTile * rows + 4 * rows;
}

void run_item_scalar(const Args& args, const WorkItem& item, float* scratch);
void run_item_avx2(const Args& args, const WorkItem& item, float* scratch);
void run_item_avx512(const Args& args, const WorkItem& item, float* scratch);

}  // namespace lmkernels::attention
