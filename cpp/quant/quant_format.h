// The mixed 2/4-bit weight format, shared by the quantizer, dequantizer and matmul kernels
// on CPU and CUDA.
//
// A weight [N, K] is cut along K into groups of `group_size` (32, 64, 128 or 256) weights,
// the last one zero-padded. Each group is asymmetric: w ~= scale * q - min with q in
// [0, 3] (2-bit group) or [0, 15] (4-bit group). Every row has the same number of 4-bit
// groups (`num_hi`), so every row's streams have static sizes and offsets.
//
// The codes are split into bit planes instead of mixing widths in one stream:
//   codes_lo [N, lo_stride]: the low 2 bits of every weight, all groups, in order;
//   codes_hi [hi_quads, 32]: the high 2 bits of the 4-bit groups only, row after row in
//     hi_groups order with no padding between rows (row r's units start at r * num_hi * g/32);
//   hi_groups [N, num_hi] int16: each row's 4-bit group indices, ascending.
// So q = lo + 4 * hi, the dense 2-bit plane has no per-group branch or offset at all, and
// only a quarter of the groups take a second, indexed pass. The low plane's rows are whole
// 32-byte quads; the high plane is one run of quads (padding per row would cost up to 0.25 bit
// per weight on narrow layers).
//
// Units are stored four to a 32-byte quad: bits 2i..2i+1 of byte j hold weight j of unit
// 4q + i. A kernel loads a quad once and gets each unit's 32 codes in order, one per byte,
// with a shift by an immediate and a mask (cheap on every x86 core, unlike variable shifts).
//
// Scales are second order: scales[N, G] holds per group a 4-bit scale code (low nibble) and
// a 4-bit min code (high nibble), and super_scales[N, S, 2] fp16 holds (d, dmin) for each
// super-block of 256 weights (8 units), so scale = d * sc and min = dmin * mc.
#pragma once

#include <cmath>
#include <cstdint>

#include "lmkernels/common.h"
#include "lmkernels/dtype.h"

