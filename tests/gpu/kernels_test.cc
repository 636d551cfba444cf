// Each CUDA kernel against a plain CPU version (engine/cpu/ops.h, itself tested against naive
// references) on fresh random inputs; the Lizard attention op's kernels are in
// lizard_attention_test.cc (the same binary). Tolerances (gpu_test_util.h), as
// ||gpu - cpu|| / ||cpu||: float32 outputs 1e-5, bf16 outputs (or bf16-stored inputs) 1e-2.
// The sampling kernels are held to the host sampler (engine/sampling/sampler.h) exactly: same
// processed logits, same tokens.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/cpu/ops.h"
#include "engine/model/rope.h"
#include "engine/sampling/sampler.h"
#include "kernels/kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;

const auto* const kRequireGpu = ::testing::AddGlobalTestEnvironment(new RequireGpu);

TEST(KernelsTest, EmbeddingAndGather) {
  std::mt19937 rng(1);
  const int V = 100, cols = 300, n = 17;
  std::vector<float> table = Uniform(rng, V * cols, -1, 1);
  for (float& x : table) x = Bf16Round(x);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % V);
  DeviceVec<bf16> d_table(ToBf16(table));
  DeviceVec<int32_t> d_ids(ids);
  DeviceVec<float> d_out(n * cols);
  DeviceVec<bf16> d_rows(n * cols);
  d_out.Poison();
  CUDA_OK(k::EmbeddingGather(d_table.get(), d_ids.get(), n, cols, d_out.get(), nullptr));
  CUDA_OK(k::GatherRowsBf16(d_table.get(), d_ids.get(), n, cols, d_rows.get(), nullptr));
  const std::vector<float> out = d_out.Download(), rows = ToFloat(d_rows.Download());
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < cols; ++c) {
      ASSERT_EQ(out[i * cols + c], table[ids[i] * cols + c]);
      ASSERT_EQ(rows[i * cols + c], table[ids[i] * cols + c]);
    }
  }
}

TEST(KernelsTest, AddRmsNorm) {
  std::mt19937 rng(2);
  for (int cols : {48, 50, 4096}) {  // the 4-wide kernel, the 1-wide one, the 8B model's rows
    const int rows = 7;
    std::vector<float> x = Uniform(rng, rows * cols, -2, 2), delta = Uniform(rng, rows * cols, -1, 1);
    std::vector<float> w = Uniform(rng, cols, 0.5, 1.5);
    DeviceVec<float> d_x(x), d_delta(delta), d_w(w);
    DeviceVec<bf16> d_out(rows * cols);
    CUDA_OK(k::AddRmsNorm(d_x.get(), {.y = d_delta.get()}, d_w.get(), rows, cols, 1e-5f, d_out.get(), nullptr));
    for (size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
    std::vector<float> ref(rows * cols);
    cpu::RmsNorm(x.data(), w.data(), rows, cols, 1e-5, ref.data());
    EXPECT_LE(RelError(d_x.Download(), x), kF32Tol);
    EXPECT_LE(RelError(ToFloat(d_out.Download()), ref), kBf16Tol);
  }
}

TEST(KernelsTest, AddBiasAndSwiGlu) {
  std::mt19937 rng(3);
  const int rows = 5;
  for (int inter : {300, 302}) {  // the 4-wide and the 1-wide kernel
    SCOPED_TRACE(inter);
    std::vector<float> gu = Uniform(rng, rows * 2 * inter, -3, 3), bias = Uniform(rng, 2 * inter, -1, 1);
    DeviceVec<float> d_gu(gu), d_bias(bias);
    DeviceVec<bf16> d_out(rows * inter);
    CUDA_OK(k::AddBias(d_gu.get(), 2 * inter, d_bias.get(), rows, 2 * inter, nullptr));
    CUDA_OK(k::SwiGlu({.y = d_gu.get()}, rows, inter, d_out.get(), nullptr));
    std::vector<float> ref(rows * inter);
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < 2 * inter; ++i) gu[r * 2 * inter + i] += bias[i];
      cpu::SiluMul(&gu[r * 2 * inter], &gu[r * 2 * inter + inter], inter, &ref[r * inter]);
    }
    EXPECT_LE(RelError(d_gu.Download(), gu), kF32Tol);
    EXPECT_LE(RelError(ToFloat(d_out.Download()), ref), kBf16Tol);
  }
}

