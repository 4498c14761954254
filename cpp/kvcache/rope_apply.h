// rope_apply_: argument checks and kernel arguments shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include "rope_rerotate_kernel.h"

namespace lmkernels {

// Throws c10::Error naming the bad argument; see the schema in registry.cpp.
void check_rope_apply_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The tables as the kernels read them: one stride pair serves both, so `cos` and `sin` as
// given when their strides match (views sliced from one transformers tensor), else contiguous.
struct RopeTables {
  at::Tensor cos, sin;
};
RopeTables rope_tables_with_shared_strides(const at::Tensor& cos, const at::Tensor& sin);

// The rows of `x` and the tables (already checked) as kernel args.
RopeRerotateArgs rope_apply_args(const at::Tensor& x, const RopeTables& tables);

}  // namespace lmkernels
