// quant_linear on CUDA for batches of 1 to 8 rows (GEMV), the CPU row kernel's integer form:
//
// 1. quantize_activations_kernel, one warp per (activation row, super-block): int8 codes with
//    the CPU's shared helpers (same absmax, scale and rounding, so the same codes), the block's
//    fp32 scale, and int32 code sums per group for the min term.
// 2. quant_gemv_kernel, one warp per output row. Lane l takes half-quad l of each 512-byte step
//    of the row's low plane: 16 bytes holding 16 weights of each of 4 units. The step's bytes
//    come through the warp's shared buffer by cp.async, issued one step ahead, so the next
//    step's codes are in flight while this step's scales are decoded and its products run.
//    Per unit and activation row, 4 dp4a on the 2-bit codes (unit_code_word, code_word_dot:
//    the helpers the scalar CPU path uses) give the exact int dot, scaled by d * sc * xscale
//    into an fp32 accumulator. Then the 4-bit groups' high plane (a lane per high unit), the
//    min term (a lane per group) and a warp reduction.
// The integer sums are the CPU's; only the fp32 order of combining them differs.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "common/async_copy.cuh"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"
#include "quant/quant_cuda.h"

namespace lmkernels {
namespace {

constexpr int kGemvWarps = 4;

// Rows >= `rows` (padding up to the kernel's row count) get zero codes, scales and sums, so
// the GEMV reads every row it was compiled for without a branch.
template <StorageDtype D>
__global__ void quantize_activations_kernel(QuantShape s, const void* x, int64_t rows, int8_t* xq, float* xscale,
                                            int32_t* xsum) {
  const int64_t b = blockIdx.x, m = blockIdx.y, S = gridDim.x, K = s.in_features;
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t k0 = b * kQuantSuperBlock + lane * 8;
  float v[8];
  // Largest |x| through the float bits, as on the CPU: a NaN sorts above Inf and poisons the
  // block's scale (and the output) instead of being skipped.
  int32_t top = 0;
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    v[t] = m < rows && k0 + t < K ? load_elem<D>(x, m * K + k0 + t) : 0.0f;
    top = max(top, static_cast<int32_t>(f32_bits(v[t]) & 0x7fffffffu));
  }
  for (int offset = 16; offset > 0; offset /= 2) top = max(top, __shfl_xor_sync(0xffffffffu, top, offset));
  const float absmax = f32_from_bits(static_cast<uint32_t>(top));
  const float inverse = activation_inverse_scale(absmax);
  uint32_t packed[2] = {0, 0};
  int32_t sum = 0;
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    const int8_t c = activation_code(v[t], inverse);
    packed[t / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(c)) << (8 * (t % 4));
    sum += c;
  }
  *reinterpret_cast<uint2*>(xq + m * S * kQuantSuperBlock + k0) = make_uint2(packed[0], packed[1]);
  if (lane == 0) xscale[m * S + b] = activation_block_scale(absmax);
  // A group spans group_size / 8 lanes: a butterfly over them leaves its sum in each.
  const int group_lanes = static_cast<int>(s.group_size / 8);
  for (int offset = 1; offset < group_lanes; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const int64_t g = (b * kQuantSuperBlock + lane * 8) / s.group_size;
  if (lane % group_lanes == 0 && g < s.groups) xsum[m * s.groups + g] = sum;
}

// Exact int dot of `words` (consecutive quad words, unit `unit_in_quad`'s codes) with the
// int8 activations at `x` (16-byte aligned), kWords words (4 weights each).
template <int kWords>
__device__ __forceinline__ int32_t words_dot(const uint32_t* words, int unit_in_quad, const int8_t* x) {
  int32_t dot = 0;
#pragma unroll
  for (int i = 0; i < kWords / 4; ++i) {
    const int4 xv = reinterpret_cast<const int4*>(x)[i];
    const uint32_t xs[4] = {static_cast<uint32_t>(xv.x), static_cast<uint32_t>(xv.y), static_cast<uint32_t>(xv.z),
                            static_cast<uint32_t>(xv.w)};
#pragma unroll
    for (int t = 0; t < 4; ++t) dot = code_word_dot(unit_code_word(words[4 * i + t], unit_in_quad), xs[t], dot);
  }
  return dot;
}

template <int MC, StorageDtype D>
__global__ void __launch_bounds__(kGemvWarps * 32)
    quant_gemv_kernel(DevicePacked w, const int8_t* xq, const float* xscale, const int32_t* xsum, const float* bias,
                      void* out, int rows) {
  __shared__ uint4 stage[kGemvWarps][2][32];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  if (n >= w.s.out_features) return;  // whole warps only: nothing below syncs the block
  const QuantShape& s = w.s;
  const int64_t S = s.super_blocks, x_stride = S * kQuantSuperBlock;
  const int upg_shift = __ffsll(s.units_per_group) - 1;
  const uint8_t* lo = w.lo + n * s.lo_stride;
  const uint8_t* scales = w.scales + n * s.groups;
  const uint16_t* supers = w.super_scales + n * S * 2;
  float acc[MC];
#pragma unroll
  for (int m = 0; m < MC; ++m) acc[m] = 0.0f;

  // Low plane: every unit's low 2 bits.
  const int64_t halves = s.lo_stride / 16, steps = (halves + 31) / 32;
  uint4* my_stage = stage[warp][0] + lane;
  auto issue = [&](int64_t step) {
    const int64_t h = step * 32 + lane;
    if (step < steps && h < halves) cp_async16(my_stage + (step & 1) * 32, lo + h * 16);
    cp_async_commit();
  };
  issue(0);
  for (int64_t step = 0; step < steps; ++step) {
    issue(step + 1);
    cp_async_wait<1>();  // this step's group has landed (each lane reads only what it copied)
    const int64_t h = step * 32 + lane;
    if (h >= halves) continue;
    const uint4 codes = my_stage[(step & 1) * 32];
    const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
    const int64_t quad = h / 2, block = quad / 2;  // two quads per super-block
    const float d = f16_to_f32(supers[2 * block]);
#pragma unroll
    for (int i = 0; i < kQuantQuadUnits; ++i) {
      const int64_t u = quad * kQuantQuadUnits + i;
      if (u >= s.units) break;  // the row's last quad may be padding
      const float dsc = d * static_cast<float>(scale_code(scales[u >> upg_shift]));
      const int8_t* x = xq + u * kQuantUnit + (h % 2) * 16;
#pragma unroll
      for (int m = 0; m < MC; ++m) {
        const int32_t dot = words_dot<4>(words, i, x + m * x_stride);
        acc[m] = fmaf(dsc * xscale[m * S + block], static_cast<float>(dot), acc[m]);
      }
    }
  }

  // High plane: the 4-bit groups' high 2 bits, weight 4 * scale. An out-of-range group index
  // is skipped, never followed (a device-side error would cost a sync per call; packed weights
  // are validated when they are made or loaded).
  for (int64_t j = lane; j < s.hi_units; j += 32) {
    const int64_t g = w.hi_groups[n * s.num_hi + (j >> upg_shift)];
    if (g < 0 || g >= s.groups) continue;
    const int64_t u = (g << upg_shift) + (j & (s.units_per_group - 1)), index = n * s.hi_units + j;
    const uint4* quad = reinterpret_cast<const uint4*>(w.hi + index / kQuantQuadUnits * kQuantQuadBytes);
    const uint4 q0 = quad[0], q1 = quad[1];
    const uint32_t words[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
    const int64_t block = u / kQuantSuperUnits;
    const float dsc = 4.0f * f16_to_f32(supers[2 * block]) * static_cast<float>(scale_code(scales[g]));
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      const int8_t* x = xq + m * x_stride + u * kQuantUnit;
      const int32_t dot = words_dot<8>(words, static_cast<int>(index % kQuantQuadUnits), x);
      acc[m] = fmaf(dsc * xscale[m * S + block], static_cast<float>(dot), acc[m]);
    }
  }

  // Min term: per group, dmin * mc * xscale * (sum of the group's activation codes).
  for (int64_t g = lane; g < s.groups; g += 32) {
    const int64_t block = super_block_of_group(g, s.units_per_group);
    const float dmc = f16_to_f32(supers[2 * block + 1]) * static_cast<float>(min_code(scales[g]));
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      acc[m] = fmaf(-dmc * xscale[m * S + block], static_cast<float>(xsum[m * s.groups + g]), acc[m]);
    }
  }

#pragma unroll
  for (int m = 0; m < MC; ++m) {
    float v = acc[m];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0 && m < rows) store_elem<D>(out, m * s.out_features + n, bias ? v + bias[n] : v);
  }
}

