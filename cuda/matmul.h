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
  const int32_t* steps;  // group records (see tc::TcArgs), their ints and group columns
  int64_t steps_count;
  int32_t group_columns;
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
  const int32_t* steps;  // group records (see tc::TcArgs), their ints and group columns
  int64_t steps_count;
  int32_t group_columns;
  int64_t batch, a_batch_stride, w_batch_stride;
  int64_t m, n, k;
  int32_t nnz, block_size;
  bool trans_a, trans_w, full_fp32;
};

namespace tc {
// One launch of a tensor-core tile kernel (mma.sync, wgmma), built once on the host from
// Sdd/Dsd/DdsParams by Select* (matmul/dispatch.cu); the kernels take it by value.
struct TcArgs {
  bool sdd;  // SDD mode; otherwise DS mode
  // "A": op(A) is [M, K] (DS) or [m, K] (SDD); stored row-major with leading dim lda.
  const void* a;
  int64_t lda, a_bstride;
  bool ta, a_vec;
  // "B": DS: blocks [nnz, bs, bs], op(block) is [k, n]; SDD: dense op(B) [K, N].
  const void* b;
  int64_t ldb, b_bstride;
  bool tb, b_vec;
  // Output: tile element (r, c) goes to out[g*o_bstride + base + r*ldo + c], or
  // + c*ldo + r when o_trans (dsd).
  void* out;
  int64_t ldo, o_bstride;
  bool o_trans, o_vec;
  int64_t M;       // DS: size of the dense output dimension (masked tail); SDD: op(A)'s m
  int64_t N;       // SDD: op(B)'s n (the TMA kernel's tensor maps); DS: unused
  int64_t K;       // contracted size (SDD: masked tail; DS: the TMA kernel's tensor maps)
  int64_t m_tiles; // DS: ceil(M / BM)
  int64_t lines;   // DS: number of lines
  const int32_t *ptr, *idx, *blk, *order;  // DS
  // DS at bs 16/32: the group records (jax_blocksparse/layout.py group_steps) of groups of
  // group_columns output columns (256 or 128: wgmma_group.cuh's, 64: wgmma_small.cuh's)
  // and their ints; group_columns 0 and a placeholder where the call has none
  const int32_t* steps;
  int64_t steps_count;
  int32_t group_columns;
  const int32_t* coords;                   // SDD
  int64_t nnz;                             // blocks (DS: the TMA kernel's tensor map)
  int64_t batch;
};
}  // namespace tc

// One row of the matmul family's one table of variants (matmul/dispatch.cu): (dtype, block
// size, kernel family with its architecture and switch, tile-kernel mode, transposes) ->
// launcher and the name JAX_BLOCKSPARSE_DEBUG prints. The mode is SDD (sdd) or DS (dds, and
// dsd run as a transposed dds); the transposes are those of the tile kernel's operands (dsd's
// are flipped), compiled into the wgmma kernels and runtime flags of the mma.sync kernels.
enum class MatmulPath {
  kSimple,   // exact float32 (precision=HIGHEST), or JAX_BLOCKSPARSE_SIMPLE_KERNELS=1; any GPU
  kWgmmaGroup,  // DS mode at bs 16/32, bf16/f16, the kWgmma conditions, the call's group
                // records present; opt-in: JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 or =128
  kWgmmaSmall,  // DS mode at bs 16/32, bf16/f16, the kWgmma conditions, unless
                // JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0
  kWgmmaTma,  // DS mode at bs 64/128, bf16/f16, the kWgmma conditions, 16-byte aligned
              // output rows, the tensor-map encoder found; unless JAX_BLOCKSPARSE_MATMUL_TMA
              // =0 (neither block size) or =64 (that one alone)
  kWgmma,    // bf16/f16, sm_90a built and an sm_90 device, 16-byte aligned operand rows,
             // unless JAX_BLOCKSPARSE_NO_WGMMA=1
  kWgmmaTf32,  // float32 at default precision read as tf32, the kWgmma conditions, K-major
               // operands (the Python lowering passes them so), block sizes 64/128; opt-in:
               // JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1
  kWgmmaSddTma,  // SDD at bs 64/128, bf16/f16, the kWgmmaTma conditions, block-row runs
                 // of up to 4 / 2 blocks per pass; at bs 128 where the call fills the card
                 // (dispatch.cu SddTmaByDefault), JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1 / =0
  kMmaSyncRuns,  // SDD at bs 16/32, several blocks of one block row per CTA (mma.sync, sm_80+),
                 // unless JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0
  kMmaSync,  // tensor cores (TF32 for float32), sm_80+: what runs when nothing above does
  kNone,     // an empty output on the tensor-core paths: nothing to launch
};
struct MatmulKernel {
  DType dtype;
  int32_t block_size;
  MatmulPath path;
  int8_t sdd;     // 1: SDD mode, 0: DS mode, -1: either (simple rows: one kernel per op)
  int8_t ta, tb;  // the tile kernel's transposes; -1: either (runtime flags)
  const char* name;
  // kMmaSync(Runs), kWgmma(Small, Group, Tf32): the launcher; kSimple: nullptr (the op's
  // simple kernel); kNone: nullptr
  cudaError_t (*launch)(tc::TcArgs args, cudaStream_t stream);
  // kWgmma(Small, Group, Tf32): whether this call can run it (device, build, alignment,
  // group records); else nullptr
  bool (*usable)(const tc::TcArgs& args, int block_size);
};

// What runs one call: the table's row (nullptr when the table has no row for (dtype, block
// size): the FFI handler reports the combination) and the tile kernels' arguments, built
// once by Select* and launched as they are.
struct MatmulLaunch {
  const MatmulKernel* kernel;
  tc::TcArgs args;
};

// The row that runs this call (the path chosen from the precision, the switches read once
// per process, the device and the operands' alignment) and its arguments.
MatmulLaunch SelectSdd(DType dtype, const SddParams& p);
MatmulLaunch SelectDsd(DType dtype, const DsdParams& p);
MatmulLaunch SelectDds(DType dtype, const DdsParams& p);

// Run what Select* returned for these parameters (the simple kernels read `p`); each returns
// the launch's error (cudaGetLastError() after every launch).
cudaError_t LaunchSdd(const MatmulLaunch& run, const SddParams& p, cudaStream_t stream);
cudaError_t LaunchDsd(const MatmulLaunch& run, const DsdParams& p, cudaStream_t stream);
cudaError_t LaunchDds(const MatmulLaunch& run, const DdsParams& p, cudaStream_t stream);

}  // namespace jax_blocksparse
