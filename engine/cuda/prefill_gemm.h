// PrefillGemm: the projections of prompt rows at tensor-core speed, through cuBLASLt, with each
// row's result bitwise independent of how many rows share the call and where the row sits.
//
// y[rows, out] (fp32) = x[rows, in] (bf16) w[out, in]^T (bf16), row-major: the contract of
// kernels::GemmBf16. cuBLAS's own heuristics pick a kernel (tile, split-K, stream-K) per row
// count, so a row's bits change with the load. Here Init fixes ONE algorithm per (in, out):
//   - a candidate of the heuristic (asked for kHeuristicRows rows, then for 1 row) that reports
//     one K split and no reduction scheme and needs at most kMaxWorkspace bytes of workspace:
//     each output is then summed over all of `in` by one thread block, in the kernel's fixed k
//     order (a split-K or stream-K kernel, whose split points follow the row count, needs room
//     for partial sums: 16 KiB for one 64x64 fp32 tile already; Hopper's kernels ask for 4 bytes,
//     their tile scheduler's counter, which decides which block computes a tile, not how);
//   - cublasLtMatmulAlgoCheck must accept it, with that workspace, at every row count from
//     some `pad_rows` up to max_rows; a call of fewer rows runs on a copy of its rows padded to
//     pad_rows (rows never meet in one output's sum, so the padding changes no bit). The first
//     candidate in the heuristic's order (fastest first) with pad_rows <= kMaxPadRows wins;
//     failing that, the one with the fewest pad_rows;
//   - for the alignments the shape guarantees to any row (a row starts at r * in * 2 bytes of x
//     and r * out * 4 bytes of y), so a call on rows that start after other rows (the decode rows
//     of a step come first) takes the same kernel. Run refuses pointers that are less aligned.
// Rows map to the GEMM's N dimension; masked or padded rows of a tile change nothing in the
// others. tests/gpu/gemm_test.cc checks the bits on the device; docs/cuda.md has the design.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/device_memory.h"

namespace lizard::cuda {

class PrefillGemm {
 public:
  // The row count at which the heuristic is asked first (a full prefill step of the engine):
  // its candidates, fastest at that size, are preferred.
  static constexpr int kHeuristicRows = 2048;
  // Padding below this many rows costs a small call at most a kMaxPadRows-row product (about
  // one read of the weights), so a faster algorithm that needs it is preferred.
  static constexpr int kMaxPadRows = 128;
  // The most workspace a qualifying algorithm may use (see above: counters, never partial sums).
  static constexpr uint64_t kMaxWorkspace = 1024;

  PrefillGemm() = default;
  PrefillGemm(const PrefillGemm&) = delete;
  PrefillGemm& operator=(const PrefillGemm&) = delete;
  ~PrefillGemm();

  // Picks and fixes the algorithm of every (in, out) shape for up to max_rows rows; Run then
  // enqueues on `stream`. FailedPrecondition, listing the candidates and why each failed, when
  // cuBLASLt has no algorithm that qualifies.
  absl::Status Init(std::span<const std::pair<int, int>> shapes, int max_rows, cudaStream_t stream);

  // y = x w^T (+ bias[out], fp32, added in the GEMM's epilogue) for 0 <= rows <= max_rows on a
  // shape given to Init (rows == 0 does nothing); with `accumulate`, y += x w^T instead (the
  // epilogue's y + product: the bits of a separate fp32 add of the product to y; not with a bias,
  // whose place in that sum the epilogue does not fix). x, w and y must be aligned as the shape's
  // rows are (Describe shows the alignments); a bias only where SupportsBias. Not thread-safe:
  // calls set the row count in the shape's descriptors.
  absl::Status Run(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, float* y,
                   const float* bias = nullptr, bool accumulate = false);
  // Whether the shape's algorithm also runs with the bias epilogue at every row count it takes.
  bool SupportsBias(int in, int out) const;

  // The chosen algorithm of each shape (config ids of cublasLt.h) and its padding, and the
  // faster candidates passed over, for logs and benchmarks.
  std::string Describe() const;

 private:
  // One (in, out) shape: its descriptors (the row count is set per call) and its algorithm.
  struct Plan {
    int in = 0, out = 0;
    int x_align = 0, y_align = 0;  // bytes, as guaranteed for any row of x (and w) and of y
    int pad_rows = 1;              // calls of fewer rows run padded to this many
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatmulDesc_t op_bias = nullptr;  // the same with the bias epilogue
    bool bias = false;                       // `algo` runs with op_bias from pad_rows rows
    cublasLtMatrixLayout_t w_layout = nullptr, x_layout = nullptr, y_layout = nullptr;
    cublasLtMatmulAlgo_t algo{};
    std::string passed_over;  // the better-ranked candidates that did not qualify, and why
  };

  // Frees the handle, every plan's descriptors and the padding buffers.
  void Release();
  absl::Status InitPlan(Plan& plan);
  // The heuristic's candidates for `rows` rows, best first, that need at most kMaxWorkspace.
  absl::Status AddCandidates(Plan& plan, int rows, std::vector<cublasLtMatmulAlgo_t>& candidates);
  // The smallest n such that `algo` runs with `op` within kMaxWorkspace at every row count
  // n..max_rows (max_rows + 1 when not even at max_rows); `why` tells what failed below it.
  absl::StatusOr<int> SmallestRows(Plan& plan, cublasLtMatmulDesc_t op, const cublasLtMatmulAlgo_t& algo,
                                   std::string& why);
  // Sets the row count of the plan's x and y layouts.
  absl::Status SetRows(Plan& plan, int rows);
  absl::Status Matmul(Plan& plan, const __nv_bfloat16* x, int rows, const __nv_bfloat16* w, float* y,
                      const float* bias, bool accumulate);
  Plan* Find(int in, int out);
  const Plan* Find(int in, int out) const;

  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int max_rows_ = 0;
  std::vector<Plan> plans_;
  DeviceBuffer x_pad_, y_pad_;  // a padded call's rows (sized for the largest pad_rows * in, * out)
  DeviceBuffer workspace_;      // kMaxWorkspace bytes, for every call (calls are ordered on stream_)
};

}  // namespace lizard::cuda
