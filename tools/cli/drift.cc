#include "tools/cli/drift.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/backend.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "engine/sampling/sampler.h"
#include "tools/common/options.h"

namespace lizard::cli {
namespace {

// A stderr progress line after this many seconds without output, so long windows show life.
constexpr double kProgressSeconds = 10.0;
// --shape runs may go past the shape's max_position_embeddings up to this many positions.
constexpr int64_t kMaxShapePositions = int64_t{1} << 24;

// How the logits rows of one token differ; `a` is the float32-state reference.
struct RowDiff {
  double rel = 0.0;      // ||a - b|| / ||a||
  double max_abs = 0.0;  // max |a_i - b_i|
  double kl = 0.0;       // KL(softmax(a) || softmax(b))
  bool agree = true;     // same argmax
};

double LogSumExp(std::span<const float> x) {
  double m = -std::numeric_limits<double>::infinity();
  for (float v : x) m = std::max(m, static_cast<double>(v));
  double sum = 0.0;
  for (float v : x) sum += std::exp(v - m);
  return m + std::log(sum);
}

// Both rows finite and of the same length.
RowDiff CompareRows(std::span<const float> a, std::span<const float> b) {
  RowDiff d;
  double diff2 = 0.0, norm2 = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = static_cast<double>(a[i]) - b[i];
    diff2 += e * e;
    norm2 += static_cast<double>(a[i]) * a[i];
    d.max_abs = std::max(d.max_abs, std::abs(e));
  }
  d.rel = norm2 > 0 ? std::sqrt(diff2 / norm2) : (diff2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  const double lse_a = LogSumExp(a), lse_b = LogSumExp(b);
  double kl = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double log_p = a[i] - lse_a;
    kl += std::exp(log_p) * (log_p - (b[i] - lse_b));
  }
  d.kl = std::max(kl, 0.0);  // a KL is >= 0; rounding can leave a tiny negative sum
  d.agree = ArgMax(a) == ArgMax(b);
  return d;
}

struct Stats {
  int64_t count = 0;
  int64_t agree = 0;
  double rel_sum = 0.0, rel_max = 0.0, abs_max = 0.0, kl_sum = 0.0, kl_max = 0.0;

