#include "engine/model/tensor_table.h"

#include <cmath>
#include <string_view>
#include <utility>

#include "engine/model/checkpoint.h"

namespace lizard {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<TensorSpec> TensorTable(const ModelConfig& c) {
  const int64_t Hd = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int64_t I = c.intermediate_size, V = c.vocab_size, F = c.feature_dim, m = c.num_meta_tokens;
  const int64_t qd = H * D, kd = Hkv * D;
  // N(0, 1/fan_in) keeps each projection's output at roughly unit scale; norms are 1 + noise.
  auto proj_std = [](int64_t fan_in) { return 1.0 / std::sqrt(static_cast<double>(fan_in)); };
  constexpr double kNormNoise = 0.1;
  const DType bf16 = DType::kBF16, f32 = DType::kF32;

  std::vector<TensorSpec> out;
  auto add = [&](std::string name, int64_t layer, TensorRole role, std::vector<int64_t> shape,
                 WhenAbsent when_absent, DType device_dtype, double mean, double stddev,
                 FusedInto fused = FusedInto::kNone, int64_t fused_offset = 0) {
    out.push_back({std::move(name), layer, role, std::move(shape), when_absent, device_dtype, mean, stddev,
                   fused, fused_offset});
  };
  constexpr WhenAbsent kRefused = WhenAbsent::kRefused, kNoTensor = WhenAbsent::kNoTensor,
                       kZeros = WhenAbsent::kZeros;
  using R = TensorRole;
  using Fused = FusedInto;

  // Embedding rows at 1/sqrt(Hd) so tied logits (embed . normed x) are also of unit scale.
  add("model.embed_tokens.weight", -1, R::kEmbed, {V, Hd}, kRefused, bf16, 0.0, proj_std(Hd));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto name = [&](std::string_view suffix) { return LayerTensorName(l, suffix); };
    add(name("input_layernorm.weight"), l, R::kInputNorm, {Hd}, kRefused, f32, 1.0, kNormNoise);
    add(name("post_attention_layernorm.weight"), l, R::kPostNorm, {Hd}, kRefused, f32, 1.0, kNormNoise);
    add(name("self_attn.q_proj.weight"), l, R::kQWeight, {qd, Hd}, kRefused, bf16, 0.0, proj_std(Hd), Fused::kQkvg, 0);
    add(name("self_attn.q_proj.bias"), l, R::kQBias, {qd}, kNoTensor, f32, 0.0, 0.0, Fused::kQkvgBias, 0);
    add(name("self_attn.k_proj.weight"), l, R::kKWeight, {kd, Hd}, kRefused, bf16, 0.0, proj_std(Hd), Fused::kQkvg,
        qd * Hd);
    add(name("self_attn.k_proj.bias"), l, R::kKBias, {kd}, kNoTensor, f32, 0.0, 0.0, Fused::kQkvgBias, qd);
    add(name("self_attn.v_proj.weight"), l, R::kVWeight, {kd, Hd}, kRefused, bf16, 0.0, proj_std(Hd), Fused::kQkvg,
        (qd + kd) * Hd);
    add(name("self_attn.v_proj.bias"), l, R::kVBias, {kd}, kNoTensor, f32, 0.0, 0.0, Fused::kQkvgBias, qd + kd);
    add(name("self_attn.o_proj.weight"), l, R::kOWeight, {Hd, qd}, kRefused, bf16, 0.0, proj_std(qd));
    add(name("self_attn.o_proj.bias"), l, R::kOBias, {Hd}, kNoTensor, f32, 0.0, 0.0);
    if (c.layer_types[l] == LayerType::kLizard) {
      add(name("self_attn.feature_map_q.weight"), l, R::kFeatureMapQ, {H, D, F}, kRefused, f32, 0.0, proj_std(D));
      add(name("self_attn.feature_map_k.weight"), l, R::kFeatureMapK, {H, D, F}, kRefused, f32, 0.0, proj_std(D));
      add(name("self_attn.feature_map_q.bias"), l, R::kFeatureMapQBias, {H, F}, kZeros, f32, 0.0, 0.1);
      add(name("self_attn.feature_map_k.bias"), l, R::kFeatureMapKBias, {H, F}, kZeros, f32, 0.0, 0.1);
      // The forget gate's rows follow v's in the fused projection.
      add(name("self_attn.forget_gate.weight"), l, R::kForgetGateWeight, {H, Hd}, kRefused, bf16, 0.0, proj_std(Hd),
          Fused::kQkvg, (qd + 2 * kd) * Hd);
      // Gate bias around 3: sigmoid ~0.95, a long but decaying memory like trained gates.
      add(name("self_attn.forget_gate.bias"), l, R::kForgetGateBias, {H}, kZeros, f32, 3.0, 0.5, Fused::kQkvgBias,
          qd + 2 * kd);
      add(name("self_attn.meta_logits"), l, R::kMetaLogits, {H, m}, kRefused, f32, 0.0, 1.0);
      add(name("self_attn.window_factor"), l, R::kWindowFactor, {H}, kRefused, f32, 0.5, 0.1);
    }
    add(name("mlp.gate_proj.weight"), l, R::kMlpGate, {I, Hd}, kRefused, bf16, 0.0, proj_std(Hd), Fused::kGateUp, 0);
    add(name("mlp.up_proj.weight"), l, R::kMlpUp, {I, Hd}, kRefused, bf16, 0.0, proj_std(Hd), Fused::kGateUp, I * Hd);
    add(name("mlp.down_proj.weight"), l, R::kMlpDown, {Hd, I}, kRefused, bf16, 0.0, proj_std(I));
  }
  add("model.norm.weight", -1, R::kFinalNorm, {Hd}, kRefused, f32, 1.0, kNormNoise);
  // Some tied checkpoints still store lm_head; it is checked but unused then.
  add("lm_head.weight", -1, R::kLmHead, {V, Hd}, c.tie_word_embeddings ? WhenAbsent::kEmbedCopy : kRefused, bf16,
      0.0, proj_std(Hd));
  return out;
}

}  // namespace lizard
