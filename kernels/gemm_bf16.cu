// Batch-invariant bf16 GEMM: y[r, :] = x[r, :] w^T with bf16 inputs and fp32 accumulation on the
// tensor cores (mma.sync m16n8k16, sm_80 and later).
//
// Why batch invariant: each output y[r, o] is built by one fixed sequence of operations that
// depends on (in, out) only:
//   - `in` is cut into chunks of 64 and the chunks into S splits of `cps` chunks (GemmSplits);
//   - per split, an fp32 accumulator starts at zero and takes one m16n8k16 MMA per 16 values of
//     k, in increasing k (the tail past `in` is zero-filled the same way every time);
//   - the split partials are added left to right, p0 + p1 + ... + p(S-1).
// An MMA computes each output element from its own row of A and column of B, so the other rows
// of the tile (other sequences, zero padding) never change it. Every launch configuration below
// runs this same sequence: they differ only in how many rows a block holds and in who adds the
// split partials (the block itself, adding each into y in split order, or one block per split
// writing to the workspace and GemmReduceKernel adding them, or the output's consumer adding them
// (GemmBf16Partials) with the same LoadGemmOutput), so the choice may depend on `rows` without
// changing a bit.
//
// Orientation: W is the MMA's A operand (16 outputs per MMA) and x its B operand (8 rows per
// MMA), so a decode step of one row wastes 7/8 of the MMA, not 15/16, and both operands are
// K-contiguous in memory (ldmatrix without transpose).
#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/kernels.h"

