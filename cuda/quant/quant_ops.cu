// The mixed 2/4-bit ops on CUDA: dispatch, dequantization and the batched path.
//
// quant_linear, batch <= 8: the int8 GEMV of quant_gemv.cu. Larger batches: the weight is
// dequantized to x's dtype in panels of rows (bounded memory, each panel one kernel) and each
// panel's product is a cuBLAS GEMM (at::mm_out) straight into its columns of the output.
// quantize_weight runs on the host (it is a one-off, and host code).
// An out-of-range hi_groups entry is skipped, never followed (a device-side check would cost
// a synchronisation per call; QuantizedWeight objects are validated on creation).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"
#include "quant/quant_checks.h"
#include "quant/quant_cuda.h"
#include "quant/quant_format.h"
#include "quant/quantize_weight.h"

namespace lmkernels {
namespace {

// Elements of one dequantized panel of the batched path (2^25: 64 MB in bf16).
constexpr int64_t kPanelElements = int64_t{1} << 25;

DevicePacked device_packed(const QuantShape& s, const PackedWeight& p) {
  return {s,
          p.codes_lo.data_ptr<uint8_t>(),
          p.codes_hi.data_ptr<uint8_t>(),
          p.hi_groups.data_ptr<int16_t>(),
          p.scales.data_ptr<uint8_t>(),
          reinterpret_cast<const uint16_t*>(p.super_scales.data_ptr<at::Half>())};
}

// Rows [row0, row0 + rows) of the weight, one thread per (row, unit), in storage dtype D.
template <StorageDtype D>
__global__ void dequantize_kernel(DevicePacked w, int64_t row0, int64_t rows, void* out) {
  const QuantShape& s = w.s;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (row, unit)
  if (item >= rows * s.units) return;
  const int64_t i = item / s.units, r = row0 + i, u = item % s.units, g = u / s.units_per_group;
  // The group's rank among the row's (ascending) 4-bit groups, by binary search.
  const int16_t* row_groups = w.hi_groups + r * s.num_hi;
  int64_t lo = 0, hi = s.num_hi;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row_groups[mid] < g) lo = mid + 1; else hi = mid;
  }
  const int64_t rank = lo < s.num_hi && row_groups[lo] == g ? lo : -1;
  for (int t = 0; t < kQuantUnit; ++t) {
    const int64_t k = u * kQuantUnit + t;
    if (k >= s.in_features) break;
    store_elem<D>(out, i * s.in_features + k,
                  dequantize_weight_at(s, r, w.lo + r * s.lo_stride, w.hi, w.scales + r * s.groups,
                                       w.super_scales + r * s.super_blocks * 2, k, rank));
  }
}

