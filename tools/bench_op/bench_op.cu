// lizard-bench-op: the Lizard attention prefill op alone, at the shape of issue #12 (B sequences
// of T tokens, H query heads, Hkv kv heads, D = 128, 2F = 128 and 256): the prefill path the
// backend runs for prompt rows — the feature maps (logits included) and the chunked gated linear
// attention with its normaliser over the state pool (kernels/lizard_attention/chunked_prefill.h),
// and the tensor-core window attention with meta-memory sinks (kernels/lizard_attention/
// window_prefill.h) — each timed alone, and their sum; beside them the token-parallel window
// kernel of the decode path (LizardWindow in kernels/kernels.h), which prompts used before. Then
// the feature maps and the chunked GLA once more for one sequence of T tokens (B = 1: the launch
// with the fewest blocks, which the chunked kernel splits over more blocks per (sequence, head)),
// and for 2 and 4; each chunked GLA row is followed by the one-pass and two-pass forms forced.
//
// Times: cudaEvent pairs around each call, 3 warm-up calls, median (and min) of --iters calls.
// Rates: the fewest bytes each kernel must move (inputs read once, outputs written once) and the
// chunked kernel's matrix FLOPs per chunk of C tokens (2C^2 2F + 2C^2 D + 2C 2F D + 2C 2F D),
// over the median time. Inputs are random (never zeros) and far larger than L2.
//
// Usage: lizard-bench-op [--batch 16] [--seq 2048] [--heads 32] [--kv-heads 8] [--iters 20]
//                        [--f2 128,256]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/lizard_attention/chunked_prefill.h"
#include "kernels/lizard_attention/window_prefill.h"

namespace {

namespace k = lizard::kernels;
using bf16 = __nv_bfloat16;

void Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::fprintf(stderr, "lizard-bench-op: %s: %s\n", what, cudaGetErrorString(err));
  std::exit(1);
}

template <typename T>
T* Alloc(int64_t n) {
  T* p = nullptr;
  Check(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)), "cudaMalloc");
  return p;
}

