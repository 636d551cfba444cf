// Pieces of the window half that the recurrent and chunked forms share.
#pragma once

#include <cstdint>

namespace lizard::cpu {

// Position held by ring row r of a window of size w after `count` tokens (valid for
// r < min(count, w)): the latest position p < count with p % w == r.
inline int64_t RingPosition(int64_t r, int64_t count, int64_t w) {
  return count - 1 - ((count - 1 - r) % w);
}

// y's row t += factor * anchor row t, for `rows` rows of d values (anchor rows contiguous).
inline void AddAnchor(float factor, const float* anchor, int64_t rows, int64_t d, float* y,
                      int64_t y_stride) {
  for (int64_t t = 0; t < rows; ++t) {
    float* yt = y + t * y_stride;
    for (int64_t j = 0; j < d; ++j) yt[j] += factor * anchor[t * d + j];
  }
}

}  // namespace lizard::cpu
