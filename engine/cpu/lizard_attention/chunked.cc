#include "engine/cpu/lizard_attention/chunked.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/cpu/lizard_attention/window.h"
#include "engine/cpu/ops.h"

namespace lizard::cpu {

void LizardAttentionChunked(const LizardAttentionArgs& a, LizardSlotState& state, float* y) {
  const int64_t d = a.head_dim, f2 = a.f2, w = a.window, m = a.num_meta;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t start = 0, c = 0; start < a.length; start += c) {
    // The block ends at the next absolute multiple of kLizardChunk (or the call's end).
    const int64_t position = a.first_position + start;
    c = std::min(kLizardChunk - position % kLizardChunk, a.length - start);
    const LizardAttentionArgs b = SubRows(a, start, c);
    const int64_t p0 = b.first_position;
    float* yb = y + start * a.y_stride;
    // Keys of the window: the ring rows holding positions < p0, then the block's own.
    const int64_t filled = std::min(p0, w);
    std::vector<int64_t> key_pos(filled + c);
    for (int64_t j = 0; j < filled; ++j) key_pos[j] = RingPosition(j, p0, w);
    for (int64_t t = 0; t < c; ++t) key_pos[filled + t] = p0 + t;
    std::vector<float> wk((filled + c) * d), wv((filled + c) * d), anchor(c * d);
    for (int64_t g = a.kv_head_begin; g < a.kv_head_end; ++g) {
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        GlaChunk(b.fq + h * f2, a.feature_stride, b.fk + h * f2, a.feature_stride, b.v + g * d,
                 a.kv_stride, b.gate_logit + h, a.gate_stride, c, f2, d, a.normalize,
                 state.s + h * f2 * d, state.z + h * f2, yb + h * d, a.y_stride);
      }
      float* ring_k = state.window_k + g * w * d;
      float* ring_v = state.window_v + g * w * d;
      std::memcpy(wk.data(), ring_k, filled * d * sizeof(float));
      std::memcpy(wv.data(), ring_v, filled * d * sizeof(float));
      for (int64_t t = 0; t < c; ++t) {
        std::memcpy(wk.data() + (filled + t) * d, b.k + t * a.kv_stride + g * d, d * sizeof(float));
        std::memcpy(wv.data() + (filled + t) * d, b.v + t * a.kv_stride + g * d, d * sizeof(float));
      }
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        SinkAttention(b.q + h * d, a.q_stride, c, p0, wk.data(), d, wv.data(), d, key_pos.data(),
                      filled + c, w, a.meta_logits + h * m, m, d, scale, anchor.data(), d);
        AddAnchor(a.window_factor[h], anchor.data(), c, d, yb + h * d, a.y_stride);
      }
      // The block's last w keys/values enter the ring.
      for (int64_t t = std::max<int64_t>(0, c - w); t < c; ++t) {
        const int64_t row = (p0 + t) % w;
        std::memcpy(ring_k + row * d, wk.data() + (filled + t) * d, d * sizeof(float));
        std::memcpy(ring_v + row * d, wv.data() + (filled + t) * d, d * sizeof(float));
      }
    }
  }
}

}  // namespace lizard::cpu
