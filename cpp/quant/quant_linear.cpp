// quant_linear on CPU: activation quantization, threads over output rows, ISA choice.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
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
void quantize_activation_rows(const QuantShape& s, const void* x, int64_t rows, QuantizedActivations& qa) {
  using T = typename Storage<D>::T;
  const int64_t S = s.super_blocks, S8 = quant_combine_stride(S), stride = S * kQuantSuperBlock, K = s.in_features;
  int8_t* codes = qa.codes.data_ptr<int8_t>();
  float* scales = qa.scales.data_ptr<float>();
  int16_t* sums = qa.sums.data_ptr<int16_t>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(stride, 0.0f);
    for (int64_t m = begin; m < end; ++m) {
      const T* src = static_cast<const T*>(x) + m * K;
      for (int64_t k = 0; k < K; ++k) row[k] = Storage<D>::load(src + k);
      int8_t* q = codes + m * stride;
      for (int64_t b = 0; b < S; ++b) {
        const float* block = row.data() + b * kQuantSuperBlock;
        const float absmax = block_absmax(block, kQuantSuperBlock);
        const float inverse = activation_inverse_scale(absmax);
        scales[m * S8 + b] = activation_block_scale(absmax);
        for (int64_t k = 0; k < kQuantSuperBlock; ++k) q[b * kQuantSuperBlock + k] = activation_code(block[k], inverse);
      }
      for (int64_t b = S; b < S8; ++b) scales[m * S8 + b] = 0.0f;
      for (int64_t g = 0; g < s.groups; ++g) {
        int32_t sum = 0;
        for (int64_t k = g * s.group_size; k < (g + 1) * s.group_size; ++k) sum += q[k];
        sums[m * s.groups + g] = static_cast<int16_t>(sum);
      }
    }
  });
}

using RowsKernel = bool (*)(const QuantLinearArgs&, int64_t, int64_t, void*);

#ifndef LMKERNELS_NO_X86_SIMD
// From this many activation rows the AMX path beats the VNNI row kernel (whose cost grows
// with every row, where AMX's is nearly that of one dequantization of the weight).
constexpr int64_t kQuantAmxMinRows = 8;

void quant_linear_amx(const QuantShape& s, const QuantizedActivations& qa, const QuantLinearArgs& packed,
                      at::Tensor& out) {
  const int64_t rows = out.size(0), S = s.super_blocks;
  const int64_t m_tiles = (rows + kQuantAmxTileCols - 1) / kQuantAmxTileCols, x_stride = m_tiles * kQuantAmxTileCols;
  const auto opts = out.options();
  at::Tensor tiles = at::zeros({m_tiles * S * kQuantSuperBlock * kQuantAmxTileCols}, opts.dtype(at::kChar));
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    quant_amx_activation_tiles(qa.codes.data_ptr<int8_t>(), begin, end, S, tiles.data_ptr<int8_t>());
  });
  at::Tensor xscale_t = at::zeros({S, x_stride}, opts);
  xscale_t.narrow(1, 0, rows).copy_(qa.scales.narrow(1, 0, S).t());
  // The min term's activation side: per group, its block's scale times its code sum.
  const int64_t groups_per_block = kQuantSuperUnits / s.units_per_group;
  at::Tensor group_sums = at::zeros({s.groups, x_stride}, opts);
  group_sums.narrow(1, 0, rows).copy_(
      qa.scales.narrow(1, 0, S).repeat_interleave(groups_per_block, 1).narrow(1, 0, s.groups).mul(qa.sums.to(at::kFloat)).t());
  const QuantLinearAmxArgs args{packed, tiles.data_ptr<int8_t>(), xscale_t.data_ptr<float>(), group_sums.data_ptr<float>(),
                                x_stride};
  const int64_t strips = (s.out_features + kQuantAmxStripRows - 1) / kQuantAmxStripRows;
  std::atomic<bool> ok{true};
  at::parallel_for(0, strips, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch((quant_linear_amx_scratch_bytes(s) + 7) / 8);
    const int64_t last = std::min(end * kQuantAmxStripRows, s.out_features);
    if (!quant_linear_rows_amx(args, begin * kQuantAmxStripRows, last, scratch.data())) ok = false;
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
  with_storage_dtype(x.scalar_type(), [&](auto tag) {
    quantize_activation_rows<decltype(tag)::value>(s, x2.data_ptr(), rows, qa);
  });
  args.xq = qa.codes.data_ptr<int8_t>();
  args.xscale = qa.scales.data_ptr<float>();
  args.xsum = qa.sums.data_ptr<int16_t>();
#ifndef LMKERNELS_NO_X86_SIMD
  if (active_isa() == CpuIsa::kAmx && rows >= kQuantAmxMinRows) {
    quant_linear_amx(s, qa, args, out);
    if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
    return out.reshape(out_shape);
  }
#endif

  const RowsKernel kernel = pick_for_isa<RowsKernel>(LMK_ISA_KERNELS_VNNI(quant_linear_rows_));
  std::atomic<bool> ok{true};
  at::parallel_for(0, s.out_features, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> scratch((quant_linear_scratch_bytes(s) + 7) / 8 + 8);
    if (!kernel(args, begin, end, scratch.data())) ok = false;
  });
  TORCH_CHECK(ok.load(), "quant_linear: hi_groups rows must hold strictly ascending group indices in [0, ", s.groups, ")");
  if (x.scalar_type() != at::kFloat) out = out.to(x.scalar_type());
  return out.reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quant_linear", &quant_linear_cpu); }

}  // namespace lmkernels
