// flex_pattern_scores and flex_select_blocks for CUDA tensors. The pattern scores stay on the
// device (ATen tensor ops, sparse/flex_scores_tensor_ops.cpp). The selection runs on the host:
// it is a sort and a scan per (batch, head) over at most a few thousand block scores, so the
// scores come to the host and the CSR index goes back (as pack_sequences does).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "sparse/flex_scores.h"
#include "sparse/flex_select.h"

namespace lmkernels::sparse {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> flex_select_blocks_cuda(const at::Tensor& vertical,
                                                                       const at::Tensor& slash,
                                                                       const at::Tensor& block_attn,
                                                                       const at::Tensor& query_aware, double gamma,
                                                                       int64_t min_blocks, int64_t max_blocks) {
  const c10::cuda::CUDAGuard guard(vertical.device());
  auto [crow, col, density] =
      flex_select_blocks_host(vertical, slash, block_attn, query_aware, gamma, min_blocks, max_blocks);
  return {crow.to(vertical.device()), col.to(vertical.device()), density.to(vertical.device())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_cuda(const at::Tensor& q,
                                                                                    const at::Tensor& k,
                                                                                    int64_t block_size, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  return flex_pattern_scores_tensor_ops("flex_pattern_scores", q, k, block_size, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tensor_ops_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                           int64_t block_size, double scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  return flex_pattern_scores_tensor_ops("_flex_pattern_scores_tensor_ops", q, k, block_size, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) {
  m.impl("flex_select_blocks", &flex_select_blocks_cuda);
  m.impl("flex_pattern_scores", &flex_pattern_scores_cuda);
  m.impl("_flex_pattern_scores_tensor_ops", &tensor_ops_cuda);
}

}  // namespace lmkernels::sparse
