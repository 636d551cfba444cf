// Rotary position embedding, Hugging Face Llama's rotate_half convention.
#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

// grid (rows, heads); thread i of a head rotates the pair (i, i + D/2).
__global__ void RopeKernel(const float* src, int src_ld, float* dst, int dst_ld,
                           const int32_t* positions, int heads, int head_dim,
                           const double* inv_freq) {
  WaitForPrevious();
  const int row = blockIdx.x;
  const int half = head_dim / 2;
  const int pos = positions[row];
  const float* s = src + static_cast<int64_t>(row) * src_ld;
  float* d = dst + static_cast<int64_t>(row) * dst_ld;
  const int h = blockIdx.y;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = s[h * head_dim + i], b = s[h * head_dim + i + half];
    float c = 1.f, sn = 0.f;
    if (pos >= 0) {
      // The angle in double: position * inv_freq reaches ~1e5 rad at long contexts.
      const double angle = fmod(static_cast<double>(pos) * inv_freq[i], 2.0 * 3.14159265358979323846);
      sincosf(static_cast<float>(angle), &sn, &c);
    }
    d[h * head_dim + i] = a * c - b * sn;
    d[h * head_dim + i + half] = b * c + a * sn;
  }
}

}  // namespace

cudaError_t Rope(const float* src, int src_ld, float* dst, int dst_ld, const int32_t* positions,
                 int rows, int heads, int head_dim, const double* inv_freq, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return LaunchDependent(RopeKernel, dim3(rows, heads), 64, 0, stream, src, src_ld, dst, dst_ld, positions, heads,
                         head_dim, inv_freq);
}

}  // namespace lizard::kernels
