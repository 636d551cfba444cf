#include "engine/cpu/forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "engine/cpu/lizard_attention/chunked.h"
#include "engine/cpu/lizard_attention/recurrent.h"
#include "engine/cpu/ops.h"
#include "engine/model/rope.h"

namespace lizard::cpu {
namespace {

// Query rows per block of the softmax layers' attention (keeps the score matrix [64, keys]).
constexpr int64_t kQueryBlock = 64;

// Fewest floats of state or weights one range of a parallel loop should touch: below that,
// waking a pool thread costs more than the work it takes over.
constexpr int64_t kMinFloatsPerRange = 16 * 1024;

}  // namespace

// Rows of one sequence inside the step's token matrix.
struct ModelForward::Segment {
  SlotId slot;
  int64_t first_position;
  int64_t row;     // first row in the step's matrices
  int64_t length;  // consecutive tokens
  bool decode;     // the sampled token fed back (SequenceChunk::decode)
};

// The step's activations, rows = tokens of the step.
struct ModelForward::Activations {
  int64_t rows = 0;
  std::vector<int64_t> positions;  // per row
  std::vector<float> x;            // [rows, Hd] residual stream
  std::vector<float> u;            // [rows, Hd] normed input
  std::vector<float> q, k, v;      // [rows, H*D], [rows, Hkv*D] x2
  std::vector<float> y;            // [rows, H*D] attention output before Wo
  // RoPE rotation of each row's position (RopeRotation), D/2 cos then D/2 sin per row.
  int64_t half_dim = 0;
  std::vector<float> rope;
  const float* RopeCos(int64_t r) const { return rope.data() + r * 2 * half_dim; }
  const float* RopeSin(int64_t r) const { return RopeCos(r) + half_dim; }
};

ModelForward::ModelForward(const ModelConfig& config, const HostWeights& weights,
                           ThreadPool& threads, StatePool& states)
    : config_(config),
      weights_(weights),
      threads_(threads),
      states_(states),
      inv_freq_(RopeInverseFrequencies(config)) {}

void ModelForward::Project(const float* x, int64_t rows, int64_t in, const std::vector<float>& w,
                           const std::vector<float>& bias, int64_t out_dim, float* y,
                           bool accumulate) {
  if (rows == 0) return;
  // Each range of output columns reads its own rows of W.
  const int64_t min_columns = kMinFloatsPerRange / (rows * in) + 1;
  threads_.ParallelFor(out_dim, min_columns, [&](int64_t begin, int64_t end) {
    Gemm(false, true, rows, end - begin, in, 1.0f, x, in, w.data() + begin * in, in,
         accumulate ? 1.0f : 0.0f, y + begin, out_dim);
    if (bias.empty()) return;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = begin; j < end; ++j) y[r * out_dim + j] += bias[j];
    }
  });
}

