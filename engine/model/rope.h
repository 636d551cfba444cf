// RoPE tables: the inverse frequencies both backends rotate queries and keys with.
#pragma once

#include <vector>

#include "engine/model/model_config.h"

namespace lizard {

// Hugging Face Llama RoPE: inv_freq[i] = theta^(-2i/D) (by exact_math.h, so
// every machine gets the same bits) for i < D/2, adjusted by the llama3
// rope_scaling rule when the config has it.
std::vector<double> RopeInverseFrequencies(const ModelConfig& config);

}  // namespace lizard
