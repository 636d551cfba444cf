#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"

namespace lizard {
namespace {

constexpr char kCudaPluginName[] = "liblizard_cuda_plugin.so";

// The CUDA backend lives in a plugin (see engine/cuda/CMakeLists.txt for why), looked up in
// order: $LIZARD_CUDA_PLUGIN, the build tree, ../lib next to the executable (a bundle), and
// the dynamic loader's own search path.
struct CudaPlugin {
  bool (*device_available)() = nullptr;
  void (*create)(const BackendOptions*, absl::StatusOr<std::unique_ptr<Backend>>*) = nullptr;
  std::string error;  // why it could not be loaded
};

const CudaPlugin& LoadCudaPlugin() {
  static const CudaPlugin plugin = [] {
    CudaPlugin p;
    std::vector<std::string> candidates;
    if (const char* path = std::getenv("LIZARD_CUDA_PLUGIN")) candidates.push_back(path);
#ifdef LIZARD_CUDA_PLUGIN_BUILD_PATH
    candidates.push_back(LIZARD_CUDA_PLUGIN_BUILD_PATH);
#endif
    std::error_code error;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", error);
    if (!error) candidates.push_back(exe.parent_path().parent_path() / "lib" / kCudaPluginName);
    candidates.push_back(kCudaPluginName);
    for (const std::string& path : candidates) {
      if (path.find('/') != std::string::npos && !std::filesystem::exists(path)) continue;
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        absl::StrAppend(&p.error, p.error.empty() ? "" : "; ", dlerror());
        continue;
      }
      p.device_available = reinterpret_cast<bool (*)()>(dlsym(handle, "LizardCudaDeviceAvailable"));
      p.create = reinterpret_cast<decltype(p.create)>(dlsym(handle, "LizardCreateCudaBackend"));
      if (p.device_available != nullptr && p.create != nullptr) return p;
      p.error = absl::StrCat(path, " lacks the plugin entry points");
      p.device_available = nullptr;
      p.create = nullptr;
    }
    if (p.error.empty()) p.error = absl::StrCat(kCudaPluginName, " not found");
    return p;
  }();
  return plugin;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  const CudaPlugin& plugin = LoadCudaPlugin();
  if (plugin.create == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CUDA backend is not available: ", plugin.error));
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = absl::InternalError("plugin returned nothing");
  plugin.create(&options, &backend);
  return backend;
}

}  // namespace

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend \"", name, "\" (expected auto, cpu or cuda)"));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.kind) {
    case BackendKind::kCpu:
      return CreateCpuBackend(options);
    case BackendKind::kCuda:
      return CreateCudaBackend(options);
    case BackendKind::kAuto: {
      const CudaPlugin& plugin = LoadCudaPlugin();
      if (plugin.device_available != nullptr && plugin.device_available()) {
        return CreateCudaBackend(options);
      }
      std::fprintf(stderr, "no usable CUDA device (%s): using the CPU backend\n",
                   plugin.device_available == nullptr ? plugin.error.c_str() : "none found");
      return CreateCpuBackend(options);
    }
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

}  // namespace lizard
