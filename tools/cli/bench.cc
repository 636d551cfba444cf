#include "tools/cli/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "tools/common/random_state.h"
#include "tools/common/options.h"

namespace lizard::cli {
namespace {

constexpr int kWarmupSteps = 3;
constexpr int kPrefillRuns = 3;  // timed prefills per prompt length, after one warm-up
constexpr int kCopyRuns = 5;     // timed copy-bandwidth runs, after one warm-up
constexpr double kCopyRunBytes = 256.0 * 1048576;  // bytes read + written per timed copy run

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Seconds one Forward of `plan` takes. `out` is reused across steps, as the engine loop does: a
// fresh logits buffer per step (tens of MiB at a 128K vocabulary) would be page-faulted in anew
// every time and counted in the step.
absl::StatusOr<double> TimeForward(Backend& backend, const StepPlan& plan, StepOutput* out) {
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status s = backend.Forward(plan, out); !s.ok()) return s;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Puts `slot` at `position` with random state contents (RandomSerializedState), without running
// a prefill.
absl::Status LoadRandomState(Backend& backend, SlotId slot, int64_t position, uint64_t seed) {
  absl::StatusOr<std::string> state = tools::RandomSerializedState(backend.config(), position, seed);
  if (!state.ok()) return state.status();
  return backend.LoadSlot(slot, *state);
}

// Bytes read + written per second by the backend's own copy of a state at `context` (CopySlot
// from `source`, which holds one, to slot 0), whatever the device: the roofline denominator. Each
// timed run repeats the copy until it has moved kCopyRunBytes; the best of kCopyRuns runs after
// one warm-up.
absl::StatusOr<double> CopyBandwidth(Backend& backend, SlotId source, int64_t context) {
  const double bytes = 2.0 * static_cast<double>(backend.slot_bytes() +
                                                 backend.kv_bytes_per_token() * context);
  const int copies = static_cast<int>(std::max(1.0, std::ceil(kCopyRunBytes / bytes)));
  double best = 0.0;
  for (int run = 0; run < 1 + kCopyRuns; ++run) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < copies; ++i) {
      if (absl::Status s = backend.CopySlot(source, 0); !s.ok()) return s;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (run > 0) best = std::max(best, copies * bytes / seconds);
  }
  return best;
}

}  // namespace

