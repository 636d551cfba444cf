// GemmBf16 (kernels/gemm_bf16.cu) and PrefillGemm (engine/cuda/prefill_gemm.h): against a CPU
// reference, bit-identical rows whatever the batch around them, and their contracts.
// Tolerance vs the reference (double accumulation of the same bf16-rounded inputs), as
// ||gpu - cpu|| / ||cpu|| per GEMM: 1e-3 (fp32 accumulation gives about 1e-6).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/cuda/prefill_gemm.h"
#include "kernels/kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;
using cuda::PrefillGemm;

const auto* const kRequireGpu = ::testing::AddGlobalTestEnvironment(new RequireGpu);

constexpr double kTol = 1e-3;

std::vector<float> RandomBf16(std::mt19937& rng, size_t n) {
  std::vector<float> v = Uniform(rng, n, -1, 1);
  for (float& x : v) x = Bf16Round(x);
  return v;
}

// y[o] = sum_i x[i] w[o, i] in double, for one row x of `in` values and w [out, in].
std::vector<float> ReferenceRow(const float* x, const std::vector<float>& w, int in, int out) {
  std::vector<float> y(out);
  for (int o = 0; o < out; ++o) {
    double s = 0.0;
    const float* wo = &w[static_cast<size_t>(o) * in];
    for (int i = 0; i < in; ++i) s += static_cast<double>(x[i]) * wo[i];
    y[o] = static_cast<float>(s);
  }
  return y;
}

// Runs GemmBf16 on host inputs (w already on the device); unwritten outputs stay NaN.
std::vector<float> RunGemm(const std::vector<float>& x, int rows, int in, const DeviceVec<bf16>& w, int out) {
  DeviceVec<bf16> d_x(ToBf16(x));
  DeviceVec<float> d_y(static_cast<size_t>(rows) * out);
  DeviceVec<char> ws(k::GemmBf16WorkspaceBytes(in, out));
  d_y.Poison();
  EXPECT_EQ(k::GemmBf16(d_x.get(), rows, in, w.get(), out, d_y.get(), ws.get(), nullptr), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  return d_y.Download();
}

TEST(GemmBf16Test, MatchesCpuReference) {
  std::mt19937 rng(11);
  struct Case {
    int in, out, rows;
  };
  // Tiny models (hidden 32..128, intermediate 64..384, odd vocab and qkv widths), an `in` that is
  // not a multiple of 16 or 64, Llama-size shapes with split-K, and the register-split path
  // (out = 132 * 128 outputs and rows > 64).
  const Case cases[] = {{32, 68, 3},      {48, 100, 1},     {128, 260, 7},    {136, 100, 5},
                        {384, 128, 33},   {128, 512, 300},  {64, 200, 17},    {4096, 4096, 3},
                        {14336, 4096, 2}, {4096, 6176, 65}, {2048, 2048, 129}, {512, 16896, 70}};
  for (const Case& c : cases) {
    const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(c.rows) * c.in);
    const std::vector<float> w = RandomBf16(rng, static_cast<size_t>(c.out) * c.in);
    DeviceVec<bf16> d_w(ToBf16(w));
    const std::vector<float> y = RunGemm(x, c.rows, c.in, d_w, c.out);
    std::vector<float> ref;
    for (int r = 0; r < c.rows; ++r) {
      const std::vector<float> row = ReferenceRow(&x[static_cast<size_t>(r) * c.in], w, c.in, c.out);
      ref.insert(ref.end(), row.begin(), row.end());
    }
    const double err = RelError(y, ref);
    std::printf("in %5d out %5d rows %4d splits %2d: rel error %.3g\n", c.in, c.out, c.rows,
                k::GemmBf16Splits(c.in, c.out), err);
    EXPECT_LE(err, kTol) << "in " << c.in << " out " << c.out << " rows " << c.rows;
  }
}

