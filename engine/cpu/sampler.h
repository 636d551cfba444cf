// The CPU backend's sampling: the shared host sampler (engine/sampling/sampler.h) over the
// step's logits rows, rows split over the backend's thread pool.
#pragma once

#include "engine/cpu/thread_pool.h"
#include "engine/step_plan.h"

namespace lizard::cpu {

// Samples the rows of out->logits that plan.sampling asks for (nothing when it is empty).
void SampleRows(const StepPlan& plan, ThreadPool& threads, StepOutput* out);

}  // namespace lizard::cpu
