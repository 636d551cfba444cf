#include "engine/cpu/ops.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

namespace lizard::cpu {

namespace {

// kGemmLanes floats. Elementwise + and * on them are plain IEEE float operations at whatever SIMD
// width the compiler or a target clone uses, and never fused: lizard_cpu builds with
// -ffp-contract=off (the x86-64-v3/v4 clones below have FMA).
using Lanes = float __attribute__((vector_size(kGemmLanes * sizeof(float))));
static_assert(kGemmLanes == 8, "SumLanes adds 8 lanes");

[[gnu::always_inline]] inline Lanes Load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first n (< kGemmLanes) values at p, zeros after: K's zero padding.
[[gnu::always_inline]] inline Lanes LoadPartial(const float* p, int64_t n) {
  Lanes v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = p[i];
  return v;
}

// Gemm's lane order, elementwise over vectors of lanes (one lane per output element).
[[gnu::always_inline]] inline Lanes SumLanes(const Lanes (&s)[kGemmLanes]) {
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

// Gemm's lane order for 8 elements at once: lane e of the result sums the lanes of s[e].
[[gnu::always_inline]] inline Lanes SumLanesOf8(const Lanes (&s)[8]) {
  // t[p] = (s0 + s4, s1 + s5, s2 + s6, s3 + s7) of elements 2p and 2p + 1.
  Lanes t[4];
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p) {
    t[p] = __builtin_shufflevector(s[2 * p], s[2 * p + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(s[2 * p], s[2 * p + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  }
  // u[q] = ((s0 + s4) + (s2 + s6), (s1 + s5) + (s3 + s7)) of elements 4q .. 4q + 3.
  Lanes u[2];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    u[q] = __builtin_shufflevector(t[2 * q], t[2 * q + 1], 0, 1, 4, 5, 8, 9, 12, 13) +
           __builtin_shufflevector(t[2 * q], t[2 * q + 1], 2, 3, 6, 7, 10, 11, 14, 15);
  }
  return __builtin_shufflevector(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14) +
         __builtin_shufflevector(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15);
}

[[gnu::always_inline]] inline void Store(float sum, float alpha, float beta, float* c) {
  *c = beta == 0.0f ? alpha * sum : alpha * sum + beta * *c;
}

// The MR x NR sums of rows a[i] and b[j], all contiguous in K: the dot form, one vector of lanes
// per output element.
template <int MR, int NR>
[[gnu::always_inline]] inline void DotTile(const float* const (&a)[MR], const float* const (&b)[NR],
                                           int64_t k, float (&sums)[MR][NR]) {
  Lanes acc[MR][NR] = {};
  auto step = [&](auto load) {
    Lanes av[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) av[i] = load(a[i]);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const Lanes bv = load(b[j]);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[i][j] += av[i] * bv;
    }
  };
  int64_t l = 0;
  for (; l + kGemmLanes <= k; l += kGemmLanes) step([l](const float* p) { return Load(p + l); });
  if (l < k) step([l, k](const float* p) { return LoadPartial(p + l, k - l); });
  // Eight elements per SumLanesOf8, the last group padded.
  constexpr int kGroups = (MR * NR + 7) / 8;
  Lanes groups[kGroups][8] = {};
#pragma GCC unroll 16
  for (int e = 0; e < MR * NR; ++e) groups[e / 8][e % 8] = acc[e / NR][e % NR];
  float flat[kGroups * 8];
#pragma GCC unroll 2
  for (int g = 0; g < kGroups; ++g) {
    const Lanes sum = SumLanesOf8(groups[g]);
    std::memcpy(flat + g * 8, &sum, sizeof(sum));
  }
  std::memcpy(sums, flat, sizeof(sums));
}

// Rows [0, MR) of A against B's rows [j0, j1) in tiles of NR; a tile past j1 repeats row j1 - 1
// and drops those sums.
template <int MR, int NR>
[[gnu::always_inline]] inline void DotRows(const float* a, int64_t lda, const float* b, int64_t ldb,
                                           int64_t j0, int64_t j1, int64_t k, float alpha,
                                           float beta, float* c, int64_t ldc) {
  const float* ar[MR];
  for (int i = 0; i < MR; ++i) ar[i] = a + i * lda;
  for (int64_t j = j0; j < j1; j += NR) {
    const float* br[NR];
    for (int t = 0; t < NR; ++t) br[t] = b + std::min(j + t, j1 - 1) * ldb;
    float sums[MR][NR];
    DotTile<MR, NR>(ar, br, k, sums);
    const int64_t width = std::min<int64_t>(NR, j1 - j);
    for (int i = 0; i < MR; ++i) {
      for (int64_t t = 0; t < width; ++t) Store(sums[i][t], alpha, beta, c + i * ldc + j + t);
    }
  }
}

// Floats of B's rows one column block keeps in the L2 cache while every row of A passes.
constexpr int64_t kBlockFloats = 32 * 1024;

// C = alpha A B^T + beta C with A [m, k] and B [n, k], both row-major.
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
void DotForm(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
             const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // A multiple of every tile width below.
  const int64_t block = std::max<int64_t>(24, kBlockFloats / std::max<int64_t>(k, 1) / 24 * 24);
  for (int64_t j0 = 0; j0 < n; j0 += block) {
    const int64_t j1 = std::min(n, j0 + block);
    for (int64_t i = 0; i < m;) {
      const float* ai = a + i * lda;
      float* ci = c + i * ldc;
      switch (std::min<int64_t>(m - i, 4)) {
        case 4:
          DotRows<4, 3>(ai, lda, b, ldb, j0, j1, k, alpha, beta, ci, ldc);
          i += 4;
          break;
        case 3:
          DotRows<3, 4>(ai, lda, b, ldb, j0, j1, k, alpha, beta, ci, ldc);
          i += 3;
          break;
        case 2:
          DotRows<2, 6>(ai, lda, b, ldb, j0, j1, k, alpha, beta, ci, ldc);
          i += 2;
          break;
        default:
          DotRows<1, 8>(ai, lda, b, ldb, j0, j1, k, alpha, beta, ci, ldc);
          i += 1;
      }
    }
  }
}

// Output vectors per row in AxpyForm.
constexpr int kAxpyVectors = 2;
constexpr int64_t kAxpyColumns = kAxpyVectors * kGemmLanes;

// C = alpha A B + beta C with A [m, k] and B [k, n] (n a multiple of kAxpyColumns), both row-major:
// the same sums as DotForm without transposing B, lanes of products of consecutive K in
// separate vectors (one lane per output column), added in Gemm's order.
[[gnu::target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")]]
void AxpyForm(int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
              const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    const float* ai = a + i * lda;
    for (int64_t j = 0; j < n; j += kAxpyColumns) {
      Lanes acc[kGemmLanes][kAxpyVectors] = {};
      // Products of K indices l .. l + count - 1; past K, the zero products of K's padding.
      auto step = [&](int64_t l, int64_t count) {
#pragma GCC unroll 8
        for (int t = 0; t < kGemmLanes; ++t) {
#pragma GCC unroll 4
          for (int v = 0; v < kAxpyVectors; ++v) {
            acc[t][v] += t < count ? Load(b + (l + t) * ldb + j + v * kGemmLanes) * ai[l + t]
                                   : Lanes{};
          }
        }
      };
      int64_t l = 0;
      for (; l + kGemmLanes <= k; l += kGemmLanes) step(l, kGemmLanes);
      if (l < k) step(l, k - l);
      for (int v = 0; v < kAxpyVectors; ++v) {
        Lanes lanes[kGemmLanes];
        for (int t = 0; t < kGemmLanes; ++t) lanes[t] = acc[t][v];
        const Lanes sum = SumLanes(lanes);
        for (int e = 0; e < kGemmLanes; ++e) {
          Store(sum[e], alpha, beta, c + i * ldc + j + v * kGemmLanes + e);
        }
      }
    }
  }
}

// Rows of A from which packing B costs less than the dot form gains over AxpyForm.
constexpr int64_t kPackRows = 4;

}  // namespace

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
          int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  std::vector<float> a_rows;
  if (trans_a) {
    a_rows.resize(m * k);
    for (int64_t l = 0; l < k; ++l) {
      for (int64_t i = 0; i < m; ++i) a_rows[i * k + l] = a[l * lda + i];
    }
    a = a_rows.data();
    lda = k;
  }
  if (trans_b) {
    DotForm(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (m >= kPackRows) {
    std::vector<float> b_rows(n * k);
    for (int64_t l = 0; l < k; ++l) {
      for (int64_t j = 0; j < n; ++j) b_rows[j * k + l] = b[l * ldb + j];
    }
    DotForm(m, n, k, alpha, a, lda, b_rows.data(), k, beta, c, ldc);
    return;
  }
  // Whole blocks of columns in place; the last partial block from a zero-padded copy of its
  // columns, into a scratch C.
  const int64_t whole = n / kAxpyColumns * kAxpyColumns;
  AxpyForm(m, whole, k, alpha, a, lda, b, ldb, beta, c, ldc);
  if (whole == n) return;
  const int64_t rest = n - whole;
  std::vector<float> b_cols(k * kAxpyColumns, 0.0f), c_cols(m * kAxpyColumns);
  for (int64_t l = 0; l < k; ++l) {
    std::copy(b + l * ldb + whole, b + l * ldb + n, b_cols.data() + l * kAxpyColumns);
  }
  for (int64_t i = 0; i < m && beta != 0.0f; ++i) {
    std::copy(c + i * ldc + whole, c + i * ldc + n, c_cols.data() + i * kAxpyColumns);
  }
  AxpyForm(m, kAxpyColumns, k, alpha, a, lda, b_cols.data(), kAxpyColumns, beta, c_cols.data(),
           kAxpyColumns);
  for (int64_t i = 0; i < m; ++i) {
    std::copy(c_cols.data() + i * kAxpyColumns, c_cols.data() + i * kAxpyColumns + rest,
              c + i * ldc + whole);
  }
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
    y[i] = g / (1.0f + static_cast<float>(Exp(-g))) * up[i];
  }
}

void RopeRotation(int64_t position, const std::vector<double>& inv_freq, float* cos, float* sin) {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double angle = static_cast<double>(position) * inv_freq[i];
    double s = 0.0, c = 0.0;
    SinCos(angle, &s, &c);
    cos[i] = static_cast<float>(c);
    sin[i] = static_cast<float>(s);
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
      neg[j] = static_cast<float>(Exp(lo - pos[j]));  // max of -a is -lo
      pos[j] = static_cast<float>(Exp(pos[j] - hi));
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
      pt[j] = j <= t ? pt[j] * static_cast<float>(Exp(b[t] - b[j])) : 0.0f;
      den[t] += pt[j];
    }
  }

  // Inter-chunk part from the carried state: y_t = e^{b_t} fq_t S0, den_t += e^{b_t} fq_t . z0.
  Gemm(false, false, c, d, f2, 1.0f, fq, fq_stride, s, d, 0.0f, y, y_stride);
  for (int64_t t = 0; t < c; ++t) {
    const float decay = static_cast<float>(Exp(b[t]));
    float* yt = y + t * y_stride;
    for (int64_t j = 0; j < d; ++j) yt[j] *= decay;
    double qz = 0.0;
    const float* fqt = fq + t * fq_stride;
    for (int64_t i = 0; i < f2; ++i) qz += static_cast<double>(fqt[i]) * z[i];
    den[t] += Exp(b[t]) * qz;
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
    const float w = static_cast<float>(Exp(last - b[t]));
    const float* fkt = fk + t * fk_stride;
    for (int64_t i = 0; i < f2; ++i) kw[t * f2 + i] = fkt[i] * w;
  }
  const float total_decay = static_cast<float>(Exp(last));
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
      pi[j] = visible(j) ? static_cast<float>(Exp(pi[j] - hi)) : 0.0f;
      sum += pi[j];
    }
    for (int64_t m = 0; m < num_sinks; ++m) sum += Exp(sinks[m] - hi);
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