TEST(GemmBf16Test, RowsAreBatchInvariant) {
  std::mt19937 rng(12);
  const int kRows[] = {1, 2, 3, 7, 16, 33, 64, 129, 256, 300, 2048};
  const int max_rows = 2048;
  struct Shape {
    int in, out;
  };
  // Tiny (one split), tails in k and out, and Llama-3-8B projections (qkv|gate, o, down) that
  // use split-K through the workspace (rows <= 256 or few tiles) and with one block per tile
  // adding the split partials into y (rows 2048).
  const Shape shapes[] = {{128, 260}, {136, 100}, {4096, 4096}, {4096, 6176}, {14336, 4096}};
  for (const Shape& s : shapes) {
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(s.out) * s.in)));
    const std::vector<float> fixed = RandomBf16(rng, s.in);
    const std::vector<float> others = RandomBf16(rng, static_cast<size_t>(max_rows) * s.in);
    const std::vector<float> alone = RunGemm(fixed, 1, s.in, d_w, s.out);
    int checked = 0;
    for (int rows : kRows) {
      std::vector<int> positions = {0, rows / 2, rows - 1};
      positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
      for (int p : positions) {
        std::vector<float> x(others.begin(), others.begin() + static_cast<size_t>(rows) * s.in);
        std::copy(fixed.begin(), fixed.end(), x.begin() + static_cast<size_t>(p) * s.in);
        const std::vector<float> y = RunGemm(x, rows, s.in, d_w, s.out);
        ASSERT_EQ(std::memcmp(&y[static_cast<size_t>(p) * s.out], alone.data(), s.out * sizeof(float)), 0)
            << "in " << s.in << " out " << s.out << " rows " << rows << " position " << p;
        ++checked;
      }
    }
    std::printf("in %5d out %5d splits %2d: %d placements bit-identical to rows = 1\n", s.in, s.out,
                k::GemmBf16Splits(s.in, s.out), checked);
  }
}

TEST(GemmBf16Test, WorkspaceContract) {
  std::mt19937 rng(13);
  for (const auto [in, out] : {std::pair{128, 260}, std::pair{4096, 4096}, std::pair{4096, 6176}}) {
    const size_t bytes = k::GemmBf16WorkspaceBytes(in, out);
    EXPECT_EQ(bytes, k::GemmBf16WorkspaceBytes(in, out));
    // No workspace exactly when there is one split.
    EXPECT_EQ(bytes == 0, k::GemmBf16Splits(in, out) == 1) << in << "x" << out;
    std::printf("in %5d out %5d splits %d: workspace %zu bytes\n", in, out, k::GemmBf16Splits(in, out), bytes);
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(out) * in)));
    for (int rows : {1, 256, 300}) {
      const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(rows) * in);
      DeviceVec<bf16> d_x(ToBf16(x));
      DeviceVec<float> d_y(static_cast<size_t>(rows) * out);
      // Exactly `bytes` followed by a guard of 4 KB that must stay untouched.
      const size_t guard = 4096;
      DeviceVec<unsigned char> ws(bytes + guard);
      CUDA_OK(cudaMemset(ws.get(), 0x5a, bytes + guard));
      if (bytes > 0 && rows == 1) {
        EXPECT_EQ(k::GemmBf16(d_x.get(), rows, in, d_w.get(), out, d_y.get(), nullptr, nullptr),
                  cudaErrorInvalidValue)
            << "null workspace, " << in << "x" << out;
      }
      CUDA_OK(k::GemmBf16(d_x.get(), rows, in, d_w.get(), out, d_y.get(), bytes > 0 ? ws.get() : nullptr, nullptr));
      CUDA_OK(cudaDeviceSynchronize());
      const std::vector<unsigned char> host = ws.Download();
      for (size_t i = bytes; i < host.size(); ++i) ASSERT_EQ(host[i], 0x5a) << "workspace overrun at " << i;
    }
  }
  // Unsupported shapes are refused without a launch.
  DeviceVec<bf16> d(64 * 64);
  DeviceVec<float> y(64 * 64);
  EXPECT_EQ(k::GemmBf16(d.get(), 1, 12, d.get(), 4, y.get(), nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(k::GemmBf16(d.get() + 1, 1, 16, d.get(), 4, y.get(), nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(k::GemmBf16(d.get(), 0, 16, d.get(), 4, y.get(), nullptr, nullptr), cudaSuccess);
}

// GemmBf16Partials: left in the workspace, the split partials added left to right give GemmBf16's
// y bit for bit, and so does a consumer fed them (AddRmsNorm); where they are not left (one
// split, rows > 256, the one-block-per-tile path) y is GemmBf16's.
// A bias given to GemmBf16 (added in the split-K reduce, or by AddBias after the one-split and
// one-block-per-tile launches) gives the bits of GemmBf16 then AddBias, on every path.
TEST(GemmBf16Test, BiasGivesAddBiasBits) {
  std::mt19937 rng(15);
  struct Case {
    int in, out, rows;
  };
  const Case cases[] = {{4096, 6176, 1},   {4096, 6176, 64}, {4096, 4096, 300},  // split-K reduce (two passes)
                        {4096, 6176, 300}, {4096, 4096, 600}, {128, 260, 5}};  // one block per tile; one split
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "in " << c.in << " out " << c.out << " rows " << c.rows);
    const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(c.rows) * c.in);
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(c.out) * c.in)));
    DeviceVec<float> d_bias(RandomBf16(rng, c.out));
    DeviceVec<bf16> d_x(ToBf16(x));
    DeviceVec<float> plain(static_cast<size_t>(c.rows) * c.out), biased(static_cast<size_t>(c.rows) * c.out);
    DeviceVec<char> ws(k::GemmBf16WorkspaceBytes(c.in, c.out));
    CUDA_OK(k::GemmBf16(d_x.get(), c.rows, c.in, d_w.get(), c.out, plain.get(), ws.get(), nullptr));
    CUDA_OK(k::AddBias(plain.get(), c.out, d_bias.get(), c.rows, c.out, nullptr));
    CUDA_OK(k::GemmBf16(d_x.get(), c.rows, c.in, d_w.get(), c.out, biased.get(), ws.get(), nullptr, d_bias.get()));
    const std::vector<float> want = plain.Download(), got = biased.Download();
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  }
}

