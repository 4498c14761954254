// Group fitting for the quantizers (see group_fit.h).
#include "quant/group_fit.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "lmkernels/dtype.h"

namespace lmkernels {

int group_code(float w, int qmax, GroupFit fit) {
  if (!(fit.scale > 0.0f)) return 0;
  const float q = std::nearbyint((w + fit.min) / fit.scale);
  return static_cast<int>(std::clamp(q, 0.0f, static_cast<float>(qmax)));
}

double group_sse(const float* w, const float* weight, int n, int qmax, GroupFit fit) {
  double sse = 0.0;
  for (int i = 0; i < n; ++i) {
    const double diff = double(fit.scale) * group_code(w[i], qmax, fit) - fit.min - w[i];
    sse += (weight ? weight[i] : 1.0) * diff * diff;
  }
  return sse;
}

GroupFit fit_group(const float* w, const float* weight, int n, int qmax) {
  float lo = 0.0f, hi = -INFINITY;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  // Codes start at -min <= 0 (the min is stored unsigned), as in k-quants.
  if (!(hi > lo)) return {0.0f, -lo};
  GroupFit best{(hi - lo) / qmax, -lo};
  double best_sse = group_sse(w, weight, n, qmax, best);
  // Candidate ranges around the full one (ggml's make_qkx2_quants grid), each refined by a
  // weighted least-squares solve for (scale, offset) given the codes it rounds to.
  const float rmin = qmax <= 3 ? -0.5f : -1.0f, rdelta = 0.1f;
  const int steps = qmax <= 3 ? 15 : 20;
  for (int step = 0; step <= steps; ++step) {
    const float iscale = (rmin + rdelta * step + qmax) / (hi - lo);
    double sw = 0, sq = 0, sq2 = 0, sx = 0, sqx = 0;
    for (int i = 0; i < n; ++i) {
      const float q = std::clamp(std::nearbyint(iscale * (w[i] - lo)), 0.0f, static_cast<float>(qmax));
      const double wi = weight ? weight[i] : 1.0;
      sw += wi;
      sq += wi * q;
      sq2 += wi * q * q;
      sx += wi * w[i];
      sqx += wi * q * w[i];
    }
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
    const double sse = group_sse(w, weight, n, qmax, candidate);
    if (sse < best_sse) {
      best_sse = sse;
      best = candidate;
    }
  }
  return best;
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
