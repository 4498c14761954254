// scatter_kv_ on CUDA: one block per chunk token writes its values and its keys rotated by
// (new_pos - old_pos) into the token's cache slot; the cos/sin table is built once per block
// in shared memory from the shared angle math.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kvcache/kv_checks.h"
#include "lmkernels/dtype.h"
#include "lmkernels/rope.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels {
namespace {

struct Strides {
  int64_t kc[2], vc[2], k[2], v[2];  // token/slot, head
};

template <StorageDtype D>
__global__ void scatter_kv_kernel(typename Storage<D>::T* k_cache, typename Storage<D>::T* v_cache,
                                  const typename Storage<D>::T* k, const typename Storage<D>::T* v,
                                  const int64_t* slots, const int64_t* old_pos, const int64_t* new_pos,
                                  const float* inv_freq, int64_t heads, int64_t dim, int rotary_dim, bool neox,
                                  Strides st) {
  extern __shared__ float table[];  // cos[half], sin[half]
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  const int half = rotary_dim / 2;
  const int64_t delta = new_pos[t] - old_pos[t];
  rope::block_fill_delta_table(delta, inv_freq, half, table);
  __syncthreads();
  for (int64_t idx = threadIdx.x; idx < heads * dim; idx += blockDim.x) {
    const int64_t h = idx / dim, d = idx % dim;
    v_cache[slot * st.vc[0] + h * st.vc[1] + d] = v[t * st.v[0] + h * st.v[1] + d];
    if (d >= rotary_dim) k_cache[slot * st.kc[0] + h * st.kc[1] + d] = k[t * st.k[0] + h * st.k[1] + d];
  }
  for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int64_t h = idx / half;
    const int i = static_cast<int>(idx % half);
    const int a = rope::pair_first(i, rotary_dim, neox), b = rope::pair_second(i, rotary_dim, neox);
    const auto* src = k + t * st.k[0] + h * st.k[1];
    auto* dst = k_cache + slot * st.kc[0] + h * st.kc[1];
    float x = Storage<D>::load(src + a), y = Storage<D>::load(src + b);
    if (delta != 0) rope::rotate_pair(x, y, table[i], table[half + i]);  // a zero shift stays exact
    Storage<D>::store(dst + a, x);
    Storage<D>::store(dst + b, y);
  }
}

void scatter_kv_cuda(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& slot_mapping, const at::Tensor& old_pos, const at::Tensor& new_pos,
                     const at::Tensor& inv_freq, bool neox) {
  check_scatter_kv_args(k_cache, v_cache, k, v, slot_mapping, old_pos, new_pos, inv_freq);
  if (k.size(0) == 0 || k.size(1) == 0) return;
  TORCH_CHECK(k.size(0) < (int64_t(1) << 31), "scatter_kv_: too many tokens for one launch");
  const c10::cuda::CUDAGuard guard(k.device());
  const Strides st{{k_cache.stride(0), k_cache.stride(1)}, {v_cache.stride(0), v_cache.stride(1)},
                   {k.stride(0), k.stride(1)}, {v.stride(0), v.stride(1)}};
  const int rotary_dim = static_cast<int>(2 * inv_freq.numel());
  auto stream = c10::cuda::getCurrentCUDAStream();
  with_storage_dtype(k.scalar_type(), [&](auto tag) {
    constexpr StorageDtype D = decltype(tag)::value;
    using T = typename Storage<D>::T;
    scatter_kv_kernel<D><<<static_cast<unsigned>(k.size(0)), 128, sizeof(float) * rotary_dim, stream>>>(
        static_cast<T*>(k_cache.data_ptr()), static_cast<T*>(v_cache.data_ptr()), static_cast<const T*>(k.data_ptr()),
        static_cast<const T*>(v.data_ptr()), slot_mapping.data_ptr<int64_t>(), old_pos.data_ptr<int64_t>(),
        new_pos.data_ptr<int64_t>(), inv_freq.data_ptr<float>(), k.size(1), k.size(2), rotary_dim, neox, st);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("scatter_kv_", &scatter_kv_cuda); }

}  // namespace lmkernels
