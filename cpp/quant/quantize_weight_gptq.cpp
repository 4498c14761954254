// quantize_weight_gptq: mixed 2/4-bit quantization with GPTQ error feedback (Frantar et al.
// 2022). Columns are quantized in order; each column's rounding error, scaled by the inverse
// Hessian's Cholesky factor U, is pushed onto the columns not yet quantized, so the layer
// output error under the calibration inputs (H = sum x x^T) stays small.
//
// The format's grids are per super-block (256 columns share fp16 d, dmin), so the grids of a
// super-block are fitted from the weights as updated by all earlier super-blocks, which fixes
// its (d, dmin); each later group of the super-block refits its scale and min codes when its
// first column comes up, as GPTQ fits a group's grid then. Rows run in parallel; the feedback
// to later super-blocks is one GEMM per super-block (GPTQ's lazy batch).
// The 4-bit groups are chosen up front on the original weights, with diag(H) as importance.
#include <ATen/Parallel.h>
#include <ATen/ops/cholesky_inverse.h>
#include <ATen/ops/linalg_cholesky_ex.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/quantize_row.h"
#include "quant/quantize_weight.h"

namespace lmkernels {
namespace {

constexpr const char* kOp = "quantize_weight_gptq";

// Upper Cholesky factor of inv(H + damp * mean(diag H) * I), float32 [Kp, Kp]. Dead inputs
// (diag 0, padding included) get the mean diagonal so H stays positive definite; their weights
// are kept.
// The damping grows tenfold while the factorisation fails, as GPTQ users do by hand.
at::Tensor inverse_hessian_factor(const at::Tensor& hessian, const QuantShape& s, double damp) {
  const int64_t K = s.in_features, Kp = s.groups * s.group_size;
  at::Tensor H = at::zeros({Kp, Kp}, hessian.options().dtype(at::kDouble));
  H.narrow(0, 0, K).narrow(1, 0, K).copy_(hessian);
  double* h = H.data_ptr<double>();
  double mean_diag = 0.0;
  for (int64_t i = 0; i < K; ++i) mean_diag += h[i * Kp + i];
  mean_diag /= K;
  for (int64_t i = 0; i < Kp; ++i) {
    if (h[i * Kp + i] == 0.0) h[i * Kp + i] = mean_diag > 0 ? mean_diag : 1.0;
  }
  if (!(mean_diag > 0)) mean_diag = 1.0;
  for (int attempt = 0; attempt < 7; ++attempt, damp = std::max(damp, 1e-4) * 10) {
    at::Tensor damped = H.clone();
    double* d = damped.data_ptr<double>();
    for (int64_t i = 0; i < Kp; ++i) d[i * Kp + i] += damp * mean_diag;
    auto [L, info] = at::linalg_cholesky_ex(damped);
    if (info.item<int>() != 0) continue;
    auto [U, info2] = at::linalg_cholesky_ex(at::cholesky_inverse(L), /*upper=*/true);
    if (info2.item<int>() != 0) continue;
    return U.to(at::kFloat).contiguous();
  }
  TORCH_CHECK(false, kOp, ": hessian is not positive semi-definite (Cholesky failed even with heavy damping)");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_gptq_host(
    const at::Tensor& weight, const at::Tensor& hessian, int64_t group_size, int64_t num_4bit_groups,
    const std::string& select, double damp) {
  const Select how = parse_select(select, kOp);
  at::Tensor w;
  const QuantShape s = prepare_weight(weight, group_size, num_4bit_groups, kOp, &w);
  const int64_t K = s.in_features, Kp = s.groups * s.group_size, N = s.out_features;
  TORCH_CHECK(hessian.dim() == 2 && hessian.size(0) == K && hessian.size(1) == K, kOp,
              ": hessian must be [in_features, in_features] = [", K, ", ", K, "], got ", hessian.sizes());
  TORCH_CHECK(at::isFloatingType(hessian.scalar_type()), kOp, ": hessian must be floating point, got ",
              hessian.scalar_type());
  TORCH_CHECK(hessian.device() == weight.device(), kOp, ": hessian is on ", hessian.device(), " but weight is on ",
              weight.device());
  TORCH_CHECK(std::isfinite(damp) && damp >= 0.0 && damp <= 1.0, kOp, ": damp must be in [0, 1], got ", damp);
  const at::Tensor h64 = hessian.to(at::kDouble).contiguous();
  const double* hd = h64.data_ptr<double>();
  bool finite = true;
  for (int64_t i = 0; i < K * K; ++i) finite &= std::isfinite(hd[i]);
  TORCH_CHECK(finite, kOp, ": hessian contains NaN or Inf");
  at::Tensor diag = at::zeros({K}, weight.options());
  for (int64_t i = 0; i < K; ++i) {
    TORCH_CHECK(hd[i * K + i] >= 0.0, kOp, ": hessian has a negative diagonal entry at ", i);
    diag.data_ptr<float>()[i] = static_cast<float>(hd[i * K + i]);
  }
  const at::Tensor imp = prepare_importance(diag, s, kOp);
  const float* idata = imp.defined() ? imp.data_ptr<float>() : nullptr;
  const at::Tensor U = inverse_hessian_factor(h64, s, damp);
  const float* u = U.data_ptr<float>();

  const PackedOutputs out = allocate_outputs(s, weight.options());
  float* wdata = w.data_ptr<float>();
  std::vector<RowPlan> plans(N);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) plans[r] = choose_4bit_groups(s, wdata + r * Kp, idata, how, row_outputs(s, out, r));
  });

  at::Tensor errors = at::zeros({N, kQuantSuperBlock}, w.options());
  float* edata = errors.data_ptr<float>();
  std::string error;
  std::mutex error_mutex;
  for (int64_t sb = 0; sb < s.super_blocks; ++sb) {
    const int64_t b0 = sb * kQuantSuperBlock, b1 = std::min(b0 + kQuantSuperBlock, Kp), real_end = std::min(b1, K);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* row = wdata + r * Kp;
        float* err = edata + r * kQuantSuperBlock;
        const RowOutputs ro = row_outputs(s, out, r);
        try {
          // Earlier super-blocks' feedback moved the row: fit afresh.
          fit_super_block(s, sb, row, idata, plans[r], ro, /*reuse_plan_fits=*/false);
        } catch (const std::range_error& e) {
          std::lock_guard<std::mutex> lock(error_mutex);
          error = e.what();
          continue;
        }
        for (int64_t i = b0; i < b1; ++i) {
          if (i >= real_end) {
            err[i - b0] = 0.0f;
            continue;
          }
          if (i > b0 && i % s.group_size == 0) refit_group(s, i / s.group_size, row, idata, plans[r], ro);
          const float dq = quantize_and_store(s, plans[r], ro, i, row[i]);
          const float e = (row[i] - dq) / u[i * Kp + i];
          err[i - b0] = e;
          const float* ui = u + i * Kp;
          for (int64_t j = i + 1; j < b1; ++j) row[j] -= e * ui[j];
        }
      }
    });
    TORCH_CHECK(error.empty(), kOp, ": ", error);
    if (b1 < Kp) {
      const int64_t width = b1 - b0;
      w.narrow(1, b1, Kp - b1).sub_(at::mm(errors.narrow(1, 0, width), U.narrow(0, b0, width).narrow(1, b1, Kp - b1)));
    }
  }
  return {out.lo, pack_high_plane(s, out.hi_raw), out.hi_groups, out.scales, out.super_scales};
}

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quantize_weight_gptq", &quantize_weight_gptq_host); }

}  // namespace lmkernels
