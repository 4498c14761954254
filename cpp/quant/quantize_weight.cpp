// quantize_weight: round-to-nearest mixed 2/4-bit quantization of a [N, K] weight into the
// format of quant_format.h, one row per task in parallel.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/group_fit.h"
#include "quant/quant_checks.h"
#include "quant/quant_format.h"
#include "quant/quantize_weight.h"

namespace lmkernels {
namespace {

enum class Select { kRange, kError };

Select parse_select(const std::string& select) {
  if (select == "range") return Select::kRange;
  if (select == "error") return Select::kError;
  TORCH_CHECK(false, "quantize_weight: select must be 'range' or 'error', got '", select, "'");
}

bool all_finite(const float* x, int64_t n, bool non_negative) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]) && (!non_negative || x[i] >= 0.0f);
  return ok;
}

struct RowOutputs {
  uint8_t* lo;
  uint8_t* hi_raw;  // [hi_units, 32], one code per byte (rows share high-plane quads)
  int16_t* hi_groups;
  uint8_t* scales;
  uint16_t* super_scales;
};

// How much a group gains from 4 bits: its range, or the squared error 4 bits removes.
double group_priority(const float* w, const float* importance, int n, Select select) {
  if (select == Select::kRange) {
    const auto [lo, hi] = std::minmax_element(w, w + n);
    return double(*hi) - double(*lo);
  }
  const double e2 = group_sse(w, importance, n, 3, fit_group(w, importance, n, 3));
  const double e4 = group_sse(w, importance, n, 15, fit_group(w, importance, n, 15));
  return e2 - e4;
}

