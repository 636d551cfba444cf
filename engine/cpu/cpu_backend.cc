// The CPU reference backend. One Forward runs every token of the step (the plan's chunks in
// order) through each layer together: projections and MLP are one GEMM per weight for all rows;
// the sequence mixing then runs per sequence, one-token chunks (decodes) in the recurrent form
// and longer chunks in the chunked parallel form.
#include "engine/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/cpu/ops.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cpu/weights.h"
#include "engine/model/rope.h"
#include "engine/model/state_layout.h"
#include "engine/sampling/sampler.h"

namespace lizard {
namespace {

// Tokens per block of the chunked parallel form (and of query rows in attention).
constexpr int64_t kChunk = 64;

// Fewest floats of state or weights one range of a parallel loop should touch: below that,
// waking a pool thread costs more than the work it takes over.
constexpr int64_t kMinFloatsPerRange = 16 * 1024;

// Rows of one sequence inside the step's token matrix.
struct Segment {
  SlotId slot;
  int64_t first_position;
  int64_t row;     // first row in the step's matrices
  int64_t length;  // consecutive tokens
};

// Position held by ring row r of a window of size w after `count` tokens (valid for
// r < min(count, w)): the latest position p < count with p % w == r.
int64_t RingPosition(int64_t r, int64_t count, int64_t w) {
  return count - 1 - ((count - 1 - r) % w);
}

std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

int64_t MemTotalBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemTotal:") return kib * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

int64_t VectorBytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.size() * sizeof(float));
}