  void Add(const RowDiff& d) {
    ++count;
    agree += d.agree ? 1 : 0;
    rel_sum += d.rel;
    rel_max = std::max(rel_max, d.rel);
    abs_max = std::max(abs_max, d.max_abs);
    kl_sum += d.kl;
    kl_max = std::max(kl_max, d.kl);
  }
};

void PrintStats(const std::string& label, const Stats& s, double elapsed_s) {
  std::printf("%-15s %12.3e %12.3e %11.3e %10.2f%% %12.3e %12.3e %9.1f\n", label.c_str(),
              s.rel_sum / s.count, s.rel_max, s.abs_max, 100.0 * s.agree / s.count,
              s.kl_sum / s.count, s.kl_max, elapsed_s);
  std::fflush(stdout);
}

// Where the weights of both backends come from: the --model checkpoint, or random weights of
// `config`'s shape drawn from `seed`.
struct WeightsSource {
  ModelConfig config;
  std::string model_dir;  // empty: synthetic
  uint64_t seed = 1;
};

absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(const WeightsSource& source, DType state_dtype,
                                                     BackendKind kind, int32_t threads) {
  BackendOptions options;
  options.kind = kind;
  options.num_slots = 1;
  options.num_threads = threads;
  options.state_dtype = state_dtype;
  options.weights = source.model_dir.empty() ? WeightSource::Synthetic(source.config, source.seed)
                                             : WeightSource::Directory(source.model_dir);
  return CreateBackend(options);
}

// Runs `plan` on `backend` and checks its single logits row is finite.
absl::Status ForwardRow(Backend& backend, const StepPlan& plan, const char* which, int64_t token,
                        StepOutput* out) {
  if (absl::Status s = backend.Forward(plan, out); !s.ok()) return s;
  if (out->rows != 1) {
    return absl::InternalError(absl::StrCat(which, " backend returned ", out->rows, " rows"));
  }
  for (float v : std::span<const float>(out->row(0), out->vocab)) {
    if (!std::isfinite(v)) {
      return absl::InternalError(
          absl::StrCat("non-finite logits from the ", which, " backend at token ", token));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunDrift(const tools::Args& args) {
  absl::StatusOr<ModelConfig> config = tools::ModelShapeOption(args);
  if (!config.ok()) return config.status();
  absl::StatusOr<BackendKind> kind = tools::BackendKindOption(args);
  absl::StatusOr<int64_t> tokens = args.Int("tokens", 10240);
  absl::StatusOr<int64_t> prompt_length = args.Int("prompt-length", 64);
  absl::StatusOr<int64_t> report_every = args.Int("report-every", 1024);
  absl::StatusOr<int64_t> seed = args.Int("seed", 1);
  absl::StatusOr<int64_t> threads = args.Int("threads", 0);
  for (const absl::Status& s : {kind.status(), tokens.status(), prompt_length.status(),
                                report_every.status(), seed.status(), threads.status()}) {
    if (!s.ok()) return s;
  }
  if (*tokens < 1) return absl::InvalidArgumentError("--tokens must be >= 1");
  if (*prompt_length < 1) return absl::InvalidArgumentError("--prompt-length must be >= 1");
  if (*report_every < 1) return absl::InvalidArgumentError("--report-every must be >= 1");
  if (*threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");

  WeightsSource source;
  source.seed = static_cast<uint64_t>(*seed);
  source.config = *std::move(config);
  if (args.Has("model")) source.model_dir = args.String("model", "");
  ModelConfig& c = source.config;
  if (c.num_lizard_layers() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(c.name, " has no lizard layers: there is no S/z state whose dtype could drift"));
  }
  // Positions 0 .. P + N - 1 are consumed (the last generated token is never fed). A checkpoint's
  // limit stands; a shape's is only its namesake's training length (llama3-8b: 8192, below the
  // 10K+ tokens worth measuring), and the backends do not bound a lizard layer's position.
  const int64_t shape_max_positions = c.max_position_embeddings;
  if (source.model_dir.empty() && *tokens <= kMaxShapePositions - *prompt_length) {
    c.max_position_embeddings = std::max(c.max_position_embeddings, *prompt_length + *tokens);
  }
  if (*prompt_length > c.max_position_embeddings - *tokens) {
    const std::string limit =
        source.model_dir.empty()
            ? absl::StrCat("the ", kMaxShapePositions, " positions a --shape run may take")
            : absl::StrCat("max_position_embeddings ", c.max_position_embeddings, " of ", c.name);
    return absl::InvalidArgumentError(absl::StrCat("--prompt-length ", *prompt_length, " + --tokens ",
                                                   *tokens, " exceeds ", limit));
  }
  // The reference first; the test backend then takes the same kind even under --backend auto.
  absl::StatusOr<std::unique_ptr<Backend>> reference =
      OpenBackend(source, DType::kF32, *kind, static_cast<int32_t>(*threads));
  if (!reference.ok()) return reference.status();
  const BackendInfo info = (*reference)->info();
  const bool cpu = info.name == "cpu";
  absl::StatusOr<std::unique_ptr<Backend>> test =
      OpenBackend(source, DType::kBF16, cpu ? BackendKind::kCpu : BackendKind::kCuda,
                  static_cast<int32_t>(*threads));
  if (!test.ok()) return test.status();
  Backend& ref = **reference;
  Backend& bf16 = **test;
  const int64_t vocab = ref.config().vocab_size;

  const StateLayout f32_layout(c, DType::kF32, DType::kF32);
  const StateLayout bf16_layout(c, DType::kBF16, DType::kF32);
  const double lizard_layers = static_cast<double>(c.num_lizard_layers());
  const std::string weights = source.model_dir.empty()
                                  ? absl::StrCat("random weights (seed ", *seed, ")")
                                  : absl::StrCat("weights of ", source.model_dir);
  std::printf("backend   %s (%s)\n", info.name.c_str(), info.device.c_str());
  std::printf("model     %s: L=%lld (%lld lizard, %lld softmax), Hd=%lld, H=%lld, Hkv=%lld, D=%lld, "
              "F=%lld, w=%lld, V=%lld; %s\n",
              c.name.c_str(), (long long)c.num_layers, (long long)c.num_lizard_layers(),
              (long long)c.num_softmax_layers(), (long long)c.hidden_size, (long long)c.num_heads,
              (long long)c.num_kv_heads, (long long)c.head_dim, (long long)c.feature_dim,
              (long long)c.window_size, (long long)vocab, weights.c_str());
  std::printf("state     per sequence: S,z float32 %.3f MiB (slot %.3f MiB); S,z bfloat16 %.3f MiB "
              "(slot %.3f MiB)\n",
              tools::MiB(lizard_layers * (f32_layout.s_bytes + f32_layout.z_bytes)), tools::MiB(ref.slot_bytes()),
              tools::MiB(lizard_layers * (bf16_layout.s_bytes + bf16_layout.z_bytes)), tools::MiB(bf16.slot_bytes()));
  std::printf("run       %lld random prompt tokens (seed %lld), then %lld greedy tokens of the float32 "
              "reference fed to both (teacher forcing)\n",
              (long long)*prompt_length, (long long)*seed, (long long)*tokens);
  if (c.max_position_embeddings != shape_max_positions) {
    std::printf("note      max_position_embeddings of the %s shape raised from %lld to %lld for "
                "this run (random weights; the shape has no softmax layer to size a KV cache for)\n",
                c.name.c_str(), (long long)shape_max_positions, (long long)c.max_position_embeddings);
  }
  if (cpu) {
    std::printf("note      the CPU backend keeps S and z in float32 whatever the config says: both "
                "runs compute the same thing and the drift is zero by construction\n");
  }
  std::printf("\ntoken t: the logits after the prompt and t fed tokens; error of the bfloat16-state "
              "logits against the float32-state ones\n");
  std::fflush(stdout);

  std::mt19937_64 rng(static_cast<uint64_t>(*seed));
  std::uniform_int_distribution<int32_t> random_token(0, static_cast<int32_t>(vocab - 1));
  SequenceChunk chunk{0, 0, {}, LogitsMode::kLast};
  for (int64_t i = 0; i < *prompt_length; ++i) chunk.tokens.push_back(random_token(rng));
  StepPlan plan;
  plan.chunks.push_back(std::move(chunk));

  StepOutput ref_out, test_out;
  int64_t first_disagreement = -1;
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  double last_output = 0.0;
  Stats window, overall;
  for (int64_t t = 0; t <= *tokens; ++t) {
    if (absl::Status s = ForwardRow(ref, plan, "float32-state", t, &ref_out); !s.ok()) return s;
    if (absl::Status s = ForwardRow(bf16, plan, "bfloat16-state", t, &test_out); !s.ok()) return s;
    const std::span<const float> a(ref_out.row(0), vocab), b(test_out.row(0), vocab);
    const RowDiff d = CompareRows(a, b);
    if (!d.agree && first_disagreement < 0) first_disagreement = t;
    if (t == 0) {
      std::printf("%-15s %12s %12s %11s %11s %12s %12s %9s\n", "token", "rel err mean", "rel err max",
                  "max abs", "top-1 agree", "KL mean", "KL max", "elapsed s");
      Stats prefill;
      prefill.Add(d);
      PrintStats("0 (prefill)", prefill, elapsed());
    } else {
      window.Add(d);
      overall.Add(d);
      if (window.count == *report_every || t == *tokens) {
        PrintStats(absl::StrCat(t - window.count + 1, "-", t), window, elapsed());
        window = Stats{};
        last_output = elapsed();
      } else if (elapsed() - last_output > kProgressSeconds) {
        std::fprintf(stderr, "drift: token %lld of %lld\n", (long long)t, (long long)*tokens);
        last_output = elapsed();
      }
    }
    if (t == *tokens) break;  // the last token's logits are compared, not fed
    plan = StepPlan{};
    plan.chunks.push_back({0, *prompt_length + t, {ArgMax(a)}, LogitsMode::kLast, /*decode=*/true});
  }
  PrintStats(absl::StrCat("overall 1-", *tokens), overall, elapsed());
  if (first_disagreement < 0) {
    std::printf("first disagreement: never\n");
  } else {
    std::printf("first disagreement at token %lld\n", (long long)first_disagreement);
  }
  return absl::OkStatus();
}

}  // namespace lizard::cli
