// rope_rerotate_: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

namespace lmkernels {

// Throws c10::Error naming the bad argument; see the schema in registry.cpp.
void check_rope_rerotate_args(const at::Tensor& k, const at::Tensor& old_pos,
                              const at::Tensor& new_pos, const at::Tensor& inv_freq);

}  // namespace lmkernels
