// Group fitting for the quantizers (see group_fit.h).
#include "quant/group_fit.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>

#include "lmkernels/dtype.h"

namespace lmkernels {

namespace {

// Sums run over kLanes interleaved partial sums in float, added up in a fixed order at the end:
// each lane is a plain loop the compiler vectorizes (no reassociation is left to it, so the
// bits do not depend on the vector width). With double sums and a libm nearbyint per weight the
// whole quantizer ran at 12 Mweights/s for a 4096x14336 weight on 2 threads, 29 with these fits.
constexpr int kLanes = 8;

// Sums of term(i) = {t_0, .., t_{S-1}} over i in [0, n): whole rounds of kLanes into lane
// i % kLanes, the rest into one more partial sum.
template <int S, class Term>
inline std::array<double, S> lane_sums(int n, Term term) {
  float acc[S][kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const std::array<float, S> t = term(i + l);
      for (int k = 0; k < S; ++k) acc[k][l] += t[k];
    }
  }
  std::array<float, S> rest{};
  for (; i < n; ++i) {
    const std::array<float, S> t = term(i);
    for (int k = 0; k < S; ++k) rest[k] += t[k];
  }
  std::array<double, S> total{};
  for (int k = 0; k < S; ++k) {
    for (int l = 0; l < kLanes; ++l) total[k] += acc[k][l];
    total[k] += rest[k];
  }
  return total;
}

template <bool kWeighted>
double group_sse_impl(const float* w, const float* weight, int n, float qmax, GroupFit fit) {
  const float scale = fit.scale, min = fit.min;
  if (scale > 0.0f) {
    return lane_sums<1>(n, [&](int i) {
      const float diff = scale * clamped_code((w[i] + min) / scale, qmax) - min - w[i];
      return std::array<float, 1>{(kWeighted ? weight[i] : 1.0f) * diff * diff};
    })[0];
  }
  return lane_sums<1>(n, [&](int i) {
    const float diff = -min - w[i];
    return std::array<float, 1>{(kWeighted ? weight[i] : 1.0f) * diff * diff};
  })[0];
}

template <bool kWeighted>
GroupFit fit_group_impl(const float* w, const float* weight, int n, int qmax) {
  float lo = 0.0f, hi = -INFINITY;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  // Codes start at -min <= 0 (the min is stored unsigned), as in k-quants.
  if (!(hi > lo)) return {0.0f, -lo};
  const float fqmax = static_cast<float>(qmax);
  GroupFit best{(hi - lo) / qmax, -lo};
  double best_sse = group_sse_impl<kWeighted>(w, weight, n, fqmax, best);
  const auto [sw, sx] = lane_sums<2>(n, [&](int i) {
    const float wi = kWeighted ? weight[i] : 1.0f;
    return std::array<float, 2>{wi, wi * w[i]};
  });
  // Candidate ranges around the full one (ggml's make_qkx2_quants grid), each refined by a
  // weighted least-squares solve for (scale, offset) given the codes it rounds to.
  const float rmin = qmax <= 3 ? -0.5f : -1.0f, rdelta = 0.1f;
  const int steps = qmax <= 3 ? 15 : 20;
  for (int step = 0; step <= steps; ++step) {
    const float iscale = (rmin + rdelta * step + qmax) / (hi - lo);
    const auto [sq, sq2, sqx] = lane_sums<3>(n, [&](int i) {
      const float q = clamped_code(iscale * (w[i] - lo), fqmax);
      const float wq = (kWeighted ? weight[i] : 1.0f) * q;
      return std::array<float, 3>{wq, wq * q, wq * w[i]};
    });
    const double det = sw * sq2 - sq * sq;
    if (!(det > 0)) continue;
    double scale = (sw * sqx - sq * sx) / det;
    double offset = (sq2 * sx - sq * sqx) / det;
    if (offset > 0) {  // the offset is stored as a non-negative min
      offset = 0;
      scale = sqx / sq2;
    }
    if (!(scale > 0)) continue;
    const GroupFit candidate{static_cast<float>(scale), static_cast<float>(-offset)};
    const double sse = group_sse_impl<kWeighted>(w, weight, n, fqmax, candidate);
    if (sse < best_sse) {
      best_sse = sse;
      best = candidate;
    }
  }
  return best;
}

}  // namespace

double group_sse(const float* w, const float* weight, int n, int qmax, GroupFit fit) {
  return weight ? group_sse_impl<true>(w, weight, n, static_cast<float>(qmax), fit)
                : group_sse_impl<false>(w, nullptr, n, static_cast<float>(qmax), fit);
}

GroupFit fit_group(const float* w, const float* weight, int n, int qmax) {
  return weight ? fit_group_impl<true>(w, weight, n, qmax) : fit_group_impl<false>(w, nullptr, n, qmax);
}

namespace {

// The fp16 step for codes 0..15 covering `max_value`, rounded to what fp16 stores.
float super_step(float max_value, uint16_t* f16) {
  const float step = max_value / 15.0f;
  if (step > 65504.0f) throw std::range_error("weights too large for fp16 super-block scales (|w| > ~1e6)");
  *f16 = f32_to_f16(step);
  return f16_to_f32(*f16);
}

}  // namespace

uint8_t scale_codes_for(const float* w, const float* importance, int n, int qmax, GroupFit fit, float d,
                        float dmin) {
  const float sc = d > 0 ? fit.scale / d : 0.0f;
  const float mc = dmin > 0 ? fit.min / dmin : 0.0f;
  int best_sc = 0, best_mc = 0;
  double best_sse = INFINITY;
  for (int s : {int(std::floor(sc)), int(std::ceil(sc))}) {
    for (int m : {int(std::floor(mc)), int(std::ceil(mc))}) {
      s = std::clamp(s, 0, 15);
      m = std::clamp(m, 0, 15);
      const double sse = group_sse(w, importance, n, qmax, {d * s, dmin * m});
      if (sse < best_sse) {
        best_sse = sse;
        best_sc = s;
        best_mc = m;
      }
    }
  }
  return static_cast<uint8_t>(best_sc | (best_mc << 4));
}

void quantize_super_block(const float* const* w, const float* const* importance, const int* n, const int* qmax,
                          const GroupFit* fits, int count, uint16_t* d_dmin_f16, uint8_t* packed_scales) {
  float max_scale = 0.0f, max_min = 0.0f;
  for (int g = 0; g < count; ++g) {
    max_scale = std::max(max_scale, fits[g].scale);
    max_min = std::max(max_min, fits[g].min);
  }
  const float d = super_step(max_scale, &d_dmin_f16[0]);
  const float dmin = super_step(max_min, &d_dmin_f16[1]);
  for (int g = 0; g < count; ++g) {
    packed_scales[g] = scale_codes_for(w[g], importance[g], n[g], qmax[g], fits[g], d, dmin);
  }
}

}  // namespace lmkernels