void ModelForward::LizardAttention(int64_t layer, const std::vector<Segment>& segments,
                                   Activations& a) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t rows = a.rows, hd = config_.hidden_size;
  const int64_t h_count = config_.num_heads, kv_heads = config_.num_kv_heads;
  const int64_t d = config_.head_dim, f = config_.feature_dim, f2 = 2 * f;
  const int64_t group = config_.kv_group_size();
  const int64_t q_width = h_count * d, kv_width = kv_heads * d, fm_width = h_count * f2;

  // Gates and feature maps of every row (RoPE-free q and k).
  std::vector<float> gate_logit(rows * h_count);
  Project(a.u.data(), rows, hd, lw.gate_w, lw.gate_b, h_count, gate_logit.data(), false);
  std::vector<float> fq(rows * fm_width), fk(rows * fm_width);
  for (int64_t h = 0; h < h_count; ++h) {
    const int64_t g = h / group;
    FeatureMap(a.q.data() + h * d, q_width, rows, lw.fmap_q.data() + h * d * f,
               lw.fmap_q_bias.data() + h * f, d, f, fq.data() + h * f2, fm_width);
    FeatureMap(a.k.data() + g * d, kv_width, rows, lw.fmap_k.data() + h * d * f,
               lw.fmap_k_bias.data() + h * f, d, f, fk.data() + h * f2, fm_width);
  }
  // The window sees q and k after RoPE when window_rope.
  if (config_.window_rope) {
    for (int64_t r = 0; r < rows; ++r) {
      ApplyRope(a.q.data() + r * q_width, h_count, d, a.RopeCos(r), a.RopeSin(r));
      ApplyRope(a.k.data() + r * kv_width, kv_heads, d, a.RopeCos(r), a.RopeSin(r));
    }
  }

  // The op's arguments over every row of the step; each call takes one segment's rows.
  const LizardAttentionArgs rows_args{
      .length = rows,
      .num_heads = h_count,
      .num_kv_heads = kv_heads,
      .head_dim = d,
      .f2 = f2,
      .window = config_.window_size,
      .num_meta = config_.num_meta_tokens,
      .normalize = config_.gla_normalize,
      .fq = fq.data(),
      .fk = fk.data(),
      .feature_stride = fm_width,
      .gate_logit = gate_logit.data(),
      .gate_stride = h_count,
      .q = a.q.data(),
      .q_stride = q_width,
      .k = a.k.data(),
      .v = a.v.data(),
      .kv_stride = kv_width,
      .meta_logits = lw.meta_logits.data(),
      .window_factor = lw.window_factor.data(),
      .y_stride = q_width,
  };
  // The op on KV head g (and its query heads) of one segment's rows.
  auto run = [&](const Segment& seg, int64_t g, auto op) {
    // Rows of the step belong to different sequences: the segment's own first position.
    LizardAttentionArgs args = SubRows(rows_args, seg.row, seg.length);
    args.first_position = seg.first_position;
    args.kv_head_begin = g;
    args.kv_head_end = g + 1;
    LizardSlotState state = states_.Lizard(seg.slot, layer);
    op(args, state, a.y.data() + seg.row * q_width);
  };

  // Decodes in the recurrent form, prompt chunks (whatever their length) in the chunked form
  // (the invariance rule, engine/step_plan.h); every (segment, KV head) in parallel. A
  // recurrent item touches its heads' states and its ring rows.
  std::vector<Segment> decodes, prompts;
  for (const Segment& seg : segments) (seg.decode ? decodes : prompts).push_back(seg);
  const int64_t item_floats = group * f2 * d + 2 * config_.window_size * d;
  threads_.ParallelFor(static_cast<int64_t>(decodes.size()) * kv_heads,
                       kMinFloatsPerRange / item_floats + 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      run(decodes[i / kv_heads], i % kv_heads, LizardAttentionRecurrent);
    }
  });
  threads_.ParallelFor(static_cast<int64_t>(prompts.size()) * kv_heads, 1,
                       [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      run(prompts[i / kv_heads], i % kv_heads, LizardAttentionChunked);
    }
  });
}

void ModelForward::SoftmaxAttention(int64_t layer, const std::vector<Segment>& segments,
                                    const std::vector<int64_t>& key_positions, Activations& a) {
  const int64_t h_count = config_.num_heads, kv_heads = config_.num_kv_heads;
  const int64_t d = config_.head_dim, group = config_.kv_group_size();
  const int64_t q_width = h_count * d, kv_width = kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t r = 0; r < a.rows; ++r) {
    ApplyRope(a.q.data() + r * q_width, h_count, d, a.RopeCos(r), a.RopeSin(r));
    ApplyRope(a.k.data() + r * kv_width, kv_heads, d, a.RopeCos(r), a.RopeSin(r));
  }
  int64_t total_keys = 0;
  for (const Segment& seg : segments) {
    SoftmaxKv& cache = states_.Softmax(seg.slot, layer);
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
      const SoftmaxKv& cache = states_.Softmax(seg.slot, layer);
      for (int64_t start = 0; start < seg.length; start += kQueryBlock) {
        const int64_t c = std::min(kQueryBlock, seg.length - start);
        const int64_t row = seg.row + start, p0 = seg.first_position + start;
        SinkAttention(a.q.data() + row * q_width + h * d, q_width, c, p0, cache.k.data() + g * d,
                      kv_width, cache.v.data() + g * d, kv_width, key_positions.data(), p0 + c,
                      std::numeric_limits<int64_t>::max(), nullptr, 0, d, scale,
                      a.y.data() + row * q_width + h * d, q_width);
      }
    }
  });
}

