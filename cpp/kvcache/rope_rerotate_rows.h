// The row loop of rope_rerotate_, shared by the per-ISA translation units.
//
// Each ISA file defines an `Ops` struct with
//   template <StorageDtype D> static void neox(void* head, const float* cos, const float* sin, int half);
//   template <StorageDtype D> static void gptj(void* head, const float* cos, const float* sin, int rot);
// and instantiates rerotate_rows<Ops>. Everything here has internal linkage (see cpu_isa.h).
#pragma once

#include <cstdint>

#include "lmkernels/dtype.h"
#include "lmkernels/rope.h"
#include "lmkernels/storage.h"
#include "rope_rerotate_kernel.h"

namespace lmkernels {
namespace {

// Scalar rotation of pairs [first_pair, ...) of one head; the SIMD paths use it for tails.
template <StorageDtype D>
void rotate_head_neox_scalar(void* head, const float* cos_t, const float* sin_t, int first_pair,
                             int half) {
  using S = Storage<D>;
  auto* p = static_cast<typename S::T*>(head);
  for (int i = first_pair; i < half; ++i) {
    float x = S::load(p + i);
    float y = S::load(p + i + half);
    rope::rotate_pair(x, y, cos_t[i], sin_t[i]);
    S::store(p + i, x);
    S::store(p + i + half, y);
  }
}

template <StorageDtype D>
void rotate_head_gptj_scalar(void* head, const float* cos_t, const float* sin_t, int first_pair,
                             int rot) {
  using S = Storage<D>;
  auto* p = static_cast<typename S::T*>(head);
  for (int i = first_pair; i < rot / 2; ++i) {
    float x = S::load(p + 2 * i);
    float y = S::load(p + 2 * i + 1);
    rope::rotate_pair(x, y, cos_t[2 * i], sin_t[2 * i + 1]);
    S::store(p + 2 * i, x);
    S::store(p + 2 * i + 1, y);
  }
}

// rope_apply_: each row turns by its own given angles (neox pairing), so no table is built.
template <class Ops, StorageDtype D>
void apply_table_rows(const RopeRerotateArgs& a, int64_t begin, int64_t end) {
  using T = typename Storage<D>::T;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / a.tokens, t = row % a.tokens;
    const int64_t table_offset = b * a.table_stride_batch + t * a.table_stride_token;
    T* token = static_cast<T*>(a.k) + b * a.stride_batch + t * a.stride_token;
    for (int64_t h = 0; h < a.heads; ++h) {
      Ops::template neox<D>(token + h * a.stride_head, a.cos_table + table_offset, a.sin_table + table_offset,
                            a.rotary_dim / 2);
    }
  }
}

template <class Ops, StorageDtype D>
void rerotate_rows_typed(const RopeRerotateArgs& a, int64_t begin, int64_t end, float* table) {
  using T = typename Storage<D>::T;
  if (a.cos_table != nullptr) return apply_table_rows<Ops, D>(a, begin, end);  // `table` is null then
  float* cos_t = table;
  float* sin_t = table + a.rotary_dim;
  bool have_table = false;
  int64_t table_delta = 0;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t delta = a.new_pos[row] - a.old_pos[row];
    // A zero shift is exactly the identity (rotating by 0 would turn inf into NaN).
    if (delta == 0) continue;
    // Chunks move as a whole, so consecutive rows nearly always share one delta.
    if (!have_table || delta != table_delta) {
      rope::fill_delta_table(delta, a.inv_freq, a.rotary_dim, a.neox, cos_t, sin_t);
      table_delta = delta;
      have_table = true;
    }
    T* token;
    if (a.slot != nullptr) {
      if (a.slot[row] < 0) continue;
      token = static_cast<T*>(a.k) + a.slot[row] * a.stride_token;
    } else {
      token = static_cast<T*>(a.k) + (row / a.tokens) * a.stride_batch + (row % a.tokens) * a.stride_token;
    }
    for (int64_t h = 0; h < a.heads; ++h) {
      T* head = token + h * a.stride_head;
      if (a.neox) {
        Ops::template neox<D>(head, cos_t, sin_t, a.rotary_dim / 2);
      } else {
        Ops::template gptj<D>(head, cos_t, sin_t, a.rotary_dim);
      }
    }
  }
}

template <class Ops>
void rerotate_rows(const RopeRerotateArgs& a, int64_t begin, int64_t end, float* table) {
  switch (a.dtype) {
    case StorageDtype::kFloat32:
      return rerotate_rows_typed<Ops, StorageDtype::kFloat32>(a, begin, end, table);
    case StorageDtype::kBFloat16:
      return rerotate_rows_typed<Ops, StorageDtype::kBFloat16>(a, begin, end, table);
    case StorageDtype::kFloat16:
      return rerotate_rows_typed<Ops, StorageDtype::kFloat16>(a, begin, end, table);
  }
}

}  // namespace
}  // namespace lmkernels