namespace lizard::kernels {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kBlockOut = 128;  // outputs per block (all configurations)
constexpr int kChunk = 64;      // k values per pipeline stage (one 128-byte smem row)
// Splits are sized so that a one-row GEMM has about one block per SM of an H100 (132 SMs):
// measured there, this streams w as fast as two blocks per SM at 1..64 rows (a little faster
// for most shapes) with half the partial sums; at least 4 chunks (256 values of k) per split.
constexpr int kTargetBlocks = 132;
constexpr int kMinChunksPerSplit = 4;
// Rows per pass when splits go through the workspace (bounds GemmBf16WorkspaceBytes).
constexpr int kSplitRows = 256;

struct Splits {
  int nk;   // chunks of 64 along `in`
  int cps;  // chunks per split
  int s;    // number of splits
};

Splits GemmSplits(int in, int out) {
  Splits sp;
  sp.nk = CeilDiv(in, kChunk);
  const int tiles = CeilDiv(out, kBlockOut);
  int s = std::max(1, kTargetBlocks / tiles);
  s = std::min(s, std::max(1, sp.nk / kMinChunksPerSplit));
  sp.cps = CeilDiv(sp.nk, s);
  sp.s = CeilDiv(sp.nk, sp.cps);
  return sp;
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; src_bytes 0 writes zeros without reading.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

__device__ __forceinline__ void Mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Offset (in bf16) of the 16-byte piece `c` (0..7) of smem row `r`: XOR-swizzled so that the
// eight rows one ldmatrix reads fall in different banks.
__device__ __forceinline__ int Swz(int r, int c) { return r * kChunk + ((c ^ (r & 7)) << 3); }

// Who adds the split partials of a tile.
enum Mode {
  kPartial,     // one block per split (blockIdx.z) writes its partial to dst + z * rows * out
                // (the workspace, or y itself when there is one split)
  kAccumulate,  // one block walks all splits; at the end of each it stores its partial into
                // dst = y (split 0) or adds it to what the same thread stored there (later ones)
};

// One block computes kBlockOut outputs x BR rows. Warps: WO along outputs (WM 16-output tiles
// each), WR along rows (WN 8-row tiles each); MINB blocks per SM. blockIdx: x = row tile,
// y = output tile, z = split (kPartial).
template <int THREADS, int WO, int WR, int WM, int WN, int STAGES, int MINB, Mode MODE>
__global__ void __launch_bounds__(THREADS, MINB) GemmKernel(const bf16* __restrict__ x, int rows, int in,
                                                            const bf16* __restrict__ w, int out,
                                                            float* __restrict__ dst, int nk, int cps) {
  static_assert(WO * WR * 32 == THREADS && WO * WM * 16 == kBlockOut && WN % 2 == 0, "tile shape");
  constexpr int kThreads = THREADS;
  constexpr int BR = WR * WN * 8;
  constexpr int kStageW = kBlockOut * kChunk, kStageX = BR * kChunk;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* smem_w = reinterpret_cast<bf16*>(smem_raw);
  bf16* smem_x = smem_w + STAGES * kStageW;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wo = warp % WO, wr = warp / WO;
  const int r0 = blockIdx.x * BR, o0 = blockIdx.y * kBlockOut;
  constexpr bool ACC = MODE == kAccumulate;
  const int kc_begin = ACC ? 0 : blockIdx.z * cps;
  const int kc_end = ACC ? nk : min(nk, kc_begin + cps);
  const int g = lane >> 2, t = lane & 3;
  float* base = dst + (MODE == kPartial ? static_cast<int64_t>(blockIdx.z) * rows * out : 0);
  // Fragment element e of tile (i, j): output g (+8 for e >= 2), row 2t (+1 for odd e).
  auto at = [&](int i, int j, int e) -> float* {
    const int o = o0 + wo * WM * 16 + i * 16 + g + (e >> 1) * 8;
    const int row = r0 + wr * WN * 8 + j * 8 + 2 * t + (e & 1);
    return o < out && row < rows ? base + static_cast<int64_t>(row) * out + o : nullptr;
  };
  // first: store (split 0 or no accumulation), else add to this thread's earlier store. The
  // earlier values of one i are all loaded before they are stored, so that their latencies overlap.
  auto store = [&](const float(&acc)[WM][WN][4], bool first) {
#pragma unroll
    for (int i = 0; i < WM; ++i) {
      float old[WN][4];
#pragma unroll
      for (int j = 0; j < WN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float* p = at(i, j, e);
          old[j][e] = !first && p != nullptr ? *p : 0.f;
        }
#pragma unroll
      for (int j = 0; j < WN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float* p = at(i, j, e);
          if (p != nullptr) *p = first ? acc[i][j][e] : old[j][e] + acc[i][j][e];
        }
    }
  };

  auto load_w = [&](int kc, int stage) {
    const int k0 = kc * kChunk;
    bf16* sw = smem_w + stage * kStageW;
#pragma unroll
    for (int i = 0; i < kBlockOut * 8 / kThreads; ++i) {
      const int idx = tid + i * kThreads, r = idx >> 3, c = idx & 7;
      const int o = o0 + r, k = k0 + c * 8;
      const bool ok = o < out && k < in;
      CpAsync16(SmemAddr(sw + Swz(r, c)), ok ? w + static_cast<int64_t>(o) * in + k : w, ok ? 16 : 0);
    }
  };
  auto load_x = [&](int kc, int stage) {
    const int k0 = kc * kChunk;
    bf16* sx = smem_x + stage * kStageX;
#pragma unroll
    for (int i = 0; i < (BR * 8 + kThreads - 1) / kThreads; ++i) {
      const int idx = tid + i * kThreads;
      if (BR * 8 % kThreads == 0 || idx < BR * 8) {
        const int r = idx >> 3, c = idx & 7;
        const int row = r0 + r, k = k0 + c * 8;
        const bool ok = row < rows && k < in;
        CpAsync16(SmemAddr(sx + Swz(r, c)), ok ? x + static_cast<int64_t>(row) * in + k : x, ok ? 16 : 0);
      }
    }
  };

  float acc[WM][WN][4];
  auto zero_acc = [&] {
#pragma unroll
    for (int i = 0; i < WM; ++i)
#pragma unroll
      for (int j = 0; j < WN; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
  };
  zero_acc();

  // The weights do not depend on earlier kernels: the first stages' copies start before the
  // wait (they join the first commit group, so chunk kc_begin's wait covers them).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (kc_begin + s < kc_end) load_w(kc_begin + s, s);
  }
  WaitForPrevious();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (kc_begin + s < kc_end) load_x(kc_begin + s, s);
    CpAsyncCommit();
  }

  for (int kc = kc_begin; kc < kc_end; ++kc) {
    CpAsyncWait<STAGES - 2>();
    __syncthreads();  // chunk kc has landed for all threads; the stage refilled below is free
    {
      const int next = kc + STAGES - 1;
      if (next < kc_end) {
        load_w(next, (next - kc_begin) % STAGES);
        load_x(next, (next - kc_begin) % STAGES);
      }
      CpAsyncCommit();
    }
    const int stage = (kc - kc_begin) % STAGES;
    const bf16* sw = smem_w + stage * kStageW;
    const bf16* sx = smem_x + stage * kStageX;
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      uint32_t a[WM][4], b[WN][2];
#pragma unroll
      for (int i = 0; i < WM; ++i) {
        // Matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
        const int r = wo * WM * 16 + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        LdMatrixX4(SmemAddr(sw + Swz(r, kk * 2 + (lane >> 4))), a[i][0], a[i][1], a[i][2], a[i][3]);
      }
#pragma unroll
      for (int j = 0; j < WN; j += 2) {
        // Matrices: (rows 0-7, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 0-7), (rows 8-15, k 8-15).
        const int r = wr * WN * 8 + j * 8 + (lane & 7) + (lane >> 4) * 8;
        LdMatrixX4(SmemAddr(sx + Swz(r, kk * 2 + ((lane >> 3) & 1))), b[j][0], b[j][1], b[j + 1][0], b[j + 1][1]);
      }
#pragma unroll
      for (int i = 0; i < WM; ++i)
#pragma unroll
        for (int j = 0; j < WN; ++j) Mma(acc[i][j], a[i], b[j][0], b[j][1]);
    }
    if constexpr (ACC) {
      if ((kc + 1) % cps == 0 || kc + 1 == nk) {
        // End of a split: fold its partial into y in split order (p0, then + p1, ...).
        store(acc, kc < cps);
        zero_acc();
      }
    }
  }
  CpAsyncWait<0>();
  LetNextStart();
  if constexpr (MODE == kPartial) store(acc, true);
}