TEST(GemmBf16Test, PartialsGiveGemmBits) {
  std::mt19937 rng(14);
  struct Case {
    int in, out, rows;
    bool partials;  // expected to be left in the workspace
  };
  const Case cases[] = {{4096, 4096, 1, true},    {4096, 4096, 7, true},    {14336, 4096, 3, true},
                        {4096, 6176, 64, true},   {4096, 4096, 256, true},  {4096, 4096, 300, false},
                        {128, 260, 5, false},     {136, 100, 2, false},     {4096, 4096, 600, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "in " << c.in << " out " << c.out << " rows " << c.rows);
    const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(c.rows) * c.in);
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(c.out) * c.in)));
    const std::vector<float> ref = RunGemm(x, c.rows, c.in, d_w, c.out);

    const size_t n = static_cast<size_t>(c.rows) * c.out;
    DeviceVec<bf16> d_x(ToBf16(x));
    DeviceVec<float> d_y(n), ws(std::max<size_t>(k::GemmBf16WorkspaceBytes(c.in, c.out) / sizeof(float), 1));
    d_y.Poison();
    k::GemmOutput result{.bias = d_y.get()};  // overwritten whole
    CUDA_OK(k::GemmBf16Partials(d_x.get(), c.rows, c.in, d_w.get(), c.out, d_y.get(), ws.get(), &result, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(result.bias, nullptr);
    const std::vector<float> y = d_y.Download();
    ASSERT_EQ(result.splits > 0, c.partials);
    if (c.partials) {
      EXPECT_EQ(result.y, nullptr);
      EXPECT_EQ(result.partials, ws.get());
      EXPECT_EQ(result.splits, k::GemmBf16Splits(c.in, c.out));
      EXPECT_EQ(result.stride, static_cast<int64_t>(n));
      for (float v : y) ASSERT_TRUE(std::isnan(v)) << "y written";
      const std::vector<float> parts = ws.Download();
      std::vector<float> summed(n);
      for (size_t i = 0; i < n; ++i) {
        float v = parts[i];
        for (int p = 1; p < result.splits; ++p) v += parts[p * n + i];
        summed[i] = v;
      }
      EXPECT_EQ(std::memcmp(summed.data(), ref.data(), n * sizeof(float)), 0);
    } else {
      EXPECT_EQ(result.y, d_y.get());
      EXPECT_EQ(std::memcmp(y.data(), ref.data(), n * sizeof(float)), 0);
    }

    // A consumer of the result, against the same consumer of GemmBf16's y.
    const std::vector<float> res = Uniform(rng, n, -2, 2), norm = Uniform(rng, c.out, 0.5, 1.5);
    DeviceVec<float> d_ref(ref), d_norm(norm), x1(res), x2(res);
    DeviceVec<bf16> u1(n), u2(n);
    CUDA_OK(k::AddRmsNorm(x1.get(), result, d_norm.get(), c.rows, c.out, 1e-5f, u1.get(), nullptr));
    CUDA_OK(k::AddRmsNorm(x2.get(), {.y = d_ref.get()}, d_norm.get(), c.rows, c.out, 1e-5f, u2.get(), nullptr));
    const std::vector<float> h1 = x1.Download(), h2 = x2.Download();
    const std::vector<bf16> b1 = u1.Download(), b2 = u2.Download();
    EXPECT_EQ(std::memcmp(h1.data(), h2.data(), n * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(b1.data(), b2.data(), n * sizeof(bf16)), 0);
  }
}

// ---- PrefillGemm ----

// Llama-3-8B's projections (q|k|v|forget gate = 6144 + 32 outputs, o, gate|up, down) and a small
// odd shape whose rows are only 8 (x) and 4 (y) bytes aligned.
struct PrefillShape {
  int in, out;
};
constexpr PrefillShape kPrefillShapes[] = {{4096, 6176}, {4096, 4096}, {4096, 28672}, {14336, 4096}, {100, 37}};
constexpr int kPrefillMaxRows = 2048;

// Init over kPrefillShapes for up to kPrefillMaxRows rows, as the backend does at load.
void InitPrefill(PrefillGemm& gemm) {
  std::vector<std::pair<int, int>> shapes;
  for (const PrefillShape& s : kPrefillShapes) shapes.emplace_back(s.in, s.out);
  const absl::Status status = gemm.Init(shapes, kPrefillMaxRows, nullptr);
  ASSERT_TRUE(status.ok()) << status;
}

// Runs PrefillGemm on `rows` host rows x placed after `lead` rows of x and y (prompt rows follow
// the decode rows of a step), with an optional device bias[out]; returns their outputs (unwritten
// ones stay NaN).
std::vector<float> RunPrefill(PrefillGemm& gemm, const std::vector<float>& x, int rows, int in,
                              const DeviceVec<bf16>& w, int out, int lead = 0, const float* bias = nullptr) {
  DeviceVec<bf16> d_x(static_cast<size_t>(lead + rows) * in);
  DeviceVec<float> d_y(static_cast<size_t>(lead + rows) * out);
  bf16* const x_rows = d_x.get() + static_cast<size_t>(lead) * in;
  float* const y_rows = d_y.get() + static_cast<size_t>(lead) * out;
  const std::vector<bf16> x16 = ToBf16(x);
  EXPECT_EQ(cudaMemcpy(x_rows, x16.data(), x16.size() * sizeof(bf16), cudaMemcpyHostToDevice), cudaSuccess);
  d_y.Poison();
  const absl::Status status = gemm.Run(x_rows, rows, in, w.get(), out, y_rows, bias);
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = d_y.Download();
  return std::vector<float>(y.begin() + static_cast<size_t>(lead) * out, y.end());
}

// The first of `rows` rows of `out` values whose bits differ between a and b, or -1.
int FirstDifferentRow(const float* a, const float* b, int rows, int out) {
  for (int r = 0; r < rows; ++r) {
    if (std::memcmp(a + static_cast<size_t>(r) * out, b + static_cast<size_t>(r) * out, out * sizeof(float)) != 0) {
      return r;
    }
  }
  return -1;
}

TEST(PrefillGemmTest, MatchesCpuReference) {
  PrefillGemm gemm;
  ASSERT_NO_FATAL_FAILURE(InitPrefill(gemm));
  std::printf("%s", gemm.Describe().c_str());
  std::mt19937 rng(21);
  // 1000 rows: a partial last tile; the reference is computed for a sample of rows.
  const int rows = 1000;
  const int sample[] = {0, 1, 127, 128, 500, 998, 999};
  for (const PrefillShape& s : kPrefillShapes) {
    const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(rows) * s.in);
    const std::vector<float> w = RandomBf16(rng, static_cast<size_t>(s.out) * s.in);
    DeviceVec<bf16> d_w(ToBf16(w));
    const std::vector<float> y = RunPrefill(gemm, x, rows, s.in, d_w, s.out);
    std::vector<float> got, ref;
    for (int r : sample) {
      const std::vector<float> row = ReferenceRow(&x[static_cast<size_t>(r) * s.in], w, s.in, s.out);
      ref.insert(ref.end(), row.begin(), row.end());
      got.insert(got.end(), y.begin() + static_cast<size_t>(r) * s.out, y.begin() + static_cast<size_t>(r + 1) * s.out);
    }
    const double err = RelError(got, ref);
    std::printf("prefill in %5d out %5d rows %4d: rel error %.3g over %zu sampled rows\n", s.in, s.out, rows, err,
                std::size(sample));
    EXPECT_LE(err, kTol) << "in " << s.in << " out " << s.out;
  }
}

