// The Lizard attention op (kernels/lizard_attention/) against its CPU reference: the recurrent
// (single-token, decode) and the multi-token (prefill chunk) paths of one step against the
// token-by-token recurrence of the CPU ops (cpu::FeatureMap, cpu::GlaStep, cpu::SinkAttention of
// engine/cpu/ops.h), and the feature-map logits against a double loop. Tolerances as in
// gpu_test_util.h. Part of gpu_kernels_test.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/cpu/ops.h"
#include "engine/model/rope.h"
#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/lizard_attention/lizard_attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------- Lizard attention

struct LizardCase {
  int heads, kv_heads, head_dim, features, window, meta;
  bool window_rope, normalize;
  k::StoreType state_type, window_type;
};

class LizardAttentionTest : public ::testing::TestWithParam<LizardCase> {};

// One step with decode tokens (window filling, wrapped, first token), two prefill chunks
// (one from position 0, one continuing a wrapped ring) and a padding row; compared with the
// token-by-token recurrence of the CPU ops.
TEST_P(LizardAttentionTest, StepMatchesCpuRecurrence) {
  const LizardCase c = GetParam();
  const int H = c.heads, Hkv = c.kv_heads, D = c.head_dim, F = c.features, F2 = 2 * F, w = c.window, m = c.meta;
  const int G = H / Hkv;
  std::mt19937 rng(100 + D + F + w);
  const bool s32 = c.state_type == k::StoreType::kF32, w32 = c.window_type == k::StoreType::kF32;
  auto round_s = [&](float x) { return s32 ? x : Bf16Round(x); };
  auto round_w = [&](float x) { return w32 ? x : Bf16Round(x); };

  // Sequences: (slot, first_pos, n). Slot -1 is padding.
  struct Seq { int slot, first_pos, n; };
  const std::vector<Seq> seqs = {{0, w / 2, 1}, {1, 3 * w + 5, 1}, {2, 0, 1}, {3, 0, w + 7}, {4, 2 * w + 3, 9}, {-1, 0, 1}};
  const int num_slots = 5;

  // Slot layout of the test (any offsets work; the kernels only add them).
  const int64_t s_elems = int64_t{H} * F2 * D, z_elems = int64_t{H} * F2, ring_elems = int64_t{Hkv} * w * D;
  const int64_t ssz = s32 ? 4 : 2, wsz = w32 ? 4 : 2;
  k::LizardStateRef st;
  st.s_offset = 0;
  st.z_offset = s_elems * ssz;
  st.k_offset = st.z_offset + z_elems * ssz;
  st.v_offset = st.k_offset + ring_elems * wsz;
  st.slot_bytes = ((st.v_offset + ring_elems * wsz) + 255) / 256 * 256;
  st.state_type = c.state_type;
  st.window_type = c.window_type;

  // Host state per slot (float, values representable in the stored types).
  std::vector<std::vector<float>> S(num_slots), Z(num_slots), RK(num_slots), RV(num_slots);
  for (const Seq& s : seqs) {
    if (s.slot < 0) continue;
    S[s.slot].assign(s_elems, 0.f);
    Z[s.slot].assign(z_elems, 0.f);
    RK[s.slot].assign(ring_elems, 0.f);
    RV[s.slot].assign(ring_elems, 0.f);
    if (s.first_pos == 0) continue;  // fresh sequence: all zero
    S[s.slot] = Uniform(rng, s_elems, -0.2f, 0.2f);
    Z[s.slot] = Uniform(rng, z_elems, 0.5f, 3.f);
    RK[s.slot] = Uniform(rng, ring_elems, -1, 1);
    RV[s.slot] = Uniform(rng, ring_elems, -1, 1);
    for (float& x : S[s.slot]) x = round_s(x);
    for (float& x : Z[s.slot]) x = round_s(x);
    for (float& x : RK[s.slot]) x = round_w(x);
    for (float& x : RV[s.slot]) x = round_w(x);
  }
  std::vector<char> pool(st.slot_bytes * num_slots, 0);
  auto put = [&](int slot, int64_t offset, const std::vector<float>& v, bool f32) {
    char* p = pool.data() + slot * st.slot_bytes + offset;
    for (size_t i = 0; i < v.size(); ++i) {
      if (f32) {
        std::memcpy(p + 4 * i, &v[i], 4);
      } else {
        const bf16 b = __float2bfloat16(v[i]);
        std::memcpy(p + 2 * i, &b, 2);
      }
    }
  };
  auto get = [&](const std::vector<char>& from, int slot, int64_t offset, int64_t n, bool f32) {
    std::vector<float> v(n);
    const char* p = from.data() + slot * st.slot_bytes + offset;
    for (int64_t i = 0; i < n; ++i) {
      if (f32) {
        std::memcpy(&v[i], p + 4 * i, 4);
      } else {
        bf16 b;
        std::memcpy(&b, p + 2 * i, 2);
        v[i] = __bfloat162float(b);
      }
    }
    return v;
  };
  for (int s = 0; s < num_slots; ++s) {
    put(s, st.s_offset, S[s], s32);
    put(s, st.z_offset, Z[s], s32);
    put(s, st.k_offset, RK[s], w32);
    put(s, st.v_offset, RV[s], w32);
  }

  // Token rows and metadata.
  std::vector<int32_t> t_slot, t_pos, t_first_row, t_first_pos, t_single, s_slot, s_first_row, s_n, s_first_pos;
  int T = 0;
  for (const Seq& s : seqs) {
    s_slot.push_back(s.slot);
    s_first_row.push_back(T);
    s_n.push_back(s.n);
    s_first_pos.push_back(s.first_pos);
    for (int t = 0; t < s.n; ++t, ++T) {
      t_slot.push_back(s.slot);
      t_pos.push_back(s.slot < 0 ? -1 : s.first_pos + t);
      t_first_row.push_back(T - t);
      t_first_pos.push_back(s.first_pos);
      t_single.push_back(s.n == 1);
    }
  }
  const int ld = (H + 2 * Hkv) * D + H;
  std::vector<float> qkvg = Uniform(rng, int64_t{T} * ld, -1, 1);
  for (int r = 0; r < T; ++r) {
    for (int h = 0; h < H; ++h) qkvg[r * ld + (H + 2 * Hkv) * D + h] = std::uniform_real_distribution<float>(0.f, 4.f)(rng);
  }
  std::vector<float> fmap_q = Uniform(rng, int64_t{H} * D * F, -0.5, 0.5), fmap_k = Uniform(rng, int64_t{H} * D * F, -0.5, 0.5);
  std::vector<float> fq_bias = Uniform(rng, H * F, -0.3f, 0.3f), fk_bias(H * F, 0.f);
  std::vector<float> meta = Uniform(rng, H * m, -1, 2), wf = Uniform(rng, H, 0.2f, 1.f);
  ModelConfig config;
  config.head_dim = D;
  config.rope_theta = 10000.0;
  const std::vector<double> inv_freq = RopeInverseFrequencies(config);

  // Keys after RoPE for the window (the Rope kernel is tested above; the CPU does its own).
  std::vector<float> krot(int64_t{T} * Hkv * D);
  for (int r = 0; r < T; ++r) {
    std::copy_n(&qkvg[r * ld + H * D], Hkv * D, &krot[r * Hkv * D]);
    if (c.window_rope && t_pos[r] >= 0) cpu::ApplyRope(&krot[r * Hkv * D], Hkv, D, t_pos[r], inv_freq);
  }

  // Feature-map logits (the backend computes them with a batched GEMM): [T, q heads | k heads].
  std::vector<float> logits(int64_t{T} * 2 * H * F, 0.f);
  for (int r = 0; r < T; ++r) {
    for (int h = 0; h < H; ++h) {
      for (int f = 0; f < F; ++f) {
        double aq = 0, ak = 0;
        for (int d = 0; d < D; ++d) {
          aq += double{qkvg[r * ld + h * D + d]} * fmap_q[(int64_t{h} * D + d) * F + f];
          ak += double{qkvg[r * ld + H * D + (h / G) * D + d]} * fmap_k[(int64_t{h} * D + d) * F + f];
        }
        logits[int64_t{r} * 2 * H * F + h * F + f] = static_cast<float>(aq);
        logits[int64_t{r} * 2 * H * F + H * F + h * F + f] = static_cast<float>(ak);
      }
    }
  }

  DeviceVec<char> d_pool(pool);
  DeviceVec<float> d_qkvg(qkvg), d_krot(krot), d_logits(logits), d_fqb(fq_bias), d_meta(meta), d_wf(wf);
  DeviceVec<double> d_freq(inv_freq);
  DeviceVec<int32_t> d_tslot(t_slot), d_tpos(t_pos), d_tfr(t_first_row), d_tfp(t_first_pos), d_tsingle(t_single);
  DeviceVec<int32_t> d_sslot(s_slot), d_sfr(s_first_row), d_sn(s_n), d_sfp(s_first_pos);
  DeviceVec<float> d_fq(int64_t{T} * H * F2), d_fk(int64_t{T} * H * F2), d_gamma(T * H), d_den(T * H), d_yw(int64_t{T} * H * D);
  DeviceVec<bf16> d_y(int64_t{T} * H * D);
  d_y.Poison();
  st.pool = d_pool.get();

  k::LizardDims dims{H, Hkv, D, F, w, m, c.window_rope, c.normalize};
  k::TokenMeta tokens{d_tslot.get(), d_tpos.get(), d_tfr.get(), d_tfp.get(), d_tsingle.get()};
  k::SeqMeta sm{d_sslot.get(), d_sfr.get(), d_sn.get(), d_sfp.get()};
  k::LizardParams params{d_logits.get(), d_fqb.get(), nullptr, d_meta.get(), d_wf.get()};
  k::LizardScratch scratch{d_fq.get(), d_fk.get(), d_gamma.get(), d_den.get(), d_yw.get()};
  const int S_count = static_cast<int>(seqs.size());
  CUDA_OK(k::LizardWindow(dims, d_qkvg.get(), ld, d_krot.get(), Hkv * D, d_freq.get(), tokens, 0, T, params, st, scratch, nullptr));
  CUDA_OK(k::LizardNormalizer(dims, sm, S_count, st, scratch, nullptr));
  CUDA_OK(k::LizardRingWrite(dims, d_qkvg.get(), ld, d_krot.get(), Hkv * D, sm, S_count, st, nullptr));
  CUDA_OK(k::LizardState(dims, d_qkvg.get(), ld, sm, S_count, st, scratch, d_y.get(), nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> y = ToFloat(d_y.Download());
  const std::vector<char> pool_after = d_pool.Download();

  // CPU recurrence, token by token.
  std::vector<float> y_ref(int64_t{T} * H * D, 0.f);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (size_t si = 0; si < seqs.size(); ++si) {
    const Seq& s = seqs[si];
    if (s.slot < 0) continue;
    std::vector<float>& Ss = S[s.slot];
    std::vector<float>& Zs = Z[s.slot];
    // Window keys by position: the ring's rows for positions before the chunk.
    std::map<int, std::pair<std::vector<float>, std::vector<float>>> keys;
    for (int p = std::max(0, s.first_pos - w); p < s.first_pos; ++p) {
      for (int g = 0; g < Hkv; ++g) {
        auto& kv = keys[p];
        kv.first.resize(Hkv * D);
        kv.second.resize(Hkv * D);
        std::copy_n(&RK[s.slot][(g * w + p % w) * D], D, &kv.first[g * D]);
        std::copy_n(&RV[s.slot][(g * w + p % w) * D], D, &kv.second[g * D]);
      }
    }
    for (int t = 0; t < s.n; ++t) {
      const int r = s_first_row[si] + t, p = s.first_pos + t;
      const float* row = &qkvg[r * ld];
      auto& cur = keys[p];
      cur.first.assign(&krot[r * Hkv * D], &krot[r * Hkv * D] + Hkv * D);
      cur.second.assign(row + H * D + Hkv * D, row + H * D + 2 * Hkv * D);
      for (int h = 0; h < H; ++h) {
        const int g = h / G;
        std::vector<float> fq(F2), fk(F2), ygate(D), ya(D);
        cpu::FeatureMap(row + h * D, D, 1, &fmap_q[h * D * F], &fq_bias[h * F], D, F, fq.data(), F2);
        cpu::FeatureMap(row + H * D + g * D, D, 1, &fmap_k[h * D * F], &fk_bias[h * F], D, F, fk.data(), F2);
        const float gamma = 1.f / (1.f + std::exp(-row[(H + 2 * Hkv) * D + h]));
        cpu::GlaStep(fq.data(), fk.data(), row + H * D + Hkv * D + g * D, gamma, F2, D, c.normalize,
                     &Ss[int64_t{h} * F2 * D], &Zs[h * F2], ygate.data());
        // The state is rounded as stored after every token (bf16 state).
        for (int64_t i = 0; i < int64_t{F2} * D; ++i) Ss[int64_t{h} * F2 * D + i] = round_s(Ss[int64_t{h} * F2 * D + i]);
        for (int i = 0; i < F2; ++i) Zs[h * F2 + i] = round_s(Zs[h * F2 + i]);
        std::vector<float> qa(row + h * D, row + h * D + D);
        if (c.window_rope) cpu::ApplyRope(qa.data(), 1, D, p, inv_freq);
        std::vector<float> kk, vv;
        std::vector<int64_t> kpos;
        for (int j = std::max(0, p - w + 1); j <= p; ++j) {
          kk.insert(kk.end(), &keys[j].first[g * D], &keys[j].first[g * D] + D);
          vv.insert(vv.end(), &keys[j].second[g * D], &keys[j].second[g * D] + D);
          kpos.push_back(j);
        }
        cpu::SinkAttention(qa.data(), D, 1, p, kk.data(), D, vv.data(), D, kpos.data(), kpos.size(), w,
                           &meta[h * m], m, D, scale, ya.data(), D);
        for (int d = 0; d < D; ++d) y_ref[(int64_t{r} * H + h) * D + d] = ygate[d] + wf[h] * ya[d];
      }
      // Later tokens see this token's key and value as the ring stores them.
      for (float& x : cur.first) x = round_w(x);
      for (float& x : cur.second) x = round_w(x);
    }
    // State after the step; the ring's rows for the last w positions.
    const double s_tol = s32 ? kF32Tol : kBf16Tol;
    EXPECT_LE(RelError(get(pool_after, s.slot, st.s_offset, s_elems, s32), Ss), s_tol) << "S of slot " << s.slot;
    EXPECT_LE(RelError(get(pool_after, s.slot, st.z_offset, z_elems, s32), Zs), s_tol) << "z of slot " << s.slot;
    const std::vector<float> rk = get(pool_after, s.slot, st.k_offset, ring_elems, w32);
    const std::vector<float> rv = get(pool_after, s.slot, st.v_offset, ring_elems, w32);
    const int end = s.first_pos + s.n;
    for (int p = std::max(0, end - w); p < end; ++p) {
      for (int g = 0; g < Hkv; ++g) {
        const double tol = w32 ? kF32Tol : kBf16Tol;
        EXPECT_LE(RelError(&rk[(g * w + p % w) * D], &keys[p].first[g * D], D), tol) << "ring K, slot " << s.slot << " pos " << p;
        EXPECT_LE(RelError(&rv[(g * w + p % w) * D], &keys[p].second[g * D], D), tol) << "ring V, slot " << s.slot << " pos " << p;
      }
    }
  }
  for (int r = 0; r < T; ++r) {
    EXPECT_LE(RelError(&y[int64_t{r} * H * D], &y_ref[int64_t{r} * H * D], H * D), kBf16Tol) << "row " << r;
    if (t_slot[r] < 0) {
      for (int i = 0; i < H * D; ++i) ASSERT_EQ(y[int64_t{r} * H * D + i], 0.f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LizardAttentionTest,
    ::testing::Values(
        // llama3-8b's attention shape
        LizardCase{8, 2, 128, 128, 128, 4, true, true, k::StoreType::kF32, k::StoreType::kBF16},
        LizardCase{4, 2, 64, 32, 16, 3, true, true, k::StoreType::kF32, k::StoreType::kF32},
        LizardCase{6, 2, 16, 8, 8, 2, false, false, k::StoreType::kBF16, k::StoreType::kBF16},
        LizardCase{3, 1, 8, 4, 4, 2, true, true, k::StoreType::kF32, k::StoreType::kF32}));

// ---------------------------------------------------------------- feature-map logits

// Against a plain double loop (float32 output, 1e-5), and batch invariant: a token's logits are
// bitwise the same alone and among 299 others (long steps take bigger token blocks). D 128 takes
// the tensor-core kernel, D 64 the fp32 one.
TEST(KernelsTest, FeatureMapLogits) {
  for (const auto [D, F] : {std::pair{128, 64}, std::pair{128, 128}, std::pair{64, 32}}) {
    SCOPED_TRACE(testing::Message() << "D " << D << ", F " << F);
    std::mt19937 rng(13);
    const int H = 8, Hkv = 2, T = 300, G = H / Hkv;
    const int ld = (H + 2 * Hkv) * D + H + 3;  // qkvg rows with a gate part and padding
    const std::vector<float> qkvg = Uniform(rng, static_cast<size_t>(T) * ld, -1, 1);
    const std::vector<float> wq = Uniform(rng, H * D * F, -0.1f, 0.1f), wk = Uniform(rng, H * D * F, -0.1f, 0.1f);
    DeviceVec<float> d_qkvg(qkvg), d_wq(wq), d_wk(wk), d_out(static_cast<size_t>(T) * 2 * H * F), d_one(2 * H * F);
    CUDA_OK(k::FeatureMapLogits(d_qkvg.get(), ld, T, H, Hkv, D, F, d_wq.get(), d_wk.get(), d_out.get(), nullptr));
    const std::vector<float> out = d_out.Download();
    std::vector<float> ref(out.size());
    for (int t = 0; t < T; ++t) {
      for (int i = 0; i < 2 * H; ++i) {
        const bool key = i >= H;
        const int h = key ? i - H : i;
        const float* x = qkvg.data() + static_cast<size_t>(t) * ld + (key ? H * D + (h / G) * D : h * D);
        const float* w = (key ? wk : wq).data() + static_cast<size_t>(h) * D * F;
        for (int f = 0; f < F; ++f) {
          double acc = 0;
          for (int d = 0; d < D; ++d) acc += static_cast<double>(x[d]) * w[d * F + f];
          ref[(static_cast<size_t>(t) * 2 * H + i) * F + f] = static_cast<float>(acc);
        }
      }
    }
    EXPECT_LT(RelError(out, ref), kF32Tol);
    for (int t : {0, 17, 40, 299}) {
      CUDA_OK(k::FeatureMapLogits(d_qkvg.get() + static_cast<size_t>(t) * ld, ld, 1, H, Hkv, D, F, d_wq.get(),
                                  d_wk.get(), d_one.get(), nullptr));
      const std::vector<float> one = d_one.Download();
      EXPECT_EQ(std::memcmp(one.data(), out.data() + static_cast<size_t>(t) * 2 * H * F, one.size() * sizeof(float)), 0)
          << t;
    }
    if (D != 128) continue;
    // A decode row's logits are bitwise those the prefill path computes with its feature maps.
    k::PrefillFeatureMapsArgs maps;
    maps.dims = k::LizardDims{.heads = H, .kv_heads = Hkv, .head_dim = D, .features = F};
    maps.qkvg = d_qkvg.get(), maps.ld = ld, maps.rows = T;
    maps.fmap_q = d_wq.get(), maps.fmap_k = d_wk.get();
    DeviceVec<__nv_bfloat16> fq(static_cast<size_t>(T) * H * 2 * F), fk(static_cast<size_t>(T) * H * 2 * F);
    DeviceVec<float> prefill_logits(out.size());
    maps.fq = fq.get(), maps.fk = fk.get(), maps.logits = prefill_logits.get();
    CUDA_OK(k::LizardPrefillFeatureMaps(maps, nullptr));
    EXPECT_EQ(std::memcmp(prefill_logits.Download().data(), out.data(), out.size() * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace lizard::gputest
