// Each CPU op against a naive double-precision reference on random inputs.
#include "engine/cpu/ops.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/model/rope.h"

namespace lizard::cpu {
namespace {

// Tolerance for every op here: relative Frobenius error vs the float64 reference.
constexpr double kTol = 1e-5;

double RelError(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Every transpose combination with padded leading dimensions, m below and above the row count
// from which a non-transposed B is packed.
TEST(OpsTest, GemmAllTransposes) {
  const int64_t n = 7, k = 9;
  for (int64_t m : {1, 5}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2, ldc = n + 1;
        const auto a = Random((ta ? k : m) * lda, 1), b = Random((tb ? n : k) * ldb, 2);
        std::vector<float> c(m * ldc, 1.0f);
        Gemm(ta, tb, m, n, k, 2.0f, a.data(), lda, b.data(), ldb, 0.5f, c.data(), ldc);
        std::vector<float> got;
        std::vector<double> want;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double s = 0.0;
            for (int64_t l = 0; l < k; ++l) {
              s += double(ta ? a[l * lda + i] : a[i * lda + l]) *
                   (tb ? b[j * ldb + l] : b[l * ldb + j]);
            }
            got.push_back(c[i * ldc + j]);
            want.push_back(2.0 * s + 0.5);
          }
          EXPECT_EQ(c[i * ldc + n], 1.0f) << "padding written";
        }
        EXPECT_LT(RelError(got, want), kTol) << m << ta << tb;
      }
    }
  }
}

// One element of Gemm in the order ops.h documents, one scalar operation at a time.
float DocumentedGemmElement(const float* a_row, int64_t a_step, const float* b_col, int64_t b_step,
                            int64_t k, float alpha, float beta, float c) {
  float s[kGemmLanes] = {};
  const int64_t padded = (k + kGemmLanes - 1) / kGemmLanes * kGemmLanes;
  for (int64_t l = 0; l < padded; ++l) {
    const float product = l < k ? a_row[l * a_step] * b_col[l * b_step] : 0.0f * 0.0f;
    s[l % kGemmLanes] = s[l % kGemmLanes] + product;
  }
  const float sum = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
  return beta == 0.0f ? alpha * sum : alpha * sum + beta * c;
}

// Every row of every shape equals the documented order bit for bit, whatever the row count,
// column count, strides, transposes or the SIMD clone this CPU runs; and the float64 product
// within kTol. OpenBLAS (sgemv for one row, sgemm kernels per row count and CPU type) failed this.
TEST(OpsTest, GemmFollowsTheDocumentedSummationOrder) {
  uint64_t seed = 100;
  for (int64_t k : {0, 1, 7, 8, 9, 64, 203}) {
    for (int64_t m : {1, 2, 3, 4, 5, 9, 13}) {
      for (int64_t n : {1, 5, 16, 17, 40}) {
        for (bool ta : {false, true}) {
          for (bool tb : {false, true}) {
            const int64_t lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 3, ldc = n + 2;
            const auto a = Random((ta ? k : m) * lda + 1, ++seed);
            const auto b = Random((tb ? n : k) * ldb + 1, ++seed);
            const float beta = k % 2 == 0 ? 0.0f : 0.75f;
            std::vector<float> c = Random(m * ldc, ++seed);
            const std::vector<float> c0 = c;
            Gemm(ta, tb, m, n, k, 1.5f, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
            std::vector<float> got;
            std::vector<double> want;
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t j = 0; j < n; ++j) {
                const float* a_row = ta ? a.data() + i : a.data() + i * lda;
                const float* b_col = tb ? b.data() + j * ldb : b.data() + j;
                const float expected = DocumentedGemmElement(a_row, ta ? lda : 1, b_col,
                                                             tb ? 1 : ldb, k, 1.5f, beta,
                                                             c0[i * ldc + j]);
                ASSERT_EQ(std::bit_cast<uint32_t>(c[i * ldc + j]), std::bit_cast<uint32_t>(expected))
                    << "m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb
                    << " at " << i << "," << j;
                double s = 0.0;
                for (int64_t l = 0; l < k; ++l) s += double(a_row[l * (ta ? lda : 1)]) * b_col[l * (tb ? 1 : ldb)];
                got.push_back(c[i * ldc + j]);
                want.push_back(1.5 * s + beta * c0[i * ldc + j]);
              }
              for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], c0[i * ldc + j]);
            }
            EXPECT_LT(RelError(got, want), kTol) << "m " << m << " n " << n << " k " << k;
          }
        }
      }
    }
  }
}