TEST(PrefillGemmTest, RowsAreBatchInvariant) {
  PrefillGemm gemm;
  ASSERT_NO_FATAL_FAILURE(InitPrefill(gemm));
  std::mt19937 rng(22);
  const int kRows[] = {1, 3, 17, 64, 100, 1000, 2048};
  for (const PrefillShape& s : kPrefillShapes) {
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(s.out) * s.in)));
    const std::vector<float> all = RandomBf16(rng, static_cast<size_t>(kPrefillMaxRows) * s.in);
    const std::vector<float> full = RunPrefill(gemm, all, kPrefillMaxRows, s.in, d_w, s.out);
    // Row r of the first `rows` rows, behind 0..4 other rows, has the bits it has in the full call.
    for (int rows : kRows) {
      const std::vector<float> x(all.begin(), all.begin() + static_cast<size_t>(rows) * s.in);
      const int lead = rows % 5;
      const std::vector<float> y = RunPrefill(gemm, x, rows, s.in, d_w, s.out, lead);
      ASSERT_EQ(FirstDifferentRow(y.data(), full.data(), rows, s.out), -1)
          << "in " << s.in << " out " << s.out << " rows " << rows << " lead " << lead;
    }
    // One row moved to other places among other rows has the bits it has alone.
    const std::vector<float> fixed(all.end() - s.in, all.end());
    const std::vector<float> alone = RunPrefill(gemm, fixed, 1, s.in, d_w, s.out);
    int placements = 0;
    for (int rows : {17, 1000}) {
      for (int p : {0, 1, rows / 2, rows - 1}) {
        std::vector<float> x(all.begin(), all.begin() + static_cast<size_t>(rows) * s.in);
        std::copy(fixed.begin(), fixed.end(), x.begin() + static_cast<size_t>(p) * s.in);
        const std::vector<float> y = RunPrefill(gemm, x, rows, s.in, d_w, s.out);
        ASSERT_EQ(FirstDifferentRow(&y[static_cast<size_t>(p) * s.out], alone.data(), 1, s.out), -1)
            << "in " << s.in << " out " << s.out << " rows " << rows << " position " << p;
        ++placements;
      }
    }
    std::printf("prefill in %5d out %5d: rows bit-identical at %zu row counts and %d placements\n", s.in, s.out,
                std::size(kRows), placements);
  }
}

