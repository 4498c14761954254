// The mixed 2/4-bit ops on CUDA.
//
// quant_linear, batch <= 8 (GEMV): one warp per output row; each lane takes whole 32-weight
// units (two 128-bit loads of its quad), decodes the group scale and min with the shared
// helpers of quant_format.h and accumulates scale * <codes, x> - min * sum(x) in fp32 for up
// to 8 activation rows held in registers; then the 4-bit groups' high plane the same way, and a
// warp reduction. Activations stay in float (no int8 step), so results agree with the CPU
// within the CPU path's activation rounding. Larger batches dequantize to x's dtype and use
// cuBLAS (at::matmul). quantize_weight runs on the host (it is a one-off, and host code).
// An out-of-range hi_groups entry is skipped, never followed (a device-side check would cost
// a synchronisation per call; QuantizedWeight objects are validated on creation).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"
#include "quant/quant_checks.h"
#include "quant/quant_format.h"
#include "quant/quantize_weight.h"

namespace lmkernels {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxGemvRows = 8;

struct DevicePacked {
  QuantShape s;
  const uint8_t* lo;
  const uint8_t* hi;
  const int16_t* hi_groups;
  const uint8_t* scales;
  const uint16_t* super_scales;
};

DevicePacked device_packed(const QuantShape& s, const PackedWeight& p) {
  return {s,
          p.codes_lo.data_ptr<uint8_t>(),
          p.codes_hi.data_ptr<uint8_t>(),
          p.hi_groups.data_ptr<int16_t>(),
          p.scales.data_ptr<uint8_t>(),
          reinterpret_cast<const uint16_t*>(p.super_scales.data_ptr<at::Half>())};
}

// The 32 codes of a unit: its quad (two 128-bit loads), shifted by 2 * (unit % 4).
__device__ __forceinline__ void load_unit_codes(const uint8_t* plane, int64_t unit, uint8_t (&codes)[32]) {
  const uint4* quad = reinterpret_cast<const uint4*>(plane + (unit / kQuantQuadUnits) * kQuantQuadBytes);
  uint4 parts[2] = {quad[0], quad[1]};
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(parts);
  const int shift = static_cast<int>(2 * (unit % kQuantQuadUnits));
#pragma unroll
  for (int i = 0; i < 32; ++i) codes[i] = (bytes[i] >> shift) & 3;
}

template <StorageDtype D, int MC>
__global__ void quant_gemv_kernel(DevicePacked w, const void* x, const float* bias, void* out, int64_t rows) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (n >= w.s.out_features) return;
  const QuantShape& s = w.s;
  const int64_t K = s.in_features;
  const uint8_t* scales = w.scales + n * s.groups;
  const uint16_t* supers = w.super_scales + n * s.super_blocks * 2;
  float acc[MC];
#pragma unroll
  for (int m = 0; m < MC; ++m) acc[m] = 0.0f;

  // Low plane and mins: every unit.
  for (int64_t u = lane; u < s.units; u += 32) {
    uint8_t codes[32];
    load_unit_codes(w.lo + n * s.lo_stride, u, codes);
    const int64_t g = u / s.units_per_group;
    const GroupScale gs = decode_group_scale(scales[g], supers + 2 * super_block_of_group(g, s.units_per_group));
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      float dot = 0.0f, sum = 0.0f;
      for (int i = 0; i < 32; ++i) {
        const int64_t k = u * kQuantUnit + i;
        const float xv = k < K && m < rows ? load_elem<D>(x, m * K + k) : 0.0f;
        dot = fmaf(static_cast<float>(codes[i]), xv, dot);
        sum += xv;
      }
      acc[m] = fmaf(gs.scale, dot, fmaf(-gs.min, sum, acc[m]));
    }
  }
  // High plane: the 4-bit groups' upper code bits, weight 4 * scale.
  for (int64_t j = lane; j < s.hi_units; j += 32) {
    const int64_t g = w.hi_groups[n * s.num_hi + j / s.units_per_group];
    if (g < 0 || g >= s.groups) continue;
    const int64_t u = g * s.units_per_group + j % s.units_per_group;
    uint8_t codes[32];
    load_unit_codes(w.hi, n * s.hi_units + j, codes);
    const GroupScale gs = decode_group_scale(scales[g], supers + 2 * super_block_of_group(g, s.units_per_group));
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      float dot = 0.0f;
      for (int i = 0; i < 32; ++i) {
        const int64_t k = u * kQuantUnit + i;
        if (k < K && m < rows) dot = fmaf(static_cast<float>(codes[i]), load_elem<D>(x, m * K + k), dot);
      }
      acc[m] = fmaf(4.0f * gs.scale, dot, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < MC; ++m) {
    float v = acc[m];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && m < rows) {
      if (bias) v += bias[n];
      Storage<D>::store(static_cast<typename Storage<D>::T*>(out) + m * s.out_features + n, v);
    }
  }
}