// A projection's row (x [rows, in] times W^T, W [out, in]) is the same bits whatever the number
// of rows with it and however the output columns or rows are split over threads, as the CPU
// backend splits them (CpuBackend::Project).
TEST(OpsTest, GemmRowsDoNotDependOnTheBatchOrTheThreadSplit) {
  const int64_t max_rows = 11, in = 300, out = 77;
  const auto x = Random(max_rows * in, 40), w = Random(out * in, 41);
  std::vector<float> alone(max_rows * out);
  for (int64_t r = 0; r < max_rows; ++r) {
    Gemm(false, true, 1, out, in, 1.0f, x.data() + r * in, in, w.data(), in, 0.0f,
         alone.data() + r * out, out);
  }
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t rows = 1; rows <= max_rows; ++rows) {
      std::vector<float> by_columns(rows * out), by_rows(rows * out);
      pool.ParallelFor(out, 1, [&](int64_t begin, int64_t end) {
        Gemm(false, true, rows, end - begin, in, 1.0f, x.data(), in, w.data() + begin * in, in,
             0.0f, by_columns.data() + begin, out);
      });
      pool.ParallelFor(rows, 1, [&](int64_t begin, int64_t end) {
        Gemm(false, true, end - begin, out, in, 1.0f, x.data() + begin * in, in, w.data(), in,
             0.0f, by_rows.data() + begin * out, out);
      });
      const std::vector<float> want(alone.begin(), alone.begin() + rows * out);
      EXPECT_EQ(by_columns, want) << rows << " rows, " << threads << " threads, columns split";
      EXPECT_EQ(by_rows, want) << rows << " rows, " << threads << " threads, rows split";
    }
  }
  std::vector<double> reference(max_rows * out);
  for (int64_t r = 0; r < max_rows; ++r) {
    for (int64_t j = 0; j < out; ++j) {
      for (int64_t l = 0; l < in; ++l) reference[r * out + j] += double(x[r * in + l]) * w[j * in + l];
    }
  }
  EXPECT_LT(RelError(alone, reference), kTol);
}

// Exp, Log and SinCos (IEEE arithmetic only, so no CPU-dependent libm variant is involved)
// against glibc within a few double ulps on random arguments over their ranges, plus the edges.
TEST(OpsTest, OwnTranscendentalsMatchLibm) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> exp_arg(-745.0, 709.0), small(-2.0, 2.0),
      log_exponent(-1000.0, 1000.0), angle(-1.6e6, 1.6e6);
  double exp_err = 0.0, log_err = 0.0, trig_err = 0.0;
  for (int i = 0; i < 200000; ++i) {
    for (double x : {exp_arg(rng), small(rng)}) {
      const double want = std::exp(x);
      if (want > 1e-300) exp_err = std::max(exp_err, std::abs(Exp(x) - want) / want);
    }
    const double y = std::pow(2.0, log_exponent(rng)) * (1.0 + small(rng) * small(rng) / 8);
    log_err = std::max(log_err, std::abs(Log(y) - std::log(y)) / std::max(1.0, std::abs(std::log(y))));
    for (double x : {angle(rng), small(rng)}) {
      double s = 0.0, c = 0.0;
      SinCos(x, &s, &c);
      trig_err = std::max({trig_err, std::abs(s - std::sin(x)), std::abs(c - std::cos(x))});
    }
  }
  EXPECT_LT(exp_err, 4e-16);
  EXPECT_LT(log_err, 4e-16);
  EXPECT_LT(trig_err, 4e-16);
  EXPECT_EQ(Exp(0.0), 1.0);
  EXPECT_EQ(Exp(-INFINITY), 0.0);
  EXPECT_EQ(Exp(INFINITY), INFINITY);
  EXPECT_EQ(Exp(1000.0), INFINITY);
  EXPECT_TRUE(std::isnan(Exp(NAN)));
  EXPECT_NEAR(Exp(-740.0), std::exp(-740.0), 1e-323);  // subnormal
  EXPECT_EQ(Log(1.0), 0.0);
  EXPECT_EQ(Log(0.0), -INFINITY);
  EXPECT_TRUE(std::isnan(Log(-1.0)));
  for (double x : {-50.0, -1.0, -1e-9, 0.0, 1e-9, 1.0, 50.0}) {
    EXPECT_NEAR(LogSigmoid(x), -std::log1p(std::exp(-x)), 1e-15 * std::max(1.0, std::abs(x))) << x;
  }
}

