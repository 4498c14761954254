// quant_linear on CPU: activation quantization, threads over output rows, ISA choice.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "lmkernels/cpu_isa.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"
#include "quant/quant_checks.h"
#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

struct QuantizedActivations {
  at::Tensor codes, scales, sums;
};

void quantize_activation_rows(const QuantShape& s, const at::Tensor& x2, QuantizedActivations& qa) {
  using Kernel = void (*)(const ActivationQuantArgs&, int64_t, int64_t, float*);
  const Kernel kernel = pick_for_isa<Kernel>(LMK_ISA_KERNELS(quantize_activation_rows_));
  const ActivationQuantArgs args{s, x2.data_ptr(), storage_dtype(x2.scalar_type()), qa.codes.data_ptr<int8_t>(),
                                 qa.scales.data_ptr<float>(), qa.sums.data_ptr<int16_t>()};
  at::parallel_for(0, x2.size(0), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(s.super_blocks * kQuantSuperBlock);
    kernel(args, begin, end, row.data());
  });
}

// xq's units in xq_pairs' order (kQuantPairPosition), block by block.
void reorder_units_in_pairs(const int8_t* xq, int64_t blocks, int8_t* pairs) {
  for (int64_t b = 0; b < blocks; ++b) {
    for (int u = 0; u < kQuantSuperUnits; ++u) {
      std::memcpy(pairs + b * kQuantSuperBlock + kQuantPairPosition[u] * kQuantUnit, xq + b * kQuantSuperBlock + u * kQuantUnit,
                  kQuantUnit);
    }
  }
}

using RowsKernel = bool (*)(const QuantLinearArgs&, int64_t, int64_t, void*);
using StripsKernel = bool (*)(const QuantStripArgs&, int64_t, int64_t, void*);

#ifndef LMKERNELS_NO_X86_SIMD
// From this many activation rows the strip path beats the VNNI row kernel, whose cost grows
// with every row (the strip path unpacks the weight once and runs an int8 GEMM on it).
constexpr int64_t kQuantStripMinRows = 8;

void quant_linear_strips(const QuantShape& s, const QuantizedActivations& qa, const QuantLinearArgs& packed,
                      at::Tensor& out) {
  const int64_t rows = out.size(0), S = s.super_blocks;
  const int64_t m_tiles = (rows + kQuantStripCols - 1) / kQuantStripCols, x_stride = m_tiles * kQuantStripCols;
  const auto opts = out.options();
  at::Tensor tiles = at::zeros({m_tiles * S * kQuantSuperBlock * kQuantStripCols}, opts.dtype(at::kChar));
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    quant_strip_activation_tiles(qa.codes.data_ptr<int8_t>(), begin, end, S, tiles.data_ptr<int8_t>());
  });
  // The activations' block scales and, for the min term, each group's block scale times its
  // code sum, transposed to [block or group][activation row] and zero padded (plain loops: a
  // handful of small torch ops cost more than the products at a few rows).
  at::Tensor xscale_t = at::empty({S, x_stride}, opts), group_sums = at::empty({s.groups, x_stride}, opts);
  const float* scales = qa.scales.data_ptr<float>();
  const int16_t* sums = qa.sums.data_ptr<int16_t>();
  float* xs = xscale_t.data_ptr<float>();
  float* gs = group_sums.data_ptr<float>();
  const int64_t S8 = quant_combine_stride(S);
  for (int64_t b = 0; b < S; ++b) {
    for (int64_t m = 0; m < x_stride; ++m) xs[b * x_stride + m] = m < rows ? scales[m * S8 + b] : 0.0f;
  }
  for (int64_t g = 0; g < s.groups; ++g) {
    const int64_t b = super_block_of_group(g, s.units_per_group);
    for (int64_t m = 0; m < x_stride; ++m) {
      gs[g * x_stride + m] = m < rows ? scales[m * S8 + b] * static_cast<float>(sums[m * s.groups + g]) : 0.0f;
    }
  }
  const QuantStripArgs args{packed, tiles.data_ptr<int8_t>(), xscale_t.data_ptr<float>(), group_sums.data_ptr<float>(),
                                x_stride};
  const StripsKernel kernel = active_isa() == CpuIsa::kAmx ? quant_linear_strips_amx : quant_linear_strips_avx512_vnni;
  const int64_t strips = (s.out_features + kQuantStripRows - 1) / kQuantStripRows;
  std::atomic<bool> ok{true};
  at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch((quant_strip_scratch_bytes(s) + 7) / 8);
    const int64_t last = std::min(end * kQuantStripRows, s.out_features);
    if (!kernel(args, begin * kQuantStripRows, last, scratch.data())) ok = false;
  });
  TORCH_CHECK(ok.load(), "quant_linear: hi_groups rows must hold strictly ascending group indices in [0, ", s.groups, ")");
}
#endif

