#include "engine/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace lizard::cpu {

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (m == 1) {
    // c = alpha * op(B)^T a + beta * c; a's k values lie at stride lda when trans_a.
    cblas_sgemv(CblasRowMajor, trans_b ? CblasNoTrans : CblasTrans,
                static_cast<int>(trans_b ? n : k), static_cast<int>(trans_b ? k : n), alpha, b,
                static_cast<int>(ldb), a, trans_a ? static_cast<int>(lda) : 1, beta, c, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

void RmsNorm(const float* x, const float* weight, int64_t rows, int64_t n, double eps, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = out + r * n;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_sq / n + eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * weight[i];
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t d = config.head_dim;
  std::vector<double> inv_freq(d / 2);
  for (int64_t i = 0; i < d / 2; ++i) {
    inv_freq[i] = std::pow(config.rope_theta, -2.0 * static_cast<double>(i) / d);
  }
  const RopeScaling& rs = config.rope_scaling;
  if (!rs.llama3) return inv_freq;
  // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
  // interpolated smoothly.
  const double old_len = static_cast<double>(rs.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / rs.low_freq_factor;
  const double high_freq_wavelen = old_len / rs.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen > low_freq_wavelen) {
      f = f / rs.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth =
          (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = (1.0 - smooth) * f / rs.factor + smooth * f;
    }
  }
  return inv_freq;
}

void RopeRotation(int64_t position, const std::vector<double>& inv_freq, float* cos, float* sin) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    cos[i] = static_cast<float>(std::cos(angle));
    sin[i] = static_cast<float>(std::sin(angle));
  }
}

void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    float* xh = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = xh[i];
      const float b = xh[i + half];
      xh[i] = a * cos[i] - b * sin[i];
      xh[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void ApplyRope(float* x, int64_t num_heads, int64_t head_dim, int64_t position,
               const std::vector<double>& inv_freq) {
  std::vector<float> cos(inv_freq.size()), sin(inv_freq.size());
  RopeRotation(position, inv_freq, cos.data(), sin.data());
  ApplyRope(x, num_heads, head_dim, cos.data(), sin.data());
}

void FeatureMap(const float* x, int64_t x_stride, int64_t rows, const float* w, const float* b,
                int64_t d, int64_t f, float* out, int64_t out_stride) {
  // Projections of all rows in one GEMM into the first half of each output row.
  Gemm(false, false, rows, f, d, 1.0f, x, x_stride, w, f, 0.0f, out, out_stride);
  for (int64_t r = 0; r < rows; ++r) {
    float* pos = out + r * out_stride;  // softmax(a)
    float* neg = pos + f;               // softmax(-a)
    float hi = -INFINITY, lo = INFINITY;
    for (int64_t j = 0; j < f; ++j) {
      pos[j] += b[j];
      hi = std::max(hi, pos[j]);
      lo = std::min(lo, pos[j]);
    }
    double sum_pos = 0.0, sum_neg = 0.0;
    for (int64_t j = 0; j < f; ++j) {
      neg[j] = std::exp(lo - pos[j]);  // max of -a is -lo
      pos[j] = std::exp(pos[j] - hi);
      sum_pos += pos[j];
      sum_neg += neg[j];
    }
    const float inv_pos = static_cast<float>(1.0 / sum_pos);
    const float inv_neg = static_cast<float>(1.0 / sum_neg);
    for (int64_t j = 0; j < f; ++j) {
      pos[j] *= inv_pos;
      neg[j] *= inv_neg;
    }
  }
}

double LogSigmoid(double x) {
  return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x));
}

void GlaStep(const float* fq, const float* fk, const float* v, float gamma, int64_t f2, int64_t d,
             bool normalize, float* s, float* z, float* y) {
  // One pass over S: decay, add fk v^T and accumulate the readout fq S.
  std::fill(y, y + d, 0.0f);
  double den = 0.0;
  for (int64_t i = 0; i < f2; ++i) {
    float* row = s + i * d;
    const float ki = fk[i];
    const float qi = fq[i];
    for (int64_t j = 0; j < d; ++j) {
      row[j] = gamma * row[j] + ki * v[j];
      y[j] += qi * row[j];
    }
    z[i] = gamma * z[i] + ki;
    den += static_cast<double>(qi) * z[i];
  }
  if (!normalize) return;
  const float inv = static_cast<float>(1.0 / (den + 1e-6));
  for (int64_t j = 0; j < d; ++j) y[j] *= inv;
}

