// Host-side helpers shared by the kernel launchers.
#pragma once

#include <atomic>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace jax_blocksparse {

inline unsigned Clamp(int64_t x, int64_t hi) { return unsigned(x < hi ? x : hi); }

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

}  // namespace jax_blocksparse
