#include "engine/model/model_config.h"

#include <algorithm>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace lizard {
namespace {

using Json = nlohmann::json;

// Debian's Abseil has its own absl::string_view (not std::string_view), so the helpers here
// take absl::string_view, which is what absl::StrCat and absl::Status accept.

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", field, ": ", problem));
}

// The value of `key` in `obj`, or nullptr when absent or null (both mean "use the default").
const Json* Find(const Json& obj, absl::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// Each Read* leaves *out unchanged when the field is absent and not required, so callers set
// defaults first. `path` is the name used in error messages (e.g. "lizard.window_size").
absl::Status ReadInt(const Json& obj, absl::string_view key, absl::string_view path, bool required,
                     int64_t* out) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return required ? FieldError(path, "required field is missing") : absl::OkStatus();
  if (!v->is_number_integer()) return FieldError(path, absl::StrCat("expected an integer, got ", v->dump()));
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return FieldError(path, "integer out of range");
  }
  *out = v->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadDouble(const Json& obj, absl::string_view key, absl::string_view path, bool required,
                        double* out) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return required ? FieldError(path, "required field is missing") : absl::OkStatus();
  if (!v->is_number()) return FieldError(path, absl::StrCat("expected a number, got ", v->dump()));
  *out = v->get<double>();
  return absl::OkStatus();
}

absl::Status ReadBool(const Json& obj, absl::string_view key, absl::string_view path, bool* out) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return FieldError(path, absl::StrCat("expected true or false, got ", v->dump()));
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::Status ReadTokenId(const Json& v, absl::string_view path, int32_t* out) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
    return FieldError(path, absl::StrCat("expected a non-negative token id, got ", v.dump()));
  }
  *out = static_cast<int32_t>(v.get<int64_t>());
  return absl::OkStatus();
}

absl::Status ReadDType(const Json& obj, absl::string_view key, absl::string_view path,
                       bool allow_float16, DType* out) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return absl::OkStatus();
  std::string name = v->is_string() ? v->get<std::string>() : v->dump();
  if (name == "float32") {
    *out = DType::kF32;
  } else if (name == "bfloat16") {
    *out = DType::kBF16;
  } else if (name == "float16" && allow_float16) {
    *out = DType::kF16;
  } else {
    return FieldError(path, absl::StrCat("unsupported dtype \"", name,
                                         "\" (expected float32, float16 or bfloat16)"));
  }
  return absl::OkStatus();
}

absl::Status RequirePositive(int64_t value, absl::string_view path) {
  if (value <= 0) return FieldError(path, absl::StrCat("must be positive, got ", value));
  return absl::OkStatus();
}

absl::Status ReadRopeScaling(const Json& obj, RopeScaling* out) {
  const Json* v = Find(obj, "rope_scaling");
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_object()) return FieldError("rope_scaling", "expected null or an object");
  // Hugging Face writes "rope_type" (newer) or "type" (older).
  const Json* type = Find(*v, "rope_type");
  if (type == nullptr) type = Find(*v, "type");
  if (type == nullptr || !type->is_string()) {
    return FieldError("rope_scaling.rope_type", "required field is missing");
  }
  const std::string type_name = type->get<std::string>();
  if (type_name == "default") return absl::OkStatus();  // plain RoPE
  if (type_name != "llama3") {
    return FieldError("rope_scaling.rope_type",
                      absl::StrCat("unsupported rope scaling \"", type_name, "\" (only llama3)"));
  }
  out->llama3 = true;
  if (auto s = ReadDouble(*v, "factor", "rope_scaling.factor", true, &out->factor); !s.ok()) return s;
  if (auto s = ReadDouble(*v, "low_freq_factor", "rope_scaling.low_freq_factor", true, &out->low_freq_factor);
      !s.ok()) {
    return s;
  }
  if (auto s = ReadDouble(*v, "high_freq_factor", "rope_scaling.high_freq_factor", true,
                          &out->high_freq_factor);
      !s.ok()) {
    return s;
  }
  if (auto s = ReadInt(*v, "original_max_position_embeddings",
                       "rope_scaling.original_max_position_embeddings", true,
                       &out->original_max_position_embeddings);
      !s.ok()) {
    return s;
  }
  if (out->factor <= 0) return FieldError("rope_scaling.factor", "must be positive");
  if (out->low_freq_factor <= 0 || out->high_freq_factor <= out->low_freq_factor) {
    return FieldError("rope_scaling.high_freq_factor",
                      "need 0 < low_freq_factor < high_freq_factor");
  }
  return RequirePositive(out->original_max_position_embeddings,
                         "rope_scaling.original_max_position_embeddings");
}

