// varlen_attention: argument checks shared by the CPU and CUDA impls.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace lmkernels::attention {

// Shapes, dtypes, devices, head counts and strides of q [total_q, heads_q, dim] and k, v
// [total_k, heads_kv, dim]; throws c10::Error naming `op` and the bad argument.
void check_attention_tensors(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             double scale);

// Throws c10::Error naming the bad argument. Returns cu_seqlens_q and cu_seqlens_k as host
// int64 vectors (read once; CUDA callers pay one small copy).
std::pair<std::vector<int64_t>, std::vector<int64_t>> check_varlen_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, double scale);

}  // namespace lmkernels::attention
