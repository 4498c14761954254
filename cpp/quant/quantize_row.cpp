// Row-level pieces of the host quantizers (see quantize_row.h).
#include "quant/quantize_row.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "quant/group_fit.h"
#include "quant/quant_checks.h"

namespace lmkernels {
namespace {

bool all_finite(const float* x, int64_t n, bool non_negative) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(x[i]) && (!non_negative || x[i] >= 0.0f);
  return ok;
}

int real_in_group(const QuantShape& s, int64_t group) {
  return static_cast<int>(std::min(s.group_size, s.in_features - group * s.group_size));
}

// How much a group gains from 4 bits: its range, or the squared error 4 bits removes (the
// two fits it takes are kept in fit2 and fit4).
double group_priority(const float* w, const float* importance, int n, Select select, GroupFit* fit2, GroupFit* fit4) {
  if (select == Select::kRange) {
    const auto [lo, hi] = std::minmax_element(w, w + n);
    return double(*hi) - double(*lo);
  }
  *fit2 = fit_group(w, importance, n, 3);
  *fit4 = fit_group(w, importance, n, 15);
  return group_sse(w, importance, n, 3, *fit2) - group_sse(w, importance, n, 15, *fit4);
}

}  // namespace

Select parse_select(const std::string& select, const char* op) {
  if (select == "range") return Select::kRange;
  if (select == "error") return Select::kError;
  TORCH_CHECK(false, op, ": select must be 'range' or 'error', got '", select, "'");
}

QuantShape prepare_weight(const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const char* op,
                          at::Tensor* w_padded) {
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be [out_features, in_features], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, op, ": weight must be float32 here, got ", weight.scalar_type());
  check_group_size(group_size, op);
  TORCH_CHECK(weight.size(1) > 0, op, ": in_features must be positive");
  const int64_t groups = (weight.size(1) + group_size - 1) / group_size;
  TORCH_CHECK(num_4bit_groups >= 0 && num_4bit_groups <= groups, op, ": num_4bit_groups must be in [0, ", groups,
              "], got ", num_4bit_groups);
  TORCH_CHECK(groups <= 32767, op, ": in_features / group_size must fit int16 group indices, got ", groups);
  const QuantShape s = make_quant_shape(weight.size(0), weight.size(1), group_size, num_4bit_groups);
  // Groups read whole: pad K with zeros (the padded weights are never fitted).
  *w_padded = at::zeros({s.out_features, s.groups * group_size}, weight.options());
  w_padded->narrow(1, 0, s.in_features).copy_(weight);
  TORCH_CHECK(all_finite(w_padded->data_ptr<float>(), w_padded->numel(), /*non_negative=*/false), op,
              ": weight contains NaN or Inf");
  return s;
}

at::Tensor prepare_importance(const std::optional<at::Tensor>& importance, const QuantShape& s, const char* op) {
  if (!importance.has_value()) return at::Tensor();
  const at::Tensor& given = *importance;
  TORCH_CHECK(given.dim() == 1 && given.size(0) == s.in_features, op, ": importance must be [in_features] = [",
              s.in_features, "], got ", given.sizes());
  at::Tensor imp = at::zeros({s.groups * s.group_size}, given.options().dtype(at::kFloat));
  imp.narrow(0, 0, s.in_features).copy_(given);
  float* values = imp.data_ptr<float>();
  TORCH_CHECK(all_finite(values, imp.numel(), /*non_negative=*/true), op,
              ": importance must be finite and non-negative");
  // A floor keeps zero-importance columns fitted (else any grid is "optimal" for them);
  // all-zero importance means no preference: uniform.
  const double mean = std::accumulate(values, values + s.in_features, 0.0) / s.in_features;
  if (!(mean > 0)) return at::Tensor();
  for (int64_t k = 0; k < s.in_features; ++k) values[k] += static_cast<float>(1e-3 * mean);
  return imp;
}

PackedOutputs allocate_outputs(const QuantShape& s, const at::TensorOptions& float_options) {
  const auto u8 = float_options.dtype(at::kByte);
  return {at::zeros({s.out_features, s.lo_stride}, u8), at::zeros({s.out_features * s.hi_units, kQuantUnit}, u8),
          at::zeros({s.out_features, s.num_hi}, float_options.dtype(at::kShort)),
          at::zeros({s.out_features, s.groups}, u8),
          at::zeros({s.out_features, s.super_blocks, 2}, float_options.dtype(at::kHalf))};
}

RowOutputs row_outputs(const QuantShape& s, const PackedOutputs& out, int64_t r) {
  return {out.lo.data_ptr<uint8_t>() + r * s.lo_stride, out.hi_raw.data_ptr<uint8_t>() + r * s.hi_units * kQuantUnit,
          out.hi_groups.data_ptr<int16_t>() + r * s.num_hi, out.scales.data_ptr<uint8_t>() + r * s.groups,
          reinterpret_cast<uint16_t*>(out.super_scales.data_ptr<at::Half>()) + r * s.super_blocks * 2};
}

