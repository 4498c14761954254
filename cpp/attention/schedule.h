// Schedules for the attention engine: which key spans each work item (query positions x the
// query heads of one KV group) visits. Built on the host from cu_seqlens or a CSR block index
// and shared by the CPU engine and the CUDA tiled kernel, so the CPU tests check the very
// schedules the GPU runs.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/engine.h"

namespace lmkernels::attention {

struct Schedule {
  std::vector<WorkItem> items;        // spans / span_heads pointers are set by link()
  std::vector<int64_t> span_offset;   // per item: its first span in `spans`
  std::vector<char> masked;           // per item: some span is not seen by every head
  std::vector<int64_t> cost;          // per item: work estimate, heaviest run first
  std::vector<KeySpan> spans;
  std::vector<uint64_t> span_heads;   // per span: bit g set when query head g of the group sees it

  // Points items at their spans; call once the vectors stop growing.
  void link();
};

// Varlen (flash-attention packed) layout: sequence b has queries [cu_q[b], cu_q[b+1]) and keys
// [cu_k[b], cu_k[b+1]); causal masking is bottom-right aligned. Items hold at most `positions`
// query positions.
Schedule varlen_schedule(const std::vector<int64_t>& cu_q, const std::vector<int64_t>& cu_k, int64_t heads_kv,
                         bool causal, int64_t positions);

// CSR block index (see sparse/block_sparse_attention.h) over `tokens` queries and keys per batch
// entry: the key spans of an item are the union of the blocks its group's query heads list,
// consecutive blocks seen by the same heads merged into one span; blocks entirely above the
// diagonal are dropped when causal. Needs heads_q / heads_kv <= 64.
Schedule block_sparse_schedule(const int64_t* crow, const int64_t* col, int64_t blocks, int64_t width,
                               int64_t batch, int64_t heads_q, int64_t heads_kv, int64_t tokens,
                               int64_t block_size, bool causal, int64_t positions);

}  // namespace lmkernels::attention
