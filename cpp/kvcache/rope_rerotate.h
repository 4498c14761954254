// rope_rerotate_: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include "rope_rerotate_kernel.h"

namespace lmkernels {

// Throws c10::Error naming the bad argument; see the schema in registry.cpp.
void check_rope_rerotate_args(const at::Tensor& k, const at::Tensor& old_pos,
                              const at::Tensor& new_pos, const at::Tensor& inv_freq);

// Args with the rotation filled in (dtype of `k`, positions, frequencies, pairing); callers
// add the layout of the keys they rotate.
RopeRerotateArgs rope_rotation_args(const at::Tensor& k, const at::Tensor& old_pos, const at::Tensor& new_pos,
                                    const at::Tensor& inv_freq, bool neox);

// The rows the kernel rotates: x [batch, tokens, heads, head_dim] (pointer, sizes, strides).
void set_rope_rows(RopeRerotateArgs& args, const at::Tensor& x);

// The row kernel for the active CPU path.
using RopeRowsKernel = void (*)(const RopeRerotateArgs&, int64_t, int64_t, float*);
RopeRowsKernel rope_rows_kernel();

}  // namespace lmkernels
