// Every op schema of lmkernels, one comment line each, and the Python module (_C).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <torch/library.h>

#include "lmkernels/cpu_isa.h"
#include "chunk_cache/chunk_cache_bindings.h"
#include "replay/replay_bindings.h"

TORCH_LIBRARY(lmkernels, m) {
  // Rotate cached keys in place from old_pos to new_pos; k: [batch, tokens, heads, head_dim].
  m.def("rope_rerotate_(Tensor(a!) k, Tensor old_pos, Tensor new_pos, Tensor inv_freq, bool neox) -> ()");
  // Apply RoPE in place from per-token tables; x: [batch, tokens, heads, head_dim], cos/sin: [batch or 1, tokens, rotary_dim / 2].
  m.def("rope_apply_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()");
  // Attention of q [B, Hq, N, D] over the key blocks a CSR index (crow, col) lists per query block.
  m.def("block_sparse_attention(Tensor q, Tensor k, Tensor v, Tensor crow, Tensor col, int block_size, bool causal, float scale, bool return_lse) -> (Tensor, Tensor)");
  // Attention over packed variable-length sequences; q [total_q, Hq, D], k/v [total_k, Hkv, D].
  // Write chunk k/v [tokens, H, D] into cache slots [slots, H, D], rotating k from old_pos to new_pos.
  m.def("scatter_kv_(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor slot_mapping, Tensor old_pos, Tensor new_pos, Tensor inv_freq, bool neox) -> ()");
  // Per-token squared L2 distance between two KV tensors [batch, tokens, heads, head_dim] -> [batch, tokens].
  m.def("kv_deviation(Tensor a, Tensor b) -> Tensor");
  // Per row, the max(floor(ratio * tokens), 1) highest-scoring token indices, ascending (ties: lower index).
  m.def("select_tokens(Tensor scores, float ratio) -> Tensor");
  // Bin-pack sequence lengths into rows of `capacity` tokens ("bfd" or "ffd"); -> (row, offset).
  m.def("pack_sequences(Tensor lengths, int capacity, str algorithm) -> (Tensor, Tensor)");
  // Mixed 2/4-bit quantization of a float32 weight [N, K] (quant_format.h); importance: [K] error weights.
  m.def("quantize_weight(Tensor weight, int group_size, int num_4bit_groups, str select, Tensor? importance) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same with GPTQ error feedback under hessian [K, K] = sum of x x^T over calibration inputs.
  m.def("quantize_weight_gptq(Tensor weight, Tensor hessian, int group_size, int num_4bit_groups, str select, float damp) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The packed weight back to float32 [N, K].
  m.def("dequantize_weight(Tensor codes_lo, Tensor codes_hi, Tensor hi_groups, Tensor scales, Tensor super_scales, int in_features, int group_size) -> Tensor");
  // y = x @ W^T (+ bias) with W packed; x [..., K] float32/bfloat16/float16 -> [..., N] in x's dtype.
  m.def("quant_linear(Tensor x, Tensor codes_lo, Tensor codes_hi, Tensor hi_groups, Tensor scales, Tensor super_scales, Tensor? bias, int in_features, int group_size) -> Tensor");
  m.def("flex_pattern_scores(Tensor q, Tensor k, int block_size, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  // flex_pattern_scores as device-side tensor ops: the CUDA impl's formulation, registered for testing on CPU too.
  m.def("_flex_pattern_scores_tensor_ops(Tensor q, Tensor k, int block_size, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("flex_select_blocks(Tensor vertical, Tensor slash, Tensor block_attn, Tensor query_aware, float gamma, int min_blocks, int max_blocks) -> (Tensor, Tensor, Tensor)");
  m.def("spliced_attention(Tensor q, Tensor k, Tensor v, Tensor q_positions, float scale) -> Tensor");
  m.def("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, bool causal, float scale, bool return_lse) -> (Tensor, Tensor)");
}

namespace nb = nanobind;

NB_MODULE(_C, m) {
  using namespace lmkernels;
  m.doc() = "lmkernels native module: registers torch.ops.lmkernels and the stateful classes";
  m.attr("torch_version") = LMKERNELS_TORCH_VERSION;
#ifdef LMKERNELS_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  m.def("cpu_isa", [] { return std::string(isa_name(active_isa())); },
        "The CPU kernel path in use: 'scalar', 'avx2' or 'avx512'.");
  m.def("best_cpu_isa", [] { return std::string(isa_name(best_supported_isa())); });
  m.def("supported_cpu_isas", [] {
    std::vector<std::string> names;
    for (CpuIsa isa : supported_isas()) names.emplace_back(isa_name(isa));
    return names;
  });
  m.def("set_cpu_isa", [](const std::string& name) { set_isa_override(parse_isa(name)); });
  m.def("clear_cpu_isa", &clear_isa_override);
  m.def("cpu_has_feature", &cpu_has_feature);
  replay::bind_replay(m);
  chunk_cache::bind_chunk_cache(m);
}
