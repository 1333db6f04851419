// Hopper building blocks shared by the sm_90a kernels (attention forward today; the matmul
// kernels can use them too): mbarriers, the bulk tensor copy engine (TMA) in both
// directions, named barriers, warpgroup register reallocation, and the host-side encoding
// of tensor maps.
//
// Device wrappers compile to nothing outside the sm_90 device passes (__CUDA_ARCH__ < 900
// or host), so the header can be included by translation units built for several
// architectures; the callers guard the kernels that use them (sm_90a only).
//
// Host side: cuTensorMapEncodeTiled is reached through cudaGetDriverEntryPointByVersion
// (the runtime's handle on the driver): the package never links libcuda. Only the types and
// enums of <cuda.h> are used.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (types only; no libcuda symbol is linked)
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <cstdio>  // printf (JBS_MBAR_TIMEOUT_PRINT debug builds)

namespace jax_blocksparse {
namespace tma {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define JBS_SM90_DEVICE 1
#endif

// ------------------------------------------------------------------ mbarriers
__device__ __forceinline__ void MbarInit(uint32_t bar, uint32_t count) {
#ifdef JBS_SM90_DEVICE
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Makes mbarrier.init visible to the other threads and to the async proxy (TMA); follow it
// with a CTA barrier.
__device__ __forceinline__ void FenceMbarInit() {
#ifdef JBS_SM90_DEVICE
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// Arrive once and add `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void MbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
#ifdef JBS_SM90_DEVICE
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
#ifdef JBS_SM90_DEVICE
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Wait until the phase of parity `parity` has completed (a fresh barrier: parity 1 passes
// at once, parity 0 waits for the first phase).
// Debug builds (-DJBS_MBAR_TIMEOUT=<seconds>, e.g. CMAKE_ARGS="-DCMAKE_CUDA_FLAGS=
// -DJBS_MBAR_TIMEOUT=5"): a wait that lasts longer traps (the launch fails: a hung
// pipeline becomes an error); with -DJBS_MBAR_TIMEOUT_PRINT too it first prints the block,
// thread, barrier (shared address) and parity. The clock is read once per 4096 failed
// tries. Off by default (the default build's code is unchanged).
#ifdef JBS_MBAR_TIMEOUT
// out of line (inlined, the trap path made ptxas spill and serialize the wgmmas: C7512)
static __device__ __noinline__ void MbarTimeout(uint32_t bar, uint32_t parity) {
#ifdef JBS_MBAR_TIMEOUT_PRINT
  printf("[jbs] mbarrier wait timeout: block (%d, %d) thread %d bar 0x%x parity %u\n",
         int(blockIdx.x), int(blockIdx.y), int(threadIdx.x), bar & 0xFFFFFFu, parity);
#endif
  __trap();
}
__device__ __forceinline__ uint32_t GlobalTimerSeconds() {  // ~seconds (2^30 ns)
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return uint32_t(t >> 30);
}
#endif
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
#ifdef JBS_SM90_DEVICE
  uint32_t done = 0;
#ifdef JBS_MBAR_TIMEOUT
  uint32_t tries = 0, t0 = 0;
#endif
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
#ifdef JBS_MBAR_TIMEOUT
    if (!done && (++tries & 4095u) == 0) {
      const uint32_t now = GlobalTimerSeconds();
      if (tries == 4096u) t0 = now;
      else if (now - t0 > uint32_t(JBS_MBAR_TIMEOUT)) MbarTimeout(bar, parity);
    }
#endif
  } while (!done);
#endif
}

// ------------------------------------------------------------------ TMA
// Copy the 3-d box at (c0, c1, c2) (innermost first) of `map` into shared memory at `dst`;
// completion adds the box's bytes to `bar`'s transaction count. Out-of-bounds elements are
// zero filled.
__device__ __forceinline__ void Load3d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                       int c2, uint32_t bar) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
#endif
}
// Copy shared memory at `src` into the 3-d box at (c0, c1, c2) of `map` (a bulk group of
// this thread; out-of-bounds elements are not written). The writing threads must have
// issued FenceProxyAsync before the barrier that precedes this.
__device__ __forceinline__ void Store3d(const CUtensorMap* map, int c0, int c1, int c2,
                                        uint32_t src) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(src)
      : "memory");
