// The row loop of kv_deviation, shared by the per-ISA translation units. Each ISA file
// defines `Ops` with `template <StorageDtype D> static void add_chunk(float* lanes, const void*
// a, const void* b)` that adds (a - b)^2 of 16 elements into the 16 lanes with one fma each.
// Tails shorter than 16 go through a zero-padded buffer (0 - 0 adds exactly nothing).
#pragma once

#include <cmath>
#include <cstring>

#include "kv_deviation_kernel.h"
#include "lmkernels/storage.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
void add_chunk_scalar(float* lanes, const void* a, const void* b) {
  using S = Storage<D>;
  const auto* pa = static_cast<const typename S::T*>(a);
  const auto* pb = static_cast<const typename S::T*>(b);
  for (int l = 0; l < kDeviationLanes; ++l) {
    const float diff = S::load(pa + l) - S::load(pb + l);
    lanes[l] = std::fma(diff, diff, lanes[l]);
  }
}

template <class Ops, StorageDtype D>
void deviation_rows_typed(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  using T = typename Storage<D>::T;
  const int64_t full = args.head_dim / kDeviationLanes * kDeviationLanes;
  const int64_t tail = args.head_dim - full;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t bi = row / args.tokens, t = row % args.tokens;
    alignas(64) float lanes[kDeviationLanes] = {};
    for (int64_t h = 0; h < args.heads; ++h) {
      const T* a = static_cast<const T*>(args.a) + bi * args.a_stride[0] + t * args.a_stride[1] + h * args.a_stride[2];
      const T* b = static_cast<const T*>(args.b) + bi * args.b_stride[0] + t * args.b_stride[1] + h * args.b_stride[2];
      for (int64_t d = 0; d < full; d += kDeviationLanes) Ops::template add_chunk<D>(lanes, a + d, b + d);
      if (tail) {
        T pad_a[kDeviationLanes] = {}, pad_b[kDeviationLanes] = {};
        std::memcpy(pad_a, a + full, sizeof(T) * tail);
        std::memcpy(pad_b, b + full, sizeof(T) * tail);
        Ops::template add_chunk<D>(lanes, pad_a, pad_b);
      }
    }
    args.out[row] = lane_tree_sum(lanes);
  }
}

template <class Ops>
void deviation_rows(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  switch (args.dtype) {
    case StorageDtype::kFloat32:
      return deviation_rows_typed<Ops, StorageDtype::kFloat32>(args, begin, end);
    case StorageDtype::kBFloat16:
      return deviation_rows_typed<Ops, StorageDtype::kBFloat16>(args, begin, end);
    case StorageDtype::kFloat16:
      return deviation_rows_typed<Ops, StorageDtype::kFloat16>(args, begin, end);
  }
}

}  // namespace
}  // namespace lmkernels
