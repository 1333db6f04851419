// The launchers of matmul.h and the family's one table of variants. Each op runs on the
// tensor-core tile kernel (tc_tile.cuh, mma.sync, sm_80+), or on the simple kernels
// (simple.cu) for exact float32 (precision=HIGHEST) or when JAX_BLOCKSPARSE_SIMPLE_KERNELS=1.
// On an sm_90 device with sm_90a code built, bf16/f16 at block sizes 64/128 with 16-byte
// aligned operand rows run the wgmma kernel instead (wgmma_lines.cuh; switched off by
// JAX_BLOCKSPARSE_NO_WGMMA=1; float32 at default precision too under
// JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1, opt-in, K-major operands only), and dds/dsd at block
// sizes 16/32 the grouped-lines wgmma kernel (wgmma_small.cuh;
// JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 switches it off alone), or under
// JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 (opt-in) the per-line-accumulator wgmma kernel
// (wgmma_group.cuh) where the call carries its group records; dds/dsd with 16-byte aligned
// output rows at block sizes 64 and 128 (JAX_BLOCKSPARSE_MATMUL_TMA=64: 64 alone, =0:
// neither) the persistent TMA kernel (wgmma_tma.cuh), and sdd at 128 where the call fills
// the card (at 64 and 128 under JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1, neither under =0) its
// block-row-runs kernel (wgmma_sdd_tma.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../switches.h"
#include "mma_sync.cuh"
#include "simple.h"
#include "wgmma_group.cuh"
#include "wgmma_lines.cuh"
#include "wgmma_small.cuh"
#include "wgmma_sdd_tma.cuh"
#include "wgmma_tma.cuh"