// The bias in the epilogue: y + bias within fp32 rounding of the plain call (bitwise, where the
// epilogue adds as AddBias does), and a row's bits still independent of the call's other rows.
// The engine's q|k|v|gate shape must have it.
TEST(PrefillGemmTest, BiasEpilogue) {
  PrefillGemm gemm;
  ASSERT_NO_FATAL_FAILURE(InitPrefill(gemm));
  EXPECT_TRUE(gemm.SupportsBias(4096, 6176));
  std::mt19937 rng(23);
  for (const PrefillShape& s : kPrefillShapes) {
    if (!gemm.SupportsBias(s.in, s.out)) {
      std::printf("prefill in %5d out %5d: no bias epilogue\n", s.in, s.out);
      continue;
    }
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(s.out) * s.in)));
    const std::vector<float> bias = RandomBf16(rng, s.out);
    DeviceVec<float> d_bias(bias);
    const int rows = 300;
    const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(rows) * s.in);
    const std::vector<float> plain = RunPrefill(gemm, x, rows, s.in, d_w, s.out);
    const std::vector<float> biased = RunPrefill(gemm, x, rows, s.in, d_w, s.out, 3, d_bias.get());
    std::vector<float> want(plain.size());
    for (size_t i = 0; i < plain.size(); ++i) want[i] = plain[i] + bias[i % s.out];
    EXPECT_LE(RelError(biased, want), 1e-6) << "in " << s.in << " out " << s.out;
    const bool bitwise = FirstDifferentRow(biased.data(), want.data(), rows, s.out) == -1;
    for (int few : {1, 17}) {
      const std::vector<float> part(x.begin(), x.begin() + static_cast<size_t>(few) * s.in);
      const std::vector<float> y = RunPrefill(gemm, part, few, s.in, d_w, s.out, 0, d_bias.get());
      ASSERT_EQ(FirstDifferentRow(y.data(), biased.data(), few, s.out), -1) << "in " << s.in << " rows " << few;
    }
    std::printf("prefill in %5d out %5d: bias epilogue %s y + bias, rows invariant\n", s.in, s.out,
                bitwise ? "bitwise" : "within 1e-6 of");
  }
}