class CpuBackend final : public Backend {
 public:
  CpuBackend(ModelConfig config, HostWeights weights, int32_t num_slots, int num_threads)
      : config_(std::move(config)),
        weights_(std::move(weights)),
        // The CPU backend always keeps states in float32, whatever config.state_dtype says.
        layout_(config_, DType::kF32, DType::kF32),
        num_slots_(num_slots),
        threads_(num_threads),
        inv_freq_(RopeInverseFrequencies(config_)),
        pool_(static_cast<size_t>(num_slots) * layout_.slot_bytes / sizeof(float), 0.0f),
        kv_(num_slots) {
    for (auto& slot_kv : kv_) slot_kv.resize(layout_.num_softmax_layers);
    softmax_index_.assign(config_.num_layers, -1);
    int32_t next = 0;
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      if (config_.layer_types[l] == LayerType::kSoftmax) softmax_index_[l] = next++;
    }
    // Resident float32 bytes: a tied lm_head is a copy of embed, so it counts once more.
    weights_bytes_ = weights_.num_parameters() * static_cast<int64_t>(sizeof(float));
    if (weights_.tied_embeddings) weights_bytes_ += VectorBytes(weights_.lm_head);
    // Read once: info() runs under the engine's backend lock at every metrics scrape.
    device_ = absl::StrCat(CpuModelName(), ", ", threads_.num_threads(), " threads");
    memory_total_bytes_ = MemTotalBytes();
  }

  const ModelConfig& config() const override { return config_; }

  BackendInfo info() const override {
    BackendInfo info;
    info.name = "cpu";
    info.device = device_;
    info.memory_total_bytes = memory_total_bytes_;
    info.weights_bytes = weights_bytes_;
    info.state_pool_bytes = static_cast<int64_t>(pool_.size() * sizeof(float));
    int64_t kv_bytes = 0;
    for (const auto& slot_kv : kv_) {
      for (const LayerKv& layer : slot_kv) kv_bytes += VectorBytes(layer.k) + VectorBytes(layer.v);
    }
    info.memory_used_bytes = info.weights_bytes + info.state_pool_bytes + kv_bytes;
    return info;
  }

  int32_t num_slots() const override { return num_slots_; }
  int64_t slot_bytes() const override { return layout_.slot_bytes; }
  int64_t kv_bytes_per_token() const override { return layout_.kv_bytes_per_token; }

  absl::Status ResetSlot(SlotId slot) override {
    if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
    std::memset(SlotData(slot), 0, layout_.slot_bytes);
    for (LayerKv& layer : kv_[slot]) layer = LayerKv{};  // frees the memory
    return absl::OkStatus();
  }

  absl::Status CopySlot(SlotId src, SlotId dst) override {
    if (absl::Status s = CheckSlot(src); !s.ok()) return s;
    if (absl::Status s = CheckSlot(dst); !s.ok()) return s;
    if (src == dst) return absl::OkStatus();
    std::memcpy(SlotData(dst), SlotData(src), layout_.slot_bytes);
    kv_[dst] = kv_[src];
    return absl::OkStatus();
  }

  int64_t SlotPosition(SlotId slot) const override {
    if (slot < 0 || slot >= num_slots_) return -1;
    return ReadSlotPosition(layout_, SlotData(slot));
  }

  absl::StatusOr<std::string> SaveSlot(SlotId slot) override {
    if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
    // Softmax KV as K then V per layer, as SerializeState expects.
    std::vector<std::string> kv_bytes;
    std::vector<std::string_view> kv_views;
    for (const LayerKv& layer : kv_[slot]) {
      std::string bytes(VectorBytes(layer.k) + VectorBytes(layer.v), '\0');
      std::memcpy(bytes.data(), layer.k.data(), VectorBytes(layer.k));
      std::memcpy(bytes.data() + VectorBytes(layer.k), layer.v.data(), VectorBytes(layer.v));
      kv_bytes.push_back(std::move(bytes));
    }
    for (const std::string& b : kv_bytes) kv_views.push_back(b);
    return SerializeState(
        layout_, std::string_view(reinterpret_cast<const char*>(SlotData(slot)), layout_.slot_bytes),
        kv_views);
  }

  absl::Status LoadSlot(SlotId slot, std::string_view bytes) override {
    if (absl::Status s = CheckSlot(slot); !s.ok()) return s;
    // A state saved under other dtypes (a CUDA backend's bf16) is re-encoded to float32 first.
    std::string converted;
    absl::StatusOr<SerializedStateView> view =
        ParseOrConvertSerializedState(config_, layout_, bytes, &converted);
    if (!view.ok()) return view.status();
    std::memcpy(SlotData(slot), view->slot.data(), layout_.slot_bytes);
    for (size_t i = 0; i < view->softmax_kv.size(); ++i) {
      const std::string_view kv = view->softmax_kv[i];
      const size_t half = kv.size() / 2 / sizeof(float);
      LayerKv& layer = kv_[slot][i];
      layer.k.resize(half);
      layer.v.resize(half);
      std::memcpy(layer.k.data(), kv.data(), half * sizeof(float));
      std::memcpy(layer.v.data(), kv.data() + half * sizeof(float), half * sizeof(float));
    }
    return absl::OkStatus();
  }

  absl::Status Forward(const StepPlan& plan, StepOutput* out) override;

 private:
  // One softmax layer's KV cache of one sequence: [T, Hkv, D] each, roped keys.
  struct LayerKv {
    std::vector<float> k, v;
  };

  // The step's activations, rows = tokens of the step.
  struct Activations {
    int64_t rows = 0;
    std::vector<int64_t> positions;  // per row
    std::vector<float> x;            // [rows, Hd] residual stream
    std::vector<float> u;            // [rows, Hd] normed input
    std::vector<float> q, k, v;      // [rows, H*D], [rows, Hkv*D] x2
    std::vector<float> y;            // [rows, H*D] attention output before Wo
    // RoPE rotation of each row's position (cpu::RopeRotation), D/2 cos then D/2 sin per row.
    int64_t half_dim = 0;
    std::vector<float> rope;
    const float* RopeCos(int64_t r) const { return rope.data() + r * 2 * half_dim; }
    const float* RopeSin(int64_t r) const { return RopeCos(r) + half_dim; }
  };

  absl::Status CheckSlot(SlotId slot) const {
    if (slot < 0 || slot >= num_slots_) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", slot, " out of range [0, ", num_slots_, ")"));
    }
    return absl::OkStatus();
  }

  float* SlotData(SlotId slot) { return pool_.data() + SlotFloats() * slot; }
  const float* SlotData(SlotId slot) const { return pool_.data() + SlotFloats() * slot; }
  int64_t SlotFloats() const { return layout_.slot_bytes / static_cast<int64_t>(sizeof(float)); }
  float* SlotPart(SlotId slot, int64_t byte_offset) {
    return reinterpret_cast<float*>(reinterpret_cast<char*>(SlotData(slot)) + byte_offset);
  }

  // y += Gemm(x, W^T) (+ bias): one projection of all rows, its output columns split over the
  // thread pool.
  void Project(const float* x, int64_t rows, int64_t in, const std::vector<float>& w,
               const std::vector<float>& bias, int64_t out_dim, float* y, bool accumulate);
  // `single`: one-token chunks (recurrent form); `multi`: longer chunks (chunked form).
  void LizardAttention(int64_t layer, const std::vector<Segment>& single,
                       const std::vector<Segment>& multi, Activations& a);
  // key_positions holds 0, 1, 2, ... up to at least every segment's last position.
  void SoftmaxAttention(int64_t layer, const std::vector<Segment>& segments,
                        const std::vector<int64_t>& key_positions, Activations& a);
  void Mlp(int64_t layer, Activations& a);

  ModelConfig config_;
  HostWeights weights_;
  StateLayout layout_;
  int32_t num_slots_;
  cpu::ThreadPool threads_;  // every parallel loop of the backend, projections included
  std::vector<double> inv_freq_;
  std::vector<float> pool_;                  // num_slots * slot_bytes
  std::vector<std::vector<LayerKv>> kv_;     // [slot][softmax layer]
  std::vector<int32_t> softmax_index_;       // per model layer: index into kv_[slot], -1 = lizard
  int64_t weights_bytes_ = 0;
  std::string device_;
  int64_t memory_total_bytes_ = 0;
};

