// Kernel visibility, like tinygrad's DEBUG: JAX_BLOCKSPARSE_DEBUG=1 prints one line per
// kernel launch to stderr (op, shapes, dtype, block size, nnz, kernel variant); =2 also
// times each launch with CUDA events (a host synchronization: for debugging only; a launch
// captured into a CUDA graph is reported as such, untimed).
#pragma once

#include <cstdio>
#include <string>

#include <cuda_runtime_api.h>

#include "../cuda/launch_util.h"  // LaunchDetail
#include "../cuda/switches.h"

namespace jax_blocksparse {

inline int DebugLevel() { return GetSwitches().debug; }

// Wraps one launch: construct before it, call Done() after it with the variant launched
// (the line adds what the launcher chose beyond it, LaunchDetail, which the launchers set
// only when debugging; Done clears it for the next launch).
class LaunchLog {
 public:
  LaunchLog(cudaStream_t stream, std::string what) : stream_(stream), what_(std::move(what)) {
    if (DebugLevel() >= 2 && !Capturing()) {
      cudaEventCreate(&start_);
      cudaEventCreate(&stop_);
      cudaEventRecord(start_, stream_);
    }
  }

  void Done(const char* variant) {
    if (DebugLevel() < 1) return;
    const std::string detail = LaunchDetail();
    LaunchDetail().clear();
    std::string timing;
    if (start_ != nullptr) {
      cudaEventRecord(stop_, stream_);
      cudaEventSynchronize(stop_);
      float ms = 0.f;
      cudaEventElapsedTime(&ms, start_, stop_);
      timing = "  " + std::to_string(ms) + " ms";
      cudaEventDestroy(start_);
      cudaEventDestroy(stop_);
    } else if (DebugLevel() >= 2) {
      timing = "  (captured in a CUDA graph: not timed)";
    }
    std::fprintf(stderr, "[jax_blocksparse] %s  kernel=%s%s%s\n", what_.c_str(), variant,
                 detail.c_str(), timing.c_str());
  }

 private:
  bool Capturing() const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(stream_, &status);
    return status != cudaStreamCaptureStatusNone;
  }

  cudaStream_t stream_;
  std::string what_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace jax_blocksparse
