// Argument checks of the chunk-reuse ops, shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

namespace lmkernels {

// Throw c10::Error naming the bad argument.
void check_kv_deviation_args(const at::Tensor& a, const at::Tensor& b);
// Returns k = max(floor(ratio * tokens), 1), or 0 for no tokens.
int64_t check_select_tokens_args(const at::Tensor& scores, double ratio);

}  // namespace lmkernels
