// flex_select_blocks and flex_pattern_scores for CUDA tensors, on the host: the selection is
// a sort and a scan per (batch, head) over at most a few thousand block scores, so the scores
// come to the host and the CSR index goes back (as pack_sequences does). The pattern scores
// run the CPU code on host copies of q and k: correct, but a copy of both per call; a device
// version (GEMMs and reductions on the GPU) is still to be written.
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
  auto [vertical, slash, block_attn, jsd] = flex_pattern_scores_host(q, k, block_size, scale);
  return {vertical.to(q.device()), slash.to(q.device()), block_attn.to(q.device()), jsd.to(q.device())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) {
  m.impl("flex_select_blocks", &flex_select_blocks_cuda);
  m.impl("flex_pattern_scores", &flex_pattern_scores_cuda);
}

}  // namespace lmkernels::sparse
