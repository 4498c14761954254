// Rotary position embedding (RoPE) math shared by the CPU paths and CUDA.
//
// A head vector of `head_dim` values has its first `rotary_dim` values rotated in
// `rotary_dim / 2` pairs; pair i turns by angle pos * inv_freq[i]:
//   NeoX / Llama ("half split"):  pair i = (i, i + rotary_dim/2)
//   GPT-J ("interleaved"):        pair i = (2i, 2i + 1)
// Re-rotating a cached key from position p to q is one rotation by (q - p) * inv_freq[i],
// since rotations of one pair compose; values past rotary_dim are untouched.
#pragma once

#include <cmath>
#include <cstdint>

#include "lmkernels/common.h"

namespace lmkernels::rope {

// The rotation angle of a shift by `delta` positions, in double: a shift of 1e5 positions is
// ~1e5 rad, where fp32 would keep only ~4e-3 rad. No reduction by 2*pi here: libm's and
// CUDA's sin/cos reduce exactly for any magnitude, a hand-written reduction does not.
LMK_INLINE LMK_HOST_DEVICE double delta_angle(int64_t delta, float inv_freq) {
  return static_cast<double>(delta) * static_cast<double>(inv_freq);
}

// (x, y) <- (x c - y s, y c + x s). The fma and its operand order are fixed here and copied
// exactly by the SIMD paths, so every CPU path and CUDA give the same bits.
LMK_INLINE LMK_HOST_DEVICE void rotate_pair(float& x, float& y, float c, float s) {
  const float xs = x * s;
  const float ys = y * s;
  const float new_x = fmaf(x, c, -ys);
  const float new_y = fmaf(y, c, xs);
  x = new_x;
  y = new_y;
}

// Offsets within a head vector of the two members of pair i.
LMK_INLINE LMK_HOST_DEVICE int pair_first(int i, int rotary_dim, bool neox) {
  return neox ? i : 2 * i;
}
LMK_INLINE LMK_HOST_DEVICE int pair_second(int i, int rotary_dim, bool neox) {
  return neox ? i + rotary_dim / 2 : 2 * i + 1;
}

// cos/sin of the rotation by `delta` for each of the `rotary_dim / 2` pairs, laid out for
// the SIMD loops:
//   neox:  cos_out[i], sin_out[i] for pair i (length rotary_dim / 2 each);
//   gpt-j: cos_out[2i] = cos_out[2i+1] = c_i, sin_out[2i] = -s_i, sin_out[2i+1] = s_i
//          (length rotary_dim each), so one vector op rotates interleaved pairs in place.
LMK_INLINE void fill_delta_table(int64_t delta, const float* inv_freq, int rotary_dim, bool neox,
                                 float* cos_out, float* sin_out) {
  const int half = rotary_dim / 2;
  for (int i = 0; i < half; ++i) {
    double sin_d, cos_d;
    ::sincos(delta_angle(delta, inv_freq[i]), &sin_d, &cos_d);  // one glibc call for both
    const float c = static_cast<float>(cos_d);
    const float s = static_cast<float>(sin_d);
    if (neox) {
      cos_out[i] = c;
      sin_out[i] = s;
    } else {
      cos_out[2 * i] = c;
      cos_out[2 * i + 1] = c;
      sin_out[2 * i] = -s;
      sin_out[2 * i + 1] = s;
    }
  }
}

#if defined(__CUDACC__)
// The threads of a CUDA block fill cos[half], sin[half] (neox layout) for one shift; the
// caller synchronizes before reading.
__device__ static inline void block_fill_delta_table(int64_t delta, const float* inv_freq, int half,
                                                     float* table) {
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    double s, c;
    sincos(delta_angle(delta, inv_freq[i]), &s, &c);
    table[i] = static_cast<float>(c);
    table[half + i] = static_cast<float>(s);
  }
}
#endif

// Floats of scratch a table for `rotary_dim` needs (cos and sin together).
LMK_INLINE LMK_HOST_DEVICE int delta_table_floats(int rotary_dim) { return 2 * rotary_dim; }

}  // namespace lmkernels::rope
