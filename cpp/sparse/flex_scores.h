// flex_pattern_scores: FlexPrefill's pattern estimation for every (batch, head). Two forms of
// the same computation: on the host, the GEMMs through ATen and the per-head reductions
// (softmax rows, vertical and slash sums, pooled block attention, sqrt-JSD) as C++ loops, one
// (batch, head) per task (the CPU impl); as ATen tensor ops on the inputs' device, the loops
// replaced by masked softmaxes, a prefix sum and block sums (the CUDA impl, also run on CPU by
// the private op _flex_pattern_scores_tensor_ops so that the CPU tests check it).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace lmkernels::sparse {

// q [B, Hq, N, D], k [B, Hkv, N, D] (causal). Returns float32 (vertical [B, Hq, nb]: the last
// query block's mean attention per key block; slash [B, Hq, nb]: per diagonal-offset block;
// block_attn [B, Hq, nb, nb]: softmax of pooled q . pooled k over causal blocks; jsd [B, Hq]:
// sqrt Jensen-Shannon divergence between the block-pooled vertical distribution and the
// estimate from the mean last query against pooled keys).
// Throws c10::Error naming `op` and the bad argument.
void check_pattern_args(const char* op, const at::Tensor& q, const at::Tensor& k, int64_t block_size, double scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_host(const at::Tensor& q,
                                                                                    const at::Tensor& k,
                                                                                    int64_t block_size, double scale);

// The tensor-op form; `op` is the name its argument errors carry (the public op on CUDA).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_tensor_ops(const char* op,
                                                                                          const at::Tensor& q,
                                                                                          const at::Tensor& k,
                                                                                          int64_t block_size,
                                                                                          double scale);

}  // namespace lmkernels::sparse
