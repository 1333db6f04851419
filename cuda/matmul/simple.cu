// Simple CUDA kernels for the matmul family: one thread per output element, float32
// accumulation in a fixed order (deterministic). The portable baseline: the dispatch table
// (dispatch.cu) runs them for exact float32 (precision=HIGHEST) and when
// JAX_BLOCKSPARSE_SIMPLE_KERNELS=1 (A/B checks), at the block sizes it lists.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "simple.h"
#include "../ptx.cuh"

namespace jax_blocksparse {
namespace {

using ptx::FromF;
using ptx::ToF;

// Element (row, col) of op(X), X row-major with `ld` elements per stored row.
template <typename T>
__device__ inline float At(const T* x, int64_t row, int64_t col, int64_t ld, bool trans) {
  return ToF(trans ? x[col * ld + row] : x[row * ld + col]);
}

template <typename T>
__global__ void SddSimple(SddParams p) {
  const int64_t bs = p.block_size, per_batch = int64_t(p.nnz) * bs * bs;
  const int64_t total = p.batch * per_batch;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = t / per_batch, rem = t % per_batch;
    const int64_t e = rem / (bs * bs), i = (rem / bs) % bs, j = rem % bs;
    const int64_t row = p.coords[2 * e] * bs + i, col = p.coords[2 * e + 1] * bs + j;
    const T* a = static_cast<const T*>(p.a) + g * p.a_batch_stride;
    const T* b = static_cast<const T*>(p.b) + g * p.b_batch_stride;
    // op(A) [m, k] is stored [m, k], or [k, m] when transposed: leading size m or k.
    const int64_t a_cols = p.trans_a ? p.m : p.k, b_cols = p.trans_b ? p.k : p.n;
    float acc = 0.f;
    for (int64_t kk = 0; kk < p.k; ++kk)
      acc += At(a, row, kk, a_cols, p.trans_a) * At(b, kk, col, b_cols, p.trans_b);
    static_cast<T*>(p.out)[t] = FromF<T>(acc);
  }
}

template <typename T>
__global__ void DsdSimple(DsdParams p) {
  const int64_t bs = p.block_size, per_batch = p.m * p.n, total = p.batch * per_batch;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = t / per_batch, row = (t % per_batch) / p.n, col = t % p.n;
    const T* s = static_cast<const T*>(p.s) + g * p.s_batch_stride;
    const T* b = static_cast<const T*>(p.b) + g * p.b_batch_stride;
    const int64_t line = row / bs, r = row % bs, b_cols = p.trans_b ? p.k : p.n;
    float acc = 0.f;
    for (int32_t e = p.ptr[line]; e < p.ptr[line + 1]; ++e) {
      const T* block = s + int64_t(p.blk[e]) * bs * bs;
      const int64_t k0 = int64_t(p.idx[e]) * bs;
      for (int64_t u = 0; u < bs; ++u)
        acc += At(block, r, u, bs, p.trans_s) * At(b, k0 + u, col, b_cols, p.trans_b);
    }
    static_cast<T*>(p.out)[t] = FromF<T>(acc);
  }
}

template <typename T>
__global__ void DdsSimple(DdsParams p) {
  const int64_t bs = p.block_size, per_batch = p.m * p.n, total = p.batch * per_batch;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = t / per_batch, row = (t % per_batch) / p.n, col = t % p.n;
    const T* a = static_cast<const T*>(p.a) + g * p.a_batch_stride;
    const T* w = static_cast<const T*>(p.w) + g * p.w_batch_stride;
    const int64_t line = col / bs, c = col % bs, a_cols = p.trans_a ? p.m : p.k;
    float acc = 0.f;
    for (int32_t e = p.ptr[line]; e < p.ptr[line + 1]; ++e) {
      const T* block = w + int64_t(p.blk[e]) * bs * bs;
      const int64_t k0 = int64_t(p.idx[e]) * bs;
      for (int64_t u = 0; u < bs; ++u)
        acc += At(a, row, k0 + u, a_cols, p.trans_a) * At(block, u, c, bs, p.trans_w);
    }
    static_cast<T*>(p.out)[t] = FromF<T>(acc);
  }
}

constexpr int kThreads = 256;

inline int Blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return int(wanted < 65535 * 16 ? wanted : 65535 * 16);
}

template <template <typename> class Launch, typename P>
cudaError_t Dispatch(DType dtype, const P& p, int64_t total, cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kF32: Launch<float>::Run(p, Blocks(total), stream); break;
    case DType::kF16: Launch<__half>::Run(p, Blocks(total), stream); break;
    case DType::kBF16: Launch<__nv_bfloat16>::Run(p, Blocks(total), stream); break;
  }
  return cudaGetLastError();
}

template <typename T> struct SddLaunch {
  static void Run(const SddParams& p, int g, cudaStream_t s) { SddSimple<T><<<g, kThreads, 0, s>>>(p); }
};
template <typename T> struct DsdLaunch {
  static void Run(const DsdParams& p, int g, cudaStream_t s) { DsdSimple<T><<<g, kThreads, 0, s>>>(p); }
};
template <typename T> struct DdsLaunch {
  static void Run(const DdsParams& p, int g, cudaStream_t s) { DdsSimple<T><<<g, kThreads, 0, s>>>(p); }
};

}  // namespace

cudaError_t LaunchSddSimple(DType dtype, const SddParams& p, cudaStream_t stream) {
  return Dispatch<SddLaunch>(dtype, p, p.batch * p.nnz * p.block_size * p.block_size, stream);
}
cudaError_t LaunchDsdSimple(DType dtype, const DsdParams& p, cudaStream_t stream) {
  return Dispatch<DsdLaunch>(dtype, p, p.batch * p.m * p.n, stream);
}
cudaError_t LaunchDdsSimple(DType dtype, const DdsParams& p, cudaStream_t stream) {
  return Dispatch<DdsLaunch>(dtype, p, p.batch * p.m * p.n, stream);
}

}  // namespace jax_blocksparse