// The same bits on every machine and build: a hash of Exp, Log and SinCos over 3 x 100000
// arguments, computed once (on an AMD EPYC, x86-64-v4). glibc's exp, log and sin/cos fail this
// when run with GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2,-FMA (its non-FMA variants), which
// tests/engine/CMakeLists.txt also runs this under. Changing the functions changes the hash.
TEST(OpsTest, OwnTranscendentalsAreTheSameBitsEverywhere) {
  uint64_t hash = 14695981039346656037u;  // FNV-1a
  auto mix = [&](double v) {
    hash = (hash ^ std::bit_cast<uint64_t>(v)) * 1099511628211u;
  };
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> exp_arg(-100.0, 100.0), log_arg(1e-6, 1e6),
      angle(0.0, 2e5);
  for (int i = 0; i < 100000; ++i) {
    mix(Exp(exp_arg(rng)));
    mix(Log(log_arg(rng)));
    double s = 0.0, c = 0.0;
    SinCos(angle(rng), &s, &c);
    mix(s);
    mix(c);
  }
  EXPECT_EQ(hash, 16852684143129278973u);
}

TEST(OpsTest, ThreadPoolCoversEveryIndexOnce) {
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    for (int64_t min_per_range : {1, 10, 100}) {
      for (int rep = 0; rep < 20; ++rep) {  // reuses the same workers
        std::vector<int> hits(37, 0);
        pool.ParallelFor(37, min_per_range, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) hits[i]++;
        });
        for (int h : hits) EXPECT_EQ(h, 1);
      }
    }
    pool.ParallelFor(0, 1, [](int64_t, int64_t) { ADD_FAILURE() << "called for n = 0"; });
  }
}

TEST(OpsTest, RmsNorm) {
  const int64_t rows = 3, n = 16;
  const double eps = 1e-5;
  const auto x = Random(rows * n, 3), w = Random(n, 4);
  std::vector<float> out(rows * n);
  RmsNorm(x.data(), w.data(), rows, n, eps, out.data());
  std::vector<double> want(rows * n);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t i = 0; i < n; ++i) ms += double(x[r * n + i]) * x[r * n + i] / n;
    for (int64_t i = 0; i < n; ++i) want[r * n + i] = x[r * n + i] / std::sqrt(ms + eps) * w[i];
  }
  EXPECT_LT(RelError(out, want), kTol);
}

TEST(OpsTest, SiluMul) {
  const auto g = Random(20, 5), u = Random(20, 6);
  std::vector<float> y(20);
  SiluMul(g.data(), u.data(), 20, y.data());
  std::vector<double> want(20);
  for (int i = 0; i < 20; ++i) want[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
  EXPECT_LT(RelError(y, want), kTol);
}

// Naive rotate_half RoPE with HF's inv_freq formula, one head.
std::vector<double> NaiveRope(const std::vector<float>& x, int64_t pos,
                              const std::vector<double>& inv_freq) {
  const size_t half = x.size() / 2;
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double angle = pos * inv_freq[i % half];
    const double rotated = i < half ? -double(x[i + half]) : double(x[i - half]);
    out[i] = x[i] * std::cos(angle) + rotated * std::sin(angle);
  }
  return out;
}

