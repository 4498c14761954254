// spliced_attention: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lmkernels::attention {

// Throws c10::Error naming the bad argument. Returns q_positions as a host int64 vector.
std::vector<int64_t> check_spliced_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& q_positions, double scale);

}  // namespace lmkernels::attention