void CpuBackend::Project(const float* x, int64_t rows, int64_t in, const std::vector<float>& w,
                         const std::vector<float>& bias, int64_t out_dim, float* y,
                         bool accumulate) {
  if (rows == 0) return;
  // Each range of output columns reads its own rows of W.
  const int64_t min_columns = kMinFloatsPerRange / (rows * in) + 1;
  threads_.ParallelFor(out_dim, min_columns, [&](int64_t begin, int64_t end) {
    cpu::Gemm(false, true, rows, end - begin, in, 1.0f, x, in, w.data() + begin * in, in,
              accumulate ? 1.0f : 0.0f, y + begin, out_dim);
    if (bias.empty()) return;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = begin; j < end; ++j) y[r * out_dim + j] += bias[j];
    }
  });
}

void CpuBackend::LizardAttention(int64_t layer, const std::vector<Segment>& single,
                                 const std::vector<Segment>& multi, Activations& a) {
  const LayerWeights& lw = weights_.layers[layer];
  const LizardLayerOffsets& off = *layout_.lizard_layer(layer);
  const int64_t rows = a.rows, hd = config_.hidden_size;
  const int64_t h_count = config_.num_heads, kv_heads = config_.num_kv_heads;
  const int64_t d = config_.head_dim, f = config_.feature_dim, f2 = 2 * f;
  const int64_t w = config_.window_size, m = config_.num_meta_tokens;
  const int64_t group = config_.kv_group_size();
  const int64_t q_width = h_count * d, kv_width = kv_heads * d, fm_width = h_count * f2;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t head_s_floats = f2 * d;

  // Gates and feature maps of every row (RoPE-free q and k).
  std::vector<float> gate_logit(rows * h_count);
  Project(a.u.data(), rows, hd, lw.gate_w, lw.gate_b, h_count, gate_logit.data(), false);
  std::vector<float> fq(rows * fm_width), fk(rows * fm_width);
  for (int64_t h = 0; h < h_count; ++h) {
    const int64_t g = h / group;
    cpu::FeatureMap(a.q.data() + h * d, q_width, rows, lw.fmap_q.data() + h * d * f,
                    lw.fmap_q_bias.data() + h * f, d, f, fq.data() + h * f2, fm_width);
    cpu::FeatureMap(a.k.data() + g * d, kv_width, rows, lw.fmap_k.data() + h * d * f,
                    lw.fmap_k_bias.data() + h * f, d, f, fk.data() + h * f2, fm_width);
  }
  // The window sees q and k after RoPE when window_rope.
  if (config_.window_rope) {
    for (int64_t r = 0; r < rows; ++r) {
      cpu::ApplyRope(a.q.data() + r * q_width, h_count, d, a.RopeCos(r), a.RopeSin(r));
      cpu::ApplyRope(a.k.data() + r * kv_width, kv_heads, d, a.RopeCos(r), a.RopeSin(r));
    }
  }

  // Adds window_factor[h] * anchor (rows of D at out_stride) into y's head h.
  auto add_anchor = [&](int64_t row, int64_t count, int64_t h, const float* anchor) {
    const float factor = lw.window_factor[h];
    for (int64_t t = 0; t < count; ++t) {
      float* yt = a.y.data() + (row + t) * q_width + h * d;
      for (int64_t j = 0; j < d; ++j) yt[j] += factor * anchor[t * d + j];
    }
  };

  // One-token chunks, recurrent form: the state update and readout of every (item, head) in
  // parallel.
  const int64_t num_single = static_cast<int64_t>(single.size());
  threads_.ParallelFor(num_single * h_count, kMinFloatsPerRange / head_s_floats + 1,
                       [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Segment& seg = single[i / h_count];
      const int64_t h = i % h_count, g = h / group, r = seg.row;
      const float gamma = static_cast<float>(1.0 / (1.0 + cpu::Exp(-gate_logit[r * h_count + h])));
      cpu::GlaStep(fq.data() + r * fm_width + h * f2, fk.data() + r * fm_width + h * f2,
                   a.v.data() + r * kv_width + g * d, gamma, f2, d, config_.gla_normalize,
                   SlotPart(seg.slot, off.s) + h * head_s_floats,
                   SlotPart(seg.slot, off.z) + h * f2, a.y.data() + r * q_width + h * d);
    }
  });
  // One-token chunks, window, items in parallel: store the new key/value at ring row p % w, attend over
  // the filled rows.
  const int64_t ring_floats = 2 * kv_heads * w * d;
  threads_.ParallelFor(num_single, kMinFloatsPerRange / ring_floats + 1,
                       [&](int64_t begin, int64_t end) {
    std::vector<float> anchor(d);
    std::vector<int64_t> key_pos(w);
    for (int64_t i = begin; i < end; ++i) {
      const Segment& seg = single[i];
      const int64_t p = seg.first_position, r = seg.row;
      float* ring_k = SlotPart(seg.slot, off.window_k);
      float* ring_v = SlotPart(seg.slot, off.window_v);
      for (int64_t g = 0; g < kv_heads; ++g) {
        std::memcpy(ring_k + (g * w + p % w) * d, a.k.data() + r * kv_width + g * d,
                    d * sizeof(float));
        std::memcpy(ring_v + (g * w + p % w) * d, a.v.data() + r * kv_width + g * d,
                    d * sizeof(float));
      }
      const int64_t filled = std::min(p + 1, w);
      for (int64_t j = 0; j < filled; ++j) key_pos[j] = RingPosition(j, p + 1, w);
      for (int64_t h = 0; h < h_count; ++h) {
        const int64_t g = h / group;
        cpu::SinkAttention(a.q.data() + r * q_width + h * d, q_width, 1, p, ring_k + g * w * d,
                           d, ring_v + g * w * d, d, key_pos.data(), filled, w,
                           lw.meta_logits.data() + h * m, m, d, scale, anchor.data(), d);
        add_anchor(r, 1, h, anchor.data());
      }
    }
  });

  // Longer chunks, in blocks of kChunk tokens: chunked GLA from the carried state (heads in
  // parallel), then the window over the ring (positions before the block) plus the block's own
  // keys (KV heads in parallel).
  for (const Segment& seg : multi) {
    float* ring_k = SlotPart(seg.slot, off.window_k);
    float* ring_v = SlotPart(seg.slot, off.window_v);
    for (int64_t start = 0; start < seg.length; start += kChunk) {
      const int64_t c = std::min(kChunk, seg.length - start);
      const int64_t row = seg.row + start, p0 = seg.first_position + start;
      threads_.ParallelFor(h_count, 1, [&](int64_t begin, int64_t end) {
        for (int64_t h = begin; h < end; ++h) {
          const int64_t g = h / group;
          cpu::GlaChunk(fq.data() + row * fm_width + h * f2, fm_width,
                        fk.data() + row * fm_width + h * f2, fm_width,
                        a.v.data() + row * kv_width + g * d, kv_width,
                        gate_logit.data() + row * h_count + h, h_count, c, f2, d,
                        config_.gla_normalize, SlotPart(seg.slot, off.s) + h * head_s_floats,
                        SlotPart(seg.slot, off.z) + h * f2, a.y.data() + row * q_width + h * d,
                        q_width);
        }
      });
      const int64_t filled = std::min(p0, w);  // ring rows holding positions < p0
      std::vector<int64_t> key_pos(filled + c);
      for (int64_t j = 0; j < filled; ++j) key_pos[j] = RingPosition(j, p0, w);
      for (int64_t t = 0; t < c; ++t) key_pos[filled + t] = p0 + t;
      threads_.ParallelFor(kv_heads, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> wk((filled + c) * d), wv((filled + c) * d), anchor(c * d);
        for (int64_t g = begin; g < end; ++g) {
          std::memcpy(wk.data(), ring_k + g * w * d, filled * d * sizeof(float));
          std::memcpy(wv.data(), ring_v + g * w * d, filled * d * sizeof(float));
          for (int64_t t = 0; t < c; ++t) {
            std::memcpy(wk.data() + (filled + t) * d, a.k.data() + (row + t) * kv_width + g * d,
                        d * sizeof(float));
            std::memcpy(wv.data() + (filled + t) * d, a.v.data() + (row + t) * kv_width + g * d,
                        d * sizeof(float));
          }
          for (int64_t h = g * group; h < (g + 1) * group; ++h) {
            cpu::SinkAttention(a.q.data() + row * q_width + h * d, q_width, c, p0, wk.data(), d,
                               wv.data(), d, key_pos.data(), filled + c, w,
                               lw.meta_logits.data() + h * m, m, d, scale, anchor.data(), d);
            add_anchor(row, c, h, anchor.data());
          }
          // The block's last w keys/values enter the ring.
          for (int64_t t = std::max<int64_t>(0, c - w); t < c; ++t) {
            const int64_t slot_row = (p0 + t) % w;
            std::memcpy(ring_k + (g * w + slot_row) * d, wk.data() + (filled + t) * d,
                        d * sizeof(float));
            std::memcpy(ring_v + (g * w + slot_row) * d, wv.data() + (filled + t) * d,
                        d * sizeof(float));
          }
        }
      });
    }
  }
}

