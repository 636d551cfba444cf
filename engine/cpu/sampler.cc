#include "engine/cpu/sampler.h"

#include <algorithm>
#include <cstdint>

#include "engine/sampling/sampler.h"

namespace lizard::cpu {

void SampleRows(const StepPlan& plan, ThreadPool& threads, StepOutput* out) {
  if (plan.sampling.empty()) return;
  // A row costs a few passes over the vocabulary: split rows across threads only when there
  // is enough work per thread.
  const int64_t min_rows = std::max<int64_t>(1, (int64_t{1} << 18) / out->vocab);
  SampleOnHost(plan, out, [&](int64_t rows, absl::FunctionRef<void(int64_t)> fn) {
    threads.ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) fn(r);
    });
  });
}

}  // namespace lizard::cpu
