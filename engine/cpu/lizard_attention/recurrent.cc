#include "engine/cpu/lizard_attention/recurrent.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cpu/lizard_attention/window.h"
#include "engine/cpu/ops.h"

namespace lizard::cpu {

void LizardAttentionRecurrent(const LizardAttentionArgs& a, LizardSlotState& state, float* y) {
  const int64_t d = a.head_dim, f2 = a.f2, w = a.window, m = a.num_meta;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  std::vector<float> anchor(d);
  std::vector<int64_t> key_pos(w);
  for (int64_t t = 0; t < a.length; ++t) {
    const LizardAttentionArgs r = SubRows(a, t, 1);
    const int64_t p = r.first_position;
    float* yt = y + t * a.y_stride;
    const int64_t filled = std::min(p + 1, w);  // ring rows in use once p is written
    for (int64_t j = 0; j < filled; ++j) key_pos[j] = RingPosition(j, p + 1, w);
    for (int64_t g = a.kv_head_begin; g < a.kv_head_end; ++g) {
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const float gamma = static_cast<float>(1.0 / (1.0 + Exp(-r.gate_logit[h])));
        GlaStep(r.fq + h * f2, r.fk + h * f2, r.v + g * d, gamma, f2, d, a.normalize,
                state.s + h * f2 * d, state.z + h * f2, yt + h * d);
      }
      // The token's key and value take ring row p % w (the position w before it leaves).
      float* ring_k = state.window_k + g * w * d;
      float* ring_v = state.window_v + g * w * d;
      std::memcpy(ring_k + (p % w) * d, r.k + g * d, d * sizeof(float));
      std::memcpy(ring_v + (p % w) * d, r.v + g * d, d * sizeof(float));
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        SinkAttention(r.q + h * d, a.q_stride, 1, p, ring_k, d, ring_v, d, key_pos.data(), filled,
                      w, a.meta_logits + h * m, m, d, scale, anchor.data(), d);
        AddAnchor(a.window_factor[h], anchor.data(), 1, d, yt + h * d, a.y_stride);
      }
    }
  }
}

}  // namespace lizard::cpu
