#include "engine/cpu/lizard_attention/naive.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace lizard::cpu {
namespace {

double Dot(const float* a, const float* b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * b[i];
  return sum;
}

}  // namespace

void LizardAttentionNaive(const LizardAttentionArgs& a, LizardSlotState& state, float* y) {
  const int64_t n = a.length, p0 = a.first_position;
  const int64_t d = a.head_dim, f2 = a.f2, w = a.window, m = a.num_meta;
  const int64_t group = a.num_heads / a.num_kv_heads;
  auto fq = [&](int64_t t, int64_t h) { return a.fq + t * a.feature_stride + h * f2; };
  auto fk = [&](int64_t t, int64_t h) { return a.fk + t * a.feature_stride + h * f2; };
  auto k = [&](int64_t t, int64_t g) { return a.k + t * a.kv_stride + g * d; };
  auto v = [&](int64_t t, int64_t g) { return a.v + t * a.kv_stride + g * d; };
  for (int64_t g = a.kv_head_begin; g < a.kv_head_end; ++g) {
    const float* ring_k = state.window_k + g * w * d;
    const float* ring_v = state.window_v + g * w * d;
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      float* s0 = state.s + h * f2 * d;  // S and z before row 0
      float* z0 = state.z + h * f2;
      // log_decay[t] = sum_{r <= t} log gamma_r: row s's share of row t's state is
      // e^{log_decay[t] - log_decay[s]}, the carried state's is e^{log_decay[t]}.
      std::vector<double> log_decay(n);
      double acc = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        const double logit = a.gate_logit[t * a.gate_stride + h];
        acc += -std::log1p(std::exp(-logit));
        log_decay[t] = acc;
      }
      for (int64_t t = 0; t < n; ++t) {
        const int64_t p = p0 + t;
        // Gated linear attention: y = fq_t S_t / (fq_t . z_t + 1e-6) with S_t, z_t as sums.
        std::vector<double> num(d, 0.0);
        const double carried = std::exp(log_decay[t]);
        double den = carried * Dot(fq(t, h), z0, f2);
        for (int64_t i = 0; i < f2; ++i) {
          for (int64_t j = 0; j < d; ++j) num[j] += carried * fq(t, h)[i] * s0[i * d + j];
        }
        for (int64_t r = 0; r <= t; ++r) {
          const double weight = std::exp(log_decay[t] - log_decay[r]) * Dot(fq(t, h), fk(r, h), f2);
          den += weight;
          for (int64_t j = 0; j < d; ++j) num[j] += weight * v(r, g)[j];
        }
        // The window: positions max(0, p - w + 1) .. p, from the ring before row 0, then rows.
        std::vector<double> score;
        std::vector<const float*> values;
        for (int64_t j = std::max<int64_t>(0, p - w + 1); j <= p; ++j) {
          const float* key = j < p0 ? ring_k + (j % w) * d : k(j - p0, g);
          values.push_back(j < p0 ? ring_v + (j % w) * d : v(j - p0, g));
          score.push_back(Dot(a.q + t * a.q_stride + h * d, key, d) / std::sqrt(double(d)));
        }
        double top = -INFINITY;
        for (double s : score) top = std::max(top, s);
        for (int64_t i = 0; i < m; ++i) top = std::max(top, double(a.meta_logits[h * m + i]));
        double total = 0.0;
        for (int64_t i = 0; i < m; ++i) total += std::exp(a.meta_logits[h * m + i] - top);
        std::vector<double> anchor(d, 0.0);
        for (size_t j = 0; j < score.size(); ++j) {
          const double e = std::exp(score[j] - top);
          total += e;
          for (int64_t c = 0; c < d; ++c) anchor[c] += e * values[j][c];
        }
        float* yt = y + t * a.y_stride + h * d;
        for (int64_t c = 0; c < d; ++c) {
          const double gla = a.normalize ? num[c] / (den + 1e-6) : num[c];
          yt[c] = static_cast<float>(gla + a.window_factor[h] * (anchor[c] / total));
        }
      }
      // The state after the last row: the same sums at t = n - 1.
      if (n == 0) continue;
      const double carried = std::exp(log_decay[n - 1]);
      for (int64_t i = 0; i < f2; ++i) {
        double zi = carried * z0[i];
        std::vector<double> row(d);
        for (int64_t j = 0; j < d; ++j) row[j] = carried * s0[i * d + j];
        for (int64_t r = 0; r < n; ++r) {
          const double share = std::exp(log_decay[n - 1] - log_decay[r]) * fk(r, h)[i];
          zi += share;
          for (int64_t j = 0; j < d; ++j) row[j] += share * v(r, g)[j];
        }
        z0[i] = static_cast<float>(zi);
        for (int64_t j = 0; j < d; ++j) s0[i * d + j] = static_cast<float>(row[j]);
      }
    }
    // The last w rows enter the ring (after every head of the group has read it).
    for (int64_t t = std::max<int64_t>(0, n - w); t < n; ++t) {
      const int64_t row = (p0 + t) % w;
      std::copy(k(t, g), k(t, g) + d, state.window_k + (g * w + row) * d);
      std::copy(v(t, g), v(t, g) + d, state.window_v + (g * w + row) * d);
    }
  }
}

}  // namespace lizard::cpu