TEST(OpsTest, RopePlain) {
  ModelConfig config;
  config.head_dim = 16;
  config.rope_theta = 500.0;
  const auto inv_freq = RopeInverseFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(inv_freq[i], std::pow(500.0, -2.0 * i / 16), 1e-15);
  const int64_t heads = 3, pos = 37;
  auto x = Random(heads * 16, 7);
  const auto original = x;
  ApplyRope(x.data(), heads, 16, pos, inv_freq);
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<float> head(original.begin() + h * 16, original.begin() + (h + 1) * 16);
    std::vector<float> got(x.begin() + h * 16, x.begin() + (h + 1) * 16);
    EXPECT_LT(RelError(got, NaiveRope(head, pos, inv_freq)), kTol);
  }
}

TEST(OpsTest, RopeLlama3Scaling) {
  ModelConfig config;
  config.head_dim = 64;
  config.rope_theta = 500000.0;
  config.rope_scaling.llama3 = true;
  config.rope_scaling.factor = 8.0;
  config.rope_scaling.low_freq_factor = 1.0;
  config.rope_scaling.high_freq_factor = 4.0;
  config.rope_scaling.original_max_position_embeddings = 64;
  const auto scaled = RopeInverseFrequencies(config);
  int low = 0, mid = 0, high = 0;
  for (int i = 0; i < 32; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 64);
    const double wavelen = 2 * std::numbers::pi / f;
    double want;
    if (wavelen < 64.0 / 4.0) {  // high frequency: kept
      want = f;
      high++;
    } else if (wavelen > 64.0 / 1.0) {  // low frequency: divided by factor
      want = f / 8.0;
      low++;
    } else {  // in between: interpolated
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * f / 8.0 + smooth * f;
      mid++;
    }
    EXPECT_NEAR(scaled[i], want, 1e-12 * f) << i;
  }
  // The chosen shape exercises all three bands.
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

TEST(OpsTest, FeatureMap) {
  const int64_t rows = 4, d = 8, f = 6, stride = 11, out_stride = 2 * f + 3;
  const auto x = Random(rows * stride, 8), w = Random(d * f, 9), b = Random(f, 10);
  std::vector<float> out(rows * out_stride);
  FeatureMap(x.data(), stride, rows, w.data(), b.data(), d, f, out.data(), out_stride);
  std::vector<float> got;
  std::vector<double> want;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> a(f);
    for (int64_t j = 0; j < f; ++j) {
      a[j] = b[j];
      for (int64_t i = 0; i < d; ++i) a[j] += double(x[r * stride + i]) * w[i * f + j];
    }
    for (double sign : {1.0, -1.0}) {
      double sum = 0.0;
      for (double aj : a) sum += std::exp(sign * aj);
      for (double aj : a) want.push_back(std::exp(sign * aj) / sum);
    }
    got.insert(got.end(), out.begin() + r * out_stride, out.begin() + r * out_stride + 2 * f);
  }
  EXPECT_LT(RelError(got, want), kTol);
}

// Random positive features (as phi produces), values and gate logits for GLA tests.
struct GlaInputs {
  int64_t c, f2, d;
  std::vector<float> fq, fk, v, gate_logit;
};

GlaInputs MakeGlaInputs(int64_t c, int64_t f2, int64_t d, uint64_t seed) {
  GlaInputs in{c, f2, d, {}, {}, Random(c * d, seed), Random(c, seed + 1, 2.0f)};
  std::mt19937_64 rng(seed + 2);
  std::uniform_real_distribution<float> pos(0.01f, 1.0f);
  for (int64_t i = 0; i < c * f2; ++i) in.fq.push_back(pos(rng));
  for (int64_t i = 0; i < c * f2; ++i) in.fk.push_back(pos(rng));
  return in;
}

