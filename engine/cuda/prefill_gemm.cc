// PrefillGemm: see prefill_gemm.h.
//
// cuBLASLt is column-major. Row-major y[rows, out] = x[rows, in] w[out, in]^T is, column-major,
// y^T[out, rows] = op(w)[out, in] x^T[in, rows] with w stored as [in, out] (op = transpose) and
// x^T as [in, rows]: m = out, n = rows, k = in. The row count is the N dimension.
#include "engine/cuda/prefill_gemm.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/cuda/device_memory.h"

namespace lizard::cuda {
namespace {

// Heuristic results looked at per shape, best first.
constexpr int kCandidates = 16;

// The largest power of two, at most 16 (what the fastest kernels ask for), dividing `bytes`.
int Alignment(int64_t bytes) { return static_cast<int>(std::min<int64_t>(16, bytes & -bytes)); }

bool Aligned(const void* p, int alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

// One attribute of an algorithm's configuration (T: its type in cublasLt.h).
template <typename T>
T AlgoConfig(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
  T value{};
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &value, sizeof(value), &written);
  return value;
}

// An algorithm's configuration ids (cublasLt.h's enums), for Describe and Init's errors.
std::string AlgoName(const cublasLtMatmulAlgo_t& algo) {
  return absl::StrFormat("algo %d tile %u stages %u splitK %d reduction %u swizzle %u custom %u inner %u cluster %u",
                         AlgoConfig<int32_t>(algo, CUBLASLT_ALGO_CONFIG_ID),
                         AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                         AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                         AlgoConfig<int32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                         AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                         AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                         AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                         AlgoConfig<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID),
                         AlgoConfig<uint16_t>(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
}

}  // namespace

PrefillGemm::~PrefillGemm() { Release(); }

void PrefillGemm::Release() {
  for (Plan& p : plans_) {
    for (cublasLtMatmulDesc_t op : {p.op, p.op_bias}) {
      if (op != nullptr) cublasLtMatmulDescDestroy(op);
    }
    for (cublasLtMatrixLayout_t l : {p.w_layout, p.x_layout, p.y_layout}) {
      if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
    }
  }
  plans_.clear();
  x_pad_ = DeviceBuffer();
  y_pad_ = DeviceBuffer();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
  handle_ = nullptr;
}

absl::Status PrefillGemm::Init(std::span<const std::pair<int, int>> shapes, int max_rows, cudaStream_t stream) {
  Release();
  if (max_rows <= 0) return absl::InvalidArgumentError("PrefillGemm: max_rows must be positive");
  max_rows_ = max_rows;
  stream_ = stream;
  LIZARD_CUBLAS_RETURN(cublasLtCreate(&handle_));
  // Plans are stored before they are built, so the destructor frees what a failure left.
  plans_.reserve(shapes.size());
  size_t x_pad = 0, y_pad = 0;
  for (const auto& [in, out] : shapes) {
    if (in <= 0 || out <= 0) return absl::InvalidArgumentError(absl::StrCat("PrefillGemm: bad shape ", in, "x", out));
    if (Find(in, out) != nullptr) continue;
    plans_.push_back(Plan{.in = in, .out = out});
    Plan& plan = plans_.back();
    LIZARD_RETURN_IF_ERROR(InitPlan(plan));
    if (plan.pad_rows > 1) {
      x_pad = std::max(x_pad, sizeof(__nv_bfloat16) * plan.pad_rows * in);
      y_pad = std::max(y_pad, sizeof(float) * plan.pad_rows * out);
    }
  }
  LIZARD_RETURN_IF_ERROR(x_pad_.Allocate(x_pad));
  LIZARD_RETURN_IF_ERROR(y_pad_.Allocate(y_pad));
  LIZARD_RETURN_IF_ERROR(workspace_.Allocate(kMaxWorkspace));
  // The padding rows are never read back; zeros keep them finite (y's too: an accumulating
  // call adds onto them).
  if (x_pad > 0) LIZARD_CUDA_RETURN(cudaMemsetAsync(x_pad_.get(), 0, x_pad, stream_));
  if (y_pad > 0) LIZARD_CUDA_RETURN(cudaMemsetAsync(y_pad_.get(), 0, y_pad, stream_));
  return absl::OkStatus();
}

absl::Status PrefillGemm::InitPlan(Plan& plan) {
  plan.x_align = Alignment(int64_t{plan.in} * sizeof(__nv_bfloat16));
  plan.y_align = Alignment(int64_t{plan.out} * sizeof(float));
  const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
  for (cublasLtMatmulDesc_t* op : {&plan.op, &plan.op_bias}) {
    LIZARD_CUBLAS_RETURN(cublasLtMatmulDescCreate(op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LIZARD_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)));
    LIZARD_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof(none)));
  }
  // y^T's rows are the outputs: the epilogue's bias vector has one fp32 value per output.
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  const cudaDataType_t bias_type = CUDA_R_32F;
  LIZARD_CUBLAS_RETURN(
      cublasLtMatmulDescSetAttribute(plan.op_bias, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  LIZARD_CUBLAS_RETURN(cublasLtMatmulDescSetAttribute(plan.op_bias, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                      sizeof(bias_type)));
  LIZARD_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.w_layout, CUDA_R_16BF, plan.in, plan.out, plan.in));
  LIZARD_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.x_layout, CUDA_R_16BF, plan.in, kHeuristicRows, plan.in));
  LIZARD_CUBLAS_RETURN(cublasLtMatrixLayoutCreate(&plan.y_layout, CUDA_R_32F, plan.out, kHeuristicRows, plan.out));

  std::vector<cublasLtMatmulAlgo_t> candidates;
  LIZARD_RETURN_IF_ERROR(AddCandidates(plan, kHeuristicRows, candidates));
  LIZARD_RETURN_IF_ERROR(AddCandidates(plan, 1, candidates));
  // The first candidate, fastest first, that sums each output in one pass and needs padding
  // only below kMaxPadRows rows; else the one that needs the least padding.
  int best = -1, best_rows = max_rows_ + 1;
  std::vector<std::string> notes;  // per candidate: what it is, and from how many rows it runs
  for (int i = 0; i < static_cast<int>(candidates.size()); ++i) {
    const cublasLtMatmulAlgo_t& algo = candidates[i];
    if (AlgoConfig<int32_t>(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) != 1 ||
        AlgoConfig<uint32_t>(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME) != CUBLASLT_REDUCTION_SCHEME_NONE) {
      notes.push_back(absl::StrCat("  #", i, " ", AlgoName(algo), ": splits K\n"));
      continue;
    }
    std::string why;
    const absl::StatusOr<int> rows = SmallestRows(plan, plan.op, algo, why);
    if (!rows.ok()) return rows.status();
    notes.push_back(absl::StrCat("  #", i, " ", AlgoName(algo), ": ", why, "\n"));
    if (*rows <= kMaxPadRows || *rows < best_rows) {
      best = i;
      best_rows = *rows;
    }
    if (*rows <= kMaxPadRows) break;
  }
  if (best < 0) {
    return absl::FailedPreconditionError(absl::StrCat("PrefillGemm: no cuBLASLt algorithm for ", plan.in, " -> ",
                                                      plan.out, " sums in one pass within ", kMaxWorkspace, " B of workspace at ", max_rows_,
                                                      " rows; candidates:\n", absl::StrJoin(notes, "")));
  }
  plan.algo = candidates[best];
  plan.pad_rows = best_rows;
  plan.passed_over = absl::StrJoin(notes.begin(), notes.begin() + best, "");
  // The same kernel with the bias in its epilogue (the bias changes no summation).
  std::string why;
  const absl::StatusOr<int> bias_rows = SmallestRows(plan, plan.op_bias, plan.algo, why);
  if (!bias_rows.ok()) return bias_rows.status();
  plan.bias = *bias_rows <= plan.pad_rows;
  return absl::OkStatus();
}

