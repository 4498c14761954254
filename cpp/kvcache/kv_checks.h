// Argument checks of the chunk-reuse ops, shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lmkernels {

// Throw c10::Error naming the bad argument.
void check_kv_deviation_args(const at::Tensor& a, const at::Tensor& b);
// Returns k = max(floor(ratio * tokens), 1), or 0 for no tokens.
int64_t check_select_tokens_args(const at::Tensor& scores, double ratio);

// Returns slot_mapping on the host (entries in [-1, slots), no slot twice).
std::vector<int64_t> check_scatter_kv_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                           const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                                           const at::Tensor& old_pos, const at::Tensor& new_pos,
                                           const at::Tensor& inv_freq);

}  // namespace lmkernels
