// lizard-cli: run a Lizard checkpoint from the command line (logits, generate, info, bench).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backend.h"
#include "engine/model/checkpoint.h"
#include "engine/model/model_config.h"
#include "engine/model/state_layout.h"
#include "engine/sampling/sampling.h"
#include "tokenizer/tokenizer.h"
#include "tools/cli/bench.h"
#include "tools/cli/drift.h"
#include "tools/cli/npy.h"
#include "tools/common/args.h"
#include "tools/common/options.h"

namespace lizard::cli {
namespace {

constexpr char kUsage[] = R"(usage: lizard-cli COMMAND [options]

commands:
  logits   --model DIR --tokens 1,2,3 --out FILE.npy [--mode prefill|decode] [--chunk N]
           [--backend cpu|cuda|auto] [--threads N]
           writes float32 logits [T, V] of every token (prefill: chunks of N tokens, default
           all at once; decode: one token per step)
  generate --model DIR (--tokens 1,2,3 | --prompt TEXT) [--max-new-tokens N] [--temperature T]
           [--top-k K] [--top-p P] [--seed S] [--backend cpu|cuda|auto] [--threads N]
           prints the generated token ids, and their text when DIR has tokenizer.json (stops
           at an EOS token of config.json); --prompt needs DIR/tokenizer.json
  info     --model DIR
           layers and their types, parameter count, state bytes per sequence, KV bytes per token
  bench    (--model DIR | --shape tiny|llama3.2-1b|llama3-8b) [--backend cpu|cuda|auto]
           [--batch-sizes 1,8,32] [--context N] [--prompt-lengths 128,512] [--teacher]
           [--steps N] [--state-dtype f32|bf16] [--sample greedy|top-p|logits]
           [--gemm invariant|cublas] [--threads N]
           decode step time and tokens/s per batch size (each step returns sampled token ids,
           default greedy, or the logits rows), prefill tokens/s per prompt length
           (random weights of the model's shape)
  drift    (--model DIR | --shape tiny|llama3.2-1b|llama3-8b) [--backend cpu|cuda|auto]
           [--tokens N] [--prompt-length P] [--report-every K] [--seed S] [--threads N]
           logits with bfloat16 S/z states against float32 ones over P random prompt tokens
           and N (default 10240) greedy tokens of the float32 run fed to both: relative error,
           top-1 agreement and KL per K (default 1024) tokens (--shape: random weights)
)";

absl::StatusOr<std::vector<int32_t>> ParseTokens(const tools::Args& args) {
  absl::StatusOr<std::string> text = args.Required("tokens");
  if (!text.ok()) return text.status();
  absl::StatusOr<std::vector<int64_t>> ids = tools::ParseIntList(*text);
  if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("--tokens: ", ids.status().message()));
  for (int64_t id : *ids) {
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens: ", id, " is not a token id"));
    }
  }
  return std::vector<int32_t>(ids->begin(), ids->end());
}

// A backend with `num_slots` slots for --model, honouring --backend and --threads.
absl::StatusOr<std::unique_ptr<Backend>> OpenBackend(const tools::Args& args, int32_t num_slots) {
  absl::StatusOr<std::string> model = args.Required("model");
  if (!model.ok()) return model.status();
  absl::StatusOr<BackendKind> kind = tools::BackendKindOption(args);
  if (!kind.ok()) return kind.status();
  absl::StatusOr<int64_t> threads = args.Int("threads", 0);
  if (!threads.ok()) return threads.status();
  BackendOptions options;
  options.weights = WeightSource::Directory(*model);
  options.kind = *kind;
  options.num_slots = num_slots;
  options.num_threads = static_cast<int32_t>(*threads);
  return CreateBackend(options);
}

