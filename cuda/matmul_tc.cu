// The launchers of matmul.h: map each op onto the tensor-core tile kernel (tc_tile.cuh), or
// onto the simple kernels (matmul_simple.cu) for exact float32 (precision=HIGHEST), block
// sizes other than 16/32/64/128, or when JAX_BLOCKSPARSE_SIMPLE_KERNELS=1. On an sm_90
// device with sm_90a code built, dds and dsd in bf16/f16 at block sizes 64/128 with 16-byte
// aligned operand rows run the wgmma kernel instead (matmul_wgmma_impl.cuh; switched off
// by JAX_BLOCKSPARSE_NO_WGMMA=1).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>

#include "matmul_simple.h"
#include "matmul_wgmma.h"
#include "tc_tile.cuh"

namespace jax_blocksparse {
namespace {

using tc::TcArgs;

// The kernel the last launch on this thread ran, for JAX_BLOCKSPARSE_DEBUG.
thread_local const char* last_kernel = "none";

bool ForceSimple() {
  static const bool force = [] {
    const char* v = std::getenv("JAX_BLOCKSPARSE_SIMPLE_KERNELS");
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return force;
}

bool TcBlockSize(int bs) { return bs == 16 || bs == 32 || bs == 64 || bs == 128; }

int ElemBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

// Whether 16-byte chunks of rows of a row-major operand are 16-byte aligned everywhere.
bool Vec(const void* base, int64_t ld, int64_t batch_stride, DType d) {
  const int per16 = 16 / ElemBytes(d);
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && ld % per16 == 0 &&
         batch_stride % per16 == 0;
}

bool NoWgmma() {
  static const bool off = [] {
    const char* v = std::getenv("JAX_BLOCKSPARSE_NO_WGMMA");
    return v != nullptr && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return off;
}

// The output lines of dsd/dds: their block lists and the launch order.
template <typename Params>
void SetLines(TcArgs& t, const Params& p, int64_t lines) {
  t.lines = lines;
  t.ptr = p.ptr;
  t.idx = p.idx;
  t.blk = p.blk;
  t.order = p.order;
  t.batch = p.batch;
}

cudaError_t Dispatch(DType dtype, TcArgs t, int bs, cudaStream_t stream) {
  t.a_vec = Vec(t.a, t.lda, t.a_bstride, dtype);
  t.b_vec = Vec(t.b, t.ldb, t.b_bstride, dtype);
  t.o_vec = Vec(t.out, t.ldo, t.o_bstride, dtype);
  switch (dtype) {
    case DType::kBF16:
      if (!NoWgmma() && wg::WgmmaUsable<__nv_bfloat16>(t, bs)) {
        last_kernel = "wgmma";
        return wg::LaunchWgmma<__nv_bfloat16>(t, bs, stream);
      }
      last_kernel = "mma.sync";
      return tc::LaunchTc<__nv_bfloat16>(t, bs, stream);
    case DType::kF16:
      if (!NoWgmma() && wg::WgmmaUsable<__half>(t, bs)) {
        last_kernel = "wgmma";
        return wg::LaunchWgmma<__half>(t, bs, stream);
      }
      last_kernel = "mma.sync";
      return tc::LaunchTc<__half>(t, bs, stream);
    case DType::kF32:
      last_kernel = "mma.sync(tf32)";
      return tc::LaunchTc<float>(t, bs, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

const char* LastMatmulKernelName() { return last_kernel; }

cudaError_t LaunchSdd(DType dtype, const SddParams& p, cudaStream_t stream) {
  if ((dtype == DType::kF32 && p.full_fp32) || !TcBlockSize(p.block_size) || ForceSimple()) {
    last_kernel = "simple";
    return LaunchSddSimple(dtype, p, stream);
  }
  last_kernel = "none(empty)";
  if (p.batch == 0 || p.nnz == 0) return cudaSuccess;
  const int64_t bs = p.block_size;
  TcArgs t{};
  t.sdd = true;
  t.a = p.a;
  t.ta = p.trans_a;
  t.lda = p.trans_a ? p.m : p.k;  // op(A) [m, k] stored [m, k] or [k, m]
  t.a_bstride = p.a_batch_stride;
  t.b = p.b;
  t.tb = p.trans_b;
  t.ldb = p.trans_b ? p.k : p.n;  // op(B) [k, n] stored [k, n] or [n, k]
  t.b_bstride = p.b_batch_stride;
  t.out = p.out;
  t.ldo = bs;
  t.o_bstride = int64_t(p.nnz) * bs * bs;
  t.o_trans = false;
  t.K = p.k;
  t.coords = p.coords;
  t.nnz = p.nnz;
  t.batch = p.batch;
  return Dispatch(dtype, t, p.block_size, stream);
}

// Y = op(S) @ op(B) runs as Y^T = op(B)^T @ op(S)^T: a dds whose dense operand is op(B)^T
// ([n, k]) and whose blocks are read as op(S)^T, with the tile stored transposed.
cudaError_t LaunchDsd(DType dtype, const DsdParams& p, cudaStream_t stream) {
  if ((dtype == DType::kF32 && p.full_fp32) || !TcBlockSize(p.block_size) || ForceSimple()) {
    last_kernel = "simple";
    return LaunchDsdSimple(dtype, p, stream);
  }
  const int64_t bs = p.block_size, lines = p.m / bs;
  last_kernel = "none(empty)";
  if (p.batch == 0 || p.n == 0 || lines == 0) return cudaSuccess;
  TcArgs t{};
  t.sdd = false;
  t.a = p.b;
  t.ta = !p.trans_b;              // B stored [k, n]: op(B)^T is its transpose
  t.lda = p.trans_b ? p.k : p.n;
  t.a_bstride = p.b_batch_stride;
  t.b = p.s;
  t.tb = !p.trans_s;
  t.ldb = bs;
  t.b_bstride = p.s_batch_stride;
  t.out = p.out;
  t.ldo = p.n;
  t.o_bstride = p.m * p.n;
  t.o_trans = true;
  t.M = p.n;
  SetLines(t, p, lines);
  return Dispatch(dtype, t, p.block_size, stream);
}

cudaError_t LaunchDds(DType dtype, const DdsParams& p, cudaStream_t stream) {
  if ((dtype == DType::kF32 && p.full_fp32) || !TcBlockSize(p.block_size) || ForceSimple()) {
    last_kernel = "simple";
    return LaunchDdsSimple(dtype, p, stream);
  }
  const int64_t bs = p.block_size, lines = p.n / bs;
  last_kernel = "none(empty)";
  if (p.batch == 0 || p.m == 0 || lines == 0) return cudaSuccess;
  TcArgs t{};
  t.sdd = false;
  t.a = p.a;
  t.ta = p.trans_a;
  t.lda = p.trans_a ? p.m : p.k;
  t.a_bstride = p.a_batch_stride;
  t.b = p.w;
  t.tb = p.trans_w;
  t.ldb = bs;
  t.b_bstride = p.w_batch_stride;
  t.out = p.out;
  t.ldo = p.n;
  t.o_bstride = p.m * p.n;
  t.o_trans = false;
  t.M = p.m;
  SetLines(t, p, lines);
  return Dispatch(dtype, t, p.block_size, stream);
}

}  // namespace jax_blocksparse
