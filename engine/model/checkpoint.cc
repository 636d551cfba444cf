#include "engine/model/checkpoint.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "engine/model/tensor_table.h"
#include "nlohmann/json.hpp"

namespace lizard {
namespace {

using Json = nlohmann::json;

// Debian's Abseil has its own absl::string_view; this converts a std::string_view for StrCat.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// A whole file mapped read-only; unmapped on destruction.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const std::string why = std::strerror(errno);
      if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": file not found"));
      return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open: ", why));
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": fstat failed: ", why));
    }
    auto file = std::unique_ptr<MappedFile>(new MappedFile());
    file->size_ = static_cast<size_t>(st.st_size);
    if (file->size_ > 0) {  // mmap refuses length 0; an empty file is reported as truncated later
      void* addr = ::mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (addr == MAP_FAILED) {
        const std::string why = std::strerror(errno);
        ::close(fd);
        return absl::InternalError(absl::StrCat(path, ": mmap failed: ", why));
      }
      file->data_ = static_cast<const uint8_t*>(addr);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
    return file;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

absl::StatusOr<DType> ParseSafetensorsDType(const Json& v) {
  if (v == "F32") return DType::kF32;
  if (v == "F16") return DType::kF16;
  if (v == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype ", v.dump(), " (expected F32, F16 or BF16)"));
}

// Parses one header entry {dtype, shape, data_offsets} into `view`; errors are prefixed by the
// caller with file and tensor name. `data`/`data_size` describe the data area after the header.
absl::Status ParseEntry(const Json& entry, const uint8_t* data, size_t data_size, TensorView* view) {
  if (!entry.is_object()) return absl::InvalidArgumentError("header entry is not an object");
  const auto dtype_it = entry.find("dtype");
  const auto shape_it = entry.find("shape");
  const auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || shape_it == entry.end() || offsets_it == entry.end()) {
    return absl::InvalidArgumentError("header entry needs dtype, shape and data_offsets");
  }
  absl::StatusOr<DType> dtype = ParseSafetensorsDType(*dtype_it);
  if (!dtype.ok()) return dtype.status();
  view->dtype = *dtype;

  if (!shape_it->is_array()) return absl::InvalidArgumentError("shape is not a list");
  // numel is bounded by the data area, so the product cannot overflow once checked per step.
  uint64_t numel = 1;
  bool too_large = false;
  for (const Json& d : *shape_it) {
    if (!d.is_number_unsigned()) return absl::InvalidArgumentError(absl::StrCat("bad shape entry ", d.dump()));
    const uint64_t dim = d.get<uint64_t>();
    view->shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && numel > data_size / dim) too_large = true;
    numel *= dim;
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2 || !(*offsets_it)[0].is_number_unsigned() ||
      !(*offsets_it)[1].is_number_unsigned()) {
    return absl::InvalidArgumentError(absl::StrCat("bad data_offsets ", offsets_it->dump()));
  }
  const uint64_t begin = (*offsets_it)[0].get<uint64_t>();
  const uint64_t end = (*offsets_it)[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", begin, ", ", end,
                                                   "] outside the data area of ", data_size, " bytes"));
  }
  if (too_large || numel * DTypeSize(view->dtype) != end - begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but shape ",
        ShapeString(view->shape), " of ", AsAbsl(DTypeName(view->dtype)), " needs ",
        too_large ? std::string("more than the file has") : absl::StrCat(numel * DTypeSize(view->dtype))));
  }
  view->data = data + begin;
  view->nbytes = end - begin;
  return absl::OkStatus();
}

class SafetensorsCheckpoint : public Checkpoint {
 public:
  const TensorView* Find(std::string_view name) const override {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> Names() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& [name, view] : tensors_) names.push_back(name);
    return names;
  }

  // Maps `path` and adds its tensors; a name already present (from another shard) is refused.
  absl::Status AddFile(const std::string& path) {
    absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
    if (!file.ok()) return file.status();
    const uint8_t* bytes = (*file)->data();
    const size_t size = (*file)->size();
    if (size < 8) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated (", size, " bytes, no header)"));
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
    if (header_len > size - 8) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": truncated: header length ", header_len,
                                                     " is beyond the file size ", size));
    }
    const char* header_text = reinterpret_cast<const char*>(bytes + 8);
    const Json header = Json::parse(header_text, header_text + header_len, nullptr, /*allow_exceptions=*/false);
    if (header.is_discarded() || !header.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": header is not a valid JSON object"));
    }
    const uint8_t* data = bytes + 8 + header_len;
    const size_t data_size = size - 8 - header_len;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      TensorView view;
      view.name = name;
      if (absl::Status s = ParseEntry(entry, data, data_size, &view); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, ": ", s.message()));
      }
      if (tensors_.count(name) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor ", name, " is also stored in ", file_of_[name]));
      }
      file_of_[name] = path;
      tensors_.emplace(name, std::move(view));
    }
    files_.push_back(*std::move(file));
    return absl::OkStatus();
  }

  // The file a tensor came from ("" when absent).
  std::string FileOf(const std::string& name) const {
    auto it = file_of_.find(name);
    return it == file_of_.end() ? "" : it->second;
  }

 private:
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView, std::less<>> tensors_;
  std::map<std::string, std::string> file_of_;
};

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Opens the shards named by model.safetensors.index.json.
absl::Status AddShards(const std::string& model_dir, const std::string& index_path,
                       SafetensorsCheckpoint& checkpoint) {
  absl::StatusOr<std::string> text = ReadTextFile(index_path);
  if (!text.ok()) return text.status();
  const Json index = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": expected a JSON object with a \"weight_map\" object"));
  }
  const Json& weight_map = index["weight_map"];
  std::set<std::string> shards;
  for (const auto& [name, file] : weight_map.items()) {
    // Shards must be plain file names inside the model directory.
    if (!file.is_string() || file.get<std::string>().empty() ||
        file.get<std::string>().find('/') != std::string::npos || file == "." || file == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor ", name, ": bad shard file name ", file.dump()));
    }
    shards.insert(file.get<std::string>());
  }
  for (const std::string& shard : shards) {
    if (absl::Status s = checkpoint.AddFile(model_dir + "/" + shard); !s.ok()) return s;
  }
  for (const auto& [name, file] : weight_map.items()) {
    const std::string path = model_dir + "/" + file.get<std::string>();
    const std::string actual = checkpoint.FileOf(name);
    if (actual.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": tensor ", name, " is listed in the index but absent from ", path));
    }
    if (actual != path) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor ", name, " is listed in ", path,
                                                     " but stored in ", actual));
    }
  }
  return absl::OkStatus();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Why a checkpoint tensor that the config does not expect is there, for the error message.