absl::Status PrefillGemm::AddCandidates(Plan& plan, int rows, std::vector<cublasLtMatmulAlgo_t>& candidates) {
  // Little workspace: no algorithm that splits an output's sum over blocks (split-K partials,
  // stream-K fix-ups) qualifies. Alignments: those of any row, not of the heuristic's buffers.
  LIZARD_RETURN_IF_ERROR(SetRows(plan, rows));
  cublasLtMatmulPreference_t pref = nullptr;
  LIZARD_CUBLAS_RETURN(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t workspace = kMaxWorkspace;
  const uint32_t x_align = plan.x_align, y_align = plan.y_align;
  cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                          sizeof(workspace));
  for (const auto [attr, align] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, x_align},
                                   std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, x_align},
                                   std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, y_align},
                                   std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, y_align}}) {
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align));
  }
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS) {
    s = cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.w_layout, plan.x_layout, plan.y_layout, plan.y_layout,
                                       pref, kCandidates, results, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return absl::OkStatus();  // no candidate at this count
  LIZARD_CUBLAS_RETURN(s);
  for (int i = 0; i < found; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS && results[i].workspaceSize <= kMaxWorkspace) {
      candidates.push_back(results[i].algo);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> PrefillGemm::SmallestRows(Plan& plan, cublasLtMatmulDesc_t op, const cublasLtMatmulAlgo_t& algo,
                                              std::string& why) {
  // Downwards from max_rows: the count under the first refusal.
  for (int rows = max_rows_; rows >= 1; --rows) {
    LIZARD_RETURN_IF_ERROR(SetRows(plan, rows));
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t s = cublasLtMatmulAlgoCheck(handle_, op, plan.w_layout, plan.x_layout, plan.y_layout,
                                                     plan.y_layout, &algo, &check);
    if (s != CUBLAS_STATUS_SUCCESS || check.workspaceSize > kMaxWorkspace) {
      why = absl::StrCat("at ", rows, " rows ",
                         s != CUBLAS_STATUS_SUCCESS ? cublasLtGetStatusName(s)
                                                    : absl::StrCat("needs ", check.workspaceSize, " B of workspace"));
      return rows + 1;
    }
  }
  why = "every row count";
  return 1;
}

absl::Status PrefillGemm::SetRows(Plan& plan, int rows) {
  const uint64_t cols = rows;
  LIZARD_CUBLAS_RETURN(cublasLtMatrixLayoutSetAttribute(plan.x_layout, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols)));
  LIZARD_CUBLAS_RETURN(cublasLtMatrixLayoutSetAttribute(plan.y_layout, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof(cols)));
  return absl::OkStatus();
}

const PrefillGemm::Plan* PrefillGemm::Find(int in, int out) const {
  for (const Plan& p : plans_) {
    if (p.in == in && p.out == out) return &p;
  }
  return nullptr;
}

PrefillGemm::Plan* PrefillGemm::Find(int in, int out) {
  return const_cast<Plan*>(static_cast<const PrefillGemm*>(this)->Find(in, out));
}

bool PrefillGemm::SupportsBias(int in, int out) const {
  const Plan* plan = Find(in, out);
  return plan != nullptr && plan->bias;
}

absl::Status PrefillGemm::Matmul(Plan& plan, const __nv_bfloat16* x, int rows, const __nv_bfloat16* w, float* y,
                                 const float* bias, bool accumulate) {
  LIZARD_RETURN_IF_ERROR(SetRows(plan, rows));
  if (bias != nullptr) {
    LIZARD_CUBLAS_RETURN(
        cublasLtMatmulDescSetAttribute(plan.op_bias, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // D = 1 * product + beta * C with C = D = y: beta 1 adds the product onto y.
  const float one = 1.f, beta = accumulate ? 1.f : 0.f;
  LIZARD_CUBLAS_RETURN(cublasLtMatmul(handle_, bias != nullptr ? plan.op_bias : plan.op, &one, w, plan.w_layout, x,
                                      plan.x_layout, &beta, y, plan.y_layout, y, plan.y_layout, &plan.algo,
                                      workspace_.get(), kMaxWorkspace, stream_));
  return absl::OkStatus();
}

absl::Status PrefillGemm::Run(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, float* y,
                              const float* bias, bool accumulate) {
  Plan* plan = Find(in, out);
  if (plan == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillGemm: shape ", in, " -> ", out, " was not given to Init"));
  }
  if (bias != nullptr && accumulate) {
    return absl::InvalidArgumentError("PrefillGemm: a bias and accumulate in one call");
  }
  if (bias != nullptr && !plan->bias) {
    return absl::FailedPreconditionError(
        absl::StrCat("PrefillGemm: the algorithm of ", in, " -> ", out, " has no bias epilogue"));
  }
  if (rows < 0 || rows > max_rows_) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillGemm: ", rows, " rows, at most ", max_rows_));
  }
  if (rows == 0) return absl::OkStatus();
  // A less aligned pointer would need another kernel than the one fixed at Init.
  if (!Aligned(x, plan->x_align) || !Aligned(w, plan->x_align) || !Aligned(y, plan->y_align)) {
    return absl::InvalidArgumentError(absl::StrCat("PrefillGemm: x and w must be ", plan->x_align,
                                                   "-byte aligned, y ", plan->y_align, "-byte aligned"));
  }
  if (rows >= plan->pad_rows) return Matmul(*plan, x, rows, w, y, bias, accumulate);
  // Too few rows for the algorithm: the rows (and to accumulate, y's rows) into the padding
  // buffers, the product of pad_rows rows, the rows' outputs back.
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(x_pad_.get(), x, sizeof(__nv_bfloat16) * rows * in, cudaMemcpyDeviceToDevice,
                                     stream_));
  if (accumulate) {
    LIZARD_CUDA_RETURN(cudaMemcpyAsync(y_pad_.get(), y, sizeof(float) * rows * out, cudaMemcpyDeviceToDevice, stream_));
  }
  LIZARD_RETURN_IF_ERROR(
      Matmul(*plan, x_pad_.get<__nv_bfloat16>(), plan->pad_rows, w, y_pad_.get<float>(), bias, accumulate));
  LIZARD_CUDA_RETURN(cudaMemcpyAsync(y, y_pad_.get(), sizeof(float) * rows * out, cudaMemcpyDeviceToDevice, stream_));
  return absl::OkStatus();
}

std::string PrefillGemm::Describe() const {
  std::string s;
  for (const Plan& p : plans_) {
    absl::StrAppend(&s, p.in, " -> ", p.out, ": ", AlgoName(p.algo), ", align x/w ", p.x_align, " y ", p.y_align,
                    p.pad_rows > 1 ? absl::StrCat(", padded below ", p.pad_rows, " rows") : "",
                    p.bias ? ", bias epilogue" : ", no bias epilogue", "\n");
    if (!p.passed_over.empty()) absl::StrAppend(&s, " passed over:\n", p.passed_over);
  }
  return s;
}

}  // namespace lizard::cuda
