// The pieces of the Hopper backward's two kernels (bwd_sm90.cu: head dims 64 to 128;
// bwd_sm90_d256.cu: head dim 256) that both layouts share: the CTA shape, the statistics
// workspace and its kernel, the TMA loads of 64-row tiles, and the element predicate of a
// dK/dV step; and the launchers' common part (checks, statistics kernel, tensor maps, the
// kernels' launch). Semantics: attention.h; the design: bwd_sm90.cu's header comment.
#pragma once

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../launch_util.h"
#include "../tma.cuh"
#include "common.cuh"
#include "shared.cuh"
#include "slabs.cuh"

namespace jax_blocksparse {
namespace attn {
namespace sm90bwd {

using namespace slabs;  // kLine, kSlab, KSlice, NSlice, StoreAcc, PackA, FenceAcc

constexpr int kBS = 128;       // block size: query rows of a dQ CTA, keys of a dK/dV CTA
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumers = 256;
[[maybe_unused]] constexpr int kProducerRegs = 24, kConsumerRegs = 240;
[[maybe_unused]] constexpr int kBarZeroK = 1;  // named barrier: both consumers, K tail zeroing

// One 64-row tile of SLABS 64-column slabs (rows row .. row + 63 of head `head`, batch
// entry b; 4-d maps [B, T, H, D]: rows past T are zero filled) by TMA into `dst`.
template <int SLABS>
__device__ __forceinline__ void LoadSlabs(uint32_t dst, const CUtensorMap* map, int head, int row,
                                          int b, uint32_t bar) {
#pragma unroll
  for (int sl = 0; sl < SLABS; ++sl)
    tma::Load4d(dst + sl * kSlab, map, sl * 64, head, row, b, bar);
}

// (bwd_sm90_d256.cu's kernels use Ring and PrefetchMaps; bwd_sm90.cu keeps its own
// copies of the same code until a timing run: with them ptxas schedules its loops
// differently, the same instructions in another order.)
// A kernel's shared memory from its 1024-byte aligned start (the 128-byte swizzle's atoms
// and TMA's destinations need it; the launch asks for 1024 bytes more): `ptr` and `base`
// (its shared-memory address), and the mbarriers at `base + bars_offset`: one for the
// operands loaded once (Q and dO, or K and V: Once), then the ring's STAGES full and
// STAGES empty barriers. Init (every thread; `leader`: thread 0) sets their counts (one
// arrival with the loads' bytes; all kConsumers consumer threads free a stage), then the
// CTA syncs.
template <int STAGES>
struct Ring {
  unsigned char* ptr;
  uint32_t base, bars;
  __device__ __forceinline__ static Ring At(unsigned char* raw_ptr, int bars_offset) {
    const uint32_t raw = ptx::SmemAddr(raw_ptr);
    const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
    return Ring{raw_ptr + pad, raw + pad, raw + pad + uint32_t(bars_offset)};
  }
  __device__ __forceinline__ uint32_t Once() const { return bars; }
  __device__ __forceinline__ uint32_t Full(int st) const { return bars + 8u * (1 + st); }
  __device__ __forceinline__ uint32_t Empty(int st) const {
    return bars + 8u * (1 + STAGES + st);
  }
  __device__ __forceinline__ void Init(bool leader) const {
    if (leader) {
      tma::MbarInit(Once(), 1);
#pragma unroll
      for (int st = 0; st < STAGES; ++st) {
        tma::MbarInit(Full(st), 1);
        tma::MbarInit(Empty(st), kConsumers);
      }
      tma::FenceMbarInit();
    }
    __syncthreads();
  }
};

// The producer's prefetch of the four operand maps' descriptors.
__device__ __forceinline__ void PrefetchMaps(const CUtensorMap* q, const CUtensorMap* d_o,
                                             const CUtensorMap* k, const CUtensorMap* v) {
  tma::PrefetchMap(q);
  tma::PrefetchMap(d_o);
  tma::PrefetchMap(k);
  tma::PrefetchMap(v);
}

// The 64-row halves of a 128-row tile starting at `row` that hold rows before `end` (Tq or
// Tk): a half wholly past the end is not loaded (its shared memory keeps stale values):
// its rows are never stored and reach no other row's result (S, dP, dS are row-local,
// its keys are past kv_lengths: masked by selection, K zeroed in the dQ kernel).
__device__ __forceinline__ int Halves(int row, int end) { return row + 64 < end ? 2 : 1; }

// Tq rounded up to whole blocks: the rows of the statistics workspace (StatsKernel).
__host__ __device__ __forceinline__ int PaddedRows(int tq) { return (tq + kBS - 1) / kBS * kBS; }

// The statistics of (batch entry b, query head h) in the workspace a.delta
// ([B, Hq, 2, PaddedRows(Tq)]): lse in the log2 domain, then (+ PaddedRows(Tq)) delta.
__device__ __forceinline__ const float* Stats(const Args& a, int b, int h) {
  return a.delta + (int64_t(b) * a.hq + h) * 2 * PaddedRows(a.tq);
}

// The per-row statistics of the dQ and dK/dV kernels, one warp per row (b, i, h) of
// [B, PaddedRows(Tq), Hq]: lse in the log2 domain (Lse2: +inf for a row with no key) and
// delta = rowsum(dO * O) - d_lse; rows past Tq (a partial last tile) get +inf and 0, so
// that P = 0 and dS = 0 there (their Q and dO rows are zero filled). Whole padded rows let
// the dK/dV kernel's bulk copies (64 floats) and the dQ kernel's loads skip bounds checks.
template <typename T, int D>
__global__ void StatsKernel(const Args a) {
  const int tqp = PaddedRows(a.tq);
  const int64_t rows = int64_t(a.batch) * tqp * a.hq;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int h = int(row % a.hq);
  const int64_t bi = row / a.hq;
  const int i = int(bi % tqp), b = int(bi / tqp);
  float lse2 = INFINITY, delta = 0.f;
  if (i < a.tq) {
    const int64_t li = (int64_t(b) * a.hq + h) * a.tq + i;
    delta = RowDot<T, D>(a, (int64_t(b) * a.tq + i) * a.hq + h, lane) - a.d_lse[li];
    lse2 = Lse2(a.lse[li]);
  }
  if (lane == 0) {
    float* st = a.delta + (int64_t(b) * a.hq + h) * 2 * tqp;
    st[i] = lse2;
    st[tqp + i] = delta;
  }
}

// ---------------------------------------------------------------- host: the launchers' part
// q, dO [B, Tq, Hq, D] and k, v [B, Tk, Hkv, D] as 4-d tensor maps (dims D, H, T, B,
// innermost first), boxes of 64 columns (one swizzled slab), one head, 64 rows, one batch
// entry; rows past T (partial last tiles) are zero filled.
struct BackwardMaps {
  CUtensorMap q, d_o, k, v;
};

// What both layouts' launchers do before their two kernels: the checks of the operands
// (16-byte aligned for TMA, at most 65535 lines a direction (grid y), a fine mask's words
// for both directions and block size 16, 32 or 64 on the 128 x 128 tiles:
// cudaErrorInvalidValue otherwise), the statistics kernel, the four tensor maps.
template <typename T, int D>
cudaError_t PrepareBackward(const Args& a, cudaStream_t stream, BackwardMaps& maps) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (!aligned(a.q) || !aligned(a.k) || !aligned(a.v) || !aligned(a.d_o) || !aligned(a.delta))
    return cudaErrorInvalidValue;
  if (a.by_query.lines > 65535 || a.by_key.lines > 65535) return cudaErrorInvalidValue;
  if ((a.mask_bits != nullptr) != (a.mask_bits_key != nullptr) ||
      (a.mask_bits != nullptr && (a.mask_lg < 4 || a.mask_lg > 6)))
    return cudaErrorInvalidValue;