namespace jax_blocksparse {
namespace tc {
JBS_TC_LAUNCHERS(extern template, float)
JBS_TC_LAUNCHERS(extern template, __half)
JBS_TC_LAUNCHERS(extern template, __nv_bfloat16)
JBS_TC_RUNS_LAUNCHERS(extern template, __half)
JBS_TC_RUNS_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace tc
namespace wg {
JBS_WGMMA_TF32_LAUNCHERS(extern template)
JBS_WGMMA_LAUNCHERS(extern template, __half)
JBS_WGMMA_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wg
namespace wgs {
JBS_WGS_LAUNCHERS(extern template, __half)
JBS_WGS_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wgs
namespace wgg {
JBS_WGG_LAUNCHERS(extern template, __half)
JBS_WGG_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wgg
namespace wgt {
JBS_WGT_LAUNCHERS(extern template, __half)
JBS_WGT_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wgt
namespace wgr {
JBS_WGR_LAUNCHERS(extern template, __half)
JBS_WGR_LAUNCHERS(extern template, __nv_bfloat16)
}  // namespace wgr

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
// float32 read as tf32, K-major A and B only (opt-in: JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1).
#define JBS_WG_TF32_ROW(BS, SDD, C)                                                    \
  {DType::kF32, BS, MatmulPath::kWgmmaTf32, SDD, 0, 1, "wgmma(tf32)",                  \
   wg::Run<float, wg::C, false, true>, wg::WgmmaUsable<float>}
#define JBS_WG_TF32_ROWS                                                              \
  JBS_WG_TF32_ROW(64, 1, Sdd64), JBS_WG_TF32_ROW(128, 1, Sdd128),                     \
      JBS_WG_TF32_ROW(64, 0, Wg64), JBS_WG_TF32_ROW(128, 0, Wg128)
// DS mode at bs 16/32, every transposition (off with JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0).
#define JBS_WGS_ROW(DT, T, BS, C, TA, TB)                                             \
  {DT, BS, MatmulPath::kWgmmaSmall, 0, TA, TB, "wgmma-small(128x64)",                 \
   wgs::Run<T, wgs::C, TA != 0, TB != 0>, wgs::SmallUsable<T>}
// DS mode at bs 64/128 on the persistent TMA kernel, clusters of two (unless
// JAX_BLOCKSPARSE_MATMUL_TMA=0, or =64 for that block size alone; see PathOn).
#define JBS_WGT_ROW(DT, T, BS, TA, TB)                                                \
  {DT, BS, MatmulPath::kWgmmaTma, 0, TA, TB, "wgmma-tma(256x" #BS ", cluster 2)",     \
   wgt::Run<T, BS, TA != 0, TB != 0>, wgt::TmaUsable<T>}
#define JBS_WGT_TRANS_ROWS(DT, T, BS)                                   \
  JBS_WGT_ROW(DT, T, BS, 0, 0), JBS_WGT_ROW(DT, T, BS, 0, 1),           \
      JBS_WGT_ROW(DT, T, BS, 1, 0), JBS_WGT_ROW(DT, T, BS, 1, 1)
#define JBS_WGT_ROWS(DT, T) JBS_WGT_TRANS_ROWS(DT, T, 64), JBS_WGT_TRANS_ROWS(DT, T, 128)
// SDD mode at bs 64 / 128 on the persistent TMA kernel, runs of 4 / 2 blocks of a block row
// (PathOn: SddTmaByDefault, or JAX_BLOCKSPARSE_MATMUL_SDD_TMA).
#define JBS_WGR_ROW(DT, T, BS, RUN, TA, TB)                                             \
  {DT, BS, MatmulPath::kWgmmaSddTma, 1, TA, TB, "wgmma-tma sdd(runs of " #RUN ")",       \
   wgr::Run<T, BS, TA != 0, TB != 0>, wgr::SddTmaUsable<T>}
#define JBS_WGR_TRANS_ROWS(DT, T, BS, RUN)                                         \
  JBS_WGR_ROW(DT, T, BS, RUN, 0, 0), JBS_WGR_ROW(DT, T, BS, RUN, 0, 1),            \
      JBS_WGR_ROW(DT, T, BS, RUN, 1, 0), JBS_WGR_ROW(DT, T, BS, RUN, 1, 1)
#define JBS_WGR_ROWS(DT, T) JBS_WGR_TRANS_ROWS(DT, T, 64, 4), JBS_WGR_TRANS_ROWS(DT, T, 128, 2)
// SDD at bs 16/32 in runs of one block row (unless JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0).
#define JBS_SDD_RUNS_ROWS(DT, T, NAME)                                                     \
  {DT, 16, MatmulPath::kMmaSyncRuns, 1, -1, -1, NAME, tc::Run<T, tc::SddRuns16>, nullptr}, \
      {DT, 32, MatmulPath::kMmaSyncRuns, 1, -1, -1, NAME, tc::Run<T, tc::SddRuns32>, nullptr}
#define JBS_WGS_TRANS_ROWS(DT, T, BS, C)                                   \
  JBS_WGS_ROW(DT, T, BS, C, 0, 0), JBS_WGS_ROW(DT, T, BS, C, 0, 1),        \
      JBS_WGS_ROW(DT, T, BS, C, 1, 0), JBS_WGS_ROW(DT, T, BS, C, 1, 1)
#define JBS_WGS_ROWS(DT, T) \
  JBS_WGS_TRANS_ROWS(DT, T, 16, Small16), JBS_WGS_TRANS_ROWS(DT, T, 32, Small32)
// DS mode at bs 16/32 with the call's group records of 256 or 128 columns (opt-in:
// JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 or =128; the rows of the records' width are usable).
#define JBS_WGG_ROW(DT, T, BS, C, BN, TA, TB)                                         \
  {DT, BS, MatmulPath::kWgmmaGroup, 0, TA, TB, "wgmma-group(128x" #BN ")",            \
   wgg::Run<T, wgg::C, TA != 0, TB != 0>, wgg::GroupUsable<T, BN>}
#define JBS_WGG_TRANS_ROWS(DT, T, BS, C, BN)                                       \
  JBS_WGG_ROW(DT, T, BS, C, BN, 0, 0), JBS_WGG_ROW(DT, T, BS, C, BN, 0, 1),        \
      JBS_WGG_ROW(DT, T, BS, C, BN, 1, 0), JBS_WGG_ROW(DT, T, BS, C, BN, 1, 1)
#define JBS_WGG_ROWS(DT, T)                                                          \
  JBS_WGG_TRANS_ROWS(DT, T, 16, Group16, 256), JBS_WGG_TRANS_ROWS(DT, T, 32, Group32, 256), \
      JBS_WGG_TRANS_ROWS(DT, T, 16, Group16x128, 128),                               \
      JBS_WGG_TRANS_ROWS(DT, T, 32, Group32x128, 128)

// The one table of variants: (dtype, block size, path, mode, transposes) -> launcher, name.
// Every (dtype, block size) listed has kSimple and kMmaSync rows; kWgmma(Small) rows where
// the wgmma kernels exist. Rows stand in order of preference: a call runs the first row
// that serves it (dtype, block size, mode, transposes), whose path its precision and the
// switches turn on (PathOn) and that is usable here (device, build, alignment).
const MatmulKernel kMatmulKernels[] = {
    JBS_SIMPLE_ROWS(DType::kF32),
    JBS_SIMPLE_ROWS(DType::kF16),
    JBS_SIMPLE_ROWS(DType::kBF16),
    JBS_WGG_ROWS(DType::kF16, __half),
    JBS_WGG_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_WGS_ROWS(DType::kF16, __half),
    JBS_WGS_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_WGT_ROWS(DType::kF16, __half),
    JBS_WGT_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_WGR_ROWS(DType::kF16, __half),
    JBS_WGR_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_WG_ROWS(DType::kF16, __half),
    JBS_WG_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_SDD_RUNS_ROWS(DType::kF16, __half, "mma.sync(block-row runs)"),
    JBS_SDD_RUNS_ROWS(DType::kBF16, __nv_bfloat16, "mma.sync(block-row runs)"),
    JBS_WG_TF32_ROWS,
    JBS_MMA_ROWS(DType::kF32, float, "mma.sync(tf32)"),
    JBS_MMA_ROWS(DType::kF16, __half, "mma.sync"),
    JBS_MMA_ROWS(DType::kBF16, __nv_bfloat16, "mma.sync"),
};
#undef JBS_SIMPLE_ROWS
#undef JBS_MMA_ROW
#undef JBS_MMA_ROWS
#undef JBS_WG_ROW
#undef JBS_WG_TRANS_ROWS
#undef JBS_WG_ROWS
#undef JBS_WG_TF32_ROW
#undef JBS_WG_TF32_ROWS
#undef JBS_WGS_ROW
#undef JBS_WGS_TRANS_ROWS
#undef JBS_WGS_ROWS
#undef JBS_WGG_ROW
#undef JBS_WGG_TRANS_ROWS
#undef JBS_WGG_ROWS
#undef JBS_SDD_RUNS_ROWS
#undef JBS_WGT_ROW
#undef JBS_WGT_TRANS_ROWS
#undef JBS_WGT_ROWS
#undef JBS_WGR_ROW
#undef JBS_WGR_TRANS_ROWS
#undef JBS_WGR_ROWS

// The SDD TMA kernel's automatic choice (JAX_BLOCKSPARSE_MATMUL_SDD_TMA unset, and not
// JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1, which asks for wgmma_lines.cuh's split): block size
// 128, where its items (chunks of 2 blocks, per batch entry) give every SM one at least.
// H100, RESULTS 2026-12-06 (third session), 8192^2 bf16: 1.09x wgmma_lines.cuh's sdd at
// density 0.1 (about 200 items), 0.74x at 0.02 (about 41), 0.89x at bs 64 (d 0.1).
bool SddTmaByDefault(const TcArgs& a, int block_size) {
  const int sms = MultiProcessors();
  return block_size == 128 && sms > 0 && a.batch * ((a.nnz + 1) / 2) >= sms;
}

// Whether a path may run a call: the simple kernels for exact float32 or when switched on
// (they then win: their rows come first); the wgmma kernels unless switched off, the small
// one unless switched off alone, the TMA one up to its block size, the SDD TMA one by its
// rule above or when switched on, the grouped one and the tf32 one when switched on;
// mma.sync always.
bool PathOn(MatmulPath path, int block_size, const TcArgs& args, const Switches& sw,
            bool exact) {
  switch (path) {
    case MatmulPath::kSimple: return exact || sw.simple_kernels;
    case MatmulPath::kWgmmaGroup: return sw.group_wgmma && !sw.no_wgmma;
    case MatmulPath::kWgmmaSmall: return sw.small_wgmma && !sw.no_wgmma;
    case MatmulPath::kWgmmaTma: return block_size <= sw.tma_wgmma_max_bs && !sw.no_wgmma;
    case MatmulPath::kWgmmaSddTma:
      return !sw.no_wgmma && (sw.sdd_tma > 0 || (sw.sdd_tma < 0 && !sw.sdd_split &&
                                                 SddTmaByDefault(args, block_size)));
    case MatmulPath::kWgmma: return !sw.no_wgmma;
    case MatmulPath::kWgmmaTf32: return sw.tf32_wgmma && !sw.no_wgmma && !exact;
    case MatmulPath::kMmaSyncRuns: return sw.sdd_runs;
    case MatmulPath::kMmaSync: return true;
    case MatmulPath::kNone: return false;
  }
  return false;
}

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
  t.M = p.m;
  t.N = p.n;
  t.coords = p.coords;
  t.nnz = p.nnz;
  t.batch = p.batch;
  return t;
}

// DS mode (dsd, dds): the dense operand `a` (op(a) [M, k], leading dimension lda), the blocks
// read as op(block), an output of p.m x p.n (stored transposed for dsd) and `lines` lines
// of bs columns with their block lists and launch order.
template <typename Params>
TcArgs DsArgs(const Params& p, const void* a, bool ta, int64_t lda, int64_t a_bstride,
              const void* blocks, bool tb, int64_t b_bstride, int64_t M, int64_t lines,
              bool o_trans) {
  TcArgs t{};
  t.sdd = false;
  t.a = a;
  t.ta = ta;
  t.lda = lda;
  t.a_bstride = a_bstride;
  t.b = blocks;
  t.tb = tb;
  t.ldb = p.block_size;
  t.b_bstride = b_bstride;
  t.out = p.out;
  t.ldo = p.n;
  t.o_bstride = p.m * p.n;
  t.o_trans = o_trans;
  t.M = M;
  t.lines = lines;
  t.ptr = p.ptr;
  t.idx = p.idx;
  t.blk = p.blk;
  t.order = p.order;
  t.steps = p.steps;
  t.steps_count = p.steps_count;
  t.group_columns = p.group_columns;
  t.K = p.k;
  t.nnz = p.nnz;
  t.batch = p.batch;
  return t;
}

// Y = op(S) @ op(B) runs as Y^T = op(B)^T @ op(S)^T: a dds whose dense operand is op(B)^T
// ([n, k]; B stored [k, n] makes it B's transpose) and whose blocks are read as op(S)^T,
// with the tile stored transposed.
TcArgs Args(const DsdParams& p) {
  return DsArgs(p, p.b, !p.trans_b, p.trans_b ? p.k : p.n, p.b_batch_stride, p.s, !p.trans_s,
                p.s_batch_stride, p.n, p.m / p.block_size, true);
}

TcArgs Args(const DdsParams& p) {
  return DsArgs(p, p.a, p.trans_a, p.trans_a ? p.m : p.k, p.a_batch_stride, p.w, p.trans_w,
                p.w_batch_stride, p.m, p.n / p.block_size, false);
}

// The first row of the table that serves the call, is on and usable (see kMatmulKernels);
// nothing for an empty output on the tensor-core paths.
template <typename Params>
MatmulLaunch Select(DType dtype, const Params& p) {
  MatmulLaunch run{};
  const int bs = p.block_size;
  if (!Listed(dtype, bs)) return run;
  const Switches& sw = GetSwitches();
  const bool exact = dtype == DType::kF32 && p.full_fp32;
  run.args = Aligned(dtype, Args(p));
  if (!PathOn(MatmulPath::kSimple, bs, run.args, sw, exact) && Empty(p)) {
    run.kernel = &kNothing;
    return run;
  }
  for (const MatmulKernel& k : kMatmulKernels)
    if (k.dtype == dtype && k.block_size == bs && Serves(k, run.args) &&
        PathOn(k.path, bs, run.args, sw, exact) &&
        (k.usable == nullptr || k.usable(run.args, bs))) {
      run.kernel = &k;
      return run;
    }
  return run;  // not reached: every listed (dtype, block size) has its mma.sync rows
}

template <typename Params>
cudaError_t Launch(const MatmulLaunch& run, const Params& p, cudaStream_t stream,
                   cudaError_t (*simple)(DType, const Params&, cudaStream_t)) {
  const MatmulKernel& k = *run.kernel;
  switch (k.path) {
    case MatmulPath::kNone: return cudaSuccess;
    case MatmulPath::kSimple: return simple(k.dtype, p, stream);
    case MatmulPath::kMmaSync:
    case MatmulPath::kMmaSyncRuns:
    case MatmulPath::kWgmma:
    case MatmulPath::kWgmmaTma:
    case MatmulPath::kWgmmaSddTma:
    case MatmulPath::kWgmmaTf32:
    case MatmulPath::kWgmmaSmall:
    case MatmulPath::kWgmmaGroup: return k.launch(run.args, stream);
  }
  return cudaErrorInvalidValue;  // (-Wswitch names a path missing above)
}

}  // namespace

MatmulLaunch SelectSdd(DType dtype, const SddParams& p) { return Select(dtype, p); }
MatmulLaunch SelectDsd(DType dtype, const DsdParams& p) { return Select(dtype, p); }
MatmulLaunch SelectDds(DType dtype, const DdsParams& p) { return Select(dtype, p); }

cudaError_t LaunchSdd(const MatmulLaunch& run, const SddParams& p, cudaStream_t stream) {
  return Launch(run, p, stream, LaunchSddSimple);
}
cudaError_t LaunchDsd(const MatmulLaunch& run, const DsdParams& p, cudaStream_t stream) {
  return Launch(run, p, stream, LaunchDsdSimple);
}
cudaError_t LaunchDds(const MatmulLaunch& run, const DdsParams& p, cudaStream_t stream) {
  return Launch(run, p, stream, LaunchDdsSimple);
}

}  // namespace jax_blocksparse
