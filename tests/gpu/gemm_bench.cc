// Benchmark of GemmBf16 (kernels/gemm_bf16.cu) and PrefillGemm (engine/cuda/prefill_gemm.h, one
// cuBLASLt algorithm fixed per shape) against cublasGemmEx (cuBLAS's own pick per call) on the
// projection shapes of Llama-3-8B and Llama-3.2-1B. Prints PrefillGemm's algorithms, then one
// table row per (shape, rows): the three times, the two ratios to cuBLAS, the rate at which
// GemmBf16 reads w and that rate as a share of a device-to-device copy measured in the same run
// (counting the copy's bytes read and written), the three TFLOP/s, and the relative differences
// of GemmBf16 and PrefillGemm to cuBLAS.
// Weights rotate over enough copies (> 256 MB together) that w never sits in L2 between calls.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <utility>
#include <vector>

#include "engine/cuda/prefill_gemm.h"
#include "kernels/kernels.h"

namespace {

namespace k = lizard::kernels;
using bf16 = __nv_bfloat16;

#define CHECK_CUDA(expr)                                                                           \
  do {                                                                                             \
    const cudaError_t err_ = (expr);                                                               \
    if (err_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

// Mean microseconds of fn(i) over enough calls for about 30 ms, after warm-up calls.
double TimeUs(const std::function<void(int)>& fn, cudaStream_t stream) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn(i);
  CHECK_CUDA(cudaEventRecord(a, stream));
  fn(3);
  CHECK_CUDA(cudaEventRecord(b, stream));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0.f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  const int iters = std::clamp(static_cast<int>(30.0 / std::max(ms, 1e-3f)), 5, 500);
  CHECK_CUDA(cudaEventRecord(a, stream));
  for (int i = 0; i < iters; ++i) fn(i);
  CHECK_CUDA(cudaEventRecord(b, stream));
  CHECK_CUDA(cudaEventSynchronize(b));
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  return 1000.0 * ms / iters;
}

// ||a - b|| / ||b|| of n floats on the device.
double RelDiff(const float* a, const float* b, size_t n) {
  std::vector<float> ha(n), hb(n);
  CHECK_CUDA(cudaMemcpy(ha.data(), a, n * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hb.data(), b, n * sizeof(float), cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) num += (ha[i] - hb[i]) * double(ha[i] - hb[i]), den += double(hb[i]) * hb[i];
  return std::sqrt(num / std::max(den, 1e-30));
}

}  // namespace

// Usage: gpu_gemm_bench [rows,rows,...] (default 1,8,32,64,128,256,2048,8192).
int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t cublas;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) return 1;
  cublasSetStream(cublas, stream);

