// Plain-data interface between the rope_rerotate_ dispatcher and its per-ISA kernels.
// No torch types here: the ISA translation units must not include torch headers.
#pragma once

#include <cstdint>

#include "lmkernels/dtype.h"

namespace lmkernels {

struct RopeRerotateArgs {
  void* k;  // batch x tokens x heads x head_dim, any strides but unit stride on head_dim
  StorageDtype dtype;
  int64_t batch, tokens, heads, head_dim;
  int64_t stride_batch, stride_token, stride_head;  // in elements
  const int64_t* old_pos;  // batch x tokens, contiguous
  const int64_t* new_pos;  // batch x tokens, contiguous
  const float* inv_freq;   // rotary_dim / 2
  int rotary_dim;
  bool neox;
  // Optional: row r rotates the token at k + slot[r] * stride_token (batch 1) instead of its
  // own; rows with slot -1 are skipped. Used by scatter_kv_ to rotate keys where it wrote them.
  const int64_t* slot;
  // Optional (rope_apply_): row (b, t) turns by the angles whose cos and sin are given at
  // cos_table / sin_table + b * table_stride_batch + t * table_stride_token (rotary_dim / 2
  // floats each, neox pairing) instead of by new_pos - old_pos; positions are then unused.
  const float* cos_table;
  const float* sin_table;
  int64_t table_stride_batch, table_stride_token;  // in floats
};

// Each rotates flattened (batch * tokens) rows [begin, end). `table` holds
// rope::delta_table_floats(rotary_dim) floats of scratch owned by the caller's thread (unused
// with cos_table).
void rope_rerotate_rows_scalar(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                               float* table);
void rope_rerotate_rows_avx2(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                             float* table);
void rope_rerotate_rows_avx512(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                               float* table);

}  // namespace lmkernels
