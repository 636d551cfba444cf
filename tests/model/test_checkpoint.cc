#include "tests/model/test_checkpoint.h"

#include <cmath>
#include <limits>

namespace lizard::testing {

float ReferenceHalfToFloat(uint16_t bits) {
  const float sign = (bits & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  if (exponent == 0x1f) return mantissa == 0 ? sign * std::numeric_limits<float>::infinity() : std::nanf("");
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -24);
  return sign * std::ldexp(1.0f + mantissa / 1024.0f, exponent - 15);
}

float ReferenceBF16ToFloat(uint16_t bits) {
  const float sign = (bits & 0x8000) ? -1.0f : 1.0f;
  const int exponent = (bits >> 7) & 0xff;
  const int mantissa = bits & 0x7f;
  if (exponent == 0xff) return mantissa == 0 ? sign * std::numeric_limits<float>::infinity() : std::nanf("");
  if (exponent == 0) return sign * std::ldexp(static_cast<float>(mantissa), -133);  // subnormal: m/128 * 2^-126
  return sign * std::ldexp(1.0f + mantissa / 128.0f, exponent - 127);
}

TestTensor RandomTensor(const std::string& name, DType dtype, std::vector<int64_t> shape, std::mt19937& rng) {
  TestTensor t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::kF32) {
      // mt19937 output is fully specified, so these values are the same everywhere.
      const float v = static_cast<float>(rng() % 65536) / 16384.0f - 2.0f;
      t.bytes.append(reinterpret_cast<const char*>(&v), 4);
      t.values.push_back(v);
      continue;
    }
    // Random finite 16-bit patterns: any sign, exponent below all-ones.
    uint16_t bits;
    do {
      bits = static_cast<uint16_t>(rng());
    } while (dtype == DType::kF16 ? ((bits >> 10) & 0x1f) == 0x1f : ((bits >> 7) & 0xff) == 0xff);
    t.bytes.append(reinterpret_cast<const char*>(&bits), 2);
    t.values.push_back(dtype == DType::kF16 ? ReferenceHalfToFloat(bits) : ReferenceBF16ToFloat(bits));
  }
  return t;
}

std::string SafetensorsBytes(const std::string& header_json, const std::string& data) {
  std::string out;
  const uint64_t len = header_json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + header_json + data;
}

std::string SafetensorsBytes(const std::vector<TestTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const TestTensor& t : tensors) {
    const char* dtype = t.dtype == DType::kF32 ? "F32" : t.dtype == DType::kF16 ? "F16" : "BF16";
    header[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  return SafetensorsBytes(header.dump(), data);
}

nlohmann::json SmallConfigJson() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": null,
    "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
    "max_position_embeddings": 256, "torch_dtype": "float32",
    "lizard": {"feature_dim": 4, "window_size": 4, "num_meta_tokens": 2, "window_rope": true,
               "layer_types": ["lizard", "softmax", "lizard"]}
  })");
}

std::vector<TestTensor> ModelTensors(const ModelConfig& c, DType dtype, bool with_biases, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t Hd = c.hidden_size, H = c.num_heads, Hkv = c.num_kv_heads, D = c.head_dim;
  const int64_t I = c.intermediate_size, V = c.vocab_size, F = c.feature_dim, m = c.num_meta_tokens;
  std::vector<TestTensor> out;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    out.push_back(RandomTensor(name, dtype, std::move(shape), rng));
  };
  add("model.embed_tokens.weight", {V, Hd});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {Hd});
    add(p + "self_attn.q_proj.weight", {H * D, Hd});
    add(p + "self_attn.k_proj.weight", {Hkv * D, Hd});
    add(p + "self_attn.v_proj.weight", {Hkv * D, Hd});
    add(p + "self_attn.o_proj.weight", {Hd, H * D});
    if (with_biases) {
      add(p + "self_attn.q_proj.bias", {H * D});
      add(p + "self_attn.k_proj.bias", {Hkv * D});
      add(p + "self_attn.v_proj.bias", {Hkv * D});
      add(p + "self_attn.o_proj.bias", {Hd});
    }
    if (c.layer_types[l] == LayerType::kLizard) {
      add(p + "self_attn.feature_map_q.weight", {H, D, F});
      add(p + "self_attn.feature_map_k.weight", {H, D, F});
      add(p + "self_attn.forget_gate.weight", {H, Hd});
      add(p + "self_attn.meta_logits", {H, m});
      add(p + "self_attn.window_factor", {H});
      if (with_biases) {
        add(p + "self_attn.feature_map_q.bias", {H, F});
        add(p + "self_attn.feature_map_k.bias", {H, F});
        add(p + "self_attn.forget_gate.bias", {H});
      }
    }
    add(p + "post_attention_layernorm.weight", {Hd});
    add(p + "mlp.gate_proj.weight", {I, Hd});
    add(p + "mlp.up_proj.weight", {I, Hd});
    add(p + "mlp.down_proj.weight", {Hd, I});
  }
  add("model.norm.weight", {Hd});
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, Hd});
  return out;
}

}  // namespace lizard::testing