template <int MC, StorageDtype D>
void launch(const DevicePacked& w, const at::Tensor& x2, const float* bias, at::Tensor& out) {
  const QuantShape& s = w.s;
  const int64_t rows = x2.size(0);
  const auto options = x2.options();
  // Codes are 16-byte aligned per row (S * 256 bytes) for the kernel's int4 loads.
  at::Tensor xq = at::empty({MC, s.super_blocks * kQuantSuperBlock}, options.dtype(at::kChar));
  at::Tensor xscale = at::empty({MC, s.super_blocks}, options.dtype(at::kFloat));
  at::Tensor xsum = at::empty({MC, s.groups}, options.dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  quantize_activations_kernel<D><<<dim3(static_cast<unsigned>(s.super_blocks), MC), 32, 0, stream>>>(
      s, x2.data_ptr(), rows, xq.data_ptr<int8_t>(), xscale.data_ptr<float>(), xsum.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const unsigned blocks = static_cast<unsigned>((s.out_features + kGemvWarps - 1) / kGemvWarps);
  quant_gemv_kernel<MC, D><<<blocks, kGemvWarps * 32, 0, stream>>>(w, xq.data_ptr<int8_t>(), xscale.data_ptr<float>(),
                                                                    xsum.data_ptr<int32_t>(), bias, out.data_ptr(),
                                                                    static_cast<int>(rows));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void quant_gemv_cuda(const DevicePacked& w, const at::Tensor& x2, const float* bias, at::Tensor& out) {
  const int64_t rows = x2.size(0);
  with_storage_dtype(x2.scalar_type(), [&](auto tag) {
    constexpr StorageDtype D = decltype(tag)::value;
    if (rows == 1) return launch<1, D>(w, x2, bias, out);
    if (rows == 2) return launch<2, D>(w, x2, bias, out);
    if (rows <= 4) return launch<4, D>(w, x2, bias, out);
    return launch<8, D>(w, x2, bias, out);
  });
}

}  // namespace lmkernels
