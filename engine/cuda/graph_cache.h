// GraphCache: CUDA graphs of the CUDA backend's decode steps, one per batch-size bucket,
// captured on first use and replayed after.
#pragma once

#include <cuda_runtime.h>

#include <map>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"

namespace lizard::cuda {

class GraphCache {
 public:
  GraphCache() = default;
  GraphCache(const GraphCache&) = delete;
  GraphCache& operator=(const GraphCache&) = delete;
  ~GraphCache();

  // Launches bucket `bucket`'s graph on `stream`, first capturing what `enqueue` puts on the
  // stream when the bucket has none yet.
  absl::Status Launch(int bucket, cudaStream_t stream, absl::FunctionRef<absl::Status()> enqueue);

 private:
  std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace lizard::cuda
