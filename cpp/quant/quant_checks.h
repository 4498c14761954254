// Validation of the packed weight tensors, shared by the CPU and CUDA ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "quant/quant_format.h"

namespace lmkernels {

inline void check_group_size(int64_t group_size, const char* op) {
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256, op,
              ": group_size must be 32, 64, 128 or 256, got ", group_size);
}

struct PackedWeight {
  const at::Tensor& codes_lo;
  const at::Tensor& codes_hi;
  const at::Tensor& hi_groups;
  const at::Tensor& scales;
  const at::Tensor& super_scales;
};

// Checks every packed tensor against the shape they imply and returns it.
inline QuantShape check_packed_weight(const PackedWeight& p, int64_t in_features, int64_t group_size, const char* op) {
  check_group_size(group_size, op);
  TORCH_CHECK(in_features > 0, op, ": in_features must be positive, got ", in_features);
  TORCH_CHECK(p.hi_groups.dim() == 2 && p.hi_groups.scalar_type() == at::kShort, op,
              ": hi_groups must be a 2-D int16 tensor, got ", p.hi_groups.scalar_type(), " ", p.hi_groups.sizes());
  const QuantShape s = make_quant_shape(p.hi_groups.size(0), in_features, group_size, p.hi_groups.size(1));
  const at::Device device = p.codes_lo.device();
  auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dtype, c10::IntArrayRef shape) {
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, " for out_features=",
                s.out_features, ", in_features=", in_features, ", group_size=", group_size, ", got ", t.sizes());
    TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but codes_lo is on ", device);
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  };
  TORCH_CHECK(s.num_hi <= s.groups, op, ": hi_groups lists ", s.num_hi, " groups per row but a row has ", s.groups);
  check(p.codes_lo, "codes_lo", at::kByte, {s.out_features, s.lo_stride});
  check(p.codes_hi, "codes_hi", at::kByte, {s.hi_quads, kQuantQuadBytes});
  check(p.hi_groups, "hi_groups", at::kShort, {s.out_features, s.num_hi});
  check(p.scales, "scales", at::kByte, {s.out_features, s.groups});
  check(p.super_scales, "super_scales", at::kHalf, {s.out_features, s.super_blocks, 2});
  return s;
}

inline void check_quant_linear_input(const at::Tensor& x, const std::optional<at::Tensor>& bias, const QuantShape& s,
                                     at::Device device) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "quant_linear: x must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == s.in_features, "quant_linear: x must be [..., in_features=",
              s.in_features, "], got ", x.sizes());
  TORCH_CHECK(x.device() == device, "quant_linear: x is on ", x.device(), " but the weight is on ", device);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_features, "quant_linear: bias must be [out_features=",
                s.out_features, "], got ", bias->sizes());
    TORCH_CHECK(bias->device() == device, "quant_linear: bias is on ", bias->device(), " but the weight is on ", device);
    TORCH_CHECK(at::isFloatingType(bias->scalar_type()), "quant_linear: bias must be floating point, got ",
                bias->scalar_type());
  }
}

// hi_groups must be strictly ascending indices in [0, groups) per row: a kernel indexing
// activations by them would otherwise read out of bounds. Host tensors only.
inline void check_hi_groups_host(const at::Tensor& hi_groups, int64_t groups, const char* op) {
  const int16_t* p = hi_groups.data_ptr<int16_t>();
  const int64_t rows = hi_groups.size(0), n = hi_groups.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      const int16_t g = p[r * n + j];
      TORCH_CHECK(g >= 0 && g < groups && (j == 0 || g > p[r * n + j - 1]), op, ": hi_groups row ", r,
                  " must hold strictly ascending group indices in [0, ", groups, "), got ", g, " at position ", j);
    }
  }
}

}  // namespace lmkernels
