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
#include "lmkernels/dtype.h"
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
  // The same codes with each super-block's eight 32-code units in the order 0 4 1 5 2 6 3 7
  // (kQuantPairPosition), for the VNNI row kernel: one 64-byte load of a block's two code quads
  // then pairs unit i of the first quad with unit i + 4 of the second, next to each other in
  // this copy. Required by the VNNI row kernel, null on the other paths.
  const int8_t* xq_pairs;
  // [super_blocks * 8]: where unit u's codes start in an xq_pairs row, so the high pass finds
  // a unit's activations with one load instead of five index steps. Set only when the high
  // pass reads xq_pairs (in_features > kQuantPlainHighPassMaxK); null: it reads xq.
  const uint32_t* pair_offsets;
  const float* xscale;           // [M, quant_combine_stride(S)], zero padded
  const int16_t* xsum;           // at most 256 * 127: fits int16
  int64_t rows;                  // M
  float* out;                    // [M, N]
};

// Longest row whose high pass reads the plain activation copy: longer rows read the pairs copy,
// so that only one copy of the activations competes with the weight streams for L1 (a row of
// 14336 codes is 14 KB). Up to 8192 both copies fit beside the weights, and the plain order's
// offsets (a shift, no table load) made 4096x4096 2% faster (1 thread, 0.487 -> 0.478 ms).
constexpr int64_t kQuantPlainHighPassMaxK = 8192;

// Position of unit u of a super-block in xq_pairs' block (units in the order 0 4 1 5 2 6 3 7).
constexpr uint8_t kQuantPairPosition[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// Super-block count padded to whole 8-lane vectors: the stride of per-block float arrays.
LMK_INLINE int64_t quant_combine_stride(int64_t super_blocks) { return (super_blocks + 7) / 8 * 8; }


// The strip path, for batches (quant_strips.h): the same int8 activations; per strip of 16
// output rows, u8 codes times their unit's scale, exact int32 products per super-block with
// AMX tiles (quant_linear_amx.cpp) or AVX-512 VNNI (quant_strips_avx512_vnni.cpp), and one
// fp32 combination shared by both, so the two give the same bits.
constexpr int kQuantStripRows = 16;
constexpr int kQuantStripCols = 16;  // activation rows per tile

struct QuantStripArgs {
  QuantLinearArgs base;          // shape, weight, bias, rows, out (its xq, xscale, xsum unused)
  // The int8 activations as AMX B tiles: [ceil(M / 16)][super_blocks * 64 (4 k each)][16 rows][4].
  const int8_t* x_tiles;
  const float* xscale_t;         // [super_blocks][x_stride]: activation row m's block scales, zero padded
  // [groups][x_stride]: xscale of the group's block * the group's code sum, per activation row
  const float* group_sums;
  int64_t x_stride;              // M rounded up to 16
};

// A strip of 16 rows of codes, two int32 tiles, a float accumulator tile and the strip's d_b
// and min-term weights, plus alignment.
LMK_INLINE int64_t quant_strip_scratch_bytes(const QuantShape& s) {
  return kQuantStripRows * (s.super_blocks * kQuantSuperBlock + s.super_blocks * 4 + s.groups * 4) + 3 * 1024 + 64;
}

// Rows [row_begin, row_end) of the quantized activations (rows of super_blocks * 256 codes)
// into `tiles` (x_tiles' layout, zeroed by the caller). AVX-512 (any strip path has it).
void quant_strip_activation_tiles(const int8_t* xq, int64_t row_begin, int64_t row_end, int64_t super_blocks,
                                  int8_t* tiles);
// Compute out[:, begin:end] (begin a multiple of 16); false as for the row kernels.
bool quant_linear_strips_amx(const QuantStripArgs& args, int64_t begin, int64_t end, void* scratch);
bool quant_linear_strips_avx512_vnni(const QuantStripArgs& args, int64_t begin, int64_t end, void* scratch);

// Activations x [M, in_features] quantized as QuantLinearArgs takes them (xq, xscale, xsum).
struct ActivationQuantArgs {
  QuantShape shape;
  const void* x;
  StorageDtype dtype;
  int8_t* codes;   // [M, super_blocks * 256]
  float* scales;   // [M, quant_combine_stride(S)]
  int16_t* sums;   // [M, groups]
};

// Rows [begin, end); `row` is scratch for one zero-padded fp32 row (super_blocks * 256).
void quantize_activation_rows_scalar(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row);
void quantize_activation_rows_avx2(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row);
void quantize_activation_rows_avx512(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row);

// y[0, count) rounded into `out` of 16-bit dtype `dtype` as Tensor::to rounds (fp32: nothing).
void round_outputs_scalar(const float* y, int64_t count, StorageDtype dtype, void* out);
void round_outputs_avx2(const float* y, int64_t count, StorageDtype dtype, void* out);
void round_outputs_avx512(const float* y, int64_t count, StorageDtype dtype, void* out);

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