__global__ void dequantize_kernel(DevicePacked w, float* out) {
  const QuantShape& s = w.s;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (row, unit)
  if (item >= s.out_features * s.units) return;
  const int64_t r = item / s.units, u = item % s.units, g = u / s.units_per_group;
  // The group's rank among the row's (ascending) 4-bit groups, by binary search.
  const int16_t* row_groups = w.hi_groups + r * s.num_hi;
  int64_t lo = 0, hi = s.num_hi;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row_groups[mid] < g) lo = mid + 1; else hi = mid;
  }
  const int64_t rank = lo < s.num_hi && row_groups[lo] == g ? lo : -1;
  for (int i = 0; i < kQuantUnit; ++i) {
    const int64_t k = u * kQuantUnit + i;
    if (k >= s.in_features) break;
    out[r * s.in_features + k] = dequantize_weight_at(s, r, w.lo + r * s.lo_stride, w.hi, w.scales + r * s.groups,
                                                      w.super_scales + r * s.super_blocks * 2, k, rank);
  }
}

at::Tensor dequantize_weight_cuda(const at::Tensor& codes_lo, const at::Tensor& codes_hi, const at::Tensor& hi_groups,
                                  const at::Tensor& scales, const at::Tensor& super_scales, int64_t in_features,
                                  int64_t group_size) {
  const PackedWeight p{codes_lo, codes_hi, hi_groups, scales, super_scales};
  const QuantShape s = check_packed_weight(p, in_features, group_size, "dequantize_weight");
  check_hi_groups_host(hi_groups.cpu(), s.groups, "dequantize_weight");
  const c10::cuda::CUDAGuard guard(codes_lo.device());
  at::Tensor out = at::empty({s.out_features, s.in_features}, codes_lo.options().dtype(at::kFloat));
  const int64_t items = s.out_features * s.units;
  if (items == 0) return out;
  const unsigned blocks = static_cast<unsigned>((items + 255) / 256);
  dequantize_kernel<<<blocks, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(device_packed(s, p), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <StorageDtype D>
void launch_gemv(const DevicePacked& w, const void* x, const float* bias, void* out, int64_t rows) {
  const unsigned blocks = static_cast<unsigned>((w.s.out_features + kWarpsPerBlock - 1) / kWarpsPerBlock);
  auto stream = c10::cuda::getCurrentCUDAStream();
  switch (rows) {
    case 1: quant_gemv_kernel<D, 1><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, x, bias, out, rows); break;
    case 2: quant_gemv_kernel<D, 2><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, x, bias, out, rows); break;
    case 3: case 4: quant_gemv_kernel<D, 4><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, x, bias, out, rows); break;
    default: quant_gemv_kernel<D, 8><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(w, x, bias, out, rows); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  if (rows > kMaxGemvRows) {
    const at::Tensor w = dequantize_weight_cuda(codes_lo, codes_hi, hi_groups, scales, super_scales, in_features,
                                                group_size).to(x.scalar_type());
    at::Tensor y = at::matmul(x2, w.t());
    if (bias.has_value()) y.add_(bias->to(x.scalar_type()));
    return y.reshape(out_shape);
  }
  at::Tensor out = at::empty({rows, s.out_features}, x.options());
  if (rows == 0 || s.out_features == 0) return out.reshape(out_shape);
  at::Tensor bias_f32;
  if (bias.has_value()) bias_f32 = bias->to(at::kFloat).contiguous();
  const DevicePacked w = device_packed(s, p);
  with_storage_dtype(x.scalar_type(), [&](auto tag) {
    launch_gemv<decltype(tag)::value>(w, x2.data_ptr(), bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr,
                                      out.data_ptr(), rows);
  });
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