void GlaChunk(const float* fq, int64_t fq_stride, const float* fk, int64_t fk_stride,
              const float* v, int64_t v_stride, const float* gate_logit, int64_t gate_stride,
              int64_t c, int64_t f2, int64_t d, bool normalize, float* s, float* z, float* y,
              int64_t y_stride) {
  // b[t]: cumulative log gate within the chunk (double: differences of large sums stay exact).
  std::vector<double> b(c);
  double acc = 0.0;
  for (int64_t t = 0; t < c; ++t) {
    acc += LogSigmoid(gate_logit[t * gate_stride]);
    b[t] = acc;
  }

  // Intra-chunk scores P[t, s] = (fq_t . fk_s) e^{b_t - b_s} for s <= t, else 0.
  std::vector<float> p(c * c);
  Gemm(false, true, c, c, f2, 1.0f, fq, fq_stride, fk, fk_stride, 0.0f, p.data(), c);
  std::vector<double> den(c, 1e-6);
  for (int64_t t = 0; t < c; ++t) {
    float* pt = p.data() + t * c;
    for (int64_t j = 0; j < c; ++j) {
      pt[j] = j <= t ? pt[j] * static_cast<float>(std::exp(b[t] - b[j])) : 0.0f;
      den[t] += pt[j];
    }
  }

  // Inter-chunk part from the carried state: y_t = e^{b_t} fq_t S0, den_t += e^{b_t} fq_t . z0.
  Gemm(false, false, c, d, f2, 1.0f, fq, fq_stride, s, d, 0.0f, y, y_stride);
  for (int64_t t = 0; t < c; ++t) {
    const float decay = static_cast<float>(std::exp(b[t]));
    float* yt = y + t * y_stride;
    for (int64_t j = 0; j < d; ++j) yt[j] *= decay;
    double qz = 0.0;
    const float* fqt = fq + t * fq_stride;
    for (int64_t i = 0; i < f2; ++i) qz += static_cast<double>(fqt[i]) * z[i];
    den[t] += std::exp(b[t]) * qz;
  }
  // Plus the intra-chunk part P V.
  Gemm(false, false, c, d, c, 1.0f, p.data(), c, v, v_stride, 1.0f, y, y_stride);
  if (normalize) {
    for (int64_t t = 0; t < c; ++t) {
      const float inv = static_cast<float>(1.0 / den[t]);
      float* yt = y + t * y_stride;
      for (int64_t j = 0; j < d; ++j) yt[j] *= inv;
    }
  }

  // State at the chunk's end: S = e^{B} S0 + sum_s e^{B - b_s} fk_s v_s^T with B = b[c-1].
  const double last = b[c - 1];
  std::vector<float> kw(c * f2);
  for (int64_t t = 0; t < c; ++t) {
    const float w = static_cast<float>(std::exp(last - b[t]));
    const float* fkt = fk + t * fk_stride;
    for (int64_t i = 0; i < f2; ++i) kw[t * f2 + i] = fkt[i] * w;
  }
  const float total_decay = static_cast<float>(std::exp(last));
  Gemm(true, false, f2, d, c, 1.0f, kw.data(), f2, v, v_stride, total_decay, s, d);
  for (int64_t i = 0; i < f2; ++i) {
    double zi = static_cast<double>(total_decay) * z[i];
    for (int64_t t = 0; t < c; ++t) zi += kw[t * f2 + i];
    z[i] = static_cast<float>(zi);
  }
}

void SinkAttention(const float* q, int64_t q_stride, int64_t num_q, int64_t q_pos0,
                   const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                   const int64_t* key_pos, int64_t num_keys, int64_t window, const float* sinks,
                   int64_t num_sinks, int64_t d, float scale, float* out, int64_t out_stride) {
  std::vector<float> p(num_q * num_keys);
  Gemm(false, true, num_q, num_keys, d, scale, q, q_stride, k, k_stride, 0.0f, p.data(),
       num_keys);
  for (int64_t i = 0; i < num_q; ++i) {
    const int64_t q_pos = q_pos0 + i;
    float* pi = p.data() + i * num_keys;
    auto visible = [&](int64_t j) {
      const int64_t age = q_pos - key_pos[j];
      return age >= 0 && age < window;
    };
    float hi = -INFINITY;
    for (int64_t j = 0; j < num_keys; ++j) {
      if (visible(j)) hi = std::max(hi, pi[j]);
    }
    for (int64_t m = 0; m < num_sinks; ++m) hi = std::max(hi, sinks[m]);
    double sum = 0.0;
    for (int64_t j = 0; j < num_keys; ++j) {
      pi[j] = visible(j) ? std::exp(pi[j] - hi) : 0.0f;
      sum += pi[j];
    }
    for (int64_t m = 0; m < num_sinks; ++m) sum += std::exp(sinks[m] - hi);
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < num_keys; ++j) pi[j] *= inv;
  }
  if (num_keys == 0) {
    for (int64_t i = 0; i < num_q; ++i) std::fill(out + i * out_stride, out + i * out_stride + d, 0.0f);
    return;
  }
  Gemm(false, false, num_q, d, num_keys, 1.0f, p.data(), num_keys, v, v_stride, 0.0f, out,
       out_stride);
}

}  // namespace lizard::cpu