absl::Status RunLogits(const tools::Args& args) {
  absl::StatusOr<std::vector<int32_t>> tokens = ParseTokens(args);
  if (!tokens.ok()) return tokens.status();
  absl::StatusOr<std::string> out_path = args.Required("out");
  if (!out_path.ok()) return out_path.status();
  const std::string mode = args.String("mode", "prefill");
  if (mode != "prefill" && mode != "decode") {
    return absl::InvalidArgumentError("--mode must be prefill or decode");
  }
  const int64_t n = static_cast<int64_t>(tokens->size());
  absl::StatusOr<int64_t> chunk = args.Int("chunk", n);
  if (!chunk.ok()) return chunk.status();
  if (*chunk <= 0) return absl::InvalidArgumentError("--chunk must be positive");
  absl::StatusOr<std::unique_ptr<Backend>> backend = OpenBackend(args, 1);
  if (!backend.ok()) return backend.status();

  std::vector<float> logits;
  const int64_t step_tokens = mode == "decode" ? 1 : *chunk;
  for (int64_t start = 0; start < n; start += step_tokens) {
    // --mode decode feeds each token as a decode (the recurrent form), prefill as prompt chunks.
    const int64_t end = std::min(n, start + step_tokens);
    StepPlan plan;
    plan.chunks.push_back({0, start, std::vector<int32_t>(tokens->begin() + start, tokens->begin() + end),
                           LogitsMode::kAll, /*decode=*/mode == "decode"});
    StepOutput out;
    if (absl::Status s = (*backend)->Forward(plan, &out); !s.ok()) return s;
    logits.insert(logits.end(), out.logits.begin(), out.logits.end());
  }
  const int64_t vocab = (*backend)->config().vocab_size;
  if (absl::Status s = WriteNpyF32(*out_path, {n, vocab}, logits); !s.ok()) return s;
  std::printf("wrote %s: float32 [%lld, %lld] (%s, backend %s)\n", out_path->c_str(),
              static_cast<long long>(n), static_cast<long long>(vocab), mode.c_str(),
              (*backend)->info().name.c_str());
  return absl::OkStatus();
}

// DIR/tokenizer.json, or nullptr when the directory has none.
absl::StatusOr<std::unique_ptr<Tokenizer>> OpenTokenizer(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer.json";
  if (!std::filesystem::exists(path)) return nullptr;
  return Tokenizer::FromFile(path);
}

absl::Status RunGenerate(const tools::Args& args) {
  absl::StatusOr<std::string> model = args.Required("model");
  if (!model.ok()) return model.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = OpenTokenizer(*model);
  if (!tokenizer.ok()) return tokenizer.status();
  if (args.Has("tokens") == args.Has("prompt")) {
    return absl::InvalidArgumentError("give exactly one of --tokens or --prompt");
  }
  absl::StatusOr<std::vector<int32_t>> prompt;
  if (args.Has("prompt")) {
    if (*tokenizer == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("--prompt needs ", *model, "/tokenizer.json"));
    }
    prompt = (*tokenizer)->Encode(args.String("prompt", ""), /*add_special_tokens=*/true);
  } else {
    prompt = ParseTokens(args);
  }
  if (!prompt.ok()) return prompt.status();
  if (prompt->empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  absl::StatusOr<int64_t> max_new = args.Int("max-new-tokens", 16);
  absl::StatusOr<double> temperature = args.Double("temperature", 0.0);
  absl::StatusOr<int64_t> top_k = args.Int("top-k", 0);
  absl::StatusOr<double> top_p = args.Double("top-p", 1.0);
  absl::StatusOr<int64_t> seed = args.Int("seed", 0);
  for (const absl::Status& s : {max_new.status(), temperature.status(), top_k.status(),
                                top_p.status(), seed.status()}) {
    if (!s.ok()) return s;
  }
  if (*max_new < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  if (*temperature < 0) return absl::InvalidArgumentError("--temperature must be >= 0");
  if (*top_p <= 0 || *top_p > 1) return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  absl::StatusOr<std::unique_ptr<Backend>> backend = OpenBackend(args, 1);
  if (!backend.ok()) return backend.status();
  const ModelConfig& config = (*backend)->config();

  // The backend samples (on the GPU for --backend cuda); only token ids come back.
  TokenHistory history;
  history.AddPrompt(*prompt);
  RowSampling sampling;
  sampling.params.temperature = static_cast<float>(*temperature);
  sampling.params.top_k = static_cast<int32_t>(*top_k);
  sampling.params.top_p = static_cast<float>(*top_p);
  sampling.seed = static_cast<uint64_t>(*seed);
  sampling.history = &history;

  // Prefill the prompt, then one decode step per generated token.
  StepPlan plan;
  plan.chunks.push_back({0, 0, *prompt, LogitsMode::kLast});
  std::vector<int32_t> generated;
  for (int64_t step = 0; step < *max_new; ++step) {
    sampling.step = static_cast<uint64_t>(step);
    plan.sampling = {sampling};
    StepOutput out;
    if (absl::Status s = (*backend)->Forward(plan, &out); !s.ok()) return s;
    const int32_t token = out.tokens[0];
    generated.push_back(token);
    history.AddGenerated(token);
    if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), token) !=
        config.eos_token_ids.end()) {
      break;
    }
    plan = StepPlan{};
    plan.chunks.push_back(
        {0, (*backend)->SlotPosition(0), {token}, LogitsMode::kLast, /*decode=*/true});
  }
  std::printf("%s\n", absl::StrJoin(generated, " ").c_str());
  if (*tokenizer != nullptr) {
    absl::StatusOr<std::string> text = (*tokenizer)->Decode(generated);
    if (!text.ok()) return text.status();
    std::printf("%s\n", text->c_str());
  }
  return absl::OkStatus();
}

