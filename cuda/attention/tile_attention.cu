#include "attention/tile_attention.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "attention/tile_attention.cuh"

namespace lmkernels::attention {
namespace {

template <class T, int kDim>
void launch(const tile::Params& params, int64_t items, cudaStream_t stream) {
  constexpr int kBytes = tile::Layout<kDim>::kBytes;
  // Past 48 KiB of dynamic shared memory a kernel must opt in (per device, so on every call).
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(tile::tile_attention_kernel<T, kDim>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes));
  tile::tile_attention_kernel<T, kDim><<<static_cast<unsigned>(items), tile::kThreads, kBytes, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class T>
void launch_for_dim(const tile::Params& params, int64_t items, cudaStream_t stream) {
  if (params.dim <= 64) {
    launch<T, 64>(params, items, stream);
  } else if (params.dim <= 128) {
    launch<T, 128>(params, items, stream);
  } else {
    launch<T, 256>(params, items, stream);
  }
}

bool rows_aligned(const at::Tensor& t, std::initializer_list<int64_t> strides, const std::vector<int64_t>& offsets) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (const int64_t s : strides) {
    if (s % 8 != 0) return false;
  }
  return std::all_of(offsets.begin(), offsets.end(), [](int64_t o) { return o % 8 == 0; });
}

}  // namespace

bool tile_attention_applies(const at::Tensor& q, int64_t group) {
  if (q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16) return false;
  if (q.size(-1) > 256 || group > 64) return false;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  return major >= 8;
}

void run_tile_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, float* lse,
                        const Schedule& schedule, const TileLayout& layout, bool causal, double scale) {
  const int64_t items = static_cast<int64_t>(schedule.items.size());
  if (items == 0) return;
  TORCH_CHECK(items < (int64_t{1} << 31), "attention: too many work items for one launch (", items, ")");
  const int64_t spans = static_cast<int64_t>(schedule.spans.size());
  const c10::cuda::CUDAGuard guard(q.device());

  // One upload: items heaviest first (CTAs start roughly in launch order), then spans, then
  // the spans' head masks.
  std::vector<int64_t> order(items);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return schedule.cost[a] > schedule.cost[b]; });
  at::Tensor host = at::empty({items * tile::kItemFields + 3 * spans}, at::TensorOptions().dtype(at::kLong));
  int64_t* h = host.data_ptr<int64_t>();
  for (const int64_t i : order) {
    const WorkItem& w = schedule.items[i];
    const int64_t s = w.seq;
    const int64_t fields[tile::kItemFields] = {
        layout.q_off[s], layout.k_off[s], layout.v_off[s], layout.o_off[s], layout.lse_off[s],
        w.kv_head, w.q_begin, w.q_end, layout.len_q[s], layout.len_k[s],
        schedule.span_offset[i], w.num_spans, schedule.masked[i]};
    h = std::copy(fields, fields + tile::kItemFields, h);
  }
  for (const KeySpan& span : schedule.spans) {
    *h++ = span.begin;
    *h++ = span.end;
  }
  std::memcpy(h, schedule.span_heads.data(), spans * sizeof(uint64_t));
  const at::Tensor device = host.to(q.device());

  const int64_t group = q.size(1) / k.size(1);
  tile::Params params{};
  params.q = q.data_ptr();
  params.k = k.data_ptr();
  params.v = v.data_ptr();
  params.out = out.data_ptr();
  params.lse = lse;
  params.items = device.data_ptr<int64_t>();
  params.spans = params.items + items * tile::kItemFields;
  params.heads = reinterpret_cast<const uint64_t*>(params.spans + 2 * spans);
  params.q_tok = layout.q_tok, params.q_head = layout.q_head;
  params.k_tok = layout.k_tok, params.k_head = layout.k_head;
  params.v_tok = layout.v_tok, params.v_head = layout.v_head;
  params.o_tok = layout.o_tok, params.o_head = layout.o_head;
  params.lse_tok = layout.lse_tok, params.lse_head = layout.lse_head;
  params.group = static_cast<int>(group);
  params.dim = static_cast<int>(q.size(-1));
  params.scale_log2 = static_cast<float>(scale) * 1.4426950408889634f;
  params.causal = causal;
  params.aligned = params.dim % 8 == 0 && rows_aligned(q, {layout.q_tok, layout.q_head}, layout.q_off) &&
                   rows_aligned(k, {layout.k_tok, layout.k_head}, layout.k_off) &&
                   rows_aligned(v, {layout.v_tok, layout.v_head}, layout.v_off);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (q.scalar_type() == at::kHalf) {
    launch_for_dim<__half>(params, items, stream);
  } else {
    launch_for_dim<__nv_bfloat16>(params, items, stream);
  }
}

}  // namespace lmkernels::attention