std::string UnexpectedReason(const ModelConfig& c, const std::string& name) {
  constexpr std::string_view kPrefix = "model.layers.";
  if (name.rfind(kPrefix, 0) == 0) {
    const int64_t layer = std::atoll(name.c_str() + kPrefix.size());
    if (layer < 0 || layer >= c.num_layers) {
      return absl::StrCat("unexpected tensor: config has num_hidden_layers = ", c.num_layers);
    }
    if (c.layer_types[layer] == LayerType::kSoftmax) {
      return absl::StrCat("unexpected tensor: config says layer ", layer, " is a softmax layer");
    }
  }
  return "unexpected tensor: not part of a Lizard/Llama checkpoint for this config";
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  auto checkpoint = std::make_unique<SafetensorsCheckpoint>();
  const std::string index_path = model_dir + "/model.safetensors.index.json";
  const std::string single_path = model_dir + "/model.safetensors";
  if (FileExists(index_path)) {
    if (absl::Status s = AddShards(model_dir, index_path, *checkpoint); !s.ok()) return s;
  } else if (FileExists(single_path)) {
    if (absl::Status s = checkpoint->AddFile(single_path); !s.ok()) return s;
  } else {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": neither model.safetensors nor model.safetensors.index.json found"));
  }
  return checkpoint;
}

absl::Status ValidateCheckpoint(const ModelConfig& config, const Checkpoint& checkpoint) {
  if (static_cast<int64_t>(config.layer_types.size()) != config.num_layers) {
    return absl::InvalidArgumentError("config: layer_types does not have num_hidden_layers entries");
  }
  std::set<std::string> expected_names;
  for (const TensorSpec& e : TensorTable(config)) {
    expected_names.insert(e.name);
    const TensorView* t = checkpoint.Find(e.name);
    if (t == nullptr) {
      if (e.when_absent == WhenAbsent::kRefused) return absl::InvalidArgumentError(absl::StrCat(e.name, ": missing from checkpoint"));
      continue;
    }
    if (t->shape != e.shape) {
      return absl::InvalidArgumentError(absl::StrCat(e.name, ": expected shape ", ShapeString(e.shape),
                                                     ", checkpoint has ", ShapeString(t->shape)));
    }
  }
  for (const std::string& name : checkpoint.Names()) {
    if (expected_names.count(name) != 0) continue;
    // Non-persistent RoPE buffers that old exports saved; the engine recomputes them.
    if (absl::EndsWith(name, "rotary_emb.inv_freq")) continue;
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", UnexpectedReason(config, name)));
  }
  return absl::OkStatus();
}

namespace {

// IEEE half -> float, exact for every half value (normal, subnormal, zero, inf, nan).
float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf/nan
  if (exponent != 0) {
    // Rebias the exponent from 15 to 127.
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  // Zero or subnormal: mantissa * 2^-24, exactly representable as a float.
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  return sign != 0 ? -magnitude : magnitude;
}

}  // namespace

void ConvertToF32(const TensorView& tensor, float* out) {
  const int64_t n = tensor.numel();
  if (n == 0) return;  // `out` may then be null, which memcpy must not be given
  // Tensor data need not be aligned in the file, so every element is read with memcpy.
  const auto* bytes = static_cast<const uint8_t*>(tensor.data);
  switch (tensor.dtype) {
    case DType::kF32:
      std::memcpy(out, bytes, n * sizeof(float));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes + 2 * i, 2);
        out[i] = std::bit_cast<float>(static_cast<uint32_t>(v) << 16);  // bf16 = upper half of f32
      }
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes + 2 * i, 2);
        out[i] = HalfToFloat(v);
      }
      return;
  }
}

std::string LayerTensorName(int64_t layer, std::string_view suffix) {
  return absl::StrCat("model.layers.", layer, ".", AsAbsl(suffix));
}

}  // namespace lizard