absl::Status RunBench(const tools::Args& args) {
  // Line by line, so a run cut off by a time limit still shows the rows it finished.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  // Weights are random either way (timings do not depend on their values).
  absl::StatusOr<ModelConfig> config = tools::ModelShapeOption(args);
  if (!config.ok()) return config.status();
  if (args.Has("teacher")) config->layer_types.assign(config->num_layers, LayerType::kSoftmax);
  const std::string state_dtype = args.String("state-dtype", "f32");
  if (state_dtype == "f32") {
    config->state_dtype = DType::kF32;
  } else if (state_dtype == "bf16") {
    config->state_dtype = DType::kBF16;
  } else {
    return absl::InvalidArgumentError("--state-dtype must be f32 or bf16");
  }
  // What a decode step returns: token ids sampled on the backend's device (greedy, or a top-p
  // draw, the dearest path), or the float32 logits rows.
  const std::string sample = args.String("sample", "greedy");
  std::optional<SamplingParams> sampling;
  if (sample == "greedy") {
    sampling = SamplingParams{};
  } else if (sample == "top-p") {
    sampling = SamplingParams{.temperature = 1.0f, .top_p = 0.9f};
  } else if (sample != "logits") {
    return absl::InvalidArgumentError("--sample must be greedy, top-p or logits");
  }
  const std::string gemm = args.String("gemm", "invariant");  // CUDA projections
  if (gemm != "invariant" && gemm != "cublas") {
    return absl::InvalidArgumentError("--gemm must be invariant or cublas");
  }
  absl::StatusOr<BackendKind> kind = tools::BackendKindOption(args);
  absl::StatusOr<std::vector<int64_t>> batch_sizes = args.IntList("batch-sizes", {1, 8, 32});
  absl::StatusOr<std::vector<int64_t>> prompt_lengths = args.IntList("prompt-lengths", {128, 512});
  absl::StatusOr<int64_t> context = args.Int("context", 1024);
  absl::StatusOr<int64_t> steps = args.Int("steps", 20);
  absl::StatusOr<int64_t> threads = args.Int("threads", 0);
  for (const absl::Status& s : {kind.status(), batch_sizes.status(), prompt_lengths.status(),
                                context.status(), steps.status(), threads.status()}) {
    if (!s.ok()) return s;
  }
  for (int64_t v : *batch_sizes) {
    if (v <= 0) return absl::InvalidArgumentError("--batch-sizes must be positive");
  }
  for (int64_t v : *prompt_lengths) {
    if (v <= 0) return absl::InvalidArgumentError("--prompt-lengths must be positive");
  }
  if (*context < 0 || *steps <= 0) {
    return absl::InvalidArgumentError("--context must be >= 0 and --steps positive");
  }

  BackendOptions options;
  options.kind = *kind;
  // One slot per sequence of the largest batch, plus the last one: a random state at `context`
  // made once (a large model's state takes seconds to generate on the host) and copied on the
  // device into the batch's slots before each batch.
  const int64_t max_batch = *std::max_element(batch_sizes->begin(), batch_sizes->end());
  options.num_slots = static_cast<int32_t>(max_batch + 1);
  const SlotId source_slot = static_cast<SlotId>(max_batch);
  options.num_threads = static_cast<int32_t>(*threads);
  options.batch_invariant = gemm == "invariant";
  options.weights = WeightSource::Synthetic(*config, /*seed=*/1);
  absl::StatusOr<std::unique_ptr<Backend>> created = CreateBackend(options);
  if (!created.ok()) return created.status();
  Backend& backend = **created;
  const BackendInfo info = backend.info();
  const ModelConfig& c = backend.config();

  // Bytes a decode step must move: every weight once, and per sequence its S and z read and
  // written, its window K/V read and its softmax KV cache read. The CPU backend keeps states
  // in float32; other backends are assumed to keep S/z in state_dtype and K/V in torch_dtype.
  const bool cpu = info.name == "cpu";
  const StateLayout layout(c, cpu ? DType::kF32 : c.state_dtype,
                           cpu ? DType::kF32 : c.torch_dtype);
  const double lizard_layers = static_cast<double>(c.num_lizard_layers());
  const double state_rw = lizard_layers * 2.0 * (layout.s_bytes + layout.z_bytes);
  const double window_read = lizard_layers * 2.0 * layout.window_bytes;
  const double kv_read = static_cast<double>(backend.kv_bytes_per_token()) * (*context);
  const double per_sequence = state_rw + window_read + kv_read;

  std::printf("backend   %s (%s)%s%s\n", info.name.c_str(), info.device.c_str(), info.detail.empty() ? "" : ", ",
              info.detail.c_str());
  std::printf("model     %s: L=%lld (%lld lizard, %lld softmax), Hd=%lld, H=%lld, Hkv=%lld, D=%lld, "
              "F=%lld, w=%lld, V=%lld; random weights\n",
              c.name.c_str(), (long long)c.num_layers, (long long)c.num_lizard_layers(),
              (long long)c.num_softmax_layers(), (long long)c.hidden_size, (long long)c.num_heads,
              (long long)c.num_kv_heads, (long long)c.head_dim, (long long)c.feature_dim,
              (long long)c.window_size, (long long)c.vocab_size);
  std::printf("weights   %.2f MiB; state per sequence %.3f MiB (slot); softmax KV %lld B/token\n",
              tools::MiB(info.weights_bytes), tools::MiB(backend.slot_bytes()),
              (long long)backend.kv_bytes_per_token());
  std::printf("per step  weights %.2f MiB + per sequence %.3f MiB (S,z read+write %.3f, window read "
              "%.3f, KV read %.3f at context %lld)\n",
              tools::MiB(info.weights_bytes), tools::MiB(per_sequence), tools::MiB(state_rw), tools::MiB(window_read),
              tools::MiB(kv_read), (long long)*context);
  if (cpu && c.state_dtype != DType::kF32) {
    std::printf("note      the CPU backend keeps states in float32 whatever --state-dtype says\n");
  }
  if (absl::Status s = LoadRandomState(backend, source_slot, *context, 1); !s.ok()) return s;
  absl::StatusOr<double> copy_bandwidth = CopyBandwidth(backend, source_slot, *context);
  if (!copy_bandwidth.ok()) return copy_bandwidth.status();
  std::printf("copy bw   %.2f GB/s (read + write, CopySlot of a state at context %lld)\n",
              *copy_bandwidth / 1e9, (long long)*context);

  std::printf("\ndecode at context %lld, returning %s (median of %lld steps after %d warm-up)\n",
              (long long)*context, sample == "logits" ? "logits" : ("tokens (" + sample + ")").c_str(),
              (long long)*steps, kWarmupSteps);
  std::printf("%7s %14s %12s %14s %10s %10s\n", "batch", "step ms", "tokens/s", "MiB/step", "GB/s",
              "of copy bw");
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size - 1));
  StepOutput out;
  for (int64_t batch : *batch_sizes) {
    for (int64_t i = 0; i < batch; ++i) {
      if (absl::Status s = backend.CopySlot(source_slot, static_cast<SlotId>(i)); !s.ok()) return s;
    }
    std::vector<double> times;
    for (int64_t step = 0; step < kWarmupSteps + *steps; ++step) {
      StepPlan plan;
      for (int64_t i = 0; i < batch; ++i) {
        plan.chunks.push_back({static_cast<SlotId>(i), *context + step, {token(rng)},
                               LogitsMode::kLast, /*decode=*/true});
        if (sampling.has_value()) {
          plan.sampling.push_back({*sampling, static_cast<uint64_t>(i), static_cast<uint64_t>(step)});
        }
      }
      absl::StatusOr<double> t = TimeForward(backend, plan, &out);
      if (!t.ok()) return t.status();
      if (step >= kWarmupSteps) times.push_back(*t);
    }
    const double median = Median(times);
    const double bytes = info.weights_bytes + batch * per_sequence;
    const double rate = bytes / median;
    std::printf("%7lld %14.3f %12.1f %14.2f %10.2f", (long long)batch, median * 1e3,
                batch / median, tools::MiB(bytes), rate / 1e9);
    std::printf(" %9.1f%%\n", 100.0 * rate / *copy_bandwidth);
  }

  // Spilling a sequence's state to the host tier and restoring it (what the engine does for idle
  // sessions when device slots run out): SpillSlot (the engine waits until it returns; the bytes
  // are made off its thread), the bytes ready; RestoreSlot of slot 0 (the engine waits until it
  // returns), ready; and the synchronous LoadSlot of the same bytes. Medians of 5.
  {
    using Clock = std::chrono::steady_clock;
    auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
    std::vector<double> spill_wait, spill_ready, restore_wait, restore_ready, load_times;
    size_t bytes = 0;
    for (int run = 0; run < 5; ++run) {
      const auto t0 = Clock::now();
      absl::StatusOr<SavedSlot> spilled = backend.SpillSlot(0);
      if (!spilled.ok()) return spilled.status();
      const auto t1 = Clock::now();
      absl::StatusOr<std::string_view> saved = spilled->bytes();
      if (!saved.ok()) return saved.status();
      const auto t2 = Clock::now();
      absl::StatusOr<std::unique_ptr<SlotRestore>> restore = backend.RestoreSlot(0, *spilled);
      if (!restore.ok()) return restore.status();
      const auto t3 = Clock::now();
      while (!(*restore)->ready()) std::this_thread::sleep_for(std::chrono::microseconds(100));
      const auto t4 = Clock::now();
      if (absl::Status s = (*restore)->Finish(); !s.ok()) return s;
      if (absl::Status s = backend.LoadSlot(0, *saved); !s.ok()) return s;
      const auto t5 = Clock::now();
      spill_wait.push_back(ms(t1 - t0));
      spill_ready.push_back(ms(t2 - t0));
      restore_wait.push_back(ms(t3 - t2));
      restore_ready.push_back(ms(t4 - t2));
      load_times.push_back(ms(t5 - t4));
      bytes = saved->size();
    }
    std::printf("\nstate spill (SpillSlot) %.2f ms engine wait, bytes ready after %.2f ms; restore (RestoreSlot) "
                "%.2f ms engine wait, ready after %.2f ms; LoadSlot %.2f ms (%.2f MiB serialized, median of 5)\n",
                Median(spill_wait), Median(spill_ready), Median(restore_wait), Median(restore_ready),
                Median(load_times), tools::MiB(static_cast<double>(bytes)));
  }

  std::printf("\nprefill from an empty state, one chunk (median of %d after 1 warm-up)\n",
              kPrefillRuns);
  std::printf("%7s %14s %12s\n", "prompt", "ms", "tokens/s");
  for (int64_t length : *prompt_lengths) {
    StepPlan plan;
    SequenceChunk chunk{0, 0, {}, LogitsMode::kLast};
    for (int64_t t = 0; t < length; ++t) chunk.tokens.push_back(token(rng));
    plan.chunks.push_back(std::move(chunk));
    std::vector<double> times;
    for (int run = 0; run < 1 + kPrefillRuns; ++run) {
      if (absl::Status s = backend.ResetSlot(0); !s.ok()) return s;
      absl::StatusOr<double> t = TimeForward(backend, plan, &out);
      if (!t.ok()) return t.status();
      if (run > 0) times.push_back(*t);
    }
    const double median = Median(times);
    std::printf("%7lld %14.2f %12.1f\n", (long long)length, median * 1e3, length / median);
  }
  return absl::OkStatus();
}

}  // namespace lizard::cli
