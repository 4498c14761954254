// The pieces both host quantizers (round-to-nearest and GPTQ error feedback) are built from:
// argument checks, the choice of a row's 4-bit groups, the per-super-block grid fit, the code
// of one weight under the fitted grid, and the packed outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "quant/group_fit.h"
#include "quant/quant_format.h"

namespace lmkernels {

enum class Select { kRange, kError };

Select parse_select(const std::string& select, const char* op);

// The five packed tensors of quant_format.h, plus the high codes one per byte before packing.
struct PackedOutputs {
  at::Tensor lo, hi_raw, hi_groups, scales, super_scales;
};

// Checks weight [N, K] float32 and the options, returns the shape; `w_padded` gets the weight
// zero-padded to whole groups. Errors name `op`.
QuantShape prepare_weight(const at::Tensor& weight, int64_t group_size, int64_t num_4bit_groups, const char* op,
                          at::Tensor* w_padded);

// Importance [K] checked (finite, >= 0) and padded; a floor keeps zero-importance columns fitted.
// Undefined (uniform) when not given or all zero.
at::Tensor prepare_importance(const std::optional<at::Tensor>& importance, const QuantShape& s, const char* op);

PackedOutputs allocate_outputs(const QuantShape& s, const at::TensorOptions& float_options);

// Pointers to row r of the outputs.
struct RowOutputs {
  uint8_t* lo;
  uint8_t* hi_raw;  // [hi_units, 32], one code per byte (rows share high-plane quads)
  int16_t* hi_groups;
  uint8_t* scales;
  uint16_t* super_scales;
};
RowOutputs row_outputs(const QuantShape& s, const PackedOutputs& out, int64_t r);

// A row's bit-width plan: qmax per group (3 or 15) and the rank of each 4-bit group.
struct RowPlan {
  std::vector<int> qmax;
  std::vector<int64_t> hi_rank;  // -1 for a 2-bit group
  std::vector<GroupFit> fits;    // select=error: each group's fit at its qmax, from the row as chosen
};

// Picks the row's num_hi groups with the highest priority (range, or squared error removed
// by 4 bits) and writes them ascending to out.hi_groups.
RowPlan choose_4bit_groups(const QuantShape& s, const float* row, const float* importance, Select select,
                           const RowOutputs& out);

// Fits the grids of super-block `sb` from the row's current weights and writes its scale codes
// and fp16 (d, dmin). Throws std::range_error when d overflows fp16. `reuse_plan_fits`: the row
// is unchanged since choose_4bit_groups, so its group fits (if it made any) stand.
void fit_super_block(const QuantShape& s, int64_t sb, const float* row, const float* importance, const RowPlan& plan,
                     const RowOutputs& out, bool reuse_plan_fits);

// Refits one group of an already fitted super-block from the row's current weights, keeping
// the super-block's (d, dmin): GPTQ's feedback moves weights after the super-block fit.
void refit_group(const QuantShape& s, int64_t group, const float* row, const float* importance, const RowPlan& plan,
                 const RowOutputs& out);

// The code of weight `w` at column k under the already fitted grid, stored into the planes;
// returns the dequantized value.
float quantize_and_store(const QuantShape& s, const RowPlan& plan, const RowOutputs& out, int64_t k, float w);

// quantize_and_store for every real weight of the row, each group's grid decoded once.
void quantize_and_store_row(const QuantShape& s, const RowPlan& plan, const RowOutputs& out, const float* row);

// The high plane packed quad by quad from hi_raw (so no two threads write one byte).
at::Tensor pack_high_plane(const QuantShape& s, const at::Tensor& hi_raw);

}  // namespace lmkernels