// y_t = sum_{s<=t} (prod_{r=s+1..t} gamma_r) (fq_t.fk_s) v_s / (same with 1 + 1e-6), zero state.
std::vector<double> NaiveGla(const GlaInputs& in, bool normalize) {
  std::vector<double> y(in.c * in.d, 0.0);
  for (int64_t t = 0; t < in.c; ++t) {
    double den = 1e-6;
    for (int64_t s = 0; s <= t; ++s) {
      double decay = 1.0;
      for (int64_t r = s + 1; r <= t; ++r) decay *= 1.0 / (1.0 + std::exp(-double(in.gate_logit[r])));
      double dot = 0.0;
      for (int64_t i = 0; i < in.f2; ++i) dot += double(in.fq[t * in.f2 + i]) * in.fk[s * in.f2 + i];
      den += decay * dot;
      for (int64_t j = 0; j < in.d; ++j) y[t * in.d + j] += decay * dot * in.v[s * in.d + j];
    }
    if (normalize) {
      for (int64_t j = 0; j < in.d; ++j) y[t * in.d + j] /= den;
    }
  }
  return y;
}

TEST(OpsTest, GlaChunkAndRecurrentMatchNaiveQuadraticForm) {
  for (bool normalize : {true, false}) {
    const GlaInputs in = MakeGlaInputs(23, 10, 6, 11);
    const auto want = NaiveGla(in, normalize);
    // Chunked, in one chunk, from the zero state.
    std::vector<float> s(in.f2 * in.d, 0.0f), z(in.f2, 0.0f), y(in.c * in.d);
    GlaChunk(in.fq.data(), in.f2, in.fk.data(), in.f2, in.v.data(), in.d, in.gate_logit.data(), 1,
             in.c, in.f2, in.d, normalize, s.data(), z.data(), y.data(), in.d);
    EXPECT_LT(RelError(y, want), kTol) << "chunked, normalize=" << normalize;
    // Recurrent, token by token.
    std::vector<float> s2(in.f2 * in.d, 0.0f), z2(in.f2, 0.0f), y2(in.c * in.d);
    for (int64_t t = 0; t < in.c; ++t) {
      const float gamma = 1.0f / (1.0f + std::exp(-in.gate_logit[t]));
      GlaStep(&in.fq[t * in.f2], &in.fk[t * in.f2], &in.v[t * in.d], gamma, in.f2, in.d, normalize,
              s2.data(), z2.data(), &y2[t * in.d]);
    }
    EXPECT_LT(RelError(y2, want), kTol) << "recurrent, normalize=" << normalize;
    // Both leave the same state.
    EXPECT_LT(RelError(s, std::vector<double>(s2.begin(), s2.end())), kTol);
    EXPECT_LT(RelError(z, std::vector<double>(z2.begin(), z2.end())), kTol);
  }
}

TEST(OpsTest, GlaChunksCarryStateLikeTheRecurrence) {
  // Chunks of 5, 1, 9, 8 over a non-zero initial state vs the recurrence over all 23 tokens.
  const GlaInputs in = MakeGlaInputs(23, 8, 4, 21);
  std::vector<float> s0 = Random(in.f2 * in.d, 30, 0.3f), z0(in.f2);
  for (int64_t i = 0; i < in.f2; ++i) z0[i] = 0.5f + 0.1f * i;
  std::vector<float> s = s0, z = z0, y(in.c * in.d);
  int64_t start = 0;
  for (int64_t len : {5, 1, 9, 8}) {
    GlaChunk(&in.fq[start * in.f2], in.f2, &in.fk[start * in.f2], in.f2, &in.v[start * in.d], in.d,
             &in.gate_logit[start], 1, len, in.f2, in.d, true, s.data(), z.data(),
             &y[start * in.d], in.d);
    start += len;
  }
  std::vector<float> s2 = s0, z2 = z0, y2(in.c * in.d);
  for (int64_t t = 0; t < in.c; ++t) {
    const float gamma = 1.0f / (1.0f + std::exp(-in.gate_logit[t]));
    GlaStep(&in.fq[t * in.f2], &in.fk[t * in.f2], &in.v[t * in.d], gamma, in.f2, in.d, true,
            s2.data(), z2.data(), &y2[t * in.d]);
  }
  EXPECT_LT(RelError(y, std::vector<double>(y2.begin(), y2.end())), kTol);
  EXPECT_LT(RelError(s, std::vector<double>(s2.begin(), s2.end())), kTol);
  EXPECT_LT(RelError(z, std::vector<double>(z2.begin(), z2.end())), kTol);
}