  // Device-to-device copy rate, bytes read + written.
  const size_t copy_bytes = size_t{1} << 30;
  void *src, *dst;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  CHECK_CUDA(cudaMemset(src, 1, copy_bytes));
  const double copy_us =
      TimeUs([&](int) { CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, stream)); }, stream);
  const double copy_gbs = 2.0 * copy_bytes / copy_us / 1e3;
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));
  std::printf("device: %s, %d SMs; D2D copy %.0f GB/s (read + write)\n\n", prop.name, prop.multiProcessorCount,
              copy_gbs);

  struct Shape {
    const char* name;
    int in, out, max_rows;
  };
  const Shape shapes[] = {
      {"8b qkv|gate", 4096, 6176, 8192}, {"8b o", 4096, 4096, 8192},   {"8b gate|up", 4096, 28672, 8192},
      {"8b down", 14336, 4096, 8192},    {"8b lm_head", 4096, 128256, 256}, {"1b qkv|gate", 2048, 3104, 8192},
      {"1b gate|up", 2048, 16384, 8192}, {"1b down", 8192, 2048, 8192},  {"1b lm_head", 2048, 128256, 256},
  };
  std::vector<int> row_counts = {1, 8, 32, 64, 128, 256, 2048, 8192};
  if (argc > 1) {
    row_counts.clear();
    for (const char* p = argv[1]; *p != '\0';) {
      char* end;
      row_counts.push_back(static_cast<int>(std::strtol(p, &end, 10)));
      p = *end == ',' ? end + 1 : end;
      if (row_counts.back() <= 0 || (*end != ',' && *end != '\0')) {
        std::fprintf(stderr, "bad rows list: %s\n", argv[1]);
        return 2;
      }
    }
  }
  lizard::cuda::PrefillGemm prefill;
  std::vector<std::pair<int, int>> prefill_shapes;
  int prefill_rows = 0;
  for (const Shape& s : shapes) {
    prefill_shapes.emplace_back(s.in, s.out);
    prefill_rows = std::max(prefill_rows, s.max_rows);
  }
  if (const absl::Status st = prefill.Init(prefill_shapes, prefill_rows, stream); !st.ok()) {
    std::fprintf(stderr, "PrefillGemm::Init: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("PrefillGemm algorithms (cuBLASLt config ids):\n%s\n", prefill.Describe().c_str());
  // ours = GemmBf16, lt = PrefillGemm, cublas = cublasGemmEx.
  std::printf("%-12s %6s %6s %5s %3s %9s %9s %9s %7s %7s %7s %6s %7s %7s %7s %9s %9s\n", "shape", "in", "out", "rows",
              "S", "ours_us", "cublas_us", "lt_us", "ours/cb", "lt/cb", "w_GB/s", "%copy", "TF_ours", "TF_cb", "TF_lt",
              "diff_ours", "diff_lt");
  for (const Shape& s : shapes) {
    const size_t w_elems = static_cast<size_t>(s.in) * s.out, w_bytes = w_elems * sizeof(bf16);
    const int copies = static_cast<int>(std::max<size_t>(1, (size_t{256} << 20) / w_bytes + 1));
    bf16* w;
    CHECK_CUDA(cudaMalloc(&w, w_bytes * copies));
    CHECK_CUDA(k::RandomFillBf16(w, static_cast<int64_t>(w_elems) * copies, 7, 0.05f, 0.f, stream));
    bf16* x;
    float *y, *y_ref, *y_lt;
    CHECK_CUDA(cudaMalloc(&x, sizeof(bf16) * s.max_rows * s.in));
    CHECK_CUDA(cudaMalloc(&y, sizeof(float) * s.max_rows * s.out));
    CHECK_CUDA(cudaMalloc(&y_ref, sizeof(float) * s.max_rows * s.out));
    CHECK_CUDA(cudaMalloc(&y_lt, sizeof(float) * s.max_rows * s.out));
    CHECK_CUDA(k::RandomFillBf16(x, static_cast<int64_t>(s.max_rows) * s.in, 8, 1.f, 0.f, stream));
    void* ws = nullptr;
    const size_t ws_bytes = k::GemmBf16WorkspaceBytes(s.in, s.out);
    if (ws_bytes > 0) CHECK_CUDA(cudaMalloc(&ws, ws_bytes));
    for (int rows : row_counts) {
      if (rows > s.max_rows) continue;
      auto ours = [&](int i) {
        CHECK_CUDA(k::GemmBf16(x, rows, s.in, w + (i % copies) * w_elems, s.out, y, ws, stream));
      };
      auto theirs = [&](int i) {
        const float one = 1.f, zero = 0.f;
        if (cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, s.out, rows, s.in, &one, w + (i % copies) * w_elems,
                         CUDA_R_16BF, s.in, x, CUDA_R_16BF, s.in, &zero, y_ref, CUDA_R_32F, s.out, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
          std::fprintf(stderr, "cublasGemmEx failed\n");
          std::exit(1);
        }
      };
      auto lt = [&](int i) {
        const absl::Status st = prefill.Run(x, rows, s.in, w + (i % copies) * w_elems, s.out, y_lt);
        if (!st.ok()) {
          std::fprintf(stderr, "PrefillGemm::Run: %s\n", st.ToString().c_str());
          std::exit(1);
        }
      };
      const double us = TimeUs(ours, stream), cublas_us = TimeUs(theirs, stream), lt_us = TimeUs(lt, stream);
      // Same weights copy for all three, then compare.
      ours(0);
      theirs(0);
      lt(0);
      CHECK_CUDA(cudaStreamSynchronize(stream));
      const size_t n = static_cast<size_t>(rows) * s.out;
      const double gbs = w_bytes / us / 1e3, flop = 2.0 * rows * s.in * s.out;
      std::printf("%-12s %6d %6d %5d %3d %9.1f %9.1f %9.1f %7.2f %7.2f %7.0f %5.0f%% %7.1f %7.1f %7.1f %9.2e %9.2e\n",
                  s.name, s.in, s.out, rows, k::GemmBf16Splits(s.in, s.out), us, cublas_us, lt_us, us / cublas_us,
                  lt_us / cublas_us, gbs, 100.0 * gbs / copy_gbs, flop / us / 1e6, flop / cublas_us / 1e6,
                  flop / lt_us / 1e6, RelDiff(y, y_ref, n), RelDiff(y_lt, y_ref, n));
      std::fflush(stdout);
    }
    CHECK_CUDA(cudaFree(w));
    CHECK_CUDA(cudaFree(x));
    CHECK_CUDA(cudaFree(y));
    CHECK_CUDA(cudaFree(y_ref));
    CHECK_CUDA(cudaFree(y_lt));
    if (ws != nullptr) CHECK_CUDA(cudaFree(ws));
  }
  std::printf("\nworkspace bytes:");
  for (const Shape& s : shapes) std::printf(" %s %zu;", s.name, k::GemmBf16WorkspaceBytes(s.in, s.out));
  std::printf("\n");
  cublasDestroy(cublas);
  return 0;
}
