// The CUDA pieces of the mixed 2/4-bit ops, shared by their translation units.
#pragma once

#include <ATen/core/Tensor.h>

#include "quant/quant_format.h"

namespace lmkernels {

// Device pointers of a packed weight (checked by check_packed_weight first).
struct DevicePacked {
  QuantShape s;
  const uint8_t* lo;
  const uint8_t* hi;
  const int16_t* hi_groups;
  const uint8_t* scales;
  const uint16_t* super_scales;  // fp16 bits
};

// Batches up to this many rows take the GEMV kernel; larger ones dequantize and call cuBLAS.
constexpr int64_t kQuantGemvMaxRows = 8;

// out [rows, N] (x's dtype) = x2 [rows, K] times the packed weight, plus bias (fp32 or null):
// int8 activations per 256-wide block as on the CPU, exact integer dot products (dp4a), fp32
// combination. rows in [1, kQuantGemvMaxRows].
void quant_gemv_cuda(const DevicePacked& w, const at::Tensor& x2, const float* bias, at::Tensor& out);

}  // namespace lmkernels
