// GraphCache: see graph_cache.h.
#include "engine/cuda/graph_cache.h"

#include "engine/cuda/device_memory.h"

namespace lizard::cuda {

GraphCache::~GraphCache() {
  for (auto& [bucket, exec] : graphs_) cudaGraphExecDestroy(exec);
}

absl::Status GraphCache::Launch(int bucket, cudaStream_t stream, absl::FunctionRef<absl::Status()> enqueue) {
  auto it = graphs_.find(bucket);
  if (it == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    LIZARD_CUDA_RETURN(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    const absl::Status st = enqueue();
    // The capture ends whatever `enqueue` returned, so the stream is usable again.
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    LIZARD_RETURN_IF_ERROR(st);
    LIZARD_CUDA_RETURN(end);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    LIZARD_CUDA_RETURN(inst);
    it = graphs_.emplace(bucket, exec).first;
  }
  LIZARD_CUDA_RETURN(cudaGraphLaunch(it->second, stream));
  return absl::OkStatus();
}

}  // namespace lizard::cuda
