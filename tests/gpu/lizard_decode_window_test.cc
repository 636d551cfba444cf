// LizardDecodeWindow (kernels/lizard_attention/lizard_decode_window.cu) on decode rows: against
// the CPU ops (cpu::FeatureMap, cpu::SinkAttention of engine/cpu/ops.h, the z update written out)
// at positions 0, 5, w-1, w, 3w+7 and a padding row, with random ring contents and z; against
// LizardWindow on the same rows; and bit for bit, a sequence alone equals it at index 37 of 64
// random sequences (outputs, z and ring). Shapes: llama3-8b's (2F = 256) and 2F = 128, the tiny
// model's, GQA groups 1, 3, 4 and 8 (the most the tensor-core block takes), meta tokens 0 and > 0,
// window RoPE on and off, fp32 and bf16 state, D = 256 (two column groups a warp), a window that
// is not a multiple of 16 keys with two key chunks for some warps; and the shapes LizardWindow
// runs: an fp32 window, head dims not a multiple of 16, a window too long for one block's shared
// memory. Part of gpu_kernels_test.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/cpu/ops.h"
#include "engine/model/rope.h"
#include "kernels/lizard_attention/lizard_attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;

// fp32 outputs; the window softmax uses __expf on the GPU, expf on the CPU.
constexpr double kWindowTol = 1e-4;

struct DecodeCase {
  int heads, kv_heads, head_dim, features, window, meta;
  bool window_rope, normalize;
  k::StoreType state_type, window_type;
};

// One decode launch: row i is the only token of slot i at positions[i] (-1: a padding row).
// The slot pool holds z and the ring (LizardDecodeWindow touches nothing else), random values
// representable in the stored types; `stored` gives them back as floats.
struct DecodeStep {
  DecodeCase c;
  int T = 0, ld = 0;
  k::LizardStateRef st;
  std::vector<char> pool;
  std::vector<float> qkvg, krot, logits, fmap_q, fmap_k, fq_bias, fk_bias, meta, wf;
  std::vector<double> inv_freq;
  std::vector<int32_t> slot, position;

