#include "engine/cpu/weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numbers>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "engine/model/tensor_table.h"

namespace lizard {
namespace {

// The HostWeights vector that holds `spec`'s tensor (`w.layers` sized already).
std::vector<float>& HostTensor(HostWeights& w, const TensorSpec& spec) {
  LayerWeights* l = spec.layer < 0 ? nullptr : &w.layers[spec.layer];
  switch (spec.role) {
    case TensorRole::kEmbed: return w.embed;
    case TensorRole::kFinalNorm: return w.final_norm;
    case TensorRole::kLmHead: return w.lm_head;
    case TensorRole::kInputNorm: return l->input_norm;
    case TensorRole::kPostNorm: return l->post_norm;
    case TensorRole::kQWeight: return l->wq;
    case TensorRole::kQBias: return l->bq;
    case TensorRole::kKWeight: return l->wk;
    case TensorRole::kKBias: return l->bk;
    case TensorRole::kVWeight: return l->wv;
    case TensorRole::kVBias: return l->bv;
    case TensorRole::kOWeight: return l->wo;
    case TensorRole::kOBias: return l->bo;
    case TensorRole::kFeatureMapQ: return l->fmap_q;
    case TensorRole::kFeatureMapK: return l->fmap_k;
    case TensorRole::kFeatureMapQBias: return l->fmap_q_bias;
    case TensorRole::kFeatureMapKBias: return l->fmap_k_bias;
    case TensorRole::kForgetGateWeight: return l->gate_w;
    case TensorRole::kForgetGateBias: return l->gate_b;
    case TensorRole::kMetaLogits: return l->meta_logits;
    case TensorRole::kWindowFactor: return l->window_factor;
    case TensorRole::kMlpGate: return l->w_gate;
    case TensorRole::kMlpUp: return l->w_up;
    case TensorRole::kMlpDown: return l->w_down;
  }
  __builtin_unreachable();  // every role is listed above
}

// HostWeights with the layers of `config` sized and typed, no tensors yet.
HostWeights EmptyHostWeights(const ModelConfig& config) {
  HostWeights w;
  w.tied_embeddings = config.tie_word_embeddings;
  w.layers.resize(config.num_layers);
  for (int64_t l = 0; l < config.num_layers; ++l) w.layers[l].type = config.layer_types[l];
  return w;
}

// splitmix64 (Steele, Lea, Flood 2014): a tiny generator fully specified by integer arithmetic.
uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A well-mixed 64-bit value from two inputs (distinct pairs give unrelated results).
uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t state = a;
  state = SplitMix64(state) ^ b;
  return SplitMix64(state);
}

// A uniform double in (0, 1]: never 0, so log() below is finite.
double Uniform(uint64_t& state) { return static_cast<double>((SplitMix64(state) >> 11) + 1) * 0x1.0p-53; }

// One contiguous piece of a tensor filled from its own stream, so pieces can run in parallel
// and the result does not depend on the thread count.
struct FillJob {
  float* data;
  int64_t count;
  float mean, stddev;
  uint64_t stream;  // seed of this piece's generator
};

// Box-Muller: two uniforms -> two independent standard normals.
void RunFill(const FillJob& job) {
  uint64_t state = job.stream;
  for (int64_t i = 0; i < job.count; i += 2) {
    const double radius = std::sqrt(-2.0 * std::log(Uniform(state)));
    const double angle = 2.0 * std::numbers::pi * Uniform(state);
    job.data[i] = static_cast<float>(job.mean + job.stddev * radius * std::cos(angle));
    if (i + 1 < job.count) job.data[i + 1] = static_cast<float>(job.mean + job.stddev * radius * std::sin(angle));
  }
}

// Collects the fill jobs of every tensor in a fixed order, then runs them on all cores.
class RandomFiller {
 public:
  explicit RandomFiller(uint64_t seed) : seed_(seed) {}

