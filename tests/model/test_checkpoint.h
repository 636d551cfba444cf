// Test helpers: a small safetensors writer, reference dtype decoders and a small Lizard config
// with a matching random checkpoint.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/model/model_config.h"
#include "nlohmann/json.hpp"

namespace lizard::testing {

// Reference decoders written from the IEEE / bfloat16 definitions (value = mantissa * 2^exp),
// independent of the bit manipulation in checkpoint.cc.
float ReferenceHalfToFloat(uint16_t bits);
float ReferenceBF16ToFloat(uint16_t bits);

struct TestTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string bytes;          // as stored in the file
  std::vector<float> values;  // what ConvertToF32 must produce
};

// Random finite values in [-2, 2) (F32), or random finite bit patterns (F16, BF16).
TestTensor RandomTensor(const std::string& name, DType dtype, std::vector<int64_t> shape, std::mt19937& rng);

// The bytes of a safetensors file holding `tensors` in order (with a __metadata__ entry).
std::string SafetensorsBytes(const std::vector<TestTensor>& tensors);
// A safetensors file with a given header text and data area.
std::string SafetensorsBytes(const std::string& header_json, const std::string& data);

// A small hybrid config: L=3 (lizard, softmax, lizard), Hd=16, H=4, Hkv=2, D=8, I=24, V=32,
// F=4, w=4, m=2.
nlohmann::json SmallConfigJson();

// Every tensor the spec lists for `config` (optional biases when `with_biases`), random values.
std::vector<TestTensor> ModelTensors(const ModelConfig& config, DType dtype, bool with_biases, uint32_t seed);

}  // namespace lizard::testing