// y += x w^T (the residual projections' prompt rows): the bits of the product added to y in fp32,
// at 300 rows and at 1 and 17 (padded below the algorithm's rows on some shapes).
TEST(PrefillGemmTest, AccumulateAddsTheProductOntoY) {
  PrefillGemm gemm;
  ASSERT_NO_FATAL_FAILURE(InitPrefill(gemm));
  std::mt19937 rng(29);
  for (const PrefillShape& s : kPrefillShapes) {
    DeviceVec<bf16> d_w(ToBf16(RandomBf16(rng, static_cast<size_t>(s.out) * s.in)));
    for (int rows : {300, 17, 1}) {
      const std::vector<float> x = RandomBf16(rng, static_cast<size_t>(rows) * s.in);
      const std::vector<float> y0 = RandomBf16(rng, static_cast<size_t>(rows) * s.out);
      const std::vector<float> product = RunPrefill(gemm, x, rows, s.in, d_w, s.out);
      DeviceVec<bf16> d_x(ToBf16(x));
      DeviceVec<float> d_y(y0);
      const absl::Status status = gemm.Run(d_x.get(), rows, s.in, d_w.get(), s.out, d_y.get(), nullptr, true);
      ASSERT_TRUE(status.ok()) << status;
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<float> got = d_y.Download();
      std::vector<float> want(y0.size());
      for (size_t i = 0; i < want.size(); ++i) want[i] = y0[i] + product[i];
      EXPECT_EQ(FirstDifferentRow(got.data(), want.data(), rows, s.out), -1) << "in " << s.in << " out " << s.out
                                                                             << " rows " << rows;
    }
  }
  DeviceVec<bf16> x(128 * 4096), w(6176 * 4096);
  DeviceVec<float> y(128 * 6176), bias(6176);
  EXPECT_EQ(gemm.Run(x.get(), 128, 4096, w.get(), 6176, y.get(), bias.get(), true).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PrefillGemmTest, RefusesWhatItCannotRun) {
  PrefillGemm gemm;
  EXPECT_EQ(gemm.Init(std::vector<std::pair<int, int>>{{128, 260}}, 0, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Init(std::vector<std::pair<int, int>>{{0, 260}}, 64, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status init = gemm.Init(std::vector<std::pair<int, int>>{{128, 260}}, 64, nullptr);
  ASSERT_TRUE(init.ok()) << init;
  DeviceVec<bf16> x(65 * 128), w(260 * 128);
  DeviceVec<float> y(65 * 260);
  EXPECT_TRUE(gemm.Run(x.get(), 64, 128, w.get(), 260, y.get()).ok());
  EXPECT_TRUE(gemm.Run(x.get(), 0, 128, w.get(), 260, y.get()).ok());
  // A shape Init did not see, too many rows, and pointers less aligned than a row.
  EXPECT_EQ(gemm.Run(x.get(), 1, 136, w.get(), 260, y.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Run(x.get(), 65, 128, w.get(), 260, y.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Run(x.get(), -1, 128, w.get(), 260, y.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Run(x.get() + 1, 1, 128, w.get(), 260, y.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Run(x.get(), 1, 128, w.get() + 4, 260, y.get()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(gemm.Run(x.get(), 1, 128, w.get(), 260, y.get() + 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace lizard::gputest