RowPlan choose_4bit_groups(const QuantShape& s, const float* row, const float* importance, Select select,
                           const RowOutputs& out) {
  const int64_t G = s.groups, g = s.group_size;
  std::vector<int64_t> order(G);
  std::iota(order.begin(), order.end(), 0);
  std::vector<GroupFit> fit2, fit4;
  if (s.num_hi > 0 && s.num_hi < G) {
    std::vector<double> priority(G);
    if (select == Select::kError) {
      fit2.resize(G);
      fit4.resize(G);
    }
    for (int64_t i = 0; i < G; ++i) {
      priority[i] = group_priority(row + i * g, importance ? importance + i * g : nullptr, real_in_group(s, i), select,
                                   fit2.empty() ? nullptr : &fit2[i], fit4.empty() ? nullptr : &fit4[i]);
    }
    // Highest priority first; ties go to the lower group index so the choice is deterministic.
    std::partial_sort(order.begin(), order.begin() + s.num_hi, order.end(), [&](int64_t a, int64_t b) {
      return priority[a] != priority[b] ? priority[a] > priority[b] : a < b;
    });
    std::sort(order.begin(), order.begin() + s.num_hi);
  }
  RowPlan plan{std::vector<int>(G, 3), std::vector<int64_t>(G, -1), {}};
  for (int64_t j = 0; j < s.num_hi; ++j) {
    plan.qmax[order[j]] = 15;
    plan.hi_rank[order[j]] = j;
    out.hi_groups[j] = static_cast<int16_t>(order[j]);
  }
  if (!fit2.empty()) {
    plan.fits.resize(G);
    for (int64_t i = 0; i < G; ++i) plan.fits[i] = plan.qmax[i] == 15 ? fit4[i] : fit2[i];
  }
  return plan;
}

void fit_super_block(const QuantShape& s, int64_t sb, const float* row, const float* importance, const RowPlan& plan,
                     const RowOutputs& out, bool reuse_plan_fits) {
  const int64_t g = s.group_size, per_super = kQuantSuperBlock / g;
  const int64_t first = sb * per_super, count = std::min(per_super, s.groups - first);
  std::vector<GroupFit> fits(count);
  std::vector<const float*> wptr(count), iptr(count);
  std::vector<int> nreal(count);
  for (int64_t i = 0; i < count; ++i) {
    wptr[i] = row + (first + i) * g;
    iptr[i] = importance ? importance + (first + i) * g : nullptr;
    nreal[i] = real_in_group(s, first + i);
    fits[i] = reuse_plan_fits && !plan.fits.empty() ? plan.fits[first + i]
                                                     : fit_group(wptr[i], iptr[i], nreal[i], plan.qmax[first + i]);
  }
  quantize_super_block(wptr.data(), iptr.data(), nreal.data(), plan.qmax.data() + first, fits.data(),
                       static_cast<int>(count), out.super_scales + 2 * sb, out.scales + first);
}

void refit_group(const QuantShape& s, int64_t group, const float* row, const float* importance, const RowPlan& plan,
                 const RowOutputs& out) {
  const float* w = row + group * s.group_size;
  const float* imp = importance ? importance + group * s.group_size : nullptr;
  const int n = real_in_group(s, group), qmax = plan.qmax[group];
  const uint16_t* pair = out.super_scales + 2 * super_block_of_group(group, s.units_per_group);
  out.scales[group] = scale_codes_for(w, imp, n, qmax, fit_group(w, imp, n, qmax), f16_to_f32(pair[0]),
                                      f16_to_f32(pair[1]));
}

namespace {

// Where a group's codes go: its grid, decoded once, and its slot in the high plane.
struct GroupStore {
  GroupFit fit;
  int qmax;
  int64_t hi_first_unit;  // -1 for a 2-bit group
};

GroupStore group_store(const QuantShape& s, const RowPlan& plan, const RowOutputs& out, int64_t group) {
  const GroupScale gs =
      decode_group_scale(out.scales[group], out.super_scales + 2 * super_block_of_group(group, s.units_per_group));
  const int64_t rank = plan.hi_rank[group];
  return {{gs.scale, gs.min}, plan.qmax[group], rank >= 0 ? rank * s.units_per_group : -1};
}

float store_code(const QuantShape& s, const RowOutputs& out, const GroupStore& g, int64_t k, float w) {
  const int q = group_code(w, g.qmax, g.fit);
  set_unit_code(out.lo, k / kQuantUnit, static_cast<int>(k % kQuantUnit), q & 3);
  if (g.hi_first_unit >= 0) {
    const int64_t unit = g.hi_first_unit + (k % s.group_size) / kQuantUnit;
    out.hi_raw[unit * kQuantUnit + k % kQuantUnit] = static_cast<uint8_t>(q >> 2);
  }
  return g.fit.scale * static_cast<float>(q) - g.fit.min;
}

}  // namespace

float quantize_and_store(const QuantShape& s, const RowPlan& plan, const RowOutputs& out, int64_t k, float w) {
  return store_code(s, out, group_store(s, plan, out, k / s.group_size), k, w);
}

void quantize_and_store_row(const QuantShape& s, const RowPlan& plan, const RowOutputs& out, const float* row) {
  for (int64_t group = 0; group < s.groups; ++group) {
    const GroupStore g = group_store(s, plan, out, group);
    const int64_t end = std::min((group + 1) * s.group_size, s.in_features);
    for (int64_t k = group * s.group_size; k < end; ++k) store_code(s, out, g, k, row[k]);
  }
}

at::Tensor pack_high_plane(const QuantShape& s, const at::Tensor& hi_raw) {
  at::Tensor hi = at::zeros({s.hi_quads, kQuantQuadBytes}, hi_raw.options());
  const int64_t total_hi_units = s.out_features * s.hi_units;
  const uint8_t* raw = hi_raw.data_ptr<uint8_t>();
  uint8_t* plane = hi.data_ptr<uint8_t>();
  at::parallel_for(0, s.hi_quads, 256, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin * kQuantQuadUnits; unit < std::min(end * kQuantQuadUnits, total_hi_units); ++unit) {
      for (int i = 0; i < kQuantUnit; ++i) set_unit_code(plane, unit, i, raw[unit * kQuantUnit + i]);
    }
  });
  return hi;
}

}  // namespace lmkernels
