// LizardDecodeState (kernels/lizard_attention/lizard_state.cu), the decode rows' state update and
// readout, against the CPU recurrence step (cpu::GlaStep of engine/cpu/ops.h) and against
// LizardState, and its batch invariance: a sequence's y and S are bitwise the same alone and
// among 63 others. Its inputs (fq, fk, gamma, den and the window part) are drawn at random here;
// lizard_attention_test.cc covers the kernels that compute them. Part of gpu_kernels_test.
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/cpu/ops.h"
#include "kernels/lizard_attention/lizard_attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;

struct DecodeCase {
  int heads, kv_heads, head_dim, features;
  k::StoreType state_type;
};

// One decode token per sequence: the sequence's S (H x 2F x D, values the store type holds), its
// qkvg row (only v is read) and the scratch LizardWindow would have written.
struct DecodeSeq {
  std::vector<float> S, qkvg, fq, fk, gamma, den, yw;
};

class LizardDecodeStateTest : public ::testing::TestWithParam<DecodeCase> {
 protected:
  int H() const { return GetParam().heads; }
  int Hkv() const { return GetParam().kv_heads; }
  int D() const { return GetParam().head_dim; }
  int F2() const { return 2 * GetParam().features; }
  int Ld() const { return (H() + 2 * Hkv()) * D() + H(); }
  bool F32() const { return GetParam().state_type == k::StoreType::kF32; }
  int64_t SElems() const { return int64_t{H()} * F2() * D(); }

  DecodeSeq RandomSeq(std::mt19937& rng) const {
    DecodeSeq s;
    s.S = Uniform(rng, SElems(), -0.2f, 0.2f);
    if (!F32()) {
      for (float& x : s.S) x = Bf16Round(x);
    }
    s.qkvg = Uniform(rng, Ld(), -1, 1);
    s.fq = Uniform(rng, int64_t{H()} * F2(), 0.f, 0.1f);
    s.fk = Uniform(rng, int64_t{H()} * F2(), 0.f, 0.1f);
    s.gamma = Uniform(rng, H(), 0.5f, 1.f);
    s.den = Uniform(rng, H(), 1.f, 3.f);
    s.yw = Uniform(rng, int64_t{H()} * D(), -1, 1);
    return s;
  }

