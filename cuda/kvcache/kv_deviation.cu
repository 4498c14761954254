// kv_deviation and select_tokens on CUDA. kv_deviation: one block per (batch, token) row,
// fp32 sums reduced over the block (the order differs from the CPU's fixed lane order, so
// results agree within fp32 rounding). select_tokens: a stable descending sort (ties keep
// the lower index first), the first k, sorted ascending.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sort.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kvcache/kv_checks.h"
#include "lmkernels/dtype.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels {
namespace {

struct RowStrides {
  int64_t a[3], b[3];
};

template <StorageDtype D>
__global__ void kv_deviation_kernel(const void* a, const void* b, float* out, int64_t tokens, int64_t heads,
                                    int64_t dim, RowStrides st) {
  const int64_t row = blockIdx.x;
  const int64_t bi = row / tokens, t = row % tokens;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < heads * dim; i += blockDim.x) {
    const int64_t h = i / dim, d = i % dim;
    using T = typename Storage<D>::T;
    const T* pa = static_cast<const T*>(a) + bi * st.a[0] + t * st.a[1] + h * st.a[2];
    const T* pb = static_cast<const T*>(b) + bi * st.b[0] + t * st.b[1] + h * st.b[2];
    const float diff = Storage<D>::load(pa + d) - Storage<D>::load(pb + d);
    sum = fmaf(diff, diff, sum);
  }
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += warp_sums[w];
    out[row] = total;
  }
}

at::Tensor kv_deviation_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_kv_deviation_args(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor out = at::empty({a.size(0), a.size(1)}, a.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  TORCH_CHECK(out.numel() < (int64_t(1) << 31), "kv_deviation: batch * tokens must be below 2^31 on CUDA");
  RowStrides st{{a.stride(0), a.stride(1), a.stride(2)}, {b.stride(0), b.stride(1), b.stride(2)}};
  auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned grid = static_cast<unsigned>(out.numel());
  with_storage_dtype(a.scalar_type(), [&](auto tag) {
    kv_deviation_kernel<decltype(tag)::value><<<grid, 128, 0, stream>>>(
        a.data_ptr(), b.data_ptr(), out.data_ptr<float>(), a.size(1), a.size(2), a.size(3), st);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor select_tokens_cuda(const at::Tensor& scores, double ratio) {
  const int64_t k = check_select_tokens_args(scores, ratio);
  const c10::cuda::CUDAGuard guard(scores.device());
  TORCH_CHECK(!at::isnan(scores).any().item<bool>(), "select_tokens: scores has a NaN; a NaN has no rank");
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(1, 0, k), /*stable=*/true, /*dim=*/-1, /*descending=*/false));
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) {
  m.impl("kv_deviation", &kv_deviation_cuda);
  m.impl("select_tokens", &select_tokens_cuda);
}

}  // namespace lmkernels
