// Philox4x32-10, the counter-based generator of Salmon et al., "Parallel Random Numbers: As Easy
// as 1, 2, 3" (SC 2011), as a plain function usable from host and device code: the CPU sampler
// and the GPU sampling kernel draw the same uniform for the same (seed, counter), so a seeded
// request samples the same tokens on either backend and whatever else shares the batch.
// Checked against Random123's known-answer vectors in tests/engine/sampler_test.cc.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LIZARD_HOST_DEVICE __host__ __device__
#else
#define LIZARD_HOST_DEVICE
#endif

namespace lizard {

struct Philox4x32 {
  uint32_t v[4];
};

LIZARD_HOST_DEVICE inline Philox4x32 Philox4x32x10(Philox4x32 ctr, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t{kMul0} * ctr.v[0];
    const uint64_t p1 = uint64_t{kMul1} * ctr.v[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {{hi1 ^ ctr.v[1] ^ key0, lo1, hi0 ^ ctr.v[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return ctr;
}

// A uniform double in [0, 1) determined by (seed, counter) alone: the key is the seed, the counter
// block is (counter low, counter high, 0, 0), and 53 bits of the first two output words are used.
LIZARD_HOST_DEVICE inline double PhiloxUniform(uint64_t seed, uint64_t counter) {
  const Philox4x32 r = Philox4x32x10(
      {{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (uint64_t{r.v[0]} << 21) | (r.v[1] >> 11);  // 32 + 21 = 53 bits
  return static_cast<double>(bits) * 0x1.0p-53;
}

}  // namespace lizard