// A GEMM output given as split partials (and a bias): AddRmsNorm and SwiGlu must give the bits
// of the same op on the output summed first, p0 + p1 + ... + p(S-1) + bias (GemmBf16's reduce,
// then AddBias), for the 4-wide and the 1-wide kernels.
TEST(KernelsTest, ConsumersAddSplitPartials) {
  std::mt19937 rng(9);
  const int rows = 5;
  for (int cols : {48, 50, 4096}) {  // AddRmsNorm 4-wide and 1-wide; SwiGlu's inter = cols / 2 both
    for (int splits : {1, 2, 4}) {
      for (bool bias : {false, true}) {
        SCOPED_TRACE(testing::Message() << "cols " << cols << " splits " << splits << " bias " << bias);
        const int64_t n = int64_t{rows} * cols, stride = n + 12;  // a gap between the splits
        const std::vector<float> parts = Uniform(rng, splits * stride, -1, 1);
        const std::vector<float> b = Uniform(rng, cols, -1, 1);
        std::vector<float> summed(n);
        for (int64_t i = 0; i < n; ++i) {
          float v = parts[i];
          for (int p = 1; p < splits; ++p) v += parts[p * stride + i];
          summed[i] = bias ? v + b[i % cols] : v;
        }
        DeviceVec<float> d_parts(parts), d_b(b), d_summed(summed);
        const k::GemmOutput from_parts{.partials = d_parts.get(), .splits = splits, .stride = stride,
                                       .bias = bias ? d_b.get() : nullptr};
        const k::GemmOutput from_y{.y = d_summed.get()};

        const std::vector<float> x = Uniform(rng, n, -2, 2), w = Uniform(rng, cols, 0.5, 1.5);
        DeviceVec<float> d_w(w), x1(x), x2(x);
        DeviceVec<bf16> out1(n), out2(n);
        CUDA_OK(k::AddRmsNorm(x1.get(), from_parts, d_w.get(), rows, cols, 1e-5f, out1.get(), nullptr));
        CUDA_OK(k::AddRmsNorm(x2.get(), from_y, d_w.get(), rows, cols, 1e-5f, out2.get(), nullptr));
        const std::vector<float> hx1 = x1.Download(), hx2 = x2.Download();
        const std::vector<bf16> h1 = out1.Download(), h2 = out2.Download();
        EXPECT_EQ(std::memcmp(hx1.data(), hx2.data(), n * sizeof(float)), 0) << "AddRmsNorm x";
        EXPECT_EQ(std::memcmp(h1.data(), h2.data(), n * sizeof(bf16)), 0) << "AddRmsNorm out";

        const int inter = cols / 2;
        DeviceVec<bf16> act1(n / 2), act2(n / 2);
        CUDA_OK(k::SwiGlu(from_parts, rows, inter, act1.get(), nullptr));
        CUDA_OK(k::SwiGlu(from_y, rows, inter, act2.get(), nullptr));
        const std::vector<bf16> a1 = act1.Download(), a2 = act2.Download();
        EXPECT_EQ(std::memcmp(a1.data(), a2.data(), n / 2 * sizeof(bf16)), 0) << "SwiGlu";
      }
    }
  }
  // 4-wide loads need 16-byte aligned splits: refused, not run 1-wide (other bits).
  DeviceVec<float> d(64), x(8);
  DeviceVec<bf16> out(8);
  const k::GemmOutput odd{.partials = d.get(), .splits = 2, .stride = 10};
  EXPECT_EQ(k::AddRmsNorm(x.get(), odd, d.get(), 1, 8, 1e-5f, out.get(), nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(k::SwiGlu(odd, 1, 4, out.get(), nullptr), cudaErrorInvalidValue);
}

TEST(KernelsTest, Rope) {
  std::mt19937 rng(4);
  const int rows = 6, heads = 3, D = 128, ld = heads * D + 10;
  ModelConfig config;
  config.head_dim = D;
  config.rope_theta = 500000.0;
  const std::vector<double> inv_freq = RopeInverseFrequencies(config);
  std::vector<float> x = Uniform(rng, rows * ld, -1, 1);
  const std::vector<int32_t> pos = {0, 1, 17, 4095, 131071, -1};
  DeviceVec<float> d_x(x), d_out(rows * heads * D);
  DeviceVec<int32_t> d_pos(pos);
  DeviceVec<double> d_freq(inv_freq);
  CUDA_OK(k::Rope(d_x.get(), ld, d_out.get(), heads * D, d_pos.get(), rows, heads, D, d_freq.get(), nullptr));
  std::vector<float> ref(rows * heads * D);
  for (int r = 0; r < rows; ++r) {
    std::copy_n(&x[r * ld], heads * D, &ref[r * heads * D]);
    if (pos[r] >= 0) cpu::ApplyRope(&ref[r * heads * D], heads, D, pos[r], inv_freq);
  }
  EXPECT_LE(RelError(d_out.Download(), ref), kF32Tol);
}

TEST(KernelsTest, ConvertAndRandomFill) {
  std::mt19937 rng(5);
  std::vector<float> x = Uniform(rng, 1000, -5, 5);
  DeviceVec<float> d_x(x), d_f(x.size());
  DeviceVec<bf16> d_b(x.size());
  CUDA_OK(k::ConvertToBf16(d_x.get(), 0, x.size(), d_b.get(), nullptr));
  CUDA_OK(k::ConvertToF32(d_b.get(), 2, x.size(), d_f.get(), nullptr));
  const std::vector<float> back = d_f.Download();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(back[i], Bf16Round(x[i]));

  DeviceVec<float> a(5000), b(5000);
  CUDA_OK(k::RandomFillF32(a.get(), 5000, 42, 2.f, 1.f, nullptr));
  CUDA_OK(k::RandomFillF32(b.get(), 5000, 42, 2.f, 1.f, nullptr));
  const std::vector<float> ha = a.Download(), hb = b.Download();
  EXPECT_EQ(ha, hb);
  double mean = 0;
  for (float v : ha) {
    ASSERT_GE(v, -1.f);
    ASSERT_LT(v, 3.f);
    mean += v / ha.size();
  }
  EXPECT_NEAR(mean, 1.0, 0.1);
}

// ---------------------------------------------------------------- paged softmax attention

TEST(KernelsTest, PagedKvWriteAndAttention) {
  std::mt19937 rng(7);
  for (int D : {64, 128}) {
    const int H = 8, Hkv = 2, G = H / Hkv, page = 16, max_pages = 400;
    const std::vector<int> lengths = {1, 300, 5000};  // tokens already in each slot's cache
    const int num_slots = static_cast<int>(lengths.size());
    // Random, shuffled page assignment.
    int total_pages = 0;
    for (int n : lengths) total_pages += (n + page - 1) / page;
    std::vector<int32_t> perm(total_pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int32_t> table(num_slots * max_pages, 0);
    int used = 0;
    for (int s = 0; s < num_slots; ++s) {
      for (int i = 0; i < (lengths[s] + page - 1) / page; ++i) table[s * max_pages + i] = perm[used++];
    }
    // Every token of every slot is written through PagedKvWrite.
    std::vector<int32_t> slot, pos;
    for (int s = 0; s < num_slots; ++s) {
      for (int p = 0; p < lengths[s]; ++p) slot.push_back(s), pos.push_back(p);
    }
    const int T = static_cast<int>(slot.size());
    std::vector<float> kk = Uniform(rng, int64_t{T} * Hkv * D, -1, 1), vv = Uniform(rng, int64_t{T} * Hkv * D, -1, 1);
    DeviceVec<bf16> d_k(int64_t{total_pages} * page * Hkv * D), d_v(int64_t{total_pages} * page * Hkv * D);
    DeviceVec<int32_t> d_table(table), d_slot(slot), d_pos(pos);
    DeviceVec<float> d_kk(kk), d_vv(vv);
    k::PagedKv kv{d_k.get(), d_v.get(), k::StoreType::kBF16, d_table.get(), max_pages, page, Hkv, D};
    CUDA_OK(k::PagedKvWrite(d_kk.get(), Hkv * D, d_vv.get(), Hkv * D, d_slot.get(), d_pos.get(), T, kv, nullptr));

    // Queries: the last position of each slot, two earlier ones, and a padding row.
    std::vector<int32_t> q_slot = {0, 1, 2, 2, 1, -1}, q_pos = {0, 299, 4999, 1000, 7, -1};
    const int R = static_cast<int>(q_slot.size());
    std::vector<float> q = Uniform(rng, int64_t{R} * H * D, -1, 1);
    DeviceVec<float> d_q(q), d_partial(int64_t{R} * H * 64 * (D + 2));
    DeviceVec<int32_t> d_qslot(q_slot), d_qpos(q_pos);
    DeviceVec<bf16> d_out(int64_t{R} * H * D);
    d_out.Poison();
    CUDA_OK(k::PagedAttention(d_q.get(), H * D, d_qslot.get(), d_qpos.get(), R, H, 5000, kv, d_partial.get(),
                              int64_t{R} * H * 64, d_out.get(), nullptr));
    const std::vector<float> out = ToFloat(d_out.Download());
    int first = 0;
    std::vector<int> slot_first(num_slots);
    for (int s = 0; s < num_slots; ++s) slot_first[s] = first, first += lengths[s];
    for (int r = 0; r < R; ++r) {
      if (q_slot[r] < 0) {
        for (int i = 0; i < H * D; ++i) ASSERT_EQ(out[int64_t{r} * H * D + i], 0.f);
        continue;
      }
      const int n = q_pos[r] + 1, base = slot_first[q_slot[r]];
      std::vector<int64_t> kpos(n);
      std::iota(kpos.begin(), kpos.end(), 0);
      std::vector<float> ref(H * D);
      for (int h = 0; h < H; ++h) {
        std::vector<float> ks(int64_t{n} * D), vs(int64_t{n} * D);
        for (int j = 0; j < n; ++j) {
          for (int d = 0; d < D; ++d) {
            ks[j * D + d] = Bf16Round(kk[(int64_t{base + j} * Hkv + h / G) * D + d]);
            vs[j * D + d] = Bf16Round(vv[(int64_t{base + j} * Hkv + h / G) * D + d]);
          }
        }
        cpu::SinkAttention(&q[(int64_t{r} * H + h) * D], D, 1, q_pos[r], ks.data(), D, vs.data(), D, kpos.data(), n,
                           n + 1, nullptr, 0, D, 1.f / std::sqrt(static_cast<float>(D)), &ref[h * D], D);
      }
      EXPECT_LE(RelError(&out[int64_t{r} * H * D], ref.data(), H * D), kBf16Tol) << "D " << D << " row " << r;
    }
  }
}

// ---------------------------------------------------------------- sampling

// Random rows of a large and a small vocabulary, each with its own parameters and penalty
// history; the kernels must reproduce the host sampler's processed logits bit for bit, its tokens
// (a draw could only differ where u * mass lands within rounding of a boundary) and its logprobs
// (the same top-n ids, values within 4 ulps: log Z is summed in another order).
TEST(KernelsTest, SamplingMatchesHostSampler) {
  std::mt19937 rng(11);
  for (int vocab : {128256, 1000, 37}) {
    const int rows = vocab > 1000 ? 48 : 96;
    std::vector<float> logits(static_cast<size_t>(rows) * vocab);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<RowSampling> specs(rows);
    std::vector<TokenHistory> histories(rows);
    std::vector<k::SamplingRow> params(rows);
    std::vector<int32_t> penalty_tokens, penalty_counts;
    for (int r = 0; r < rows; ++r) {
      const float scale = std::vector<float>{0.5f, 2.f, 6.f}[r % 3];  // flat to peaked
      for (int i = 0; i < vocab; ++i) logits[static_cast<size_t>(r) * vocab + i] = scale * normal(rng);
      if (r % 7 == 0) logits[static_cast<size_t>(r) * vocab + 3] = logits[static_cast<size_t>(r) * vocab + 5];  // a tie
      SamplingParams& p = specs[r].params;
      switch (r % 8) {
        case 0: break;                                            // greedy
        case 1: p.temperature = 0.8f; break;                      // plain draw
        case 2: p.temperature = 1.0f, p.top_k = 1 + r % 50; break;
        case 3: p.temperature = 1.2f, p.top_p = 0.9f; break;
        case 4: p.temperature = 0.7f, p.min_p = 0.05f; break;
        case 5: p.temperature = 1.0f, p.top_k = 40, p.top_p = 0.8f, p.min_p = 0.02f; break;
        case 6: p.temperature = 0.9f, p.top_p = 0.3f, p.repetition_penalty = 1.3f; break;
        case 7: p.presence_penalty = 0.5f, p.frequency_penalty = 0.25f, p.repetition_penalty = 0.8f; break;
      }
      specs[r].seed = rng();
      specs[r].step = rng() % 1000;
      if (p.penalized()) {
        std::vector<int32_t> prompt(20);
        for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % vocab);
        histories[r].AddPrompt(prompt);
        for (int g = 0; g < 15; ++g) histories[r].AddGenerated(static_cast<int32_t>(rng() % std::min(vocab, 40)));
        specs[r].history = &histories[r];
      }
      specs[r].logprobs = std::vector<int32_t>{0, 1, 5, 20, 64}[r % 5];
      params[r] = {p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
                   p.frequency_penalty, static_cast<int32_t>(penalty_tokens.size()), 0, specs[r].seed, specs[r].step,
                   specs[r].logprobs};
      if (specs[r].history != nullptr) {
        for (int32_t t : histories[r].seen()) {
          const auto it = histories[r].generated_counts().find(t);
          penalty_tokens.push_back(t);
          penalty_counts.push_back(it == histories[r].generated_counts().end() ? 0 : it->second);
        }
      }
      params[r].penalty_end = static_cast<int32_t>(penalty_tokens.size());
    }
    DeviceVec<float> d_logits(logits);
    DeviceVec<k::SamplingRow> d_params(params);
    DeviceVec<int32_t> d_ptok(penalty_tokens), d_pcnt(penalty_counts), d_tokens(rows);
    CUDA_OK(k::ProcessLogits(d_logits.get(), rows, vocab, d_params.get(), d_ptok.get(), d_pcnt.get(), nullptr));
    CUDA_OK(k::SampleTokens(d_logits.get(), rows, vocab, d_params.get(), d_tokens.get(), nullptr));
    constexpr int kTop = k::kMaxDeviceTopLogprobs;
    DeviceVec<float> d_chosen(rows), d_top_values(static_cast<size_t>(rows) * kTop);
    DeviceVec<int32_t> d_top_ids(static_cast<size_t>(rows) * kTop);
    CUDA_OK(k::TopLogprobs(d_logits.get(), rows, vocab, d_params.get(), d_tokens.get(), d_chosen.get(), d_top_ids.get(),
                           d_top_values.get(), nullptr));
    const std::vector<float> processed = d_logits.Download();
    const std::vector<int32_t> tokens = d_tokens.Download();
    const std::vector<float> chosen = d_chosen.Download(), top_values = d_top_values.Download();
    const std::vector<int32_t> top_ids = d_top_ids.Download();
    int draws = 0;
    for (int r = 0; r < rows; ++r) {
      SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " row " << r);
      std::vector<float> x(logits.begin() + static_cast<size_t>(r) * vocab, logits.begin() + static_cast<size_t>(r + 1) * vocab);
      ProcessLogits(specs[r].params, specs[r].history, x);
      ASSERT_EQ(std::memcmp(x.data(), processed.data() + static_cast<size_t>(r) * vocab, vocab * sizeof(float)), 0);
      const int32_t expected = SampleToken(std::span<const float>(logits.data() + static_cast<size_t>(r) * vocab, vocab),
                                           specs[r], nullptr);
      EXPECT_EQ(tokens[r], expected);
      draws += specs[r].params.temperature != 0.f;
      // Logprobs: the host ranks the same processed row.
      if (specs[r].logprobs > 0) {
        TokenLogprobs lp;
        FillLogprobs(x, tokens[r], specs[r].logprobs, &lp);
        EXPECT_FLOAT_EQ(chosen[r], lp.chosen.logprob);
        ASSERT_EQ(static_cast<int>(lp.top.size()), std::min(specs[r].logprobs, vocab));
        for (size_t a = 0; a < lp.top.size(); ++a) {
          EXPECT_EQ(top_ids[r * kTop + a], lp.top[a].token) << a;
          EXPECT_FLOAT_EQ(top_values[r * kTop + a], lp.top[a].logprob) << a;
        }
      }
    }
    EXPECT_GT(draws, rows / 2);
  }
}

// A row's token does not depend on the other rows of the launch: each row alone gives what it
// gave among 64 others.
TEST(KernelsTest, SamplingIsPerRow) {
  std::mt19937 rng(12);
  const int vocab = 5000, rows = 64;
  const std::vector<float> logits = Uniform(rng, static_cast<size_t>(rows) * vocab, -4, 4);
  std::vector<k::SamplingRow> params(rows);
  for (int r = 0; r < rows; ++r) {
    params[r].temperature = 1.f, params[r].top_p = 0.95f, params[r].top_k = 100, params[r].seed = 99, params[r].step = r;
  }
  DeviceVec<float> d_logits(logits);
  DeviceVec<k::SamplingRow> d_params(params);
  DeviceVec<int32_t> d_tokens(rows), d_one(1);
  CUDA_OK(k::SampleTokens(d_logits.get(), rows, vocab, d_params.get(), d_tokens.get(), nullptr));
  const std::vector<int32_t> together = d_tokens.Download();
  for (int r = 0; r < rows; r += 9) {
    CUDA_OK(k::SampleTokens(d_logits.get() + static_cast<size_t>(r) * vocab, 1, vocab, d_params.get() + r, d_one.get(), nullptr));
    EXPECT_EQ(d_one.Download()[0], together[r]) << r;
  }
}

}  // namespace
}  // namespace lizard::gputest