absl::Status RunInfo(const tools::Args& args) {
  absl::StatusOr<std::string> model = args.Required("model");
  if (!model.ok()) return model.status();
  absl::StatusOr<ModelConfig> config = LoadModelConfig(*model);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(*model);
  if (!checkpoint.ok()) return checkpoint.status();
  if (absl::Status s = ValidateCheckpoint(*config, **checkpoint); !s.ok()) return s;
  int64_t parameters = 0;
  for (const std::string& name : (*checkpoint)->Names()) {
    parameters += (*checkpoint)->Find(name)->numel();
  }
  const ModelConfig& c = *config;
  std::printf("model %s: vocab %lld, hidden %lld, MLP %lld, heads %lld (kv %lld) x %lld, dtype %s\n",
              c.name.c_str(), (long long)c.vocab_size, (long long)c.hidden_size,
              (long long)c.intermediate_size, (long long)c.num_heads, (long long)c.num_kv_heads,
              (long long)c.head_dim, std::string(DTypeName(c.torch_dtype)).c_str());
  if (c.num_lizard_layers() > 0) {
    std::printf("lizard: feature dim %lld, window %lld, meta tokens %lld, window_rope %s, "
                "gla_normalize %s\n",
                (long long)c.feature_dim, (long long)c.window_size, (long long)c.num_meta_tokens,
                c.window_rope ? "true" : "false", c.gla_normalize ? "true" : "false");
  }
  std::vector<std::string> types;
  for (LayerType t : c.layer_types) types.push_back(t == LayerType::kLizard ? "lizard" : "softmax");
  std::printf("layers: %lld (%lld lizard, %lld softmax): %s\n", (long long)c.num_layers,
              (long long)c.num_lizard_layers(), (long long)c.num_softmax_layers(),
              absl::StrJoin(types, " ").c_str());
  std::printf("parameters: %lld (%.2f M)\n", (long long)parameters, parameters / 1e6);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const StateLayout layout(c, dtype, dtype);
    std::printf("state per sequence (%s): %lld bytes (%.2f MiB); softmax KV per token: %lld bytes\n",
                std::string(DTypeName(dtype)).c_str(), (long long)layout.slot_bytes,
                layout.slot_bytes / 1048576.0, (long long)layout.kv_bytes_per_token);
  }
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  absl::Status status;
  if (command == "logits") {
    absl::StatusOr<tools::Args> args =
        tools::Args::Parse(rest, {"model", "tokens", "mode", "chunk", "out", "backend", "threads"}, {});
    status = args.ok() ? RunLogits(*args) : args.status();
  } else if (command == "generate") {
    absl::StatusOr<tools::Args> args =
        tools::Args::Parse(rest, {"model", "tokens", "prompt", "max-new-tokens", "temperature", "top-k", "top-p",
                           "seed", "backend", "threads"},
                    {});
    status = args.ok() ? RunGenerate(*args) : args.status();
  } else if (command == "info") {
    absl::StatusOr<tools::Args> args = tools::Args::Parse(rest, {"model"}, {});
    status = args.ok() ? RunInfo(*args) : args.status();
  } else if (command == "bench") {
    absl::StatusOr<tools::Args> args =
        tools::Args::Parse(rest, {"backend", "model", "shape", "batch-sizes", "context",
                           "prompt-lengths", "steps", "state-dtype", "sample", "gemm", "threads"},
                    {"teacher"});
    status = args.ok() ? RunBench(*args) : args.status();
  } else if (command == "drift") {
    absl::StatusOr<tools::Args> args =
        tools::Args::Parse(rest, {"backend", "model", "shape", "tokens", "prompt-length", "report-every",
                           "seed", "threads"},
                    {});
    status = args.ok() ? RunDrift(*args) : args.status();
  } else {
    std::fprintf(stderr, "unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "lizard-cli %s: error: %s\n", command.c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace lizard::cli

int main(int argc, char** argv) { return lizard::cli::Main(argc, argv); }