at::Tensor quant_linear_cpu(const at::Tensor& x, const at::Tensor& codes_lo, const at::Tensor& codes_hi,
                            const at::Tensor& hi_groups, const at::Tensor& scales, const at::Tensor& super_scales,
                            const std::optional<at::Tensor>& bias, int64_t in_features, int64_t group_size) {
  const QuantShape s = check_packed_weight({codes_lo, codes_hi, hi_groups, scales, super_scales}, in_features,
                                           group_size, "quant_linear");
  check_quant_linear_input(x, bias, s, codes_lo.device());
  const at::Tensor x2 = x.reshape({-1, s.in_features}).contiguous();
  const int64_t rows = x2.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = s.out_features;
  at::Tensor out = at::empty({rows, s.out_features}, x.options().dtype(at::kFloat));
  if (rows == 0 || s.out_features == 0) {
    check_hi_groups_host(hi_groups, s.groups, "quant_linear");  // the kernel's own check never runs
    return out.to(x.scalar_type()).reshape(out_shape);
  }

  at::Tensor bias_f32;
  if (bias.has_value()) bias_f32 = bias->to(at::kFloat).contiguous();
  QuantLinearArgs args{};
  args.shape = s;
  args.codes_lo = codes_lo.data_ptr<uint8_t>();
  args.codes_hi = codes_hi.data_ptr<uint8_t>();
  args.hi_groups = hi_groups.data_ptr<int16_t>();
  args.scales = scales.data_ptr<uint8_t>();
  args.super_scales = reinterpret_cast<const uint16_t*>(super_scales.data_ptr<at::Half>());
  args.bias = bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr;
  args.rows = rows;
  args.out = out.data_ptr<float>();
  const auto opts = x.options();
  QuantizedActivations qa{at::empty({rows, s.super_blocks * kQuantSuperBlock}, opts.dtype(at::kChar)),
                          at::empty({rows, quant_combine_stride(s.super_blocks)}, opts.dtype(at::kFloat)),
                          at::empty({rows, s.groups}, opts.dtype(at::kShort))};
  quantize_activation_rows(s, x2, qa);
  args.xq = qa.codes.data_ptr<int8_t>();
  args.xscale = qa.scales.data_ptr<float>();
  args.xsum = qa.sums.data_ptr<int16_t>();
#ifndef LMKERNELS_NO_X86_SIMD
  if (active_isa() >= CpuIsa::kAvx512Vnni && rows >= kQuantStripMinRows) {
    quant_linear_strips(s, qa, args, out);
    if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
    return out.reshape(out_shape);
  }
#endif

  const RowsKernel kernel = pick_for_isa<RowsKernel>(LMK_ISA_KERNELS_VNNI(quant_linear_rows_));
  at::Tensor pairs;
  if (active_isa() >= CpuIsa::kAvx512Vnni) {
    pairs = at::empty_like(qa.codes);
    reorder_units_in_pairs(qa.codes.data_ptr<int8_t>(), rows * s.super_blocks, pairs.data_ptr<int8_t>());
    args.xq_pairs = pairs.data_ptr<int8_t>();
  }
  std::atomic<bool> ok{true};
  // Threads take blocks of rows from a shared counter instead of one fixed share each: a
  // thread that starts late (a worker woken from sleep, a vCPU the host had parked: up to a
  // few hundred microseconds on the bench VM, as long as a whole batch-1 call) finds its
  // blocks already taken instead of leaving the others waiting for its share.
  const int64_t block_rows = std::max<int64_t>(16, std::min<int64_t>(256, s.out_features / (8 * at::get_num_threads())));
  const int64_t blocks = (s.out_features + block_rows - 1) / block_rows;
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, std::min<int64_t>(blocks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    std::vector<int64_t> scratch((quant_linear_scratch_bytes(s) + 7) / 8 + 8);
    for (int64_t b = next_block++; b < blocks; b = next_block++) {
      if (!kernel(args, b * block_rows, std::min(s.out_features, (b + 1) * block_rows), scratch.data())) ok = false;
    }
  });
  TORCH_CHECK(ok.load(), "quant_linear: hi_groups rows must hold strictly ascending group indices in [0, ", s.groups, ")");
  if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
  return out.reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quant_linear", &quant_linear_cpu); }

}  // namespace lmkernels