absl::Status ReadEosTokenIds(const Json& obj, std::vector<int32_t>* out) {
  const Json* v = Find(obj, "eos_token_id");
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_array()) {
    int32_t id = 0;
    if (auto s = ReadTokenId(*v, "eos_token_id", &id); !s.ok()) return s;
    out->push_back(id);
    return absl::OkStatus();
  }
  for (const Json& item : *v) {
    int32_t id = 0;
    if (auto s = ReadTokenId(item, "eos_token_id", &id); !s.ok()) return s;
    out->push_back(id);
  }
  return absl::OkStatus();
}

// The "lizard" object; `c.num_layers` is already known.
absl::Status ReadLizard(const Json& lizard, ModelConfig& c) {
  if (!lizard.is_object()) return FieldError("lizard", "expected an object");
  c.layer_types.assign(c.num_layers, LayerType::kLizard);
  if (const Json* types = Find(lizard, "layer_types"); types != nullptr) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != c.num_layers) {
      return FieldError("lizard.layer_types",
                        absl::StrCat("expected a list of num_hidden_layers (", c.num_layers,
                                     ") entries, got ", types->is_array() ? types->size() : 0));
    }
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const Json& t = (*types)[static_cast<size_t>(l)];
      if (t == "lizard") {
        c.layer_types[l] = LayerType::kLizard;
      } else if (t == "softmax") {
        c.layer_types[l] = LayerType::kSoftmax;
      } else {
        return FieldError("lizard.layer_types",
                          absl::StrCat("unknown layer type ", t.dump(), " at layer ", l,
                                       " (expected \"lizard\" or \"softmax\")"));
      }
    }
  }
  // The Lizard sizes matter only when some layer is a Lizard layer.
  const bool needed = c.num_lizard_layers() > 0;
  if (auto s = ReadInt(lizard, "feature_dim", "lizard.feature_dim", needed, &c.feature_dim); !s.ok()) return s;
  if (auto s = ReadInt(lizard, "window_size", "lizard.window_size", needed, &c.window_size); !s.ok()) return s;
  if (auto s = ReadInt(lizard, "num_meta_tokens", "lizard.num_meta_tokens", needed, &c.num_meta_tokens);
      !s.ok()) {
    return s;
  }
  if (auto s = ReadBool(lizard, "window_rope", "lizard.window_rope", &c.window_rope); !s.ok()) return s;
  if (auto s = ReadBool(lizard, "gla_normalize", "lizard.gla_normalize", &c.gla_normalize); !s.ok()) return s;
  if (auto s = ReadDType(lizard, "state_dtype", "lizard.state_dtype", true, &c.state_dtype); !s.ok()) return s;
  if (needed) {
    if (auto s = RequirePositive(c.feature_dim, "lizard.feature_dim"); !s.ok()) return s;
    if (auto s = RequirePositive(c.window_size, "lizard.window_size"); !s.ok()) return s;
  }
  if (c.num_meta_tokens < 0) {
    return FieldError("lizard.num_meta_tokens", absl::StrCat("must be >= 0, got ", c.num_meta_tokens));
  }
  return absl::OkStatus();
}