  const int64_t rows = int64_t(a.batch) * PaddedRows(a.tq) * a.hq;
  StatsKernel<T, D><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  const uint64_t qdims[4] = {uint64_t(D), uint64_t(a.hq), uint64_t(a.tq), uint64_t(a.batch)};
  const uint64_t qstr[3] = {D * e, uint64_t(a.hq) * D * e, uint64_t(a.tq) * a.hq * D * e};
  const uint64_t kdims[4] = {uint64_t(D), uint64_t(a.hkv), uint64_t(a.tk), uint64_t(a.batch)};
  const uint64_t kstr[3] = {D * e, uint64_t(a.hkv) * D * e, uint64_t(a.tk) * a.hkv * D * e};
  const uint32_t box[4] = {64, 1, 64, 1};
  err = tma::EncodeTiled<4>(&maps.q, kBf16, a.q, qdims, qstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&maps.d_o, kBf16, a.d_o, qdims, qstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&maps.k, kBf16, a.k, kdims, kstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&maps.v, kBf16, a.v, kdims, kstr, box);
  return err;
}

// One of the backward's kernels on `grid` with kThreads threads and `smem` bytes of dynamic
// shared memory (allowed once per device).
template <auto kKernel>
cudaError_t LaunchBackwardKernel(int smem, dim3 grid, const Args& a, const BackwardMaps& maps,
                                 cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};
  cudaError_t err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(kKernel), smem);
  if (err != cudaSuccess) return err;
  kKernel<<<grid, kThreads, smem, stream>>>(a, maps.q, maps.d_o, maps.k, maps.v);
  return cudaGetLastError();
}

}  // namespace sm90bwd
}  // namespace attn
}  // namespace jax_blocksparse