  // Resizes `v` to `count` values ~ N(mean, stddev^2), filled by Run().
  void Normal(std::vector<float>& v, int64_t count, double mean, double stddev) {
    v.resize(count);
    constexpr int64_t kPiece = int64_t{1} << 20;
    const uint64_t tensor = next_tensor_++;
    for (int64_t begin = 0, piece = 0; begin < count; begin += kPiece, ++piece) {
      // Each (seed, tensor, piece) gets its own starting state.
      const uint64_t stream = Mix(Mix(seed_, tensor), static_cast<uint64_t>(piece));
      jobs_.push_back({v.data() + begin, std::min(kPiece, count - begin), static_cast<float>(mean),
                       static_cast<float>(stddev), stream});
    }
  }

  void Run() {
    std::atomic<size_t> next{0};
    auto worker = [&] {
      for (size_t j = next++; j < jobs_.size(); j = next++) RunFill(jobs_[j]);
    };
    const unsigned num_threads = std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), 64));
    std::vector<std::thread> threads;
    for (unsigned t = 1; t < num_threads; ++t) threads.emplace_back(worker);
    worker();
    for (std::thread& t : threads) t.join();
  }

 private:
  uint64_t seed_;
  uint64_t next_tensor_ = 0;
  std::vector<FillJob> jobs_;
};

}  // namespace

int64_t HostWeights::num_parameters() const {
  int64_t n = static_cast<int64_t>(embed.size() + final_norm.size());
  if (!tied_embeddings) n += static_cast<int64_t>(lm_head.size());
  for (const LayerWeights& l : layers) {
    for (const std::vector<float>* v :
         {&l.input_norm, &l.post_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.bq, &l.bk, &l.bv, &l.bo, &l.fmap_q,
          &l.fmap_k, &l.fmap_q_bias, &l.fmap_k_bias, &l.gate_w, &l.gate_b, &l.meta_logits,
          &l.window_factor, &l.w_gate, &l.w_up, &l.w_down}) {
      n += static_cast<int64_t>(v->size());
    }
  }
  return n;
}

absl::StatusOr<HostWeights> LoadHostWeights(const ModelConfig& config, const Checkpoint& checkpoint,
                                            LoadProgressCallback on_progress) {
  if (absl::Status s = ValidateCheckpoint(config, checkpoint); !s.ok()) return s;
  HostWeights w = EmptyHostWeights(config);
  const std::vector<TensorSpec> table = TensorTable(config);
  LoadProgressReporter progress(std::move(on_progress), checkpoint, table);
  for (const TensorSpec& spec : table) {
    if (spec.when_absent == WhenAbsent::kEmbedCopy) continue;  // copied from embed below
    std::vector<float>& v = HostTensor(w, spec);
    if (LoadProgressReporter::Loads(checkpoint, spec)) {
      const TensorView* t = checkpoint.Find(spec.name);
      v.resize(t->numel());
      ConvertToF32(*t, v.data());
      progress.Loaded(*t);
    } else if (spec.when_absent == WhenAbsent::kZeros) {
      // Absent optional biases are zeros, so the backend needs no special case.
      v.assign(spec.numel(), 0.0f);
    }
  }
  if (w.tied_embeddings) w.lm_head = w.embed;
  return w;
}

HostWeights RandomHostWeights(const ModelConfig& config, uint64_t seed) {
  RandomFiller fill(seed);
  HostWeights w = EmptyHostWeights(config);
  for (const TensorSpec& spec : TensorTable(config)) {
    if (spec.synthetic()) fill.Normal(HostTensor(w, spec), spec.numel(), spec.init_mean, spec.init_stddev);
  }
  fill.Run();
  if (w.tied_embeddings) w.lm_head = w.embed;
  return w;
}

absl::StatusOr<HostWeights> LoadHostWeights(const WeightSource& source, ModelConfig* config) {
  absl::StatusOr<ModelConfig> loaded = source.Config();
  if (!loaded.ok()) return loaded.status();
  *config = *std::move(loaded);
  if (source.synthetic()) return RandomHostWeights(*config, source.seed);
  absl::StatusOr<std::unique_ptr<Checkpoint>> checkpoint = Checkpoint::Open(source.model_dir);
  if (!checkpoint.ok()) return checkpoint.status();
  return LoadHostWeights(*config, **checkpoint, source.on_progress);
}

}  // namespace lizard