// The engine multiplies sizes in int64 (tensor shapes, state layout): each product must stay far
// from overflow whatever the config says. Computed in double, which cannot overflow here.
absl::Status CheckProductsFit(const ModelConfig& c) {
  constexpr double kMaxElements = static_cast<double>(int64_t{1} << 40);
  const double V = c.vocab_size, Hd = c.hidden_size, I = c.intermediate_size, H = c.num_heads;
  const double Hkv = c.num_kv_heads, D = c.head_dim, F = c.feature_dim, w = c.window_size;
  const struct {
    const char* what;
    double elements;
  } products[] = {
      {"vocab_size * hidden_size", V * Hd},
      {"intermediate_size * hidden_size", I * Hd},
      {"num_attention_heads * head_dim * hidden_size", H * D * Hd},
      {"num_attention_heads * 2 * lizard.feature_dim * head_dim", H * 2 * F * D},
      {"num_key_value_heads * lizard.window_size * head_dim", Hkv * w * D},
      {"num_attention_heads * lizard.num_meta_tokens", H * static_cast<double>(c.num_meta_tokens)},
  };
  for (const auto& p : products) {
    if (p.elements > kMaxElements) {
      return FieldError(p.what, absl::StrCat("too large (", p.elements, " > 2^40 elements)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
  }
  return 0;
}

int64_t ModelConfig::num_lizard_layers() const {
  return std::count(layer_types.begin(), layer_types.end(), LayerType::kLizard);
}

int64_t ModelConfig::num_softmax_layers() const {
  return std::count(layer_types.begin(), layer_types.end(), LayerType::kSoftmax);
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  const Json root = Json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json: expected a JSON object");

  ModelConfig c;
  // Hugging Face LlamaConfig defaults where a field may be left out.
  c.max_position_embeddings = 2048;
  const struct {
    const char* key;
    int64_t* out;
  } required_sizes[] = {
      {"vocab_size", &c.vocab_size},
      {"hidden_size", &c.hidden_size},
      {"intermediate_size", &c.intermediate_size},
      {"num_hidden_layers", &c.num_layers},
      {"num_attention_heads", &c.num_heads},
  };
  for (const auto& f : required_sizes) {
    if (auto s = ReadInt(root, f.key, f.key, true, f.out); !s.ok()) return s;
    if (auto s = RequirePositive(*f.out, f.key); !s.ok()) return s;
  }
  // layer_types gets one entry per layer: a corrupt count must not exhaust memory.
  constexpr int64_t kMaxLayers = 1 << 16;
  if (c.num_layers > kMaxLayers) {
    return FieldError("num_hidden_layers", absl::StrCat("must be at most ", kMaxLayers, ", got ", c.num_layers));
  }
  c.num_kv_heads = c.num_heads;
  if (auto s = ReadInt(root, "num_key_value_heads", "num_key_value_heads", false, &c.num_kv_heads); !s.ok()) {
    return s;
  }
  if (auto s = RequirePositive(c.num_kv_heads, "num_key_value_heads"); !s.ok()) return s;
  if (c.num_heads % c.num_kv_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat("num_attention_heads (", c.num_heads,
                                   ") is not a multiple of num_key_value_heads (", c.num_kv_heads, ")"));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  if (auto s = ReadInt(root, "head_dim", "head_dim", false, &c.head_dim); !s.ok()) return s;
  if (auto s = RequirePositive(c.head_dim, "head_dim"); !s.ok()) return s;

  if (auto s = ReadDouble(root, "rms_norm_eps", "rms_norm_eps", false, &c.rms_norm_eps); !s.ok()) return s;
  if (c.rms_norm_eps <= 0) return FieldError("rms_norm_eps", "must be positive");
  if (auto s = ReadDouble(root, "rope_theta", "rope_theta", false, &c.rope_theta); !s.ok()) return s;
  if (c.rope_theta <= 0) return FieldError("rope_theta", "must be positive");
  if (auto s = ReadRopeScaling(root, &c.rope_scaling); !s.ok()) return s;
  if (auto s = ReadBool(root, "tie_word_embeddings", "tie_word_embeddings", &c.tie_word_embeddings); !s.ok()) {
    return s;
  }
  if (const Json* bos = Find(root, "bos_token_id"); bos != nullptr) {
    if (auto s = ReadTokenId(*bos, "bos_token_id", &c.bos_token_id); !s.ok()) return s;
  }
  if (auto s = ReadEosTokenIds(root, &c.eos_token_ids); !s.ok()) return s;
  if (auto s = ReadInt(root, "max_position_embeddings", "max_position_embeddings", false,
                       &c.max_position_embeddings);
      !s.ok()) {
    return s;
  }
  if (auto s = RequirePositive(c.max_position_embeddings, "max_position_embeddings"); !s.ok()) return s;
  // Backends size per-sequence tables by it (the CUDA KV page table); 2^40 tokens is far beyond
  // any real context and keeps those products inside int64.
  constexpr int64_t kMaxPositions = int64_t{1} << 40;
  if (c.max_position_embeddings > kMaxPositions) {
    return FieldError("max_position_embeddings",
                      absl::StrCat("must be at most 2^40, got ", c.max_position_embeddings));
  }
  // Newer transformers versions write "dtype" instead of "torch_dtype".
  const char* dtype_key = Find(root, "torch_dtype") != nullptr ? "torch_dtype" : "dtype";
  if (auto s = ReadDType(root, dtype_key, dtype_key, true, &c.torch_dtype); !s.ok()) return s;

  if (const Json* lizard = Find(root, "lizard"); lizard != nullptr) {
    if (auto s = ReadLizard(*lizard, c); !s.ok()) return s;
  } else {
    c.layer_types.assign(c.num_layers, LayerType::kSoftmax);  // a plain Llama teacher
  }
  if (auto s = CheckProductsFit(c); !s.ok()) return s;
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(model_dir, ": ", config.status().message()));
  }
  // The directory's base name, ignoring trailing slashes.
  std::string_view dir = model_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.remove_suffix(1);
  const size_t slash = dir.rfind('/');
  config->name = std::string(slash == std::string_view::npos ? dir : dir.substr(slash + 1));
  return config;
}

absl::StatusOr<ModelConfig> ShapePreset(std::string_view name) {
  ModelConfig c;
  c.name = std::string(name);
  c.rms_norm_eps = 1e-5;
  c.torch_dtype = DType::kBF16;
  c.state_dtype = DType::kF32;
  c.window_rope = true;
  c.gla_normalize = true;
  c.num_meta_tokens = 4;
  if (name == "tiny") {
    c.hidden_size = 256;
    c.num_layers = 4;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.intermediate_size = 512;
    c.vocab_size = 2048;
    c.feature_dim = 32;
    c.window_size = 32;
    c.rope_theta = 10000.0;
    c.max_position_embeddings = 4096;
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
  } else if (name == "llama3.2-1b") {
    c.hidden_size = 2048;
    c.num_layers = 16;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 64;
    c.intermediate_size = 8192;
    c.vocab_size = 128256;
    c.feature_dim = 64;
    c.window_size = 128;
    c.rope_theta = 500000.0;
    c.tie_word_embeddings = true;
    c.max_position_embeddings = 131072;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128008, 128009};
  } else if (name == "llama3-8b") {
    c.hidden_size = 4096;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.intermediate_size = 14336;
    c.vocab_size = 128256;
    c.feature_dim = 128;
    c.window_size = 128;
    c.rope_theta = 500000.0;
    c.max_position_embeddings = 8192;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128009};
  } else {
    return absl::NotFoundError(
        absl::StrCat("unknown shape preset \"", std::string(name), "\" (expected tiny, llama3.2-1b or llama3-8b)"));
  }
  c.layer_types.assign(c.num_layers, LayerType::kLizard);
  return c;
}

}  // namespace lizard
