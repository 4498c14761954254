// Activation quantization and output rounding for quant_linear's kernels, compiled per ISA
// (included by quant_linear_{scalar,avx2,avx512}.cpp, which the compiler vectorizes with their
// own flags).
// Every step is exact or the same float op on every path (integer absmax, x * inverse scale,
// round half to even by the 1.5 * 2^23 trick), so every ISA gives the same codes.
#pragma once

#include <cstdint>
#include <cstring>

#include "lmkernels/storage.h"
#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

// Largest |x| of a block through the float bits: for non-negative floats the integer order
// is the float order, and NaN sorts above Inf, so a NaN or Inf activation yields a NaN or Inf
// scale (and a NaN output row) instead of being skipped. Integer max vectorizes; float max
// with NaN semantics does not.
LMK_INLINE float block_absmax(const float* x, int64_t n) {
  int32_t top = 0;
  for (int64_t k = 0; k < n; ++k) {
    int32_t bits;
    std::memcpy(&bits, x + k, 4);
    bits &= 0x7fffffff;
    top = bits > top ? bits : top;
  }
  float absmax;
  std::memcpy(&absmax, &top, 4);
  return absmax;
}

template <StorageDtype D>
void quantize_activations_typed(const ActivationQuantArgs& a, int64_t begin, int64_t end, float* row) {
  using T = typename Storage<D>::T;
  const QuantShape& s = a.shape;
  const int64_t S = s.super_blocks, S8 = quant_combine_stride(S), stride = S * kQuantSuperBlock, K = s.in_features;
  for (int64_t k = K; k < stride; ++k) row[k] = 0.0f;
  for (int64_t m = begin; m < end; ++m) {
    const T* src = static_cast<const T*>(a.x) + m * K;
    for (int64_t k = 0; k < K; ++k) row[k] = Storage<D>::load(src + k);
    int8_t* q = a.codes + m * stride;
    for (int64_t b = 0; b < S; ++b) {
      const float* block = row + b * kQuantSuperBlock;
      const float absmax = block_absmax(block, kQuantSuperBlock);
      const float inverse = activation_inverse_scale(absmax);
      a.scales[m * S8 + b] = activation_block_scale(absmax);
      for (int64_t k = 0; k < kQuantSuperBlock; ++k) q[b * kQuantSuperBlock + k] = activation_code(block[k], inverse);
    }
    for (int64_t b = S; b < S8; ++b) a.scales[m * S8 + b] = 0.0f;
    for (int64_t g = 0; g < s.groups; ++g) {
      int32_t sum = 0;
      for (int64_t k = g * s.group_size; k < (g + 1) * s.group_size; ++k) sum += q[k];
      a.sums[m * s.groups + g] = static_cast<int16_t>(sum);
    }
  }
}

LMK_INLINE void quantize_activations(const ActivationQuantArgs& a, int64_t begin, int64_t end, float* row) {
  switch (a.dtype) {
    case StorageDtype::kBFloat16:
      return quantize_activations_typed<StorageDtype::kBFloat16>(a, begin, end, row);
    case StorageDtype::kFloat16:
      return quantize_activations_typed<StorageDtype::kFloat16>(a, begin, end, row);
    default:
      return quantize_activations_typed<StorageDtype::kFloat32>(a, begin, end, row);
  }
}

// The op's float results rounded into a 16-bit output as Tensor::to rounds them (the same
// helpers as c10). A plain loop the compiler vectorizes with each file's flags: compiled once
// without them it took about 4 ns per value, 1 ms of a batch-64 4096x4096 call.
template <StorageDtype D>
void round_outputs_typed(const float* y, int64_t count, void* out) {
  auto* dst = static_cast<typename Storage<D>::T*>(out);
  for (int64_t i = 0; i < count; ++i) Storage<D>::store(dst + i, y[i]);
}

LMK_INLINE void round_outputs(const float* y, int64_t count, StorageDtype dtype, void* out) {
  if (dtype == StorageDtype::kBFloat16) return round_outputs_typed<StorageDtype::kBFloat16>(y, count, out);
  if (dtype == StorageDtype::kFloat16) return round_outputs_typed<StorageDtype::kFloat16>(y, count, out);
}

}  // namespace
}  // namespace lmkernels
