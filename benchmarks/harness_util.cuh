// What the kernel harnesses (attention_harness.cu, matmul_harness.cu, decode_harness.cu) share:
// error checks, device buffers of random bf16 values and int32 metadata, and a median timer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace harness {

#define CHECK(x)                                                                       \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

__global__ void FillKernel(__nv_bfloat16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    x[i] = __float2bfloat16((float(h & 0xffffu) / 65535.f - 0.5f) * 2.f);
  }
}

template <typename T>
T* DeviceAlloc(int64_t n) {
  void* p = nullptr;
  CHECK(cudaMalloc(&p, size_t(std::max<int64_t>(n, 1)) * sizeof(T)));
  return static_cast<T*>(p);
}

__nv_bfloat16* RandomBf16(int64_t n, uint32_t seed) {
  __nv_bfloat16* p = DeviceAlloc<__nv_bfloat16>(n);
  FillKernel<<<1024, 256>>>(p, n, seed);
  CHECK(cudaGetLastError());
  return p;
}

int32_t* Upload(const std::vector<int32_t>& v) {
  int32_t* p = DeviceAlloc<int32_t>(int64_t(v.size()));
  CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  return p;
}

float MedianMs(const std::vector<float>& t) {
  std::vector<float> s = t;
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// The median milliseconds of `reps` runs of `launch` (returning a cudaError_t) on `stream`,
// after one warm-up run.
template <typename Launch>
float MedianLaunchMs(cudaStream_t stream, int reps, Launch launch) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  std::vector<float> ms;
  for (int r = 0; r < reps + 1; ++r) {
    CHECK(cudaEventRecord(start, stream));
    CHECK(launch());
    CHECK(cudaEventRecord(stop, stream));
    CHECK(cudaEventSynchronize(stop));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, start, stop));
    if (r > 0) ms.push_back(t);
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return MedianMs(ms);
}

// Whether the first (at most 2^20) values of a bf16 device buffer are all finite.
inline bool AllFinite(const __nv_bfloat16* x, int64_t n) {
  std::vector<__nv_bfloat16> host(size_t(std::min<int64_t>(n, 1 << 20)));
  CHECK(cudaMemcpy(host.data(), x, host.size() * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
  for (const __nv_bfloat16& v : host)
    if (!std::isfinite(__bfloat162float(v))) return false;
  return true;
}

}  // namespace harness