// Rows [row0, row0 + out.size(0)) of the weight into `out` (contiguous, dtype D).
template <StorageDtype D>
void dequantize_rows(const DevicePacked& w, int64_t row0, at::Tensor& out) {
  const int64_t rows = out.size(0), items = rows * w.s.units;
  if (items == 0) return;
  const unsigned blocks = static_cast<unsigned>((items + 255) / 256);
  dequantize_kernel<D><<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(w, row0, rows, out.data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dequantize_weight_cuda(const at::Tensor& codes_lo, const at::Tensor& codes_hi, const at::Tensor& hi_groups,
                                  const at::Tensor& scales, const at::Tensor& super_scales, int64_t in_features,
                                  int64_t group_size) {
  const PackedWeight p{codes_lo, codes_hi, hi_groups, scales, super_scales};
  const QuantShape s = check_packed_weight(p, in_features, group_size, "dequantize_weight");
  check_hi_groups_host(hi_groups.cpu(), s.groups, "dequantize_weight");
  const c10::cuda::CUDAGuard guard(codes_lo.device());
  at::Tensor out = at::empty({s.out_features, s.in_features}, codes_lo.options().dtype(at::kFloat));
  dequantize_rows<StorageDtype::kFloat32>(device_packed(s, p), 0, out);
  return out;
}

// Batches above the GEMV's: out[:, panel] = x2 @ W[panel]^T per panel of rows, W dequantized
// to x's dtype (tensor-core GEMMs in bf16/fp16), the panel buffer reused.
void quant_linear_panels(const DevicePacked& w, const at::Tensor& x2, at::Tensor& out) {
  const QuantShape& s = w.s;
  const int64_t fit = kPanelElements / std::max<int64_t>(1, s.in_features);
  const int64_t panel_rows = std::min<int64_t>(s.out_features, std::max<int64_t>(256, fit));
  at::Tensor panel = at::empty({panel_rows, s.in_features}, x2.options());
  with_storage_dtype(x2.scalar_type(), [&](auto tag) {
    for (int64_t r0 = 0; r0 < s.out_features; r0 += panel_rows) {
      const int64_t rows = std::min(panel_rows, s.out_features - r0);
      at::Tensor wp = panel.narrow(0, 0, rows);
      dequantize_rows<decltype(tag)::value>(w, r0, wp);
      at::Tensor cols = out.narrow(1, r0, rows);
      at::mm_out(cols, x2, wp.t());
    }
  });
}

at::Tensor quant_linear_cuda(const at::Tensor& x, const at::Tensor& codes_lo, const at::Tensor& codes_hi,
                             const at::Tensor& hi_groups, const at::Tensor& scales, const at::Tensor& super_scales,
                             const std::optional<at::Tensor>& bias, int64_t in_features, int64_t group_size) {
  const PackedWeight p{codes_lo, codes_hi, hi_groups, scales, super_scales};
  const QuantShape s = check_packed_weight(p, in_features, group_size, "quant_linear");
  check_quant_linear_input(x, bias, s, codes_lo.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({-1, s.in_features}).contiguous();
  const int64_t rows = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.out_features;
  at::Tensor out = at::empty({rows, s.out_features}, x.options());
  if (rows == 0 || s.out_features == 0) return out.reshape(out_shape);
  // The GEMV's 16-byte loads need 16-byte aligned code planes: a view at an odd offset gets
  // an aligned copy (fresh allocations always are).
  auto aligned16 = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
  };
  const at::Tensor lo = aligned16(codes_lo), hi = aligned16(codes_hi);
  const DevicePacked w = device_packed(s, {lo, hi, hi_groups, scales, super_scales});
  if (rows > kQuantGemvMaxRows) {
    quant_linear_panels(w, x2, out);
    if (bias.has_value()) out.add_(bias->to(x.scalar_type()));
    return out.reshape(out_shape);
  }
  at::Tensor bias_f32;
  if (bias.has_value()) bias_f32 = bias->to(at::kFloat).contiguous();
  quant_gemv_cuda(w, x2, bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr, out);
  return out.reshape(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_cuda(
    const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const std::string& select,
    const std::optional<at::Tensor>& importance) {
  std::optional<at::Tensor> host_importance;
  if (importance.has_value()) host_importance = importance->cpu();
  auto [lo, hi, groups, sc, ss] = quantize_weight_host(weight.cpu(), group_size, num_4bit_groups, select, host_importance);
  const auto device = weight.device();
  return {lo.to(device), hi.to(device), groups.to(device), sc.to(device), ss.to(device)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_gptq_cuda(
    const at::Tensor& weight, const at::Tensor& hessian, int64_t group_size, int64_t num_4bit_groups,
    const std::string& select, double damp) {
  auto [lo, hi, groups, sc, ss] =
      quantize_weight_gptq_host(weight.cpu(), hessian.cpu(), group_size, num_4bit_groups, select, damp);
  const auto device = weight.device();
  return {lo.to(device), hi.to(device), groups.to(device), sc.to(device), ss.to(device)};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) {
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("quantize_weight_gptq", &quantize_weight_gptq_cuda);
  m.impl("dequantize_weight", &dequantize_weight_cuda);
  m.impl("quant_linear", &quant_linear_cuda);
}

}  // namespace lmkernels
