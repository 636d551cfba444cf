#include "kernels/lizard_attention/window_prefill_ref.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace lizard::kernels {
namespace {

// Element i of a ring row or of a launch row (rounded as the ring will store it).
double RingValue(const char* row, int i, StoreType type) {
  if (type == StoreType::kF32) return reinterpret_cast<const float*>(row)[i];
  return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]);
}
double RowValue(float x, StoreType type) {
  return type == StoreType::kF32 ? x : __bfloat162float(__float2bfloat16(x));
}

}  // namespace

void LizardWindowPrefillRef(const WindowPrefillArgs& a) {
  const LizardDims& d = a.dims;
  const int H = d.heads, D = d.head_dim, w = d.window, G = d.heads / d.kv_heads;
  const LizardStateRef& st = a.state;
  const int64_t elem = st.window_type == StoreType::kF32 ? 4 : 2;
  std::vector<double> qa(D), s, y(D);
  for (int n = 0; n < a.num_seqs; ++n) {
    const int slot = a.seqs.slot[n], len = a.seqs.num_tokens[n];
    if (slot < 0 || len <= 0) continue;
    const int first_pos = a.seqs.first_pos[n], first_row = a.seqs.first_row[n];
    const char* slot_base = st.pool + slot * st.slot_bytes;
    for (int p = first_pos; p < first_pos + len; ++p) {
      const int64_t r = first_row + (p - first_pos);
      const int lo = std::max(0, p - w + 1);
      for (int h = 0; h < H; ++h) {
        const int g = h / G;
        const float* q = a.q + r * a.q_ld + static_cast<int64_t>(h) * D;
        for (int i = 0; i < D / 2; ++i) {
          const double angle = d.window_rope ? p * a.inv_freq[i] : 0.0;
          const double c = std::cos(angle), sn = std::sin(angle);
          qa[i] = q[i] * c - q[i + D / 2] * sn;
          qa[i + D / 2] = q[i + D / 2] * c + q[i] * sn;
        }
        // key / value element i of window position j
        auto kv = [&](bool value, int j, int i) {
          if (j < first_pos) {
            const int64_t off = (value ? st.v_offset : st.k_offset) + (static_cast<int64_t>(g) * w + j % w) * D * elem;
            return RingValue(slot_base + off, i, st.window_type);
          }
          const int64_t rj = first_row + (j - first_pos);
          const float x = value ? a.v[rj * a.v_ld + g * D + i] : a.k[rj * a.k_ld + g * D + i];
          return RowValue(x, st.window_type);
        };
        s.assign(p - lo + 1, 0.0);
        double mx = -INFINITY;
        for (int j = lo; j <= p; ++j) {
          double dot = 0.0;
          for (int i = 0; i < D; ++i) dot += qa[i] * kv(false, j, i);
          s[j - lo] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j - lo]);
        }
        const float* sinks = a.meta_logits + static_cast<int64_t>(h) * d.meta;
        for (int i = 0; i < d.meta; ++i) mx = std::max(mx, static_cast<double>(sinks[i]));
        double den = 0.0;
        for (int i = 0; i < d.meta; ++i) den += std::exp(sinks[i] - mx);
        std::fill(y.begin(), y.end(), 0.0);
        for (int j = lo; j <= p; ++j) {
          const double e = std::exp(s[j - lo] - mx);
          den += e;
          for (int i = 0; i < D; ++i) y[i] += e * kv(true, j, i);
        }
        float* out = a.y + (r * H + h) * D;
        for (int i = 0; i < D; ++i) out[i] = static_cast<float>(a.window_factor[h] * y[i] / den);
      }
    }
  }
}

}  // namespace lizard::kernels