namespace lmkernels {

constexpr int kQuantUnit = 32;           // weights per unit (one SIMD step)
constexpr int kQuantUnitBytes = 8;       // bytes of 2-bit codes per unit
constexpr int kQuantQuadUnits = 4;       // units per 32-byte quad
constexpr int kQuantQuadBytes = 32;
constexpr int kQuantSuperUnits = 8;      // units per super-block
constexpr int kQuantSuperBlock = kQuantUnit * kQuantSuperUnits;

struct QuantShape {
  int64_t out_features = 0, in_features = 0;
  int64_t group_size = 0;
  int64_t groups = 0;          // G = ceil(K / group_size)
  int64_t units_per_group = 0; // group_size / 32
  int64_t units = 0;           // U = G * units_per_group
  int64_t super_blocks = 0;    // ceil(U / 8)
  int64_t num_hi = 0;          // 4-bit groups per row
  int64_t lo_stride = 0;       // bytes per row of codes_lo
  int64_t hi_units = 0;        // high-plane units per row: num_hi * units_per_group
  int64_t hi_quads = 0;        // quads of the whole high plane
};

LMK_INLINE LMK_HOST_DEVICE int64_t quant_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

LMK_INLINE LMK_HOST_DEVICE QuantShape make_quant_shape(int64_t out_features, int64_t in_features,
                                                       int64_t group_size, int64_t num_hi) {
  QuantShape s;
  s.out_features = out_features;
  s.in_features = in_features;
  s.group_size = group_size;
  s.groups = (in_features + group_size - 1) / group_size;
  s.units_per_group = group_size / kQuantUnit;
  s.units = s.groups * s.units_per_group;
  s.super_blocks = (s.units + kQuantSuperUnits - 1) / kQuantSuperUnits;
  s.num_hi = num_hi;
  s.lo_stride = quant_round_up(s.units, kQuantQuadUnits) * kQuantUnitBytes;
  s.hi_units = num_hi * s.units_per_group;
  s.hi_quads = (out_features * s.hi_units + kQuantQuadUnits - 1) / kQuantQuadUnits;
  return s;
}

// The 2-bit code of weight `i` (0..31) of unit `unit` in a row's plane starting at `plane`.
LMK_INLINE LMK_HOST_DEVICE int unit_code(const uint8_t* plane, int64_t unit, int i) {
  const uint8_t byte = plane[(unit / kQuantQuadUnits) * kQuantQuadBytes + i];
  return (byte >> (2 * (unit % kQuantQuadUnits))) & 3;
}

LMK_INLINE LMK_HOST_DEVICE void set_unit_code(uint8_t* plane, int64_t unit, int i, int code) {
  uint8_t& byte = plane[(unit / kQuantQuadUnits) * kQuantQuadBytes + i];
  const int shift = static_cast<int>(2 * (unit % kQuantQuadUnits));
  byte = static_cast<uint8_t>((byte & ~(3 << shift)) | ((code & 3) << shift));
}

// Word forms of the code access, for kernels that take 4 weights per step (the scalar CPU path,
// the CUDA GEMV's dp4a): bytes 4j .. 4j + 3 of a quad, read as a little-endian word, give
// weights 4j .. 4j + 3 of unit `unit_in_quad`, one code per byte.
LMK_INLINE LMK_HOST_DEVICE uint32_t unit_code_word(uint32_t quad_word, int unit_in_quad) {
  return (quad_word >> (2 * unit_in_quad)) & 0x03030303u;
}

// acc + the dot product of 4 codes (one per byte, 0..15) with 4 int8 activations: one dp4a
// on CUDA (a code byte read as signed is the same value).
LMK_INLINE LMK_HOST_DEVICE int32_t code_word_dot(uint32_t codes, uint32_t x, int32_t acc) {
#if defined(__CUDA_ARCH__)
  return __dp4a(static_cast<int>(codes), static_cast<int>(x), acc);
#else
  for (int t = 0; t < 4; ++t) {
    acc += static_cast<int32_t>((codes >> (8 * t)) & 0xffu) * static_cast<int32_t>(static_cast<int8_t>(x >> (8 * t)));
  }
  return acc;
#endif
}

LMK_INLINE LMK_HOST_DEVICE int scale_code(uint8_t packed) { return packed & 15; }
LMK_INLINE LMK_HOST_DEVICE int min_code(uint8_t packed) { return packed >> 4; }

// Decoded (scale, min) of a group from its packed byte and its super-block's fp16 (d, dmin).
struct GroupScale {
  float scale, min;
};

LMK_INLINE LMK_HOST_DEVICE GroupScale decode_group_scale(uint8_t packed, const uint16_t* super_pair) {
  return {f16_to_f32(super_pair[0]) * static_cast<float>(scale_code(packed)),
          f16_to_f32(super_pair[1]) * static_cast<float>(min_code(packed))};
}

LMK_INLINE LMK_HOST_DEVICE int64_t super_block_of_group(int64_t group, int64_t units_per_group) {
  return group * units_per_group / kQuantSuperUnits;
}

// Symmetric int8 quantization of activations per super-block: scale = absmax / 127 and
// code = round(x * 127 / absmax). Shared so the CPU and CUDA quantizers round identically.
LMK_INLINE LMK_HOST_DEVICE float activation_block_scale(float absmax) { return absmax / 127.0f; }
LMK_INLINE LMK_HOST_DEVICE float activation_inverse_scale(float absmax) { return absmax > 0.0f ? 127.0f / absmax : 0.0f; }
LMK_INLINE LMK_HOST_DEVICE int8_t activation_code(float x, float inverse_scale) {
  // Round half to even by the 1.5 * 2^23 trick (exact for |q| < 2^22; here |q| <= 127), which
  // vectorizes where a call to rintf does not; NaN clamps to -127 instead of an undefined cast.
  const float q = x * inverse_scale;
  const float r = (q + 12582912.0f) - 12582912.0f;
  return static_cast<int8_t>(!(r > -127.0f) ? -127.0f : (r > 127.0f ? 127.0f : r));
}

// Weight k (in_features index) of row `row` dequantized; `hi_rank` is the group's position in
// the row's hi_groups or -1 for a 2-bit group; `hi_plane` is the whole high plane.
LMK_INLINE LMK_HOST_DEVICE float dequantize_weight_at(const QuantShape& s, int64_t row, const uint8_t* lo_row,
                                                      const uint8_t* hi_plane, const uint8_t* scales_row,
                                                      const uint16_t* super_row, int64_t k, int64_t hi_rank) {
  const int64_t group = k / s.group_size, unit = k / kQuantUnit, lane = k % kQuantUnit;
  int q = unit_code(lo_row, unit, static_cast<int>(lane));
  if (hi_rank >= 0) {
    const int64_t hi_unit = row * s.hi_units + hi_rank * s.units_per_group + unit % s.units_per_group;
    q += 4 * unit_code(hi_plane, hi_unit, static_cast<int>(lane));
  }
  const GroupScale gs = decode_group_scale(scales_row[group], super_row + 2 * super_block_of_group(group, s.units_per_group));
  return gs.scale * static_cast<float>(q) - gs.min;
}

}  // namespace lmkernels
