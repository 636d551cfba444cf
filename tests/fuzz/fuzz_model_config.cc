// Fuzzes ParseModelConfig with arbitrary config.json text: it must return a status, never crash.
// An accepted config is laid out as the engine does at load (StateLayout), which must not
// overflow.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = lizard::ParseModelConfig(std::string_view(reinterpret_cast<const char*>(data), size));
  if (config.ok()) lizard::StateLayout layout(*config, config->state_dtype, config->torch_dtype);
  return 0;
}
