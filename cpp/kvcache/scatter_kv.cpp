// scatter_kv_ on CPU: write a chunk's keys and values into cache slots, rotating the keys
// from their stored positions to their new ones on the way (one pass, per token range:
// the rows are still in cache when the rotation kernel runs over them).
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvcache/kv_checks.h"
#include "lmkernels/rope.h"
#include "kvcache/rope_rerotate.h"

namespace lmkernels {

std::vector<int64_t> check_scatter_kv_args(const at::Tensor& k_cache, const at::Tensor& v_cache,
                                           const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot_mapping,
                                           const at::Tensor& old_pos, const at::Tensor& new_pos,
                                           const at::Tensor& inv_freq) {
  const char* op = "scatter_kv_: ";
  TORCH_CHECK(k.dim() == 3, op, "k must be [tokens, heads, head_dim], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k_cache.dim() == 3 && k_cache.size(1) == k.size(1) && k_cache.size(2) == k.size(2), op,
              "k_cache must be [slots, ", k.size(1), ", ", k.size(2), "], got ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), op, "v_cache must have k_cache's shape ", k_cache.sizes(),
              ", got ", v_cache.sizes());
  const auto dtype = k.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              "k must be float32, bfloat16 or float16, got ", dtype);
  for (const auto* t : {&v, &k_cache, &v_cache}) {
    TORCH_CHECK(t->scalar_type() == dtype, op, "k, v, k_cache and v_cache must share a dtype, got ", dtype,
                " and ", t->scalar_type());
    TORCH_CHECK(t->device() == k.device(), op, "every tensor must be on ", k.device(), ", got ", t->device());
  }
  for (const auto* t : {&k, &v, &k_cache, &v_cache}) {
    TORCH_CHECK(t->size(2) <= 1 || t->stride(2) == 1, op, "k, v and the caches need unit stride on head_dim");
  }
  for (const auto* t : {&k_cache, &v_cache}) {
    TORCH_CHECK(at::has_internal_overlap(*t) != at::MemOverlap::Yes, op,
                "the caches must not have overlapping elements (e.g. an expanded view)");
  }
  TORCH_CHECK(!k_cache.is_alias_of(v_cache) || k_cache.data_ptr() != v_cache.data_ptr(), op,
              "k_cache and v_cache are the same tensor");
  const int64_t tokens = k.size(0);
  for (const auto* t : {&slot_mapping, &old_pos, &new_pos}) {
    const char* name = t == &slot_mapping ? "slot_mapping" : (t == &old_pos ? "old_pos" : "new_pos");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == tokens && t->scalar_type() == at::kLong && t->is_contiguous(), op,
                name, " must be a contiguous int64 [tokens] = [", tokens, "] tensor, got ", t->scalar_type(), " ",
                t->sizes());
    TORCH_CHECK(t->device() == k.device(), op, name, " is on ", t->device(), " but k is on ", k.device());
  }
  TORCH_CHECK(inv_freq.dim() == 1 && inv_freq.scalar_type() == at::kFloat && inv_freq.is_contiguous() &&
                  inv_freq.device() == k.device(),
              op, "inv_freq must be a contiguous 1-D float32 tensor on k's device");
  TORCH_CHECK(inv_freq.numel() >= 1 && 2 * inv_freq.numel() <= k.size(2), op,
              "inv_freq must have between 1 and head_dim / 2 = ", k.size(2) / 2, " entries, got ", inv_freq.numel());
  // Slots are read on the host: a bad slot would be an out-of-bounds write, a repeated one a race.
  const at::Tensor host = slot_mapping.to(at::kCPU);
  std::vector<int64_t> slots(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + tokens);
  std::vector<int64_t> used;
  for (int64_t t = 0; t < tokens; ++t) {
    TORCH_CHECK(slots[t] >= -1 && slots[t] < k_cache.size(0), op, "slot_mapping[", t, "] = ", slots[t],
                " is not a slot in [0, ", k_cache.size(0), ") nor -1 (skip)");
    if (slots[t] >= 0) used.push_back(slots[t]);
  }
  std::sort(used.begin(), used.end());
  const auto repeat = std::adjacent_find(used.begin(), used.end());
  TORCH_CHECK(repeat == used.end(), op, "slot_mapping names slot ", repeat == used.end() ? 0 : *repeat,
              " more than once");
  return slots;
}

namespace {


void scatter_kv_cpu(at::Tensor k_cache, at::Tensor v_cache, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& slot_mapping, const at::Tensor& old_pos, const at::Tensor& new_pos,
                    const at::Tensor& inv_freq, bool neox) {
  const std::vector<int64_t> slots =
      check_scatter_kv_args(k_cache, v_cache, k, v, slot_mapping, old_pos, new_pos, inv_freq);
  const int64_t tokens = k.size(0), heads = k.size(1), dim = k.size(2);
  if (tokens == 0 || heads == 0) return;
  const int64_t elem = k.element_size();
  char* kc = static_cast<char*>(k_cache.data_ptr());
  char* vc = static_cast<char*>(v_cache.data_ptr());
  const char* ks = static_cast<const char*>(k.data_ptr());
  const char* vs = static_cast<const char*>(v.data_ptr());

  RopeRerotateArgs args = rope_rotation_args(k, old_pos, new_pos, inv_freq, neox);
  args.k = k_cache.data_ptr();
  args.batch = 1;
  args.tokens = tokens;
  args.heads = heads;
  args.head_dim = dim;
  args.stride_token = k_cache.stride(0);
  args.stride_head = k_cache.stride(1);
  args.slot = slots.data();
  const RopeRowsKernel kernel = rope_rows_kernel();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, heads * dim));
  at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;
      for (int64_t h = 0; h < heads; ++h) {
        std::memcpy(kc + (slots[t] * k_cache.stride(0) + h * k_cache.stride(1)) * elem,
                    ks + (t * k.stride(0) + h * k.stride(1)) * elem, dim * elem);
        std::memcpy(vc + (slots[t] * v_cache.stride(0) + h * v_cache.stride(1)) * elem,
                    vs + (t * v.stride(0) + h * v.stride(1)) * elem, dim * elem);
      }
    }
    std::vector<float> table(rope::delta_table_floats(args.rotary_dim));
    kernel(args, begin, end, table.data());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("scatter_kv_", &scatter_kv_cpu); }

}  // namespace lmkernels
