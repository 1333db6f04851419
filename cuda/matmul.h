// Launchers of the block-sparse matmul family (sdd, dsd, dds). Host-callable, no CUDA
// types beyond cudaStream_t/cudaError_t, so the FFI handlers compile as plain C++.
//
// Conventions (see jax_blocksparse/matmul_primitives.py):
//  - A dense operand is row-major `[G?, rows, cols]`; with its transpose flag set, the
//    kernel reads it as its transpose. A block operand is `[G?, nnz, bs, bs]` (row-major
//    blocks in row-major order of the layout's mask). A batch stride of 0 shares the
//    operand across the batch.
//  - Block lists (ptr, idx, blk, order) are those of jax_blocksparse.layout.BlockLists:
//    for output line i, entries ptr[i] <= e < ptr[i+1] give the block's index on the
//    contracted axis (idx[e]) and its id in storage (blk[e]); `order` lists lines longest
//    first.
//  - Accumulation is float32; outputs are written completely (no pre-zeroed buffers).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace jax_blocksparse {

enum class DType { kF32, kF16, kBF16 };

// S = op(A) @ op(B) at the layout's blocks. op(A) is [m, k], op(B) is [k, n].
struct SddParams {
  const void* a;
  const void* b;
  void* out;               // [batch, nnz, bs, bs]
  const int32_t* coords;   // [nnz, 2]: (block row, block column)
  int64_t batch, a_batch_stride, b_batch_stride;
  int64_t m, n, k;
  int32_t nnz, block_size;
  bool trans_a, trans_b, full_fp32;
};

// Y = op(S) @ op(B). op(S) is [m, k] (S or S^T), op(B) is [k, n]. Lists over rows of op(S).
struct DsdParams {
  const void* s;
  const void* b;
  void* out;  // [batch, m, n]
  const int32_t *ptr, *idx, *blk, *order;
  int64_t batch, s_batch_stride, b_batch_stride;
  int64_t m, n, k;
  int32_t nnz, block_size;
  bool trans_s, trans_b, full_fp32;
};

// Y = op(A) @ op(W). op(A) is [m, k], op(W) is [k, n]. Lists over columns of op(W).
struct DdsParams {
  const void* a;
  const void* w;
  void* out;  // [batch, m, n]
  const int32_t *ptr, *idx, *blk, *order;
  int64_t batch, a_batch_stride, w_batch_stride;
  int64_t m, n, k;
  int32_t nnz, block_size;
  bool trans_a, trans_w, full_fp32;
};

// Each returns the launch's error (cudaGetLastError() after every launch).
cudaError_t LaunchSdd(DType dtype, const SddParams& p, cudaStream_t stream);
cudaError_t LaunchDsd(DType dtype, const DsdParams& p, cudaStream_t stream);
cudaError_t LaunchDds(DType dtype, const DdsParams& p, cudaStream_t stream);

// The kernel variant the last Launch* on this thread ran ("wgmma", "mma.sync", "simple",
// ...), for JAX_BLOCKSPARSE_DEBUG.
const char* LastMatmulKernelName();

}  // namespace jax_blocksparse