#endif
}
// The same for 4-d boxes at (c0, c1, c2, c3).
__device__ __forceinline__ void Load4d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                       int c2, int c3, uint32_t bar) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
#endif
}
__device__ __forceinline__ void Store4d(const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                        uint32_t src) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(src)
      : "memory");
#endif
}
// 5-d boxes (the GQA-packed Q tile: dims D, group, Hkv, Tq, B)
__device__ __forceinline__ void Load5d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                       int c2, int c3, int c4, uint32_t bar) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4),
      "r"(bar)
      : "memory");
#endif
}
// The same 3-d box written at `dst` (and its mbarrier `bar` signalled) in every CTA of the
// cluster whose bit is set in `cta_mask` (the same shared-memory offsets in each).
__device__ __forceinline__ void Load3dMulticast(uint32_t dst, const CUtensorMap* map, int c0,
                                                int c1, int c2, uint32_t bar,
                                                uint16_t cta_mask) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(cta_mask)
      : "memory");
#endif
}
__device__ __forceinline__ void StoreCommit() {
#ifdef JBS_SM90_DEVICE
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
// Wait until this thread's bulk stores have read their shared memory (it may be reused or
// the CTA may exit).
__device__ __forceinline__ void StoreWaitRead() {
#ifdef JBS_SM90_DEVICE
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void PrefetchMap(const CUtensorMap* map) {
#ifdef JBS_SM90_DEVICE
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
#endif
}

// Generic-proxy shared-memory writes before async-proxy reads (wgmma, TMA store).
__device__ __forceinline__ void FenceProxyAsync() {
#ifdef JBS_SM90_DEVICE
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// ------------------------------------------------------------------ CTA-level
// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` (a multiple of 32).
__device__ __forceinline__ void NamedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Arrive at named barrier `id` without waiting (the producer side of a sync/arrive pair).
__device__ __forceinline__ void NamedArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ------------------------------------------------------------------ flags across CTAs
// A relaxed (strong, gpu scope) load to spin on; after the awaited value, FenceAcquireGpu
// makes the pair an acquire pattern (PTX memory model) with one fence, where an
// ld.acquire per poll invalidated L1 every time. AddReleaseGpu: the release that pairs with
// it (this thread's earlier accesses, and those a barrier ordered before them, first).
__device__ __forceinline__ int LoadRelaxedGpu(const int32_t* p) {
  int v = 0;
#ifdef JBS_SM90_DEVICE
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
#endif
  return v;
}
__device__ __forceinline__ void FenceAcquireGpu() {
#ifdef JBS_SM90_DEVICE
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void AddReleaseGpu(int32_t* p, int v) {
#ifdef JBS_SM90_DEVICE
  asm volatile("red.release.gpu.global.add.s32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
#endif
}

// ------------------------------------------------------------------ clusters
// This CTA's rank in its cluster.
__device__ __forceinline__ uint32_t ClusterCtaRank() {
  uint32_t r = 0;
#ifdef JBS_SM90_DEVICE
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
  return r;
}
// The number of CTAs in this CTA's cluster (1 in a launch without clusters).
__device__ __forceinline__ uint32_t ClusterCtas() {
  uint32_t n = 1;
#ifdef JBS_SM90_DEVICE
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
#endif
  return n;
}
// The shared::cluster address of shared-memory offset `addr` (a shared::cta address) in
// cluster CTA `cta` (this CTA's own when `cta` is its rank).
__device__ __forceinline__ uint32_t ClusterAddr(uint32_t addr, uint32_t cta) {
  uint32_t remote = addr;
#ifdef JBS_SM90_DEVICE
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(addr), "r"(cta));
#endif
  return remote;
}
// 16 bytes at shared::cluster address `addr` (ClusterAddr), as four floats.
__device__ __forceinline__ float4 LoadCluster4(uint32_t addr) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#ifdef JBS_SM90_DEVICE
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
#endif
  return v;
}
// Every thread of every CTA of the cluster (the arrive releases this thread's earlier
// accesses, the wait acquires the others'): after the mbarriers' initialisation, before a
// CTA's first remote access; before exit, while a peer may still access this CTA's shared
// memory.
__device__ __forceinline__ void ClusterSync() {
#ifdef JBS_SM90_DEVICE
  asm volatile("barrier.cluster.arrive.release.aligned;\n"
               "barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// Arrive once on the mbarrier at this CTA's offset `bar` in the shared memory of cluster
// CTA `cta` (the default semantics, release at CTA scope, as CUTLASS's consumer release:
// what it orders are wgmma reads of a stage, complete before it; the cluster-scope
// release compiled to a MEMBAR.ALL.GPU before every arrival).
__device__ __forceinline__ void MbarArriveCluster(uint32_t bar, uint32_t cta) {
#ifdef JBS_SM90_DEVICE
  asm volatile(
      "{\n .reg .b32 remote;\n"
      " mapa.shared::cluster.u32 remote, %0, %1;\n"
      " mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(bar),
      "r"(cta)
      : "memory");
#endif
}

// Warpgroup register reallocation (sm_90a): every warp of the warpgroup executes the same
// one. The kernel needs a register cap at entry (__launch_bounds__(threads, 1)).
template <int N> __device__ __forceinline__ void RegDealloc() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N> __device__ __forceinline__ void RegAlloc() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ------------------------------------------------------------------ host
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                   const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                   const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                   CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver (looked up once; nullptr when unavailable).
inline EncodeTiledFn GetEncodeTiled() {
  static const EncodeTiledFn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      p = nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(p);
  }();
  return fn;
}


// An N-d tiled map of 16-bit elements (N = 3, 4, 5; dims innermost first, strides in bytes of
// dims 1..N-1), box `box`, 128-byte swizzle (box[0] * 2 must be 128 bytes), zero fill.
template <int N>
inline cudaError_t EncodeTiled(CUtensorMap* map, bool bf16, const void* base,
                               const uint64_t (&dims)[N], const uint64_t (&strides)[N - 1],
                               const uint32_t (&box)[N]) {
  const EncodeTiledFn fn = GetEncodeTiled();
  if (fn == nullptr) return cudaErrorNotSupported;
  cuuint64_t gd[N], gs[N - 1];
  cuuint32_t bx[N], es[N];
  for (int i = 0; i < N; ++i) {
    gd[i] = dims[i];
    bx[i] = box[i];
    es[i] = 1;
    if (i < N - 1) gs[i] = strides[i];
  }
  const CUresult r = fn(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                        N, const_cast<void*>(base), gd, gs, bx, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

// A 3-d tiled map (EncodeTiled<3>).
inline cudaError_t EncodeTiled3d(CUtensorMap* map, bool bf16, const void* base,
                                 const uint64_t (&dims)[3], const uint64_t (&strides)[2],
                                 const uint32_t (&box)[3]) {
  return EncodeTiled<3>(map, bf16, base, dims, strides, box);
}

// The 3-d map (EncodeTiled) of a batch of row-major matrices of 16-bit elements, each
// `rows` x `cols` with leading dimension `ld` and batch stride `bstride` (in elements; 0: one
// matrix shared by the batch, the third extent 1), box `box_cols` x `box_rows`.
inline cudaError_t EncodeMatrices(CUtensorMap* map, bool bf16, const void* base, int64_t rows,
                                  int64_t cols, int64_t ld, int64_t bstride, int64_t batch,
                                  uint32_t box_cols, uint32_t box_rows) {
  const uint64_t e = 2;
  const uint64_t dims[3] = {uint64_t(cols), uint64_t(rows), bstride != 0 ? uint64_t(batch) : 1};
  const uint64_t strides[2] = {uint64_t(ld) * e, bstride != 0 ? uint64_t(bstride) * e
                                                              : uint64_t(ld) * e * uint64_t(rows)};
  const uint32_t box[3] = {box_cols, box_rows, 1};
  return EncodeTiled3d(map, bf16, base, dims, strides, box);
}

// 1-d bulk copy global -> shared (16-byte multiple, 16-byte aligned), completing on `bar`.
__device__ __forceinline__ void LoadBulk(uint32_t dst, const void* src, uint32_t bytes,
                                         uint32_t bar) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
#endif
}

}  // namespace tma
}  // namespace jax_blocksparse
