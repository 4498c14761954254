// quant_linear: plain-data interface between the dispatcher and its per-ISA kernels.
//
// Activations arrive quantized (int8 per 256-wide block with one fp32 scale, plus per-group
// sums of the int8 codes), so each super-block's dot product is integer and exact:
//   y = sum_b xscale_b * (d_b * ISUM_b - dmin_b * MSUM_b)
//   ISUM_b = sum over the block's units of sc * <lo codes, x> + 4 * sc * <hi codes, x>
//   MSUM_b = sum over the block's groups of mc * sum(x)
// ISUM_b is kept in 8 partial lanes and the float steps are fixed (quant_linear_rows.h), so
// every ISA returns the same bits.
#pragma once

#include <cstdint>

#include "lmkernels/common.h"
#include "quant/quant_format.h"

namespace lmkernels {

constexpr int kQuantRowChunk = 4;  // activation rows sharing one unpack of the weight codes

struct QuantLinearArgs {
  QuantShape shape;
  const uint8_t* codes_lo;
  const uint8_t* codes_hi;
  const int16_t* hi_groups;
  const uint8_t* scales;
  const uint16_t* super_scales;  // fp16 bits
  const float* bias;             // [N] or null
  // Quantized activations: rows of super_blocks * 256 int8 codes (zero padded), one scale per
  // super-block and one code sum per group.
  const int8_t* xq;
  const float* xscale;           // [M, quant_combine_stride(S)], zero padded
  const int16_t* xsum;           // at most 256 * 127: fits int16
  int64_t rows;                  // M
  float* out;                    // [M, N]
};

// Super-block count padded to whole 8-lane vectors: the stride of per-block float arrays.
LMK_INLINE int64_t quant_combine_stride(int64_t super_blocks) { return (super_blocks + 7) / 8 * 8; }


// The AMX path, for batches: activations rounded to bf16 once, the weight dequantized to bf16
// one strip of 16 output rows at a time (in cache), and bf16 tile products into fp32.
constexpr int kQuantAmxStripRows = 16;
constexpr int kQuantAmxTileCols = 16;  // activation rows per tile

struct QuantLinearAmxArgs {
  QuantShape shape;
  const uint8_t* codes_lo;
  const uint8_t* codes_hi;
  const int16_t* hi_groups;
  const uint8_t* scales;
  const uint16_t* super_scales;  // fp16 bits
  const float* bias;             // [N] or null
  // bf16 bits of the activations, laid out as AMX B tiles, zero padded:
  // [ceil(M / 16)][units * 16 (pairs of k)][16 rows][2], k >= in_features and rows >= M zero.
  const uint16_t* x_tiles;
  int64_t rows;                  // M
  float* out;                    // [M, N]
};

LMK_INLINE int64_t quant_amx_padded_k(const QuantShape& s) { return s.units * kQuantUnit; }

// A strip of 16 dequantized rows, two 16 x 16 fp32 tiles and a row's decoded group scales
// and mins, plus alignment.
LMK_INLINE int64_t quant_linear_amx_scratch_bytes(const QuantShape& s) {
  return kQuantAmxStripRows * quant_amx_padded_k(s) * 2 + 2 * 16 * 16 * 4 + 2 * s.groups * 4 + 64;
}

// Rows [row_begin, row_end) of fp32 x [M, in_features] into `tiles` (x_tiles' layout, zeroed
// by the caller; bf16 rounded to nearest even).
void quant_amx_activation_tiles(const float* x, int64_t row_begin, int64_t row_end, int64_t in_features,
                                int64_t padded_k, uint16_t* tiles);
// Computes out[:, begin:end] (begin a multiple of 16); false as for the row kernels.
bool quant_linear_rows_amx(const QuantLinearAmxArgs& args, int64_t begin, int64_t end, void* scratch);

// Per-thread scratch a kernel needs for out_features rows [begin, end), in bytes.
LMK_INLINE int64_t quant_linear_scratch_bytes(const QuantShape& s) {
  // (d, dmin) pairs, and the block scales, min sums and float lanes of 4 rows, each rounded up
  // to 32 bytes.
  const int64_t S8 = quant_combine_stride(s.super_blocks);
  return S8 * 8 + 2 * kQuantRowChunk * S8 * 4 + kQuantRowChunk * 8 * 4 + 4 * 32;
}

// Computes out[:, begin:end]; returns false if a hi_groups entry was out of range (its
// contribution is then skipped, and the caller raises).
bool quant_linear_rows_scalar(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch);
bool quant_linear_rows_avx2(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch);
bool quant_linear_rows_avx512(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch);
bool quant_linear_rows_avx512_vnni(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch);

}  // namespace lmkernels
