// varlen_attention on CPU: checks, the varlen-causal schedule, threads, ISA choice.
#include "attention/varlen_attention.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "attention/engine.h"
#include "attention/engine_driver.h"
#include "attention/schedule.h"

namespace lmkernels::attention {

namespace {

std::vector<int64_t> read_cu_seqlens(const at::Tensor& cu, const char* name, int64_t total) {
  TORCH_CHECK(cu.dim() == 1 && cu.numel() >= 1, "varlen_attention: ", name,
              " must be a 1-D tensor [batch + 1], got shape ", cu.sizes());
  TORCH_CHECK(cu.scalar_type() == at::kInt || cu.scalar_type() == at::kLong, "varlen_attention: ",
              name, " must be int32 or int64, got ", cu.scalar_type());
  const at::Tensor host = cu.to(at::kCPU).to(at::kLong).contiguous();
  std::vector<int64_t> out(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
  TORCH_CHECK(out.front() == 0, "varlen_attention: ", name, " must start at 0, got ", out.front());
  for (size_t i = 1; i < out.size(); ++i) {
    TORCH_CHECK(out[i] >= out[i - 1], "varlen_attention: ", name,
                " must be non-decreasing, but entry ", i, " (", out[i], ") < entry ", i - 1, " (",
                out[i - 1], ")");
  }
  TORCH_CHECK(out.back() == total, "varlen_attention: ", name, " must end at the token count ",
              total, ", got ", out.back());
  return out;
}

}  // namespace

void check_attention_tensors(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             double scale) {
  TORCH_CHECK(q.dim() == 3, op, ": q must be [total_q, heads_q, head_dim], got ", q.sizes());
  TORCH_CHECK(k.dim() == 3, op, ": k must be [total_k, heads_kv, head_dim], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", k.sizes(), ", got ",
              v.sizes());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              op, ": q must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype,
              op, ": q, k and v must share a dtype, got ", dtype, ", ", k.scalar_type(),
              ", ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              op, ": q, k and v must be on one device, got ", q.device(), ", ",
              k.device(), ", ", v.device());
  TORCH_CHECK(k.size(2) == q.size(2), op, ": k has head_dim ", k.size(2), " but q has ",
              q.size(2));
  TORCH_CHECK(q.size(2) >= 1 && q.size(2) <= 512, op, ": head_dim must be in [1, 512], got ",
              q.size(2));
  TORCH_CHECK(k.size(1) >= 1 && q.size(1) >= 1 && q.size(1) % k.size(1) == 0,
              op, ": heads_q (", q.size(1), ") must be a positive multiple of heads_kv (",
              k.size(1), ")");
  for (const auto* t : {&q, &k, &v}) {
    const char* name = t == &q ? "q" : (t == &k ? "k" : "v");
    TORCH_CHECK(t->size(2) <= 1 || t->stride(2) == 1, op, ": ", name,
                " must have unit stride on head_dim, got strides ", t->strides());
  }
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> check_varlen_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, double scale) {
  check_attention_tensors("varlen_attention", q, k, v, scale);
  auto cu_q = read_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.size(0));
  auto cu_k = read_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.size(0));
  TORCH_CHECK(cu_q.size() == cu_k.size(), "varlen_attention: cu_seqlens_q has ", cu_q.size(),
              " entries but cu_seqlens_k has ", cu_k.size(), " (both must be batch + 1)");
  return {std::move(cu_q), std::move(cu_k)};
}

namespace {

std::tuple<at::Tensor, at::Tensor> varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v,
                                                        const at::Tensor& cu_seqlens_q,
                                                        const at::Tensor& cu_seqlens_k, bool causal,
                                                        double scale, bool return_lse) {
  auto [cu_q, cu_k] = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, scale);
  const int64_t total_q = q.size(0), heads_q = q.size(1), heads_kv = k.size(1), dim = q.size(2);
  at::Tensor out = at::empty({total_q, heads_q, dim}, q.options());
  at::Tensor lse = at::empty({return_lse ? total_q : 0, heads_q}, q.options().dtype(at::kFloat));
  if (total_q == 0) return {out, lse};

  // K and V are visited once per query tile: widen them to fp32 once here rather than at
  // every visit (a no-op for fp32 inputs).
  const at::Tensor k32 = k.to(at::kFloat);
  const at::Tensor v32 = v.to(at::kFloat);
  Args args = packed_engine_args(q, k32, v32, out, return_lse ? &lse : nullptr, causal, scale);
  args.q_base = cu_q.data();
  args.k_base = cu_k.data();
  args.cu_seqlens_q = cu_q.data();
  args.cu_seqlens_k = cu_k.data();

  const Schedule schedule = varlen_schedule(cu_q, cu_k, heads_kv, causal, positions_per_item(heads_q / heads_kv));
  run_schedule(args, schedule.items, schedule.cost);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("varlen_attention", &varlen_attention_cpu); }

}  // namespace lmkernels::attention
