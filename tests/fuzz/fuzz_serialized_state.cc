// Fuzzes ParseSerializedState against the layout of a small hybrid model (lizard and softmax
// layers), and ParseOrConvertSerializedState into the same model's layout with other dtypes (the
// conversion a backend runs on load). Each input is parsed as given, and once more with its
// header checksum recomputed so that the fuzzer also reaches the checks behind the crc32. Every
// returned view is read in full.
// The seeds in corpus/serialized_state are SerializeState output for this layout at positions 0
// and 3 (the second with softmax KV).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <zlib.h>

#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"

namespace {

constexpr std::string_view kConfig = R"({
  "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 3,
  "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
  "max_position_embeddings": 64,
  "lizard": {"feature_dim": 2, "window_size": 4, "num_meta_tokens": 1,
             "layer_types": ["lizard", "softmax", "lizard"]}
})";

constexpr size_t kHeaderBytes = 40;
constexpr size_t kCrcOffset = 12;

const lizard::ModelConfig& Config() {
  static const lizard::ModelConfig config = [] {
    auto parsed = lizard::ParseModelConfig(kConfig);
    if (!parsed.ok()) abort();
    return *parsed;
  }();
  return config;
}

// The layout of the seeds, and another dtype choice of the same model to convert into.
const lizard::StateLayout& Layout() {
  static const lizard::StateLayout layout(Config(), lizard::DType::kF32, lizard::DType::kF16);
  return layout;
}
const lizard::StateLayout& OtherLayout() {
  static const lizard::StateLayout layout(Config(), lizard::DType::kBF16, lizard::DType::kF32);
  return layout;
}

// Sums every byte of the views so that reads outside the input are seen by ASan.
unsigned Touch(std::string_view bytes) {
  unsigned sum = 0;
  for (char c : bytes) sum += static_cast<unsigned char>(c);
  return sum;
}

unsigned TouchView(const absl::StatusOr<lizard::SerializedStateView>& view) {
  if (!view.ok()) return 0;
  unsigned sum = Touch(view->slot);
  for (std::string_view kv : view->softmax_kv) sum += Touch(kv);
  return sum;
}

void Parse(std::string_view bytes) {
  unsigned sum = TouchView(lizard::ParseSerializedState(Layout(), bytes));
  std::string converted;
  sum += TouchView(lizard::ParseOrConvertSerializedState(Config(), OtherLayout(), bytes, &converted));
  volatile unsigned sink = sum;
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  Parse(input);
  if (size >= kHeaderBytes) {
    std::string fixed(input);
    const uint32_t crc = static_cast<uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(fixed.data() + kHeaderBytes), fixed.size() - kHeaderBytes));
    for (int i = 0; i < 4; ++i) fixed[kCrcOffset + i] = static_cast<char>(crc >> (8 * i));  // little-endian
    Parse(fixed);
  }
  return 0;
}
