// dequantize_weight on CPU: the packed format back to a float32 [N, K] weight.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "quant/quant_checks.h"

namespace lmkernels {
namespace {

at::Tensor dequantize_weight_cpu(const at::Tensor& codes_lo, const at::Tensor& codes_hi, const at::Tensor& hi_groups,
                                 const at::Tensor& scales, const at::Tensor& super_scales, int64_t in_features,
                                 int64_t group_size) {
  const QuantShape s = check_packed_weight({codes_lo, codes_hi, hi_groups, scales, super_scales}, in_features,
                                           group_size, "dequantize_weight");
  check_hi_groups_host(hi_groups, s.groups, "dequantize_weight");
  at::Tensor out = at::empty({s.out_features, s.in_features}, codes_lo.options().dtype(at::kFloat));
  const auto* lo = codes_lo.data_ptr<uint8_t>();
  const auto* hi = codes_hi.data_ptr<uint8_t>();
  const auto* hg = hi_groups.data_ptr<int16_t>();
  const auto* sc = scales.data_ptr<uint8_t>();
  const auto* ss = reinterpret_cast<const uint16_t*>(super_scales.data_ptr<at::Half>());
  float* dst = out.data_ptr<float>();
  // Unit by unit (32 weights of one group, one scale and min): the codes of a unit sit at a fixed
  // shift in 32 consecutive bytes, so the inner loops are straight-line and vectorize. Each
  // weight is scale * q - min, the float ops of dequantize_weight_at. (Element by element, with a
  // table per group, a 4096x4096 weight took 20 ms of compute on 2 threads.)
  at::parallel_for(0, s.out_features, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> rank(s.groups);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(rank.begin(), rank.end(), -1);
      for (int64_t j = 0; j < s.num_hi; ++j) rank[hg[r * s.num_hi + j]] = j;
      const uint8_t* lo_row = lo + r * s.lo_stride;
      const uint16_t* super_row = ss + r * s.super_blocks * 2;
      float* row = dst + r * s.in_features;
      for (int64_t g = 0; g < s.groups; ++g) {
        const GroupScale gs = decode_group_scale(sc[r * s.groups + g], super_row + 2 * super_block_of_group(g, s.units_per_group));
        const float scale = gs.scale, min = gs.min;
        const int64_t k_end = std::min((g + 1) * s.group_size, s.in_features);
        for (int64_t unit = g * s.units_per_group; unit * kQuantUnit < k_end; ++unit) {
          const uint8_t* lo_bytes = lo_row + unit / kQuantQuadUnits * kQuantQuadBytes;
          const int lo_shift = static_cast<int>(2 * (unit % kQuantQuadUnits));
          const int count = static_cast<int>(std::min<int64_t>(kQuantUnit, k_end - unit * kQuantUnit));
          float* out = row + unit * kQuantUnit;
          if (rank[g] < 0) {
            for (int i = 0; i < count; ++i) out[i] = scale * static_cast<float>((lo_bytes[i] >> lo_shift) & 3) - min;
            continue;
          }
          const int64_t hi_unit = r * s.hi_units + rank[g] * s.units_per_group + unit % s.units_per_group;
          const uint8_t* hi_bytes = hi + hi_unit / kQuantQuadUnits * kQuantQuadBytes;
          const int hi_shift = static_cast<int>(2 * (hi_unit % kQuantQuadUnits));
          for (int i = 0; i < count; ++i) {
            const int q = ((lo_bytes[i] >> lo_shift) & 3) + 4 * ((hi_bytes[i] >> hi_shift) & 3);
            out[i] = scale * static_cast<float>(q) - min;
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("dequantize_weight", &dequantize_weight_cpu); }

}  // namespace lmkernels