template <typename T>
T* Upload(const std::vector<T>& host) {
  T* p = Alloc<T>(static_cast<int64_t>(host.size()));
  Check(cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return p;
}

struct Timing {
  double median_ms, min_ms;
};

// Each call between its own pair of events; `launch` returns the launch's error.
Timing Time(const std::function<cudaError_t()>& launch, int iters) {
  cudaEvent_t a, b;
  Check(cudaEventCreate(&a), "event");
  Check(cudaEventCreate(&b), "event");
  for (int i = 0; i < 3; ++i) Check(launch(), "warm-up launch");
  Check(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> ms;
  for (int i = 0; i < iters; ++i) {
    Check(cudaEventRecord(a), "record");
    Check(launch(), "launch");
    Check(cudaEventRecord(b), "record");
    Check(cudaEventSynchronize(b), "sync");
    float t = 0.f;
    Check(cudaEventElapsedTime(&t, a, b), "elapsed");
    ms.push_back(t);
  }
  Check(cudaEventDestroy(a), "event");
  Check(cudaEventDestroy(b), "event");
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front()};
}

struct Shape {
  int batch = 16, seq = 2048, heads = 32, kv_heads = 8, head_dim = 128, iters = 20;
  int window = 128, meta = 4;
  std::vector<int> f2s = {128, 256};
};

std::vector<int> ParseList(const char* s) {
  std::vector<int> out;
  for (const char* p = s; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

Shape ParseArgs(int argc, char** argv) {
  Shape s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--batch") s.batch = value;
    else if (flag == "--seq") s.seq = value;
    else if (flag == "--heads") s.heads = value;
    else if (flag == "--kv-heads") s.kv_heads = value;
    else if (flag == "--iters") s.iters = value;
    else if (flag == "--f2") s.f2s = ParseList(argv[i + 1]);
    else {
      std::fprintf(stderr, "lizard-bench-op: unknown flag %s\n", argv[i]);
      std::exit(2);
    }
  }
  return s;
}

// The prefill path at one 2F: the feature maps of the prompt rows from their q and k
// (LizardPrefillFeatureMaps: the logits x W on the tensor cores, 3xTF32, and the softmaxes), the
// chunked GLA + normaliser over the state pool (fp32 state; bf16 state once more, alone), and
// both back to back. Prints their rows; returns the median ms of both together.
double BenchChunked(const Shape& s, int f2) {
  const int F = f2 / 2;
  const int64_t T = static_cast<int64_t>(s.batch) * s.seq, H = s.heads, Hkv = s.kv_heads, D = s.head_dim;
  const int ld = static_cast<int>(H * D + 2 * Hkv * D + H);
  k::LizardDims dims;
  dims.heads = s.heads, dims.kv_heads = s.kv_heads, dims.head_dim = s.head_dim, dims.features = F;
  std::vector<int32_t> slot(s.batch), first_row(s.batch), num_tokens(s.batch, s.seq), first_pos(s.batch, 0);
  for (int n = 0; n < s.batch; ++n) slot[n] = n, first_row[n] = n * s.seq;
  const k::SeqMeta seqs{Upload(slot), Upload(first_row), Upload(num_tokens), Upload(first_pos)};
  float* fmap_q = Alloc<float>(H * D * F);
  float* fmap_k = Alloc<float>(H * D * F);
  bf16* fq = Alloc<bf16>(T * H * f2);
  bf16* fk = Alloc<bf16>(T * H * f2);
  float* qkvg = Alloc<float>(T * ld);
  float* y_add = Alloc<float>(T * H * D);
  bf16* y = Alloc<bf16>(T * H * D);
  // Slot pool: S [H, 2F, D] then z [H, 2F] per slot, room for fp32.
  k::LizardStateRef state;
  state.s_offset = 0;
  state.z_offset = H * f2 * D * 4;
  state.slot_bytes = state.z_offset + H * f2 * 4;
  state.pool = Alloc<char>(s.batch * state.slot_bytes);
  // q, k, v and the window part uniform; maps giving logits of a few units; gates mostly near
  // 1, some strong; a small initial state.
  Check(k::RandomFillF32(fmap_q, H * D * F, 1, 0.3f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(fmap_k, H * D * F, 2, 0.3f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(qkvg, T * ld, 3, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(y_add, T * H * D, 5, 0.5f, 0.f, nullptr), "fill");
  float* gates = Alloc<float>(T * H);
  Check(k::RandomFillF32(gates, T * H, 4, 4.f, 2.f, nullptr), "fill");
  Check(cudaMemcpy2D(qkvg + (H + 2 * Hkv) * D, ld * sizeof(float), gates, H * sizeof(float), H * sizeof(float), T,
                     cudaMemcpyDeviceToDevice), "gates");
  Check(k::RandomFillF32(reinterpret_cast<float*>(state.pool), s.batch * state.slot_bytes / 4, 6, 0.05f, 0.f,
                         nullptr), "fill");
  k::PrefillFeatureMapsArgs map_args;
  map_args.dims = dims, map_args.qkvg = qkvg, map_args.ld = ld, map_args.rows = static_cast<int>(T);
  map_args.fmap_q = fmap_q, map_args.fmap_k = fmap_k, map_args.fq = fq, map_args.fk = fk;
  k::ChunkedPrefillArgs args;
  args.dims = dims, args.fq = fq, args.fk = fk, args.qkvg = qkvg, args.ld = ld;
  args.seqs = seqs, args.num_seqs = s.batch, args.state = state, args.y_add = y_add, args.y = y;
  // Two-pass scratch for the whole launch (the form the kernel picks for few sequences).
  args.scratch_chunks = k::TwoPassChunks(static_cast<int>(T), s.batch);
  args.scratch = Alloc<char>(k::TwoPassScratchBytes(dims, args.scratch_chunks));
  args.total_tokens = static_cast<int>(T);
  auto maps = [&] { return k::LizardPrefillFeatureMaps(map_args, nullptr); };
  auto gla = [&] { return k::LizardChunkedPrefill(args, nullptr); };
  Check(maps(), "feature maps");

  const Timing tm = Time(maps, s.iters);
  // Bytes: q and k read, the maps read, fq and fk written; FLOPs: the 2H maps' logits, 3 products each.
  const double map_bytes = 4.0 * T * (H + Hkv) * D + 4.0 * 2 * H * D * F + 2.0 * T * 2 * H * f2;
  const double map_flops = 3.0 * 2 * T * 2 * H * D * F;
  std::printf("feature maps (+ logits)   2F=%-3d B=%-2d  median %.3f ms  min %.3f ms  %.2f TB/s  %.1f TFLOP/s (3xTF32)\n",
              f2, s.batch, tm.median_ms, tm.min_ms, map_bytes / tm.median_ms / 1e9, map_flops / tm.median_ms / 1e9);
  const Timing tg = Time(gla, s.iters);
  const double bytes = 2.0 * T * H * f2 * 2 + T * Hkv * D * 4 + T * H * 4 + T * H * D * (4 + 2) +
                       2.0 * s.batch * H * (f2 * D + f2) * 4;
  const double C = k::kGlaChunk;
  const double flops = static_cast<double>(T) * H * (2 * C * f2 + 2 * C * D + 4.0 * f2 * D);
  std::printf("chunked GLA + normaliser  2F=%-3d B=%-2d  median %.3f ms  min %.3f ms  %.2f TB/s  %.1f TFLOP/s\n",
              f2, s.batch, tg.median_ms, tg.min_ms, bytes / tg.median_ms / 1e9, flops / tg.median_ms / 1e9);
  // Each form forced (the line above: the kernel's choice).
  Timing forms[2];
  for (k::ChunkedForm form : {k::ChunkedForm::kOnePass, k::ChunkedForm::kTwoPass}) {
    args.form = form;
    forms[form == k::ChunkedForm::kTwoPass] = Time(gla, s.iters);
  }
  args.form = k::ChunkedForm::kAuto;
  std::printf("  (one-pass | two-pass)   2F=%-3d B=%-2d  median %.3f | %.3f ms  min %.3f | %.3f ms\n", f2, s.batch,
              forms[0].median_ms, forms[1].median_ms, forms[0].min_ms, forms[1].min_ms);
  Check(cudaMemset(state.pool, 0, s.batch * state.slot_bytes), "memset");  // valid bf16 (zeros)
  args.state.state_type = k::StoreType::kBF16;
  const Timing tb = Time(gla, s.iters);
  std::printf("  (bf16 state)            2F=%-3d B=%-2d  median %.3f ms  min %.3f ms\n", f2, s.batch, tb.median_ms,
              tb.min_ms);
  args.state.state_type = k::StoreType::kF32;
  const Timing both = Time([&] {
    const cudaError_t e = maps();
    return e != cudaSuccess ? e : gla();
  }, s.iters);
  std::printf("maps + chunked GLA        2F=%-3d B=%-2d  median %.3f ms  min %.3f ms\n", f2, s.batch, both.median_ms,
              both.min_ms);
  for (const void* p : std::initializer_list<const void*>{seqs.slot, seqs.first_row, seqs.num_tokens, seqs.first_pos,
                                                          fmap_q, fmap_k, fq, fk, qkvg, gates, y_add, y, state.pool,
                                                          args.scratch}) {
    cudaFree(const_cast<void*>(p));
  }
  return both.median_ms;
}

// The existing window kernel over the same tokens (a fresh prompt per sequence: every window
// key comes from this call's rows); returns the median ms and prints its row.
double BenchWindow(const Shape& s, int f2) {
  const int F = f2 / 2;
  const int64_t T = static_cast<int64_t>(s.batch) * s.seq, H = s.heads, Hkv = s.kv_heads, D = s.head_dim;
  const k::LizardDims dims{s.heads, s.kv_heads, s.head_dim, F, s.window, s.meta, true, true};
  const int ld = static_cast<int>(H * D + 2 * Hkv * D + H), krot_ld = static_cast<int>(Hkv * D);

  std::vector<int32_t> slot(T), position(T), first_row(T), first_pos(T, 0), single(T, 0);
  for (int64_t r = 0; r < T; ++r) {
    slot[r] = static_cast<int32_t>(r / s.seq);
    position[r] = static_cast<int32_t>(r % s.seq);
    first_row[r] = static_cast<int32_t>(r / s.seq * s.seq);
  }
  std::vector<double> inv_freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(500000.0, -2.0 * i / D);
  k::TokenMeta tokens{Upload(slot), Upload(position), Upload(first_row), Upload(first_pos), Upload(single)};

  float* qkvg = Alloc<float>(T * ld);
  float* krot = Alloc<float>(T * krot_ld);
  float* logits = Alloc<float>(T * 2 * H * F);
  float* meta = Alloc<float>(H * s.meta);
  float* factor = Alloc<float>(H);
  Check(k::RandomFillF32(qkvg, T * ld, 7, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(krot, T * krot_ld, 8, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(logits, T * 2 * H * F, 9, 2.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(meta, H * s.meta, 10, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(factor, H, 11, 0.5f, 0.5f, nullptr), "fill");
  const k::LizardParams params{logits, nullptr, nullptr, meta, factor};

  // Slot pool: z, then the K and V rings (not read: every window key is in this call).
  k::LizardStateRef state;
  state.z_offset = 0;
  state.k_offset = H * f2 * 4;
  state.v_offset = state.k_offset + Hkv * s.window * D * 2;
  state.slot_bytes = state.v_offset + Hkv * s.window * D * 2;
  state.pool = Alloc<char>(s.batch * state.slot_bytes);
  Check(cudaMemset(state.pool, 0, s.batch * state.slot_bytes), "memset");
  const k::LizardScratch scratch{Alloc<float>(T * H * f2), Alloc<float>(T * H * f2), Alloc<float>(T * H),
                                 Alloc<float>(T * H), Alloc<float>(T * H * D)};
  double* d_inv_freq = Upload(inv_freq);

  const Timing t = Time([&] {
    return k::LizardWindow(dims, qkvg, ld, krot, krot_ld, d_inv_freq, tokens, 0, static_cast<int>(T), params,
                           state, scratch, nullptr);
  }, s.iters);
  const double bytes = 4.0 * T * (ld + krot_ld + 2 * H * F + 2 * H * f2 + 2 * H + H * D);
  std::printf("window + sinks (+ maps)   2F=%-3d  median %.3f ms  min %.3f ms  %.2f TB/s\n", f2,
              t.median_ms, t.min_ms, bytes / t.median_ms / 1e9);
  for (const void* p : std::initializer_list<const void*>{
           tokens.slot, tokens.position, tokens.first_row, tokens.first_pos, tokens.single, qkvg, krot,
           logits, meta, factor, state.pool, scratch.fq, scratch.fk, scratch.gamma, scratch.den,
           scratch.y, d_inv_freq}) {
    cudaFree(const_cast<void*>(p));
  }
  return t.median_ms;
}

// LizardWindowPrefill over the same tokens (fresh prompts: the rings are not read), q and v inside
// qkvg rows as in the backend; returns the median ms and prints its row. Bytes: q, k, v read once
// and y written once (fp32); FLOPs: 4 D per (token, head, window key).
double BenchWindowPrefill(const Shape& s) {
  const int64_t T = static_cast<int64_t>(s.batch) * s.seq, H = s.heads, Hkv = s.kv_heads, D = s.head_dim;
  const int ld = static_cast<int>(H * D + 2 * Hkv * D + H), k_ld = static_cast<int>(Hkv * D);
  std::vector<int32_t> slot(s.batch), first_row(s.batch), num_tokens(s.batch, s.seq), first_pos(s.batch, 0);
  for (int n = 0; n < s.batch; ++n) slot[n] = n, first_row[n] = n * s.seq;
  std::vector<double> inv_freq(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) inv_freq[i] = std::pow(500000.0, -2.0 * i / D);
  float* qkvg = Alloc<float>(T * ld);
  float* krot = Alloc<float>(T * k_ld);
  float* y = Alloc<float>(T * H * D);
  float* meta = Alloc<float>(H * s.meta);
  float* factor = Alloc<float>(H);
  Check(k::RandomFillF32(qkvg, T * ld, 12, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(krot, T * k_ld, 13, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(meta, H * s.meta, 14, 1.f, 0.f, nullptr), "fill");
  Check(k::RandomFillF32(factor, H, 15, 0.5f, 0.5f, nullptr), "fill");
  double* d_inv_freq = Upload(inv_freq);
  int32_t *d_slot = Upload(slot), *d_row = Upload(first_row), *d_num = Upload(num_tokens), *d_pos = Upload(first_pos);

  k::WindowPrefillArgs args;
  args.dims = k::LizardDims{s.heads, s.kv_heads, s.head_dim, 64, s.window, s.meta, true, true};
  args.q = qkvg, args.q_ld = ld;
  args.k = krot, args.k_ld = k_ld;
  args.v = qkvg + (H + Hkv) * D, args.v_ld = ld;
  args.inv_freq = d_inv_freq;
  args.seqs = k::SeqMeta{d_slot, d_row, d_num, d_pos};
  args.num_seqs = s.batch;
  args.max_tiles = k::WindowPrefillTiles(0, s.seq);
  args.meta_logits = meta, args.window_factor = factor;
  args.state.pool = nullptr;  // not read: every window key is in this call
  args.y = y;
  const Timing t = Time([&] { return k::LizardWindowPrefill(args, nullptr); }, s.iters);

  const double bytes = 4.0 * T * (2 * H * D + 2 * Hkv * D);
  double keys = 0;  // window keys over all queries of one sequence
  for (int p = 0; p < s.seq; ++p) keys += std::min(p + 1, s.window);
  const double flops = 4.0 * D * H * s.batch * keys;
  std::printf("window prefill (tensor cores, w=%d)  median %.3f ms  min %.3f ms  %.0f GB/s  %.1f TFLOP/s\n",
              s.window, t.median_ms, t.min_ms, bytes / t.median_ms / 1e6, flops / t.median_ms / 1e9);
  for (void* p : std::initializer_list<void*>{qkvg, krot, y, meta, factor, d_inv_freq, d_slot, d_row, d_num, d_pos}) {
    cudaFree(p);
  }
  return t.median_ms;
}

}  // namespace

int main(int argc, char** argv) {
  const Shape s = ParseArgs(argc, argv);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  Check(cudaGetDeviceProperties(&prop, 0), "device properties");
  std::printf("%s, %d SMs; B=%d T=%d H=%d Hkv=%d D=%d, chunk %d, window %d, %d sinks, %d calls\n", prop.name,
              prop.multiProcessorCount, s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, k::kGlaChunk,
              s.window, s.meta, s.iters);
  std::vector<std::string> rows;
  const double win_prefill = BenchWindowPrefill(s);
  for (int f2 : s.f2s) {
    const double gla = BenchChunked(s, f2);
    const double win = BenchWindow(s, f2);
    char row[200];
    std::snprintf(row, sizeof(row), "| %d | %.3f | %.3f | **%.3f** | %.3f |", f2, gla, win_prefill,
                  gla + win_prefill, win);
    rows.push_back(row);
  }
  std::printf("\n| 2F | feature maps + chunked GLA + normaliser (ms) | window + sinks, tensor cores (ms) | "
              "op total (ms) | decode-path window kernel (ms) |\n|---|---|---|---|---|\n");
  for (const std::string& r : rows) std::printf("%s\n", r.c_str());
  Shape one = s;
  one.batch = 1;
  std::printf("\none sequence of %d tokens:\n", s.seq);
  for (int f2 : s.f2s) BenchChunked(one, f2);
  for (int batch : {2, 4}) {  // where the two forms cross
    one.batch = batch;
    std::printf("\n%d sequences of %d tokens:\n", batch, s.seq);
    for (int f2 : s.f2s) BenchChunked(one, f2);
  }
  return 0;
}