void CpuBackend::SoftmaxAttention(int64_t layer, const std::vector<Segment>& segments,
                                  const std::vector<int64_t>& key_positions, Activations& a) {
  const int64_t h_count = config_.num_heads, kv_heads = config_.num_kv_heads;
  const int64_t d = config_.head_dim, group = config_.kv_group_size();
  const int64_t q_width = h_count * d, kv_width = kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t r = 0; r < a.rows; ++r) {
    cpu::ApplyRope(a.q.data() + r * q_width, h_count, d, a.RopeCos(r), a.RopeSin(r));
    cpu::ApplyRope(a.k.data() + r * kv_width, kv_heads, d, a.RopeCos(r), a.RopeSin(r));
  }
  int64_t total_keys = 0;
  for (const Segment& seg : segments) {
    LayerKv& cache = kv_[seg.slot][softmax_index_[layer]];
    cache.k.insert(cache.k.end(), a.k.begin() + seg.row * kv_width,
                   a.k.begin() + (seg.row + seg.length) * kv_width);
    cache.v.insert(cache.v.end(), a.v.begin() + seg.row * kv_width,
                   a.v.begin() + (seg.row + seg.length) * kv_width);
    total_keys += seg.first_position + seg.length;
  }
  // Every (segment, head) in parallel; one reads about 2 * d * keys floats of its cache.
  const int64_t num_segments = static_cast<int64_t>(segments.size());
  const int64_t floats_per_item = 2 * d * total_keys / std::max<int64_t>(1, num_segments) + 1;
  threads_.ParallelFor(num_segments * h_count, kMinFloatsPerRange / floats_per_item + 1,
                       [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Segment& seg = segments[i / h_count];
      const int64_t h = i % h_count, g = h / group;
      const LayerKv& cache = kv_[seg.slot][softmax_index_[layer]];
      // Query rows in blocks so the score matrix stays [kChunk, keys].
      for (int64_t start = 0; start < seg.length; start += kChunk) {
        const int64_t c = std::min(kChunk, seg.length - start);
        const int64_t row = seg.row + start, p0 = seg.first_position + start;
        cpu::SinkAttention(a.q.data() + row * q_width + h * d, q_width, c, p0,
                           cache.k.data() + g * d, kv_width, cache.v.data() + g * d, kv_width,
                           key_positions.data(), p0 + c, std::numeric_limits<int64_t>::max(),
                           nullptr, 0, d, scale, a.y.data() + row * q_width + h * d, q_width);
      }
    }
  });
}

