#include "kernels/lizard_attention/chunked_prefill_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lizard::kernels {
namespace {

// A state value as the pool holds it: fp32, or bf16 (two bytes at index i).
double LoadState(const char* base, StoreType type, int64_t i) {
  if (type == StoreType::kF32) return reinterpret_cast<const float*>(base)[i];
  return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
}
void StoreState(char* base, StoreType type, int64_t i, double x) {
  if (type == StoreType::kF32) {
    reinterpret_cast<float*>(base)[i] = static_cast<float>(x);
  } else {
    reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16(static_cast<float>(x));
  }
}
// x rounded as a store of `type` rounds it (through fp32 first, as the kernel's state is fp32).
double Rounded(StoreType type, double x) {
  const float f = static_cast<float>(x);
  return type == StoreType::kF32 ? f : __bfloat162float(__float2bfloat16(f));
}

}  // namespace

void LizardChunkedPrefillRef(const ChunkedPrefillArgs& a) {
  const LizardDims& dims = a.dims;
  const int H = dims.heads, Hkv = dims.kv_heads, K = 2 * dims.features, D = dims.head_dim;
  const int group = H / Hkv;
  const StoreType type = a.state.state_type;
  std::vector<double> s(static_cast<size_t>(K) * D), z(K), y(D);
  for (int n = 0; n < a.num_seqs; ++n) {
    const int slot = a.seqs.slot[n], first_row = a.seqs.first_row[n], len = a.seqs.num_tokens[n];
    const int first_pos = a.seqs.first_pos[n];
    if (slot < 0) {
      for (int64_t i = 0; i < static_cast<int64_t>(len) * H * D; ++i) {
        a.y[static_cast<int64_t>(first_row) * H * D + i] = __float2bfloat16(0.f);
      }
      continue;
    }
    char* s_io = a.state.pool + slot * a.state.slot_bytes + a.state.s_offset;
    char* z_io = a.state.pool + slot * a.state.slot_bytes + a.state.z_offset;
    for (int h = 0; h < H; ++h) {
      const int64_t s0 = static_cast<int64_t>(h) * K * D, z0 = static_cast<int64_t>(h) * K;
      for (int64_t i = 0; i < static_cast<int64_t>(K) * D; ++i) s[i] = LoadState(s_io, type, s0 + i);
      for (int i = 0; i < K; ++i) z[i] = LoadState(z_io, type, z0 + i);
      for (int t = 0; t < len; ++t) {
        const int64_t r = first_row + t, th = r * H + h;
        const __nv_bfloat16* fq = a.fq + th * K;
        const __nv_bfloat16* fk = a.fk + th * K;
        const float* qkvg = a.qkvg + r * a.ld;
        const float* v = qkvg + (H + Hkv) * D + (h / group) * D;
        const double gamma = 1.0 / (1.0 + std::exp(-static_cast<double>(qkvg[(H + 2 * Hkv) * D + h])));
        // S = gamma S + fk v^T, z = gamma z + fk, then y = fq S / (fq . z + 1e-6).
        std::fill(y.begin(), y.end(), 0.0);
        double den = 1e-6;
        for (int i = 0; i < K; ++i) {
          const double ki = __bfloat162float(fk[i]), qi = __bfloat162float(fq[i]);
          double* row = s.data() + static_cast<int64_t>(i) * D;
          for (int d = 0; d < D; ++d) {
            row[d] = gamma * row[d] + ki * v[d];
            y[d] += qi * row[d];
          }
          z[i] = gamma * z[i] + ki;
          den += qi * z[i];
        }
        for (int d = 0; d < D; ++d) {
          const double add = a.y_add != nullptr ? a.y_add[th * D + d] : 0.0;
          a.y[th * D + d] = __float2bfloat16(static_cast<float>((dims.normalize ? y[d] / den : y[d]) + add));
        }
        if ((first_pos + t + 1) % kGlaChunk == 0) {  // a block boundary: the kernel rounds its state
          for (double& x : s) x = Rounded(type, x);
          for (double& x : z) x = Rounded(type, x);
        }
      }
      for (int64_t i = 0; i < static_cast<int64_t>(K) * D; ++i) StoreState(s_io, type, s0 + i, s[i]);
      for (int i = 0; i < K; ++i) StoreState(z_io, type, z0 + i, z[i]);
    }
  }
}

void LizardPrefillFeatureMapsRef(const PrefillFeatureMapsArgs& a, double* logits, double* fq, double* fk) {
  const int H = a.dims.heads, G = H / a.dims.kv_heads, D = a.dims.head_dim, F = a.dims.features;
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int i = 0; i < 2 * H; ++i) {
      const bool key = i >= H;
      const int h = key ? i - H : i;
      const float* x = a.qkvg + r * a.ld + (key ? H * D + (h / G) * D : h * D);
      const float* w = (key ? a.fmap_k : a.fmap_q) + static_cast<int64_t>(h) * D * F;
      const float* bias = key ? a.k_bias : a.q_bias;
      double* l = logits + (r * 2 * H + i) * F;
      for (int f = 0; f < F; ++f) {
        double sum = bias != nullptr ? bias[h * F + f] : 0.0;
        for (int d = 0; d < D; ++d) sum += static_cast<double>(x[d]) * w[d * F + f];
        l[f] = sum;
      }
      // [softmax(a), softmax(-a)]
      const double mx = *std::max_element(l, l + F), mn = *std::min_element(l, l + F);
      double sp = 0.0, sn = 0.0;
      for (int f = 0; f < F; ++f) sp += std::exp(l[f] - mx), sn += std::exp(mn - l[f]);
      double* out = (key ? fk : fq) + (r * H + h) * 2 * F;
      for (int f = 0; f < F; ++f) out[f] = std::exp(l[f] - mx) / sp, out[F + f] = std::exp(mn - l[f]) / sn;
    }
  }
}

}  // namespace lizard::kernels