  float Stored(const std::vector<char>& from, int s, int64_t offset, int64_t i, k::StoreType type) const {
    const char* p = from.data() + s * st.slot_bytes + offset;
    if (type == k::StoreType::kF32) {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    bf16 b;
    std::memcpy(&b, p + 2 * i, 2);
    return __bfloat162float(b);
  }
};

DecodeStep MakeStep(const DecodeCase& c, const std::vector<int>& positions, uint32_t seed) {
  DecodeStep s;
  s.c = c;
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, F = c.features, G = H / Hkv;
  std::mt19937 rng(seed);
  s.T = static_cast<int>(positions.size());
  s.ld = (H + 2 * Hkv) * D + H;
  const int64_t ssz = c.state_type == k::StoreType::kF32 ? 4 : 2, wsz = c.window_type == k::StoreType::kF32 ? 4 : 2;
  const int64_t z_elems = int64_t{H} * 2 * F, ring_elems = int64_t{Hkv} * c.window * D;
  s.st.z_offset = 0;
  s.st.k_offset = (z_elems * ssz + 15) / 16 * 16;
  s.st.v_offset = s.st.k_offset + (ring_elems * wsz + 15) / 16 * 16;
  s.st.slot_bytes = (s.st.v_offset + ring_elems * wsz + 255) / 256 * 256;
  s.st.state_type = c.state_type;
  s.st.window_type = c.window_type;
  s.pool.assign(s.st.slot_bytes * s.T, 0);
  auto put = [&](int slot, int64_t offset, const std::vector<float>& v, k::StoreType type) {
    char* p = s.pool.data() + slot * s.st.slot_bytes + offset;
    for (size_t i = 0; i < v.size(); ++i) {
      if (type == k::StoreType::kF32) {
        std::memcpy(p + 4 * i, &v[i], 4);
      } else {
        const bf16 b = __float2bfloat16(v[i]);
        std::memcpy(p + 2 * i, &b, 2);
      }
    }
  };
  for (int i = 0; i < s.T; ++i) {
    s.slot.push_back(positions[i] < 0 ? -1 : i);
    s.position.push_back(positions[i]);
    put(i, s.st.z_offset, Uniform(rng, z_elems, 0.5f, 3.f), c.state_type);
    put(i, s.st.k_offset, Uniform(rng, ring_elems, -1, 1), c.window_type);
    put(i, s.st.v_offset, Uniform(rng, ring_elems, -1, 1), c.window_type);
  }
  s.qkvg = Uniform(rng, int64_t{s.T} * s.ld, -1, 1);
  for (int r = 0; r < s.T; ++r) {
    for (int h = 0; h < H; ++h) s.qkvg[r * s.ld + (H + 2 * Hkv) * D + h] = std::uniform_real_distribution<float>(-4.f, 4.f)(rng);
  }
  s.fmap_q = Uniform(rng, int64_t{H} * D * F, -0.5, 0.5);
  s.fmap_k = Uniform(rng, int64_t{H} * D * F, -0.5, 0.5);
  s.fq_bias = Uniform(rng, H * F, -0.3f, 0.3f);
  s.fk_bias = Uniform(rng, H * F, -0.3f, 0.3f);
  s.meta = Uniform(rng, H * c.meta, -1, 2);
  s.wf = Uniform(rng, H, 0.2f, 1.f);
  ModelConfig config;
  config.head_dim = D;
  config.rope_theta = 10000.0;
  s.inv_freq = RopeInverseFrequencies(config);
  s.krot.resize(int64_t{s.T} * Hkv * D);
  for (int r = 0; r < s.T; ++r) {
    std::copy_n(&s.qkvg[r * s.ld + H * D], Hkv * D, &s.krot[r * Hkv * D]);
    if (c.window_rope && s.position[r] >= 0) cpu::ApplyRope(&s.krot[r * Hkv * D], Hkv, D, s.position[r], s.inv_freq);
  }
  // Feature-map logits (FeatureMapLogits is tested on its own): [T, q heads | k heads].
  s.logits.assign(int64_t{s.T} * 2 * H * F, 0.f);
  for (int r = 0; r < s.T; ++r) {
    for (int h = 0; h < H; ++h) {
      for (int f = 0; f < F; ++f) {
        double aq = 0, ak = 0;
        for (int d = 0; d < D; ++d) {
          aq += double{s.qkvg[r * s.ld + h * D + d]} * s.fmap_q[(int64_t{h} * D + d) * F + f];
          ak += double{s.qkvg[r * s.ld + H * D + (h / G) * D + d]} * s.fmap_k[(int64_t{h} * D + d) * F + f];
        }
        s.logits[int64_t{r} * 2 * H * F + h * F + f] = static_cast<float>(aq);
        s.logits[int64_t{r} * 2 * H * F + H * F + h * F + f] = static_cast<float>(ak);
      }
    }
  }
  return s;
}

struct DecodeOut {
  std::vector<float> fq, fk, gamma, den, y;
  std::vector<char> pool;
};

using WindowFn = decltype(&k::LizardDecodeWindow);

DecodeOut RunWindow(const DecodeStep& s, WindowFn window) {
  const DecodeCase& c = s.c;
  const int H = c.heads, D = c.head_dim, F2 = 2 * c.features, T = s.T;
  DeviceVec<char> d_pool(s.pool);
  DeviceVec<float> d_qkvg(s.qkvg), d_krot(s.krot), d_logits(s.logits), d_fqb(s.fq_bias), d_fkb(s.fk_bias);
  DeviceVec<float> d_meta(s.meta), d_wf(s.wf);
  DeviceVec<double> d_freq(s.inv_freq);
  // first_row, first_pos and single of a decode row: the row itself, its position, 1.
  std::vector<int32_t> rows(T), single(T, 1);
  for (int r = 0; r < T; ++r) rows[r] = r;
  DeviceVec<int32_t> d_slot(s.slot), d_pos(s.position), d_first_row(rows), d_single(single);
  DeviceVec<float> d_fq(int64_t{T} * H * F2), d_fk(int64_t{T} * H * F2), d_gamma(T * H), d_den(T * H), d_y(int64_t{T} * H * D);
  for (DeviceVec<float>* v : {&d_fq, &d_fk, &d_gamma, &d_den, &d_y}) v->Poison();
  k::LizardStateRef st = s.st;
  st.pool = d_pool.get();
  const k::LizardDims dims{H, c.kv_heads, D, c.features, c.window, c.meta, c.window_rope, c.normalize};
  const k::TokenMeta tokens{d_slot.get(), d_pos.get(), d_first_row.get(), d_pos.get(), d_single.get()};
  const k::LizardParams params{d_logits.get(), d_fqb.get(), d_fkb.get(), d_meta.get(), d_wf.get()};
  const k::LizardScratch scratch{d_fq.get(), d_fk.get(), d_gamma.get(), d_den.get(), d_y.get()};
  EXPECT_EQ(window(dims, d_qkvg.get(), s.ld, d_krot.get(), c.kv_heads * D, d_freq.get(), tokens, 0, T, params, st,
                   scratch, nullptr),
            cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return {d_fq.Download(), d_fk.Download(), d_gamma.Download(), d_den.Download(), d_y.Download(), d_pool.Download()};
}

class LizardDecodeWindowTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(LizardDecodeWindowTest, MatchesCpuReference) {
  const DecodeCase c = GetParam();
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, F = c.features, F2 = 2 * F, w = c.window, m = c.meta;
  const int G = H / Hkv;
  const DecodeStep s = MakeStep(c, {0, 5, w - 1, w, 3 * w + 7, -1}, 100 + D + F + w);
  const DecodeOut out = RunWindow(s, &k::LizardDecodeWindow);
  const bool s32 = c.state_type == k::StoreType::kF32, w32 = c.window_type == k::StoreType::kF32;
  const double s_tol = s32 ? kF32Tol : kBf16Tol;
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  auto round_s = [&](float x) { return s32 ? x : Bf16Round(x); };
  auto round_w = [&](float x) { return w32 ? x : Bf16Round(x); };

  for (int r = 0; r < s.T; ++r) {
    const int p = s.position[r];
    const float* row = &s.qkvg[r * s.ld];
    const int64_t z_elems = int64_t{H} * F2;
    std::vector<float> z_ref(z_elems), z_out(z_elems);
    for (int h = 0; h < H; ++h) {
      SCOPED_TRACE(::testing::Message() << "row " << r << " position " << p << " head " << h);
      const int64_t th = int64_t{r} * H + h;
      if (p < 0) {  // padding
        for (int d = 0; d < D; ++d) ASSERT_EQ(out.y[th * D + d], 0.f);
        for (int f = 0; f < F2; ++f) {
          ASSERT_EQ(out.fq[th * F2 + f], 0.f);
          ASSERT_EQ(out.fk[th * F2 + f], 0.f);
        }
        ASSERT_EQ(out.gamma[th], 0.f);
        ASSERT_EQ(out.den[th], 1.f);
        continue;
      }
      const int g = h / G;
      std::vector<float> fq(F2), fk(F2), ya(D);
      cpu::FeatureMap(row + h * D, D, 1, &s.fmap_q[int64_t{h} * D * F], &s.fq_bias[h * F], D, F, fq.data(), F2);
      cpu::FeatureMap(row + H * D + g * D, D, 1, &s.fmap_k[int64_t{h} * D * F], &s.fk_bias[h * F], D, F, fk.data(), F2);
      const float gamma = 1.f / (1.f + std::exp(-row[(H + 2 * Hkv) * D + h]));
      // z advances by one token (rounded as stored); the denominator reads the new z.
      double den = 0;
      for (int f = 0; f < F2; ++f) {
        const float z = s.Stored(s.pool, r, s.st.z_offset, int64_t{h} * F2 + f, c.state_type);
        z_ref[h * F2 + f] = round_s(gamma * z + fk[f]);
        z_out[h * F2 + f] = s.Stored(out.pool, r, s.st.z_offset, int64_t{h} * F2 + f, c.state_type);
        den += double{fq[f]} * z_ref[h * F2 + f];
      }
      EXPECT_LE(RelError(&out.fq[th * F2], fq.data(), F2), kF32Tol);
      EXPECT_LE(RelError(&out.fk[th * F2], fk.data(), F2), kF32Tol);
      EXPECT_NEAR(out.gamma[th], gamma, 1e-6f);
      EXPECT_NEAR(out.den[th], c.normalize ? den + 1e-6 : 1.0, s_tol * den);
      // Window keys lo..p: the ring's rows, then the token's own key and value (unrounded).
      std::vector<float> qa(row + h * D, row + h * D + D), kk, vv;
      if (c.window_rope) cpu::ApplyRope(qa.data(), 1, D, p, s.inv_freq);
      std::vector<int64_t> kpos;
      for (int j = std::max(0, p - w + 1); j < p; ++j) {
        for (int d = 0; d < D; ++d) {
          const int64_t i = (int64_t{g} * w + j % w) * D + d;
          kk.push_back(s.Stored(s.pool, r, s.st.k_offset, i, c.window_type));
          vv.push_back(s.Stored(s.pool, r, s.st.v_offset, i, c.window_type));
        }
        kpos.push_back(j);
      }
      kk.insert(kk.end(), &s.krot[(int64_t{r} * Hkv + g) * D], &s.krot[(int64_t{r} * Hkv + g) * D] + D);
      vv.insert(vv.end(), row + H * D + Hkv * D + g * D, row + H * D + Hkv * D + g * D + D);
      kpos.push_back(p);
      cpu::SinkAttention(qa.data(), D, 1, p, kk.data(), D, vv.data(), D, kpos.data(), kpos.size(), w,
                         &s.meta[h * m], m, D, scale, ya.data(), D);
      for (float& x : ya) x *= s.wf[h];
      EXPECT_LE(RelError(&out.y[th * D], ya.data(), D), kWindowTol);
    }
    if (p < 0) continue;
    EXPECT_LE(RelError(z_out, z_ref), s_tol) << "z of row " << r;
    // The ring: row p % w now holds the token's key and value as stored, the others are unchanged.
    for (int g = 0; g < Hkv; ++g) {
      for (int j = 0; j < w; ++j) {
        for (int d = 0; d < D; ++d) {
          const int64_t i = (int64_t{g} * w + j) * D + d;
          const float k_out = s.Stored(out.pool, r, s.st.k_offset, i, c.window_type);
          const float v_out = s.Stored(out.pool, r, s.st.v_offset, i, c.window_type);
          if (j == p % w) {
            ASSERT_EQ(k_out, round_w(s.krot[(int64_t{r} * Hkv + g) * D + d])) << "ring K, row " << r;
            ASSERT_EQ(v_out, round_w(row[H * D + Hkv * D + g * D + d])) << "ring V, row " << r;
          } else {
            ASSERT_EQ(k_out, s.Stored(s.pool, r, s.st.k_offset, i, c.window_type)) << "ring K, row " << r;
            ASSERT_EQ(v_out, s.Stored(s.pool, r, s.st.v_offset, i, c.window_type)) << "ring V, row " << r;
          }
        }
      }
    }
  }
}

// The same rows through LizardWindow (single tokens): the same outputs within float tolerance,
// the same ring bits.
TEST_P(LizardDecodeWindowTest, AgreesWithLizardWindow) {
  const DecodeCase c = GetParam();
  const int w = c.window;
  const DecodeStep s = MakeStep(c, {0, 5, w - 1, w, 3 * w + 7, -1, 2 * w + 1}, 7 + c.head_dim);
  const DecodeOut a = RunWindow(s, &k::LizardDecodeWindow), b = RunWindow(s, &k::LizardWindow);
  EXPECT_LE(RelError(a.fq, b.fq), kF32Tol);
  EXPECT_LE(RelError(a.fk, b.fk), kF32Tol);
  EXPECT_LE(RelError(a.gamma, b.gamma), kF32Tol);
  EXPECT_LE(RelError(a.den, b.den), c.state_type == k::StoreType::kF32 ? kF32Tol : kBf16Tol);
  EXPECT_LE(RelError(a.y, b.y), kWindowTol);
  for (int r = 0; r < s.T; ++r) {
    const int64_t ring = s.st.slot_bytes - s.st.k_offset;  // K, V and the padding after them
    EXPECT_EQ(std::memcmp(a.pool.data() + r * s.st.slot_bytes + s.st.k_offset,
                          b.pool.data() + r * s.st.slot_bytes + s.st.k_offset, ring),
              0)
        << "ring of row " << r;
  }
}

// Batch invariance: a sequence alone equals it at index 37 of 64 random ones, bit for bit.
TEST_P(LizardDecodeWindowTest, AloneEqualsInBatch) {
  const DecodeCase c = GetParam();
  std::mt19937 rng(37);
  std::vector<int> positions(64);
  for (int& p : positions) p = std::uniform_int_distribution<int>(0, 4 * c.window)(rng);
  positions[11] = -1;  // and a padding row
  const DecodeStep batch = MakeStep(c, positions, 5);
  // Row 37's inputs and slot as a one-row step.
  DecodeStep alone = MakeStep(c, {positions[37]}, 6);
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, F = c.features, F2 = 2 * F;
  std::copy_n(&batch.qkvg[37 * batch.ld], batch.ld, alone.qkvg.data());
  std::copy_n(&batch.krot[int64_t{37} * Hkv * D], Hkv * D, alone.krot.data());
  std::copy_n(&batch.logits[int64_t{37} * 2 * H * F], 2 * H * F, alone.logits.data());
  alone.fq_bias = batch.fq_bias, alone.fk_bias = batch.fk_bias, alone.meta = batch.meta, alone.wf = batch.wf;
  std::copy_n(batch.pool.data() + 37 * batch.st.slot_bytes, batch.st.slot_bytes, alone.pool.data());
  const DecodeOut a = RunWindow(alone, &k::LizardDecodeWindow), b = RunWindow(batch, &k::LizardDecodeWindow);
  auto same = [](const std::vector<float>& one, const std::vector<float>& all, int64_t n) {
    return std::memcmp(one.data(), all.data() + 37 * n, n * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(a.fq, b.fq, int64_t{H} * F2));
  EXPECT_TRUE(same(a.fk, b.fk, int64_t{H} * F2));
  EXPECT_TRUE(same(a.gamma, b.gamma, H));
  EXPECT_TRUE(same(a.den, b.den, H));
  EXPECT_TRUE(same(a.y, b.y, int64_t{H} * D));
  EXPECT_EQ(std::memcmp(a.pool.data(), b.pool.data() + 37 * batch.st.slot_bytes, batch.st.slot_bytes), 0)
      << "z and ring";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LizardDecodeWindowTest,
    ::testing::Values(
        // llama3-8b (2F = 256, G = 4), fp32 state and bf16 window as the backend stores them
        DecodeCase{32, 8, 128, 128, 128, 4, true, true, k::StoreType::kF32, k::StoreType::kBF16},
        // 2F = 128, no meta tokens, bf16 state
        DecodeCase{8, 2, 128, 64, 128, 0, true, true, k::StoreType::kBF16, k::StoreType::kBF16},
        // lizard-tiny's attention shape
        DecodeCase{4, 2, 32, 16, 32, 4, true, true, k::StoreType::kF32, k::StoreType::kBF16},
        // G = 8, D = 64, a 200-key window (13 chunks of 16: warps 0..4 score two)
        DecodeCase{16, 2, 64, 32, 200, 5, true, true, k::StoreType::kF32, k::StoreType::kBF16},
        // D = 256: two 16-column groups a warp
        DecodeCase{8, 4, 256, 64, 128, 2, true, true, k::StoreType::kBF16, k::StoreType::kBF16},
        // G = 1, no window RoPE, not normalising, fp32 window (LizardWindow runs)
        DecodeCase{4, 4, 64, 32, 16, 3, false, false, k::StoreType::kF32, k::StoreType::kF32},
        // head dims not a multiple of 16 (LizardWindow runs), G = 3
        DecodeCase{6, 2, 12, 8, 8, 2, true, true, k::StoreType::kBF16, k::StoreType::kBF16},
        DecodeCase{3, 1, 10, 4, 4, 2, false, true, k::StoreType::kF32, k::StoreType::kF32},
        // a window too long for one block's shared memory: LizardWindow runs
        DecodeCase{8, 2, 128, 64, 1024, 4, true, true, k::StoreType::kF32, k::StoreType::kBF16}));

}  // namespace
}  // namespace lizard::gputest