void quantize_row(const QuantShape& s, const float* row, const float* importance, Select select,
                  const RowOutputs& out) {
  const int64_t G = s.groups, g = s.group_size;
  auto real = [&](int64_t group) { return static_cast<int>(std::min(g, s.in_features - group * g)); };

  std::vector<int64_t> order(G);
  std::iota(order.begin(), order.end(), 0);
  if (s.num_hi > 0 && s.num_hi < G) {
    std::vector<double> priority(G);
    for (int64_t i = 0; i < G; ++i) {
      priority[i] = group_priority(row + i * g, importance ? importance + i * g : nullptr, real(i), select);
    }
    // Highest priority first; ties go to the lower group index so the choice is deterministic.
    std::partial_sort(order.begin(), order.begin() + s.num_hi, order.end(), [&](int64_t a, int64_t b) {
      return priority[a] != priority[b] ? priority[a] > priority[b] : a < b;
    });
    std::sort(order.begin(), order.begin() + s.num_hi);
  }
  std::vector<int> qmax(G, 3);
  for (int64_t j = 0; j < s.num_hi; ++j) {
    qmax[order[j]] = 15;
    out.hi_groups[j] = static_cast<int16_t>(order[j]);
  }

  std::vector<GroupFit> fits(G);
  std::vector<const float*> wptr(G), iptr(G);
  std::vector<int> nreal(G);
  for (int64_t i = 0; i < G; ++i) {
    wptr[i] = row + i * g;
    iptr[i] = importance ? importance + i * g : nullptr;
    nreal[i] = real(i);
    fits[i] = fit_group(wptr[i], iptr[i], nreal[i], qmax[i]);
  }
  const int64_t groups_per_super = kQuantSuperBlock / g;
  for (int64_t sb = 0; sb < s.super_blocks; ++sb) {
    const int64_t first = sb * groups_per_super, count = std::min(groups_per_super, G - first);
    quantize_super_block(wptr.data() + first, iptr.data() + first, nreal.data() + first, qmax.data() + first,
                         fits.data() + first, static_cast<int>(count), out.super_scales + 2 * sb, out.scales + first);
  }

  int64_t hi_rank = 0;
  for (int64_t i = 0; i < G; ++i) {
    const GroupScale gs = decode_group_scale(out.scales[i], out.super_scales + 2 * super_block_of_group(i, s.units_per_group));
    const bool is_hi = hi_rank < s.num_hi && out.hi_groups[hi_rank] == i;
    for (int k = 0; k < nreal[i]; ++k) {
      const int q = group_code(wptr[i][k], qmax[i], {gs.scale, gs.min});
      const int64_t unit = i * s.units_per_group + k / kQuantUnit;
      set_unit_code(out.lo, unit, k % kQuantUnit, q & 3);
      if (is_hi) {
        out.hi_raw[(hi_rank * s.units_per_group + k / kQuantUnit) * kQuantUnit + k % kQuantUnit] =
            static_cast<uint8_t>(q >> 2);
      }
    }
    hi_rank += is_hi;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_weight_host(
    const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const std::string& select,
    const std::optional<at::Tensor>& importance) {
  TORCH_CHECK(weight.dim() == 2, "quantize_weight: weight must be [out_features, in_features], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "quantize_weight: weight must be float32 here, got ", weight.scalar_type());
  check_group_size(group_size, "quantize_weight");
  const Select how = parse_select(select);
  const QuantShape s = make_quant_shape(weight.size(0), weight.size(1), group_size, num_4bit_groups);
  TORCH_CHECK(s.in_features > 0, "quantize_weight: in_features must be positive");
  TORCH_CHECK(num_4bit_groups >= 0 && num_4bit_groups <= s.groups, "quantize_weight: num_4bit_groups must be in [0, ",
              s.groups, "], got ", num_4bit_groups);
  TORCH_CHECK(s.groups <= 32767, "quantize_weight: in_features / group_size must fit int16 group indices, got ", s.groups);

  // Groups read whole: pad K with zeros (the padded weights are never fitted).
  const int64_t padded_k = s.groups * group_size;
  at::Tensor w = at::zeros({s.out_features, padded_k}, weight.options());
  w.narrow(1, 0, s.in_features).copy_(weight);
  TORCH_CHECK(all_finite(w.data_ptr<float>(), w.numel(), /*non_negative=*/false), "quantize_weight: weight contains NaN or Inf");
  at::Tensor imp;
  if (importance.has_value()) {
    const at::Tensor& given = *importance;
    TORCH_CHECK(given.dim() == 1 && given.size(0) == s.in_features,
                "quantize_weight: importance must be [in_features] = [", s.in_features, "], got ", given.sizes());
    imp = at::zeros({padded_k}, weight.options());
    imp.narrow(0, 0, s.in_features).copy_(given);
    TORCH_CHECK(all_finite(imp.data_ptr<float>(), imp.numel(), /*non_negative=*/true),
                "quantize_weight: importance must be finite and non-negative");
    // A floor keeps zero-importance columns fitted (else any grid is "optimal" for them);
    // all-zero importance means no preference: uniform.
    float* values = imp.data_ptr<float>();
    const double mean = std::accumulate(values, values + s.in_features, 0.0) / s.in_features;
    if (mean > 0) {
      for (int64_t k = 0; k < s.in_features; ++k) values[k] += static_cast<float>(1e-3 * mean);
    } else {
      imp = at::Tensor();
    }
  }

  const auto u8 = weight.options().dtype(at::kByte);
  at::Tensor lo = at::zeros({s.out_features, s.lo_stride}, u8);
  at::Tensor hi_raw = at::zeros({s.out_features * s.hi_units, kQuantUnit}, u8);
  at::Tensor hi_groups = at::empty({s.out_features, s.num_hi}, weight.options().dtype(at::kShort));
  at::Tensor scales = at::zeros({s.out_features, s.groups}, u8);
  at::Tensor super_scales = at::zeros({s.out_features, s.super_blocks, 2}, weight.options().dtype(at::kHalf));

  const float* wdata = w.data_ptr<float>();
  const float* idata = imp.defined() ? imp.data_ptr<float>() : nullptr;
  std::string error;
  std::mutex error_mutex;
  at::parallel_for(0, s.out_features, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      RowOutputs out{lo.data_ptr<uint8_t>() + r * s.lo_stride, hi_raw.data_ptr<uint8_t>() + r * s.hi_units * kQuantUnit,
                     hi_groups.data_ptr<int16_t>() + r * s.num_hi, scales.data_ptr<uint8_t>() + r * s.groups,
                     reinterpret_cast<uint16_t*>(super_scales.data_ptr<at::Half>()) + r * s.super_blocks * 2};
      try {
        quantize_row(s, wdata + r * padded_k, idata, how, out);
      } catch (const std::range_error& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        error = e.what();
      }
    }
  });
  TORCH_CHECK(error.empty(), error);

  // Pack the high plane quad by quad, so no two threads write one byte.
  at::Tensor hi = at::zeros({s.hi_quads, kQuantQuadBytes}, u8);
  const int64_t total_hi_units = s.out_features * s.hi_units;
  const uint8_t* raw = hi_raw.data_ptr<uint8_t>();
  uint8_t* plane = hi.data_ptr<uint8_t>();
  at::parallel_for(0, s.hi_quads, 256, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin * kQuantQuadUnits; unit < std::min(end * kQuantQuadUnits, total_hi_units); ++unit) {
      for (int i = 0; i < kQuantUnit; ++i) set_unit_code(plane, unit, i, raw[unit * kQuantUnit + i]);
    }
  });
  return {lo, hi, hi_groups, scales, super_scales};
}

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("quantize_weight", &quantize_weight_host); }

}  // namespace lmkernels
