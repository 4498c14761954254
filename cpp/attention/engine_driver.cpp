#include "attention/engine_driver.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "lmkernels/cpu_isa.h"

namespace lmkernels::attention {
namespace {

using ItemKernel = void (*)(const Args&, const WorkItem&, float*);

ItemKernel pick_kernel() {
  switch (active_isa()) {
#ifndef LMKERNELS_NO_X86_SIMD
    case CpuIsa::kAvx512:
      return run_item_avx512;
    case CpuIsa::kAvx2:
      return run_item_avx2;
#endif
    default:
      return run_item_scalar;
  }
}

}  // namespace

void run_schedule(const Args& args, const std::vector<WorkItem>& items, const std::vector<int64_t>& cost) {
  if (items.empty()) return;
  std::vector<int64_t> order(items.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  const ItemKernel kernel = pick_kernel();
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