// y[i] = the n = rows * out values of `partials`, split partials added left to right, then the
// bias (if any) of column i % out.
__global__ void GemmReduceKernel(GemmOutput partials, int64_t n, int out, float* __restrict__ y) {
  WaitForPrevious();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v[1];
    LoadGemmOutput<1>(partials, i, static_cast<int>(i % out), v);
    y[i] = v[0];
  }
}

template <int THREADS, int WO, int WR, int WM, int WN, int STAGES, int MINB, Mode MODE>
cudaError_t Launch(const bf16* x, int rows, int in, const bf16* w, int out, float* dst, const Splits& sp,
                   cudaStream_t stream) {
  constexpr int BR = WR * WN * 8;
  constexpr int kSmem = STAGES * (kBlockOut + BR) * kChunk * static_cast<int>(sizeof(bf16));
  auto kernel = GemmKernel<THREADS, WO, WR, WM, WN, STAGES, MINB, MODE>;
  // Opt in to more than 48 KB of shared memory (per device, so on every launch; a host-side call).
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (attr != cudaSuccess) return attr;
  const dim3 grid(CeilDiv(rows, BR), CeilDiv(out, kBlockOut), MODE == kAccumulate ? 1 : sp.s);
  return LaunchDependent(kernel, grid, THREADS, kSmem, stream, x, rows, in, w, out, dst, sp.nk, sp.cps);
}

// The block shapes (measured on an H100). All shapes and modes give the same bits (see the top
// of the file), so the choice may follow `rows`.
cudaError_t LaunchPartial(const bf16* x, int rows, int in, const bf16* w, int out, float* dst, const Splits& sp,
                          cudaStream_t stream) {
  // 16 rows: 8 warps of 16 outputs, 6 stages (decode streams w; two blocks per SM).
  if (rows <= 16) return Launch<256, 8, 1, 1, 2, 6, 2, kPartial>(x, rows, in, w, out, dst, sp, stream);
  // 64 rows: 8 warps of 32 x 32.
  if (rows <= 64) return Launch<256, 4, 2, 2, 4, 4, 2, kPartial>(x, rows, in, w, out, dst, sp, stream);
  // 128 rows: 4 warps of 64 x 64, two blocks per SM.
  return Launch<128, 2, 2, 4, 8, 3, 2, kPartial>(x, rows, in, w, out, dst, sp, stream);
}