TEST(OpsTest, GlaChunkSurvivesTinyGates) {
  // Gates near 0 make cumulative log-gates large; every exponent stays <= 0 so nothing overflows.
  GlaInputs in = MakeGlaInputs(64, 4, 4, 41);
  for (float& g : in.gate_logit) g = -60.0f;
  std::vector<float> s(in.f2 * in.d, 1.0f), z(in.f2, 1.0f), y(in.c * in.d);
  GlaChunk(in.fq.data(), in.f2, in.fk.data(), in.f2, in.v.data(), in.d, in.gate_logit.data(), 1,
           in.c, in.f2, in.d, true, s.data(), z.data(), y.data(), in.d);
  for (float x : y) EXPECT_TRUE(std::isfinite(x));
  for (float x : s) EXPECT_TRUE(std::isfinite(x));
}

// Window attention with sinks for one query over keys at positions key_pos.
std::vector<double> NaiveSinkAttention(const float* q, int64_t q_pos, const std::vector<float>& k,
                                       const std::vector<float>& v,
                                       const std::vector<int64_t>& key_pos, int64_t window,
                                       const std::vector<float>& sinks, int64_t d) {
  std::vector<double> logits;
  std::vector<int64_t> used;
  for (size_t j = 0; j < key_pos.size(); ++j) {
    if (key_pos[j] > q_pos || key_pos[j] <= q_pos - window) continue;
    double s = 0.0;
    for (int64_t i = 0; i < d; ++i) s += double(q[i]) * k[j * d + i];
    logits.push_back(s / std::sqrt(double(d)));
    used.push_back(j);
  }
  double hi = -INFINITY;
  for (double l : logits) hi = std::max(hi, l);
  for (float t : sinks) hi = std::max(hi, double(t));
  double den = 0.0;
  for (double l : logits) den += std::exp(l - hi);
  for (float t : sinks) den += std::exp(t - hi);
  std::vector<double> out(d, 0.0);
  for (size_t u = 0; u < used.size(); ++u) {
    for (int64_t i = 0; i < d; ++i) out[i] += std::exp(logits[u] - hi) / den * v[used[u] * d + i];
  }
  return out;
}

TEST(OpsTest, SinkAttentionWindowFillingAndFull) {
  const int64_t d = 8, window = 5, num_keys = 12;
  // Keys stored out of order (as in a ring buffer), positions 0..11.
  std::vector<int64_t> key_pos(num_keys);
  for (int64_t j = 0; j < num_keys; ++j) key_pos[j] = (j * 5) % num_keys;
  const auto k = Random(num_keys * d, 50), v = Random(num_keys * d, 51);
  const auto q = Random(num_keys * d, 52, 2.0f);
  for (int64_t num_sinks : {0, 3}) {
    const auto sinks = Random(num_sinks, 53);
    // Queries at positions 0..11: the first ones see a window still filling.
    std::vector<float> out(num_keys * d);
    SinkAttention(q.data(), d, num_keys, 0, k.data(), d, v.data(), d, key_pos.data(), num_keys,
                  window, sinks.data(), num_sinks, d, 1.0f / std::sqrt(float(d)), out.data(), d);
    std::vector<double> want;
    for (int64_t i = 0; i < num_keys; ++i) {
      const auto row = NaiveSinkAttention(&q[i * d], i, k, v, key_pos, window, sinks, d);
      want.insert(want.end(), row.begin(), row.end());
    }
    EXPECT_LT(RelError(out, want), kTol) << "sinks=" << num_sinks;
  }
}

}  // namespace
}  // namespace lizard::cpu
