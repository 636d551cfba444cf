#include "engine/model/weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numbers>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace lizard {
namespace {

std::vector<float> ToF32(const Checkpoint& checkpoint, const std::string& name) {
  const TensorView* t = checkpoint.Find(name);
  if (t == nullptr) return {};
  std::vector<float> out(t->numel());
  ConvertToF32(*t, out.data());
  return out;
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

absl::StatusOr<HostWeights> LoadHostWeights(const ModelConfig& config, const Checkpoint& checkpoint) {
  if (absl::Status s = ValidateCheckpoint(config, checkpoint); !s.ok()) return s;
  const int64_t H = config.num_heads, F = config.feature_dim;
  HostWeights w;
  w.embed = ToF32(checkpoint, "model.embed_tokens.weight");
  w.final_norm = ToF32(checkpoint, "model.norm.weight");
  w.tied_embeddings = config.tie_word_embeddings;
  w.lm_head = config.tie_word_embeddings ? w.embed : ToF32(checkpoint, "lm_head.weight");
  w.layers.resize(config.num_layers);
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerWeights& lw = w.layers[l];
    auto load = [&](std::string_view suffix) { return ToF32(checkpoint, LayerTensorName(l, suffix)); };
    lw.type = config.layer_types[l];
    lw.input_norm = load("input_layernorm.weight");
    lw.post_norm = load("post_attention_layernorm.weight");
    lw.wq = load("self_attn.q_proj.weight");
    lw.wk = load("self_attn.k_proj.weight");
    lw.wv = load("self_attn.v_proj.weight");
    lw.wo = load("self_attn.o_proj.weight");
    lw.bq = load("self_attn.q_proj.bias");
    lw.bk = load("self_attn.k_proj.bias");
    lw.bv = load("self_attn.v_proj.bias");
    lw.bo = load("self_attn.o_proj.bias");
    if (lw.type == LayerType::kLizard) {
      lw.fmap_q = load("self_attn.feature_map_q.weight");
      lw.fmap_k = load("self_attn.feature_map_k.weight");
      lw.fmap_q_bias = load("self_attn.feature_map_q.bias");
      lw.fmap_k_bias = load("self_attn.feature_map_k.bias");
      lw.gate_w = load("self_attn.forget_gate.weight");
      lw.gate_b = load("self_attn.forget_gate.bias");
      lw.meta_logits = load("self_attn.meta_logits");
      lw.window_factor = load("self_attn.window_factor");
      // Absent optional biases are zeros, so the backends need no special case.
      if (lw.fmap_q_bias.empty()) lw.fmap_q_bias.assign(H * F, 0.0f);
      if (lw.fmap_k_bias.empty()) lw.fmap_k_bias.assign(H * F, 0.0f);
      if (lw.gate_b.empty()) lw.gate_b.assign(H, 0.0f);
    }
    lw.w_gate = load("mlp.gate_proj.weight");
    lw.w_up = load("mlp.up_proj.weight");
    lw.w_down = load("mlp.down_proj.weight");
  }
  return w;
}

HostWeights RandomHostWeights(const ModelConfig& config, uint64_t seed) {
  const int64_t Hd = config.hidden_size, H = config.num_heads, Hkv = config.num_kv_heads;
  const int64_t D = config.head_dim, I = config.intermediate_size, V = config.vocab_size;
  const int64_t F = config.feature_dim, m = config.num_meta_tokens;
  // N(0, 1/fan_in) keeps each projection's output at roughly unit scale.
  auto proj_std = [](int64_t fan_in) { return 1.0 / std::sqrt(static_cast<double>(fan_in)); };
  constexpr double kNormNoise = 0.1;

  RandomFiller fill(seed);
  HostWeights w;
  w.tied_embeddings = config.tie_word_embeddings;
  // Embedding rows at 1/sqrt(Hd) so tied logits (embed . normed x) are also of unit scale.
  fill.Normal(w.embed, V * Hd, 0.0, proj_std(Hd));
  w.layers.resize(config.num_layers);
  for (int64_t l = 0; l < config.num_layers; ++l) {
    LayerWeights& lw = w.layers[l];
    lw.type = config.layer_types[l];
    fill.Normal(lw.input_norm, Hd, 1.0, kNormNoise);
    fill.Normal(lw.post_norm, Hd, 1.0, kNormNoise);
    fill.Normal(lw.wq, H * D * Hd, 0.0, proj_std(Hd));
    fill.Normal(lw.wk, Hkv * D * Hd, 0.0, proj_std(Hd));
    fill.Normal(lw.wv, Hkv * D * Hd, 0.0, proj_std(Hd));
    fill.Normal(lw.wo, Hd * H * D, 0.0, proj_std(H * D));
    if (lw.type == LayerType::kLizard) {
      fill.Normal(lw.fmap_q, H * D * F, 0.0, proj_std(D));
      fill.Normal(lw.fmap_k, H * D * F, 0.0, proj_std(D));
      fill.Normal(lw.fmap_q_bias, H * F, 0.0, 0.1);
      fill.Normal(lw.fmap_k_bias, H * F, 0.0, 0.1);
      fill.Normal(lw.gate_w, H * Hd, 0.0, proj_std(Hd));
      // Gate bias around 3: sigmoid ~0.95, a long but decaying memory like trained gates.
      fill.Normal(lw.gate_b, H, 3.0, 0.5);
      fill.Normal(lw.meta_logits, H * m, 0.0, 1.0);
      fill.Normal(lw.window_factor, H, 0.5, 0.1);
    }
    fill.Normal(lw.w_gate, I * Hd, 0.0, proj_std(Hd));
    fill.Normal(lw.w_up, I * Hd, 0.0, proj_std(Hd));
    fill.Normal(lw.w_down, Hd * I, 0.0, proj_std(I));
  }
  fill.Normal(w.final_norm, Hd, 1.0, kNormNoise);
  if (!config.tie_word_embeddings) fill.Normal(w.lm_head, V * Hd, 0.0, proj_std(Hd));
  fill.Run();
  if (config.tie_word_embeddings) w.lm_head = w.embed;
  return w;
}

}  // namespace lizard
