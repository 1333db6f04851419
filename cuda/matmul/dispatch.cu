// The launchers of matmul.h and the family's dispatch table. Each op runs on the tensor-core
// tile kernel (tc_tile.cuh), or on the simple kernels (matmul/simple.cu) for exact float32
// (precision=HIGHEST) or when JAX_BLOCKSPARSE_SIMPLE_KERNELS=1. On an sm_90 device with
// sm_90a code built, bf16/f16 at block sizes 64/128 with 16-byte aligned operand rows run
// the wgmma kernel instead (matmul/wgmma_lines.cuh; switched off by JAX_BLOCKSPARSE_NO_WGMMA=1).
// With JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=1 (opt-in until measured), dds/dsd at block sizes
// 16/32 run the grouped-lines wgmma kernel there (matmul/wgmma_small.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "simple.h"
#include "mma_sync.cuh"
#include "wgmma_lines.cuh"
#include "wgmma_small.cuh"
#include "../switches.h"

namespace jax_blocksparse {
namespace tc {
JBS_TC_LAUNCHERS(extern template, float)
JBS_TC_LAUNCHERS(extern template, __half)
JBS_TC_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace tc
namespace wg {
JBS_WGMMA_LAUNCHERS(extern template, __half)
JBS_WGMMA_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wg
namespace wgs {
JBS_WGS_LAUNCHERS(extern template, __half)
JBS_WGS_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wgs

namespace {

using tc::TcArgs;

#define JBS_SIMPLE_ROWS(DT)                                                            \
  {DT, 16, MatmulPath::kSimple, -1, -1, -1, "simple", nullptr, nullptr},               \
      {DT, 32, MatmulPath::kSimple, -1, -1, -1, "simple", nullptr, nullptr},           \
      {DT, 64, MatmulPath::kSimple, -1, -1, -1, "simple", nullptr, nullptr},           \
      {DT, 128, MatmulPath::kSimple, -1, -1, -1, "simple", nullptr, nullptr}
#define JBS_MMA_ROW(DT, T, BS, SDD, C, NAME) \
  {DT, BS, MatmulPath::kMmaSync, SDD, -1, -1, NAME, tc::Run<T, tc::C>, nullptr}
#define JBS_MMA_ROWS(DT, T, NAME)                                                  \
  JBS_MMA_ROW(DT, T, 16, 1, Sdd16, NAME), JBS_MMA_ROW(DT, T, 32, 1, Sdd32, NAME),  \
      JBS_MMA_ROW(DT, T, 64, 1, Sdd64, NAME), JBS_MMA_ROW(DT, T, 128, 1, Ds128, NAME), \
      JBS_MMA_ROW(DT, T, 16, 0, Ds16, NAME), JBS_MMA_ROW(DT, T, 32, 0, Ds32, NAME),    \
      JBS_MMA_ROW(DT, T, 64, 0, Ds64, NAME), JBS_MMA_ROW(DT, T, 128, 0, Ds128, NAME)
#define JBS_WG_ROW(DT, T, BS, SDD, C, TA, TB)                                          \
  {DT, BS, MatmulPath::kWgmma, SDD, TA, TB, "wgmma", wg::Run<T, wg::C, TA != 0, TB != 0>, \
   wg::WgmmaUsable<T>}
#define JBS_WG_TRANS_ROWS(DT, T, BS, SDD, C)                                   \
  JBS_WG_ROW(DT, T, BS, SDD, C, 0, 0), JBS_WG_ROW(DT, T, BS, SDD, C, 0, 1),    \
      JBS_WG_ROW(DT, T, BS, SDD, C, 1, 0), JBS_WG_ROW(DT, T, BS, SDD, C, 1, 1)
#define JBS_WG_ROWS(DT, T)                                                          \
  JBS_WG_TRANS_ROWS(DT, T, 64, 1, Sdd64), JBS_WG_TRANS_ROWS(DT, T, 128, 1, Sdd128), \
      JBS_WG_TRANS_ROWS(DT, T, 64, 0, Wg64), JBS_WG_TRANS_ROWS(DT, T, 128, 0, Wg128)
// Opt-in (JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=1): DS mode at bs 16/32, every transposition.
#define JBS_WGS_ROW(DT, T, BS, C, TA, TB)                                             \
  {DT, BS, MatmulPath::kWgmmaSmall, 0, TA, TB, "wgmma-small(128x64)",                 \
   wgs::Run<T, wgs::C, TA != 0, TB != 0>, wgs::SmallUsable<T>}
#define JBS_WGS_TRANS_ROWS(DT, T, BS, C)                                   \
  JBS_WGS_ROW(DT, T, BS, C, 0, 0), JBS_WGS_ROW(DT, T, BS, C, 0, 1),        \
      JBS_WGS_ROW(DT, T, BS, C, 1, 0), JBS_WGS_ROW(DT, T, BS, C, 1, 1)
#define JBS_WGS_ROWS(DT, T) \
  JBS_WGS_TRANS_ROWS(DT, T, 16, Small16), JBS_WGS_TRANS_ROWS(DT, T, 32, Small32)

// (dtype, block size, path, mode, transposes) -> launcher, name. Every (dtype, block size)
// listed has kSimple and kMmaSync rows; kWgmma rows where the wgmma kernels exist.
const MatmulKernel kMatmulKernels[] = {
    JBS_SIMPLE_ROWS(DType::kF32),
    JBS_SIMPLE_ROWS(DType::kF16),
    JBS_SIMPLE_ROWS(DType::kBF16),
    JBS_MMA_ROWS(DType::kF32, float, "mma.sync(tf32)"),
    JBS_MMA_ROWS(DType::kF16, __half, "mma.sync"),
    JBS_MMA_ROWS(DType::kBF16, __nv_bfloat16, "mma.sync"),
    JBS_WG_ROWS(DType::kF16, __half),
    JBS_WG_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_WGS_ROWS(DType::kF16, __half),
    JBS_WGS_ROWS(DType::kBF16, __nv_bfloat16),
};
#undef JBS_SIMPLE_ROWS
#undef JBS_MMA_ROW
#undef JBS_MMA_ROWS
#undef JBS_WG_ROW
#undef JBS_WG_TRANS_ROWS
#undef JBS_WG_ROWS
#undef JBS_WGS_ROW
#undef JBS_WGS_TRANS_ROWS
#undef JBS_WGS_ROWS

// An empty output on the tensor-core paths: nothing runs.
const MatmulKernel kNothing = {DType::kF32, 0, MatmulPath::kNone, -1, -1, -1, "none(empty)",
                               nullptr, nullptr};

bool Listed(DType dtype, int block_size) {
  for (const MatmulKernel& k : kMatmulKernels)
    if (k.dtype == dtype && k.block_size == block_size) return true;
  return false;
}

// Whether row k serves a tile-kernel launch `t` (a row's -1 matches either value).
bool Serves(const MatmulKernel& k, const TcArgs& t) {
  return (k.sdd < 0 || k.sdd == int(t.sdd)) && (k.ta < 0 || k.ta == int(t.ta)) &&
         (k.tb < 0 || k.tb == int(t.tb));
}

const MatmulKernel* Find(DType dtype, int block_size, MatmulPath path, const TcArgs& t) {
  for (const MatmulKernel& k : kMatmulKernels)
    if (k.dtype == dtype && k.block_size == block_size && k.path == path && Serves(k, t))
      return &k;
  return nullptr;
}

int ElemBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

// Whether 16-byte chunks of rows of a row-major operand are 16-byte aligned everywhere.
bool Vec(const void* base, int64_t ld, int64_t batch_stride, DType d) {
  const int per16 = 16 / ElemBytes(d);
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && ld % per16 == 0 &&
         batch_stride % per16 == 0;
}

TcArgs Aligned(DType dtype, TcArgs t) {
  t.a_vec = Vec(t.a, t.lda, t.a_bstride, dtype);
  t.b_vec = Vec(t.b, t.ldb, t.b_bstride, dtype);
  t.o_vec = Vec(t.out, t.ldo, t.o_bstride, dtype);
  return t;
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

bool Empty(const SddParams& p) { return p.batch == 0 || p.nnz == 0; }
bool Empty(const DsdParams& p) { return p.batch == 0 || p.n == 0 || p.m / p.block_size == 0; }
bool Empty(const DdsParams& p) { return p.batch == 0 || p.m == 0 || p.n / p.block_size == 0; }

TcArgs Args(const SddParams& p) {
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
  return t;
}

// Y = op(S) @ op(B) runs as Y^T = op(B)^T @ op(S)^T: a dds whose dense operand is op(B)^T
// ([n, k]) and whose blocks are read as op(S)^T, with the tile stored transposed.
TcArgs Args(const DsdParams& p) {
  const int64_t bs = p.block_size;
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
  SetLines(t, p, p.m / bs);
  return t;
}

TcArgs Args(const DdsParams& p) {
  const int64_t bs = p.block_size;
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
  SetLines(t, p, p.n / bs);
  return t;
}

// The path: simple for exact float32 or when switched on; nothing for an empty output;
// wgmma where its row exists, it is not switched off and usable here (at bs 16/32 only
// when JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=1); else mma.sync.
template <typename Params>
const MatmulKernel* Select(DType dtype, const Params& p) {
  const int bs = p.block_size;
  if (!Listed(dtype, bs)) return nullptr;
  const Switches& sw = GetSwitches();
  if ((dtype == DType::kF32 && p.full_fp32) || sw.simple_kernels)
    return Find(dtype, bs, MatmulPath::kSimple, TcArgs{});
  if (Empty(p)) return &kNothing;
  const TcArgs t = Aligned(dtype, Args(p));
  if (sw.small_wgmma && !sw.no_wgmma) {
    const MatmulKernel* small = Find(dtype, bs, MatmulPath::kWgmmaSmall, t);
    if (small != nullptr && small->usable(t, bs)) return small;
  }
  const MatmulKernel* wgmma = sw.no_wgmma ? nullptr : Find(dtype, bs, MatmulPath::kWgmma, t);
  if (wgmma != nullptr && wgmma->usable(t, bs)) return wgmma;
  return Find(dtype, bs, MatmulPath::kMmaSync, t);
}

template <typename Params>
cudaError_t Launch(const MatmulKernel& k, const Params& p, cudaStream_t stream,
                   cudaError_t (*simple)(DType, const Params&, cudaStream_t)) {
  switch (k.path) {
    case MatmulPath::kNone: return cudaSuccess;
    case MatmulPath::kSimple: return simple(k.dtype, p, stream);
    case MatmulPath::kMmaSync:
    case MatmulPath::kWgmma:
    case MatmulPath::kWgmmaSmall: {
      const TcArgs t = Aligned(k.dtype, Args(p));
      if (k.block_size != p.block_size || !Serves(k, t)) return cudaErrorInvalidValue;
      return k.launch(t, stream);
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace

const MatmulKernel* SelectSdd(DType dtype, const SddParams& p) { return Select(dtype, p); }
const MatmulKernel* SelectDsd(DType dtype, const DsdParams& p) { return Select(dtype, p); }
const MatmulKernel* SelectDds(DType dtype, const DdsParams& p) { return Select(dtype, p); }

cudaError_t LaunchSdd(const MatmulKernel& kernel, const SddParams& p, cudaStream_t stream) {
  return Launch(kernel, p, stream, LaunchSddSimple);
}
cudaError_t LaunchDsd(const MatmulKernel& kernel, const DsdParams& p, cudaStream_t stream) {
  return Launch(kernel, p, stream, LaunchDsdSimple);
}
cudaError_t LaunchDds(const MatmulKernel& kernel, const DdsParams& p, cudaStream_t stream) {
  return Launch(kernel, p, stream, LaunchDdsSimple);
}

}  // namespace jax_blocksparse