void ModelForward::Mlp(int64_t layer, Activations& a) {
  const LayerWeights& lw = weights_.layers[layer];
  const int64_t rows = a.rows, hd = config_.hidden_size, inter = config_.intermediate_size;
  RmsNorm(a.x.data(), lw.post_norm.data(), rows, hd, config_.rms_norm_eps, a.u.data());
  std::vector<float> gate(rows * inter), up(rows * inter);
  Project(a.u.data(), rows, hd, lw.w_gate, {}, inter, gate.data(), false);
  Project(a.u.data(), rows, hd, lw.w_up, {}, inter, up.data(), false);
  SiluMul(gate.data(), up.data(), rows * inter, gate.data());
  Project(gate.data(), rows, inter, lw.w_down, {}, hd, a.x.data(), true);
}

void ModelForward::Run(const StepPlan& plan, StepOutput* out) {
  const int64_t hd = config_.hidden_size;
  const int64_t q_width = config_.num_heads * config_.head_dim;
  const int64_t kv_width = config_.num_kv_heads * config_.head_dim;

  // Rows: each chunk's tokens, in plan order, one segment per chunk.
  Activations a;
  a.rows = plan.num_tokens();
  std::vector<int32_t> tokens;
  std::vector<Segment> segments;
  for (const SequenceChunk& chunk : plan.chunks) {
    const int64_t n = static_cast<int64_t>(chunk.tokens.size());
    segments.push_back(
        {chunk.slot, chunk.first_position, static_cast<int64_t>(tokens.size()), n, chunk.decode});
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
    RopeRotation(a.positions[r], inv_freq_, a.rope.data() + r * 2 * a.half_dim,
                 a.rope.data() + r * 2 * a.half_dim + a.half_dim);
  }
  // Key positions 0, 1, 2, ... for the softmax layers, built once per step.
  int64_t end_position = 0;
  for (const Segment& seg : segments) {
    end_position = std::max(end_position, seg.first_position + seg.length);
  }
  std::vector<int64_t> key_positions(states_.layout().num_softmax_layers > 0 ? end_position : 0);
  std::iota(key_positions.begin(), key_positions.end(), 0);

  for (int64_t l = 0; l < config_.num_layers; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    RmsNorm(a.x.data(), lw.input_norm.data(), a.rows, hd, config_.rms_norm_eps, a.u.data());
    Project(a.u.data(), a.rows, hd, lw.wq, lw.bq, q_width, a.q.data(), false);
    Project(a.u.data(), a.rows, hd, lw.wk, lw.bk, kv_width, a.k.data(), false);
    Project(a.u.data(), a.rows, hd, lw.wv, lw.bv, kv_width, a.v.data(), false);
    if (config_.layer_types[l] == LayerType::kLizard) {
      LizardAttention(l, segments, a);
    } else {
      SoftmaxAttention(l, segments, key_positions, a);
    }
    Project(a.y.data(), a.rows, q_width, lw.wo, lw.bo, hd, a.x.data(), true);
    Mlp(l, a);
  }

  // Logits rows in StepPlan::num_logits_rows() order.
  std::vector<int64_t> logit_rows;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const Segment& seg = segments[i];
    if (plan.chunks[i].logits == LogitsMode::kLast) logit_rows.push_back(seg.row + seg.length - 1);
    if (plan.chunks[i].logits == LogitsMode::kAll) {
      for (int64_t t = 0; t < seg.length; ++t) logit_rows.push_back(seg.row + t);
    }
  }
  const int64_t n = static_cast<int64_t>(logit_rows.size());
  std::vector<float> normed(n * hd);
  for (int64_t i = 0; i < n; ++i) {
    RmsNorm(a.x.data() + logit_rows[i] * hd, weights_.final_norm.data(), 1, hd,
            config_.rms_norm_eps, normed.data() + i * hd);
  }
  out->Reset(n, config_.vocab_size);
  out->logits.resize(n * config_.vocab_size);
  Project(normed.data(), n, hd, weights_.lm_head, {}, config_.vocab_size, out->logits.data(), false);

  for (const Segment& seg : segments) states_.SetPosition(seg.slot, seg.first_position + seg.length);
}

}  // namespace lizard::cpu
