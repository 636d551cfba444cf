// Fuzzes the safetensors parser of Checkpoint::Open: each input is written as model.safetensors
// into one temporary directory, opened, and every tensor it reports is read in full (so a view
// that leaves the mapped file is caught by ASan).
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/model/checkpoint.h"

namespace {

const std::string& ModelDir() {
  static const std::string dir = [] {
    char name[] = "/tmp/lizard_fuzz_checkpoint.XXXXXX";
    if (mkdtemp(name) == nullptr) abort();
    return std::string(name);
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ModelDir() + "/model.safetensors";
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) abort();
  if (size > 0 && std::fwrite(data, 1, size, file) != size) abort();
  std::fclose(file);

  auto checkpoint = lizard::Checkpoint::Open(ModelDir());
  if (!checkpoint.ok()) return 0;
  for (const std::string& name : (*checkpoint)->Names()) {
    const lizard::TensorView* tensor = (*checkpoint)->Find(name);
    if (tensor == nullptr) abort();
    std::vector<float> values(tensor->numel());
    lizard::ConvertToF32(*tensor, values.data());
  }
  return 0;
}
