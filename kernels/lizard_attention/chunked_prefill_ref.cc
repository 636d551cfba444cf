#include "kernels/lizard_attention/chunked_prefill_ref.h"

#include <cmath>
#include <vector>

namespace lizard::kernels {

void LizardChunkedPrefillRef(const ChunkedPrefillArgs& a) {
  const int H = a.heads, K = a.f2, D = a.head_dim, group = a.heads / a.kv_heads;
  std::vector<double> s(static_cast<size_t>(K) * D), z(K), y(D);
  for (int n = 0; n < a.num_seqs; ++n) {
    for (int h = 0; h < H; ++h) {
      float* s_io = a.state_s + (static_cast<int64_t>(n) * H + h) * K * D;
      float* z_io = a.state_z + (static_cast<int64_t>(n) * H + h) * K;
      s.assign(s_io, s_io + static_cast<int64_t>(K) * D);
      z.assign(z_io, z_io + K);
      for (int t = a.cu_seqlens[n]; t < a.cu_seqlens[n + 1]; ++t) {
        const int64_t th = static_cast<int64_t>(t) * H + h;
        const __nv_bfloat16* fq = a.fq + th * K;
        const __nv_bfloat16* fk = a.fk + th * K;
        const __nv_bfloat16* v = a.v + (static_cast<int64_t>(t) * a.kv_heads + h / group) * D;
        const double gamma = 1.0 / (1.0 + std::exp(-static_cast<double>(a.gate_logit[th])));
        // S = gamma S + fk v^T, z = gamma z + fk, then y = fq S / (fq . z + 1e-6).
        std::fill(y.begin(), y.end(), 0.0);
        double den = 1e-6;
        for (int i = 0; i < K; ++i) {
          const double ki = __bfloat162float(fk[i]), qi = __bfloat162float(fq[i]);
          double* row = s.data() + static_cast<int64_t>(i) * D;
          for (int d = 0; d < D; ++d) {
            row[d] = gamma * row[d] + ki * __bfloat162float(v[d]);
            y[d] += qi * row[d];
          }
          z[i] = gamma * z[i] + ki;
          den += qi * z[i];
        }
        for (int d = 0; d < D; ++d) a.y[th * D + d] = __float2bfloat16(static_cast<float>(a.normalize ? y[d] / den : y[d]));
      }
      for (int64_t i = 0; i < static_cast<int64_t>(K) * D; ++i) s_io[i] = static_cast<float>(s[i]);
      for (int i = 0; i < K; ++i) z_io[i] = static_cast<float>(z[i]);
    }
  }
}

}  // namespace lizard::kernels