// 128 rows: 8 warps of 64 x 32 (the 64 x 64 warps run out of registers with the adds into y).
cudaError_t LaunchAccumulate(const bf16* x, int rows, int in, const bf16* w, int out, float* y, const Splits& sp,
                             cudaStream_t stream) {
  return Launch<256, 2, 4, 4, 4, 4, 1, kAccumulate>(x, rows, in, w, out, y, sp, stream);
}

}  // namespace

size_t GemmBf16WorkspaceBytes(int in, int out) {
  if (in <= 0 || out <= 0) return 0;
  const Splits sp = GemmSplits(in, out);
  return sp.s == 1 ? 0 : static_cast<size_t>(sp.s) * kSplitRows * out * sizeof(float);
}

int GemmBf16Splits(int in, int out) { return in <= 0 || out <= 0 ? 0 : GemmSplits(in, out).s; }

namespace {

// GemmBf16 and, with `result`, GemmBf16Partials; `bias` as GemmBf16 has it.
cudaError_t Gemm(const bf16* x, int rows, int in, const bf16* w, int out, float* y, void* workspace,
                 GemmOutput* result, cudaStream_t stream, const float* bias) {
  if (rows < 0 || in <= 0 || out <= 0 || in % 8 != 0) return cudaErrorInvalidValue;
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0 || reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  if (result != nullptr) *result = GemmOutput{.y = y};
  if (rows == 0) return cudaSuccess;
  const Splits sp = GemmSplits(in, out);
  // One block per tile when the output tiles alone fill the GPU once (one 128-row block per SM).
  const int tiles = CeilDiv(out, kBlockOut) * CeilDiv(rows, 128);
  if (sp.s == 1 || (rows > 64 && tiles >= 132)) {
    cudaError_t err = sp.s == 1 ? LaunchPartial(x, rows, in, w, out, y, sp, stream)
                                : LaunchAccumulate(x, rows, in, w, out, y, sp, stream);
    // No reduce kernel to add the bias in: a pass over y of its own.
    if (err == cudaSuccess && bias != nullptr) err = AddBias(y, out, bias, rows, out, stream);
    return err;
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  float* ws = static_cast<float*>(workspace);
  if (result != nullptr && rows <= kSplitRows) {
    *result = GemmOutput{.partials = ws, .splits = sp.s, .stride = static_cast<int64_t>(rows) * out, .bias = bias};
    return LaunchPartial(x, rows, in, w, out, ws, sp, stream);
  }
  for (int r = 0; r < rows; r += kSplitRows) {
    const int n = std::min(kSplitRows, rows - r);
    const int64_t in_off = static_cast<int64_t>(r) * in, out_off = static_cast<int64_t>(r) * out;
    cudaError_t err = LaunchPartial(x + in_off, n, in, w, out, ws, sp, stream);
    if (err != cudaSuccess) return err;
    const int64_t count = static_cast<int64_t>(n) * out;
    const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(count, 256), 4096));
    const GemmOutput partials{.partials = ws, .splits = sp.s, .stride = count, .bias = bias};
    err = LaunchDependent(GemmReduceKernel, blocks, 256, 0, stream, partials, count, out, y + out_off);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t GemmBf16(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out, float* y,
                     void* workspace, cudaStream_t stream, const float* bias) {
  return Gemm(x, rows, in, w, out, y, workspace, nullptr, stream, bias);
}

cudaError_t GemmBf16Partials(const __nv_bfloat16* x, int rows, int in, const __nv_bfloat16* w, int out,
                             float* y, void* workspace, GemmOutput* result, cudaStream_t stream) {
  return Gemm(x, rows, in, w, out, y, workspace, result, stream, nullptr);
}

}  // namespace lizard::kernels