  // One launch of `state_fn` over the listed sequences in order (nullptr: a padding sequence,
  // slot -1); list entry i has slot i and row i. Returns y [n, H*D] and each entry's S after.
  using StateFn = decltype(&k::LizardDecodeState);
  void Run(const std::vector<const DecodeSeq*>& list, StateFn state_fn, std::vector<float>* y,
           std::vector<std::vector<float>>* S_after) const {
    const int n = static_cast<int>(list.size()), H = this->H(), D = this->D(), F2 = this->F2(), ld = Ld();
    const int64_t ssz = F32() ? 4 : 2;
    k::LizardStateRef st;
    st.s_offset = 256;  // S after other state, as in the backend's slot layout
    st.slot_bytes = (st.s_offset + SElems() * ssz + 255) / 256 * 256;
    st.state_type = GetParam().state_type;
    std::vector<char> pool(st.slot_bytes * n, 0);
    std::vector<float> qkvg(int64_t{n} * ld, 0.f), fq(int64_t{n} * H * F2, 0.f), fk(fq.size(), 0.f);
    std::vector<float> gamma(int64_t{n} * H, 0.f), den(gamma.size(), 1.f), yw(int64_t{n} * H * D, 0.f);
    std::vector<int32_t> slot(n), first_row(n), num_tokens(n, 1), first_pos(n, 7);
    for (int i = 0; i < n; ++i) {
      first_row[i] = i;
      slot[i] = list[i] ? i : -1;
      if (!list[i]) continue;
      const DecodeSeq& s = *list[i];
      char* p = pool.data() + i * st.slot_bytes + st.s_offset;
      for (int64_t e = 0; e < SElems(); ++e) {
        if (F32()) {
          std::memcpy(p + 4 * e, &s.S[e], 4);
        } else {
          const bf16 b = __float2bfloat16(s.S[e]);
          std::memcpy(p + 2 * e, &b, 2);
        }
      }
      std::copy(s.qkvg.begin(), s.qkvg.end(), qkvg.begin() + int64_t{i} * ld);
      std::copy(s.fq.begin(), s.fq.end(), fq.begin() + int64_t{i} * H * F2);
      std::copy(s.fk.begin(), s.fk.end(), fk.begin() + int64_t{i} * H * F2);
      std::copy(s.gamma.begin(), s.gamma.end(), gamma.begin() + int64_t{i} * H);
      std::copy(s.den.begin(), s.den.end(), den.begin() + int64_t{i} * H);
      std::copy(s.yw.begin(), s.yw.end(), yw.begin() + int64_t{i} * H * D);
    }
    DeviceVec<char> d_pool(pool);
    DeviceVec<float> d_qkvg(qkvg), d_fq(fq), d_fk(fk), d_gamma(gamma), d_den(den), d_yw(yw);
    DeviceVec<int32_t> d_slot(slot), d_first_row(first_row), d_num_tokens(num_tokens), d_first_pos(first_pos);
    DeviceVec<bf16> d_y(int64_t{n} * H * D);
    d_y.Poison();
    st.pool = d_pool.get();
    const k::LizardDims dims{H, Hkv(), D, F2 / 2, 16, 2, true, true};
    const k::SeqMeta seqs{d_slot.get(), d_first_row.get(), d_num_tokens.get(), d_first_pos.get()};
    const k::LizardScratch scratch{d_fq.get(), d_fk.get(), d_gamma.get(), d_den.get(), d_yw.get()};
    CUDA_OK(state_fn(dims, d_qkvg.get(), ld, seqs, n, st, scratch, d_y.get(), nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    *y = ToFloat(d_y.Download());
    const std::vector<char> after = d_pool.Download();
    S_after->assign(n, std::vector<float>(SElems()));
    for (int i = 0; i < n; ++i) {
      const char* p = after.data() + i * st.slot_bytes + st.s_offset;
      for (int64_t e = 0; e < SElems(); ++e) {
        if (F32()) {
          std::memcpy(&(*S_after)[i][e], p + 4 * e, 4);
        } else {
          bf16 b;
          std::memcpy(&b, p + 2 * e, 2);
          (*S_after)[i][e] = __bfloat162float(b);
        }
      }
    }
  }
};

// Against the CPU recurrence step, with padding sequences between and after the real ones.
TEST_P(LizardDecodeStateTest, MatchesCpuRecurrence) {
  const int H = this->H(), D = this->D(), F2 = this->F2(), G = H / Hkv();
  std::mt19937 rng(7 + D + F2);
  std::vector<DecodeSeq> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(RandomSeq(rng));
  const std::vector<const DecodeSeq*> list = {&seqs[0], &seqs[1], nullptr, &seqs[2], &seqs[3], &seqs[4], nullptr};
  std::vector<float> y;
  std::vector<std::vector<float>> S_after;
  Run(list, k::LizardDecodeState, &y, &S_after);
  for (size_t i = 0; i < list.size(); ++i) {
    const float* yi = &y[i * H * D];
    if (!list[i]) {
      for (int e = 0; e < H * D; ++e) ASSERT_EQ(yi[e], 0.f) << "padding row " << i;
      continue;
    }
    const DecodeSeq& s = *list[i];
    std::vector<float> S = s.S, y_ref(H * D), z(F2), ygate(D);
    for (int h = 0; h < H; ++h) {
      const float* v = &s.qkvg[(H + Hkv()) * D + (h / G) * D];
      cpu::GlaStep(&s.fq[h * F2], &s.fk[h * F2], v, s.gamma[h], F2, D, false, &S[int64_t{h} * F2 * D], z.data(),
                   ygate.data());
      for (int d = 0; d < D; ++d) y_ref[h * D + d] = ygate[d] / s.den[h] + s.yw[h * D + d];
    }
    if (!F32()) {
      for (float& x : S) x = Bf16Round(x);
    }
    EXPECT_LE(RelError(S_after[i], S), F32() ? kF32Tol : kBf16Tol) << "S of row " << i;
    EXPECT_LE(RelError(yi, y_ref.data(), H * D), kBf16Tol) << "y of row " << i;
  }
}

// The same step through LizardState (the tile walk that prompt rows take): the same S, and y
// within float rounding (the readouts sum the 2F rows in different orders; y is bf16, so a few
// elements may round one bf16 step apart).
TEST_P(LizardDecodeStateTest, AgreesWithLizardState) {
  std::mt19937 rng(11 + D());
  std::vector<DecodeSeq> seqs;
  for (int i = 0; i < 4; ++i) seqs.push_back(RandomSeq(rng));
  const std::vector<const DecodeSeq*> list = {&seqs[0], &seqs[1], nullptr, &seqs[2], &seqs[3]};
  std::vector<float> y_decode, y_state;
  std::vector<std::vector<float>> S_decode, S_state;
  Run(list, k::LizardDecodeState, &y_decode, &S_decode);
  Run(list, k::LizardState, &y_state, &S_state);
  EXPECT_LE(RelError(y_decode, y_state), 1e-3);
  for (size_t i = 0; i < list.size(); ++i) EXPECT_LE(RelError(S_decode[i], S_state[i]), kF32Tol) << "S of row " << i;
}

// Batch invariance: sequence 37 alone (slot 0, row 0) and at row 37 of 64 (slot 37, other random
// sequences and a padding row around it) gives bitwise the same y row and S.
TEST_P(LizardDecodeStateTest, BatchInvariant) {
  std::mt19937 rng(3 + D());
  std::vector<DecodeSeq> seqs;
  for (int i = 0; i < 64; ++i) seqs.push_back(RandomSeq(rng));
  std::vector<const DecodeSeq*> batch;
  for (const DecodeSeq& s : seqs) batch.push_back(&s);
  batch[5] = nullptr;
  std::vector<float> y_alone, y_batch;
  std::vector<std::vector<float>> S_alone, S_batch;
  Run({&seqs[37]}, k::LizardDecodeState, &y_alone, &S_alone);
  Run(batch, k::LizardDecodeState, &y_batch, &S_batch);
  const int row = H() * D();
  EXPECT_EQ(std::memcmp(y_alone.data(), &y_batch[37 * row], row * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(S_alone[0].data(), S_batch[37].data(), SElems() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LizardDecodeStateTest,
    ::testing::Values(
        // llama3-8b's head shape (2F = 256), fewer heads
        DecodeCase{8, 2, 128, 128, k::StoreType::kF32}, DecodeCase{8, 2, 128, 128, k::StoreType::kBF16},
        // 2F = 128
        DecodeCase{4, 2, 128, 64, k::StoreType::kF32}, DecodeCase{4, 2, 128, 64, k::StoreType::kBF16},
        // lizard-tiny (D = 32, 2F = 32), the largest head_dim, small odd shapes
        DecodeCase{4, 2, 32, 16, k::StoreType::kF32}, DecodeCase{4, 2, 32, 16, k::StoreType::kBF16},
        DecodeCase{2, 1, 256, 128, k::StoreType::kBF16}, DecodeCase{3, 1, 8, 4, k::StoreType::kF32},
        DecodeCase{6, 2, 16, 8, k::StoreType::kBF16}, DecodeCase{4, 2, 64, 24, k::StoreType::kF32},
        // D = 20 is not a whole number of bf16 vectors: LizardState runs it
        DecodeCase{4, 2, 20, 8, k::StoreType::kBF16}));

}  // namespace
}  // namespace lizard::gputest
