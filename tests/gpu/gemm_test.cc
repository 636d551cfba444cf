// GemmBf16 (kernels/gemm_bf16.cu): against a CPU reference, bit-identical rows whatever the
// batch around them, and the workspace contract.
// Tolerance vs the reference (double accumulation of the same bf16-rounded inputs), as
// ||gpu - cpu|| / ||cpu|| per GEMM: 1e-3 (fp32 accumulation gives about 1e-6).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/kernels.h"
#include "tests/gpu/gpu_test_util.h"

namespace lizard::gputest {
namespace {

namespace k = kernels;
using bf16 = __nv_bfloat16;

const auto* const kRequireGpu = ::testing::AddGlobalTestEnvironment(new RequireGpu);

constexpr double kTol = 1e-3;

std::vector<float> RandomBf16(std::mt19937& rng, size_t n) {
  std::vector<float> v = Uniform(rng, n, -1, 1);
  for (float& x : v) x = Bf16Round(x);
  return v;
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
    std::vector<float> ref(static_cast<size_t>(c.rows) * c.out);
    for (int r = 0; r < c.rows; ++r) {
      for (int o = 0; o < c.out; ++o) {
        double s = 0.0;
        const float* xr = &x[static_cast<size_t>(r) * c.in];
        const float* wo = &w[static_cast<size_t>(o) * c.in];
        for (int i = 0; i < c.in; ++i) s += static_cast<double>(xr[i]) * wo[i];
        ref[static_cast<size_t>(r) * c.out + o] = static_cast<float>(s);
      }
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

}  // namespace
}  // namespace lizard::gputest