void CpuBackend::Mlp(int64_t layer, Activations& a) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t rows = a.rows, hd = config_.hidden_size, inter = config_.intermediate_size;
  cpu::RmsNorm(a.x.data(), lw.post_norm.data(), rows, hd, config_.rms_norm_eps, a.u.data());
  std::vector<float> gate(rows * inter), up(rows * inter);
  Project(a.u.data(), rows, hd, lw.w_gate, {}, inter, gate.data(), false);
  Project(a.u.data(), rows, hd, lw.w_up, {}, inter, up.data(), false);
  cpu::SiluMul(gate.data(), up.data(), rows * inter, gate.data());
  Project(gate.data(), rows, inter, lw.w_down, {}, hd, a.x.data(), true);
}

absl::Status CpuBackend::Forward(const StepPlan& plan, StepOutput* out) {
  if (absl::Status s = ValidateStepPlan(plan, num_slots_, config_.vocab_size,
                                        [&](SlotId slot) { return SlotPosition(slot); });
      !s.ok()) {
    return s;
  }
  const int64_t hd = config_.hidden_size;
  const int64_t q_width = config_.num_heads * config_.head_dim;
  const int64_t kv_width = config_.num_kv_heads * config_.head_dim;

  // Rows: each chunk's tokens, in plan order. `all` has one segment per chunk; `single` and
  // `multi` split them by length for the Lizard layers' two forms.
  Activations a;
  a.rows = plan.num_tokens();
  std::vector<int32_t> tokens;
  std::vector<Segment> all, single, multi;
  for (const SequenceChunk& chunk : plan.chunks) {
    const int64_t n = static_cast<int64_t>(chunk.tokens.size());
    const Segment seg{chunk.slot, chunk.first_position, static_cast<int64_t>(tokens.size()), n};
    all.push_back(seg);
    (n == 1 ? single : multi).push_back(seg);
    tokens.insert(tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
    for (int64_t t = 0; t < n; ++t) a.positions.push_back(chunk.first_position + t);
  }

  a.x.resize(a.rows * hd);
  for (int64_t r = 0; r < a.rows; ++r) {
    std::memcpy(a.x.data() + r * hd, weights_.embed.data() + tokens[r] * hd, hd * sizeof(float));
  }
  a.u.resize(a.rows * hd);
  a.q.resize(a.rows * q_width);
  a.k.resize(a.rows * kv_width);
  a.v.resize(a.rows * kv_width);
  a.y.resize(a.rows * q_width);
  a.half_dim = config_.head_dim / 2;
  a.rope.resize(a.rows * 2 * a.half_dim);
  for (int64_t r = 0; r < a.rows; ++r) {
    cpu::RopeRotation(a.positions[r], inv_freq_, a.rope.data() + r * 2 * a.half_dim,
                      a.rope.data() + r * 2 * a.half_dim + a.half_dim);
  }
  // Key positions 0, 1, 2, ... for the softmax layers, built once per step.
  int64_t end_position = 0;
  for (const Segment& seg : all) {
    end_position = std::max(end_position, seg.first_position + seg.length);
  }
  std::vector<int64_t> key_positions(layout_.num_softmax_layers > 0 ? end_position : 0);
  std::iota(key_positions.begin(), key_positions.end(), 0);

  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    cpu::RmsNorm(a.x.data(), lw.input_norm.data(), a.rows, hd, config_.rms_norm_eps, a.u.data());
    Project(a.u.data(), a.rows, hd, lw.wq, lw.bq, q_width, a.q.data(), false);
    Project(a.u.data(), a.rows, hd, lw.wk, lw.bk, kv_width, a.k.data(), false);
    Project(a.u.data(), a.rows, hd, lw.wv, lw.bv, kv_width, a.v.data(), false);
    if (config_.layer_types[l] == LayerType::kLizard) {
      LizardAttention(l, single, multi, a);
    } else {
      SoftmaxAttention(l, all, key_positions, a);
    }
    Project(a.y.data(), a.rows, q_width, lw.wo, lw.bo, hd, a.x.data(), true);
    Mlp(l, a);
  }

  // Logits rows in StepPlan::num_logits_rows() order.
  std::vector<int64_t> logit_rows;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const Segment& seg = all[i];
    if (plan.chunks[i].logits == LogitsMode::kLast) logit_rows.push_back(seg.row + seg.length - 1);
    if (plan.chunks[i].logits == LogitsMode::kAll) {
      for (int64_t t = 0; t < seg.length; ++t) logit_rows.push_back(seg.row + t);
    }
  }
  const int64_t n = static_cast<int64_t>(logit_rows.size());
  std::vector<float> normed(n * hd);
  for (int64_t i = 0; i < n; ++i) {
    cpu::RmsNorm(a.x.data() + logit_rows[i] * hd, weights_.final_norm.data(), 1, hd,
                 config_.rms_norm_eps, normed.data() + i * hd);
  }
  out->Reset(n, config_.vocab_size);
  out->logits.resize(n * config_.vocab_size);
  Project(normed.data(), n, hd, weights_.lm_head, {}, config_.vocab_size, out->logits.data(), false);

  for (const Segment& seg : all) {
    WriteSlotPosition(layout_, SlotData(seg.slot), seg.first_position + seg.length);
  }
  if (!plan.sampling.empty()) {
    // A row costs a few passes over the vocabulary: split rows across threads only when there
    // is enough work per thread.
    const int64_t min_rows = std::max<int64_t>(1, (int64_t{1} << 18) / config_.vocab_size);
    SampleOnHost(plan, out, [&](int64_t rows, absl::FunctionRef<void(int64_t)> fn) {
      threads_.ParallelFor(rows, min_rows, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) fn(r);
      });
    });
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options) {
  if (options.num_slots <= 0) return absl::InvalidArgumentError("num_slots must be positive");
  ModelConfig config;
  absl::StatusOr<HostWeights> weights = LoadHostWeights(options.weights, &config);
  if (!weights.ok()) return weights.status();
  // Refuse a pool that cannot fit before allocating it (a huge --device-state-slots once ended
  // in std::bad_alloc).
  const int64_t pool_bytes =
      int64_t{options.num_slots} * StateLayout(config, DType::kF32, DType::kF32).slot_bytes;
  const int64_t memory_bytes = int64_t{sysconf(_SC_PHYS_PAGES)} * sysconf(_SC_PAGE_SIZE);
  if (memory_bytes > 0 && pool_bytes > memory_bytes / 2) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "a state pool of ", options.num_slots, " slots takes ", pool_bytes,
        " bytes, more than half of this machine's memory (", memory_bytes, " bytes)"));
  }
  const int threads = options.num_threads > 0
                          ? options.num_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::unique_ptr<Backend>(
      new CpuBackend(std::move(config), *std::move(weights), options.num_slots, threads));
}

}  // namespace lizard
