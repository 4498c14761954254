// Fitting one asymmetric group w ~= scale * q - min, q in [0, qmax], and the second-order
// rounding of the fitted scales. Host code, used by the round-to-nearest and the
// error-feedback (GPTQ) quantizers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lmkernels {

struct GroupFit {
  float scale = 0.0f;  // >= 0
  float min = 0.0f;    // >= 0: the code 0 stands for -min
};

// Sum over i of weight[i] * (w[i] - dequantized w[i])^2 under (scale, min) with codes rounded
// to nearest and clamped; `weight` may be null (all ones).
double group_sse(const float* w, const float* weight, int n, int qmax, GroupFit fit);

// nearbyint in the default rounding mode (half to even) for |x| < 2^22, inlined (a libm call
// per weight dominated the fits): adding and removing 1.5 * 2^23 leaves no fraction bits.
#if defined(__FAST_MATH__)
#error "round_even needs IEEE float arithmetic: -ffast-math would fold (x + m) - m to x"
#endif
inline float round_even(float x) {
  constexpr float kMagic = 12582912.0f;
  return (x + kMagic) - kMagic;
}

// round(clamp(x)) equals clamp(round(x)) since the bounds are integers, and keeps the rounded
// value small.
inline float clamped_code(float x, float qmax) { return round_even(std::min(std::max(x, 0.0f), qmax)); }

// The code of w under (scale, min): round((w + min) / scale) clamped to [0, qmax], 0 when scale is 0.
inline int group_code(float w, int qmax, GroupFit fit) {
  if (!(fit.scale > 0.0f)) return 0;
  return static_cast<int>(clamped_code((w + fit.min) / fit.scale, static_cast<float>(qmax)));
}

// Least-squares fit over a grid of candidate ranges (the k-quants search), weighted by `weight`
// (null: uniform). A constant group gets scale 0 and reproduces its value exactly when <= 0.
GroupFit fit_group(const float* w, const float* weight, int n, int qmax);

// The packed scale | min << 4 codes (4 bits each, floor or ceil of fit / (d, dmin), whichever
// gives the smaller error) of one group under a super-block's decoded (d, dmin).
uint8_t scale_codes_for(const float* w, const float* importance, int n, int qmax, GroupFit fit, float d, float dmin);

// Second order: the fp16 pair (d, dmin) of one super-block's `count` fitted groups, and per
// group its scale and min codes (4 bits each, floor or ceil of the fit, whichever gives the
// smaller error), packed as scale | min << 4. Throws std::range_error if d overflows fp16.
// Group g has n[g] weights at w[g] with error weights importance[g] (null: uniform).
void quantize_super_block(const float* const* w, const float* const* importance, const int* n, const int* qmax,
                          const GroupFit* fits, int count, uint16_t* d_dmin_f16, uint8_t* packed_scales);

}  // namespace lmkernels
