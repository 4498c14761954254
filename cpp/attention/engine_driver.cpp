#include "attention/engine_driver.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "lmkernels/cpu_isa.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels::attention {
namespace {

using ItemKernel = void (*)(const Args&, const WorkItem&, float*);


}  // namespace

Args engine_args(const at::Tensor& q, const at::Tensor& k32, const at::Tensor& v32, at::Tensor& out,
                 at::Tensor* lse, bool causal, double scale) {
  Args args{};
  args.q = q.data_ptr();
  args.k = k32.data_ptr<float>();
  args.v = v32.data_ptr<float>();
  args.out = out.data_ptr();
  args.lse = lse != nullptr ? lse->data_ptr<float>() : nullptr;
  args.dtype = storage_dtype(q.scalar_type());
  args.heads_q = q.size(1);  // heads are dim 1 in both [tokens, H, D] and [B, H, N, D]
  args.heads_kv = k32.size(1);
  args.head_dim = q.size(-1);
  args.causal = causal;
  args.scale = static_cast<float>(scale);
  return args;
}

Args packed_engine_args(const at::Tensor& q, const at::Tensor& k32, const at::Tensor& v32, at::Tensor& out,
                        at::Tensor* lse, bool causal, double scale) {
  Args args = engine_args(q, k32, v32, out, lse, causal, scale);
  args.lse_stride_token = q.size(1);
  args.lse_stride_head = 1;
  args.q_stride_token = q.stride(0);
  args.q_stride_head = q.stride(1);
  args.k_stride_token = k32.stride(0);
  args.k_stride_head = k32.stride(1);
  args.v_stride_token = v32.stride(0);
  args.v_stride_head = v32.stride(1);
  args.out_stride_token = out.stride(0);
  args.out_stride_head = out.stride(1);
  return args;
}

void run_schedule(const Args& args, const std::vector<WorkItem>& items, const std::vector<int64_t>& cost) {
  if (items.empty()) return;
  std::vector<int64_t> order(items.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  const ItemKernel kernel = pick_for_isa<ItemKernel>(LMK_ISA_KERNELS(run_item_));
  const int64_t group = args.heads_q / args.heads_kv;
  const int64_t floats = scratch_floats(group, args.head_dim);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(items.size()));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch(floats);
    for (int64_t claimed = next.fetch_add(1); claimed < static_cast<int64_t>(order.size());
         claimed = next.fetch_add(1)) {
      kernel(args, items[order[claimed]], scratch.data());
    }
  });
}

}  // namespace lmkernels::attention
