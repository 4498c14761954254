// rope_apply_: argument checks and kernel arguments shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include "rope_rerotate_kernel.h"

namespace lmkernels {

// Throws c10::Error naming the bad argument; see the schema in registry.cpp.
void check_rope_apply_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The rows of `x` and the tables `cos` / `sin` (already checked; same strides) as kernel args.
RopeRerotateArgs rope_apply_args(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace lmkernels
