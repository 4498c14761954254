// quantize_weight: round-to-nearest mixed 2/4-bit quantization of a [N, K] weight into the
// format of quant_format.h, one row per task in parallel.
#include "quant/quantize_weight.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "quant/quantize_row.h"

namespace lmkernels {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_host(
    const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const std::string& select,
    const std::optional<at::Tensor>& importance) {
  constexpr const char* op = "quantize_weight";
  const Select how = parse_select(select, op);
  at::Tensor w;
  const QuantShape s = prepare_weight(weight, group_size, num_4bit_groups, op, &w);
  const at::Tensor imp = prepare_importance(importance, s, op);
  const PackedOutputs out = allocate_outputs(s, weight.options());

  const float* wdata = w.data_ptr<float>();
  const float* idata = imp.defined() ? imp.data_ptr<float>() : nullptr;
  const int64_t padded_k = s.groups * s.group_size;
  std::string error;
  std::mutex error_mutex;
  at::parallel_for(0, s.out_features, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = wdata + r * padded_k;
      const RowOutputs ro = row_outputs(s, out, r);
      try {
        const RowPlan plan = choose_4bit_groups(s, row, idata, how, ro);
        for (int64_t sb = 0; sb < s.super_blocks; ++sb) fit_super_block(s, sb, row, idata, plan, ro, /*reuse_plan_fits=*/true);
        quantize_and_store_row(s, plan, ro, row);
      } catch (const std::range_error& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        error = e.what();
      }
    }
  });
  TORCH_CHECK(error.empty(), op, ": ", error);
  return {out.lo, pack_high_plane(s, out.hi_raw), out.hi_groups, out.scales, out.super_scales};
}

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quantize_weight", &quantize_weight_host); }

}  // namespace lmkernels
