// Host-side helpers shared by the kernel launchers.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

namespace jax_blocksparse {

inline unsigned Clamp(int64_t x, int64_t hi) { return unsigned(x < hi ? x : hi); }

// What a launcher chose at launch time beyond its dispatch-table row (e.g. " sdd-split=4"),
// for the JAX_BLOCKSPARSE_DEBUG launch line: set by the launcher (only when debugging),
// taken and cleared by the launch line (LaunchLog::Done, src/debug.h; this thread's).
inline std::string& LaunchDetail() {
  static thread_local std::string detail;
  return detail;
}

// Raise `kernel`'s dynamic shared-memory limit to `bytes` once per device; `configured` is
// the caller's static bitmask of devices done (one per kernel). No per-call device query.
inline cudaError_t AllowDynamicSmem(std::atomic<uint64_t>& configured, const void* kernel,
                                    int bytes) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (configured.load(std::memory_order_acquire) & bit) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) configured.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

// A launch of `grid` CTAs of `threads`, `smem` dynamic bytes, on `stream`, in clusters of
// `cluster` CTAs along x (cudaLaunchKernelEx(&launch.cfg, ...); also the configuration of
// cudaOccupancyMaxActiveClusters). Not copyable: cfg points at attr.
struct ClusterLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg{};
  ClusterLaunch(dim3 grid, int threads, int smem, unsigned cluster, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = grid;
    cfg.blockDim = dim3(unsigned(threads));
    cfg.dynamicSmemBytes = size_t(smem);
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// A launch of `grid` CTAs of `threads` (no dynamic shared memory) on `stream` that may
// begin before the grid launched before it on the stream ends (programmatic dependent
// launch: its CTAs get resident once every CTA of that grid ran ptx::LaunchDependents or
// exited, and must run ptx::WaitPriorGrids before reading that grid's writes); a plain
// stream-ordered launch unless `sm90` (CompiledForSm90 of the kernel: the wait is in it).
struct DependentLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg{};
  DependentLaunch(dim3 grid, int threads, bool sm90, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = grid;
    cfg.blockDim = dim3(unsigned(threads));
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = sm90 ? 1 : 0;
  }
  DependentLaunch(const DependentLaunch&) = delete;
  DependentLaunch& operator=(const DependentLaunch&) = delete;
};

// Whether `kernel`, as loaded on the current device, was compiled from PTX for sm_90 or later
// (its ptxVersion), so that it holds what `__CUDA_ARCH__ >= 900` guards (e.g.
// ptx::WaitPriorGrids; a compute_80 build JIT-compiled on a newer GPU does not). `known`:
// the caller's static per-device answers (0: not asked yet, 1: no, 2: yes).
inline bool CompiledForSm90(const void* kernel, std::atomic<int> (&known)[64]) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  int answer = known[dev & 63].load(std::memory_order_acquire);
  if (answer == 0) {
    cudaFuncAttributes attr{};
    answer = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.ptxVersion >= 90 ? 2 : 1;
    known[dev & 63].store(answer, std::memory_order_release);
  }
  return answer == 2;
}

// A device attribute of the current device, asked once per device (0 when unknown).
template <cudaDeviceAttr kAttribute>
inline int CachedDeviceAttribute() {
  static std::atomic<int> value[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  int n = value[dev & 63].load(std::memory_order_acquire);
  if (n == 0) {
    if (cudaDeviceGetAttribute(&n, kAttribute, dev) != cudaSuccess) return 0;
    value[dev & 63].store(n, std::memory_order_release);
  }
  return n;
}

// The multiprocessors of the current device (0 when unknown).
inline int MultiProcessors() { return CachedDeviceAttribute<cudaDevAttrMultiProcessorCount>(); }

// The L2 cache of the current device in bytes (0 when unknown).
inline int L2CacheBytes() { return CachedDeviceAttribute<cudaDevAttrL2CacheSize>(); }

// CTAs of `kernel` (`threads` each, `smem` dynamic bytes; its attributes already set)
// resident at once on the current device: one wave (0 when unknown).
inline int CtasPerWave(const void* kernel, int threads, int smem) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) !=
      cudaSuccess)
    return 0;
  return per_sm * MultiProcessors();
}

// Ask for the largest shared-memory carveout for `kernel` once per device (the driver's
// default can leave room for fewer CTAs per SM than the kernel's shared memory allows).
inline cudaError_t PreferSharedMemory(std::atomic<uint64_t>& configured, const void* kernel) {
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (configured.load(std::memory_order_acquire) & bit) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                             cudaSharedmemCarveoutMaxShared);
  if (err == cudaSuccess) configured.fetch_or(bit, std::memory_order_acq_rel);
  return err;
}

// Whether `kernel` runs on the current device as Hopper code: an sm_90 device and the
// kernel's code for it built for sm_90 (the build's "90a"; a plain sm_80 build runs sm_80
// code there), and, where `needs_tma`, the driver's tensor-map encoder (`encoder_found`).
// Asked once per device, then read from `state` (the caller's static, one per kernel:
// 0 unknown, 1 usable, 2 not).
inline bool UsableAsSm90(std::atomic<uint8_t> (&state)[64], const void* kernel,
                         bool encoder_found = true) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  std::atomic<uint8_t>& st = state[dev & 63];
  uint8_t v = st.load(std::memory_order_acquire);
  if (v == 0) {
    int major = 0, minor = 0;
    cudaFuncAttributes attr{};
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
        major == 9 && minor == 0 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
        attr.binaryVersion == 90 && encoder_found;
    if (!ok) (void)cudaGetLastError();  // clear a sticky-free error from the queries
    v = ok ? 1 : 2;
    st.store(v, std::memory_order_release);
  }
  return v == 1;
}

}  // namespace jax_blocksparse
