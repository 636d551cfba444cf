#include "engine/model/rope.h"

#include <numbers>

#include "engine/model/exact_math.h"

namespace lizard {

std::vector<double> RopeInverseFrequencies(const ModelConfig& config) {
  const int64_t d = config.head_dim;
  std::vector<double> inv_freq(d / 2);
  for (int64_t i = 0; i < d / 2; ++i) {
    inv_freq[i] = Exp(-2.0 * static_cast<double>(i) / d * Log(config.rope_theta));
  }
  const RopeScaling& rs = config.rope_scaling;
  if (!rs.llama3) return inv_freq;
  // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
  // interpolated smoothly.
  const double old_len = static_cast<double>(rs.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / rs.low_freq_factor;
  const double high_freq_wavelen = old_len / rs.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen > low_freq_wavelen) {
      f = f / rs.factor;
    } else if (wavelen >= high_freq_wavelen) {
      const double smooth =
          (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f = (1.0 - smooth) * f / rs.factor + smooth * f;
    }
  }
  return inv_freq;
}

}  // namespace lizard
