// Hopper (sm_90a) kernel of the DS-mode ops (dds, and dsd run as its transpose) at block
// sizes 16 and 32, on warpgroup MMAs; the default there (1.9-2.3x the mma.sync kernel, RESULTS
// 2026-12-03 fourth session; JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 switches it off, see
// switches.h). Instantiated per dtype in wgmma_small_{bf16,f16}.cu.
//
// Why a different tiling from the bs 64/128 kernel (wgmma_lines.cuh): there a CTA owns
// one line (bs output columns), so each element of the dense operand loaded is used bs times;
// at bs 16/32 that load rate bounds the kernel (benchmarks/RESULTS.md, issue 20). Here a CTA
// owns BM = 128 rows x BN = 64 output columns: a GROUP of G = 64/bs consecutive lines. Its K
// loop walks the union of the block rows those lines list (merged in order from their sorted
// idx lists, the same merge in every thread), R = 64/bs union rows per step of 64: the A
// tile (128 x 64 of op(A)) gathers the R rows' bs-wide slices, and the B tile (64 x 64) holds
// for each (union row, line) the line's block there, or zeros where the line has none (the
// cp.async zero fill: no global traffic for absent blocks). One m64n64k16 wgmma per 16 of K
// per warpgroup, as the bs-64 kernel; the shared-memory layouts and descriptors are those of
// wgmma.cuh (128-byte swizzled lines). A step past the end of the union is zero filled in
// both operands (uninitialized shared memory could hold NaN).
//
// Where the call carries the layout's 64-column group records (jax_blocksparse/layout.py
// group_steps; the Python side passes them unless JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0:
// 1.1-1.5x faster on the H200, RESULTS 2026-12-05), the kernel reads each step's union rows and blocks from them
// (RECORDS: a thread loads its chunks' fields of the next step while this one's products
// run) instead of merging the lists: Nsight Compute on the H200 found the ALU pipe 49.5%
// busy at bs 16 (RESULTS 2026-12-05), much of it the merge.
//
// The pipeline is that of the bs-64 kernel (cp.async ring of STAGES, one wgmma group in
// flight, one commit group per step); the number of steps is only known when the merge runs
// out, so the loop runs while steps have been issued. Epilogue: the tile staged in shared
// memory, then 16-byte stores of the group's valid columns (a last group may be partial);
// each output element is summed by one thread in a fixed order (deterministic).
//
// Expected bound (random layout, density d = 0.1; bytes moved into the SMs per useful FLOP,
// 16-bit operands): the union of G lines holds 1-(1-d)^G of the block rows, so
// bytes/FLOP = (1-(1-d)^G)/(G*d*bs) + 1/BM: 0.0615 at bs 16 (G = 4), 0.0375 at bs 32 (G = 2),
// against 1/bs + 1/128 = 0.0703 / 0.0391 for one line per CTA; the useful fraction of the
// MMA work is d/(1-(1-d)^G) (29% at bs 16, 53% at bs 32). Larger groups cut the traffic
// further but waste more MMA on the zero blocks: the next step is per-line accumulators
// (one m64n{bs}k16 wgmma per present block, the x tile shared), 256 columns per CTA.
#pragma once

#include <climits>

#include "wgmma_common.cuh"

namespace jax_blocksparse {
namespace wgs {

using tc::TcArgs;
using wg::kBK;
using wg::kLine;

constexpr int kBM = 128, kBN = 64, kNT = 256;  // two consumer warpgroups

template <int BS_, int STAGES_, int MINB_>
struct Cfg {
  static constexpr int BS = BS_, G = kBN / BS_, R = kBK / BS_;
  static constexpr int STAGES = STAGES_, MINB = MINB_;
  // Ints of a step's record where the call carries them (wg::GroupCopies; the presence
  // mask is unused here: absent blocks are zero filled)
  static constexpr int REC = R + (R * G + 31) / 32 + R * G;
  static constexpr int A_BYTES = kBM * kLine, B_BYTES = kBN * kLine;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int RING = STAGES * STAGE_BYTES;
  static constexpr int EPI = 2 * (kBM * (kBN + 8) > kBN * (kBM + 8) ? kBM * (kBN + 8)
                                                                    : kBN * (kBM + 8));
  static constexpr int SMEM = (RING > EPI ? RING : EPI) + 1024;  // + 1024-byte alignment
  static_assert(BS == 16 || BS == 32, "block size");
  static_assert(STAGES >= 3, "one wgmma group stays in flight: 3 stages at least");
};

using Small16 = Cfg<16, 4, 2>;
using Small32 = Cfg<32, 4, 2>;

// The merge of the group's G sorted lists: heads, ends and the idx at each head (INT_MAX
// past the end). Every thread runs it identically.
template <int G>
struct Merge {
  int h[G], end[G], hv[G];
  __device__ __forceinline__ bool Done() const {
    int m = INT_MAX;
#pragma unroll
    for (int j = 0; j < G; ++j) m = min(m, hv[j]);
    return m == INT_MAX;
  }
  // The next union row: its block row (-1 past the end) and, for each of the NB columns
  // want[c] (lines 0..G-1 of the group), that line's block there (-1: none). Picked inside
  // the loop, so no array is indexed at run time (which would go to local memory).
  template <int NB>
  __device__ __forceinline__ void Next(const TcArgs& p, int& row, const int (&want)[NB],
                                       int (&got)[NB]) {
    int m = INT_MAX;
#pragma unroll
    for (int j = 0; j < G; ++j) m = min(m, hv[j]);
    row = m == INT_MAX ? -1 : m;
#pragma unroll
    for (int c = 0; c < NB; ++c) got[c] = -1;
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (m != INT_MAX && hv[j] == m) {
        const int blk = __ldg(p.blk + h[j]);
#pragma unroll
        for (int c = 0; c < NB; ++c) got[c] = want[c] == j ? blk : got[c];
        ++h[j];
        hv[j] = h[j] < end[j] ? __ldg(p.idx + h[j]) : INT_MAX;
      }
    }
  }
};

// RECORDS: the union rows and blocks come from the call's group records (p.steps, merged
// on the host); else each thread merges the lists itself (Merge above).
template <typename T, class C, bool TA, bool TB, bool RECORDS>
__device__ __forceinline__ void Tile(const TcArgs& p, int64_t g, int64_t group, int64_t mt,
                                     unsigned char* smem) {
  constexpr int BS = C::BS, G = C::G, R = C::R, STAGES = C::STAGES;
  using Copies = wg::GroupCopies<T, kBM, kBN, kNT, BS, TA, TB>;
  constexpr bool kAMn = Copies::kAMn, kBMn = Copies::kBMn;
  using Fields = typename Copies::Fields;

  const int tid = threadIdx.x;
  const uint32_t ring = tc::SmemAddr(smem);
  const int64_t line0 = group * G;
  const int lines_here = p.lines - line0 < G ? int(p.lines - line0) : G;  // >= 1
  const int64_t row0 = mt * kBM, col0 = line0 * BS;
  const int64_t rows_left = p.M - row0;  // >= 1
  const int rows_valid = rows_left < kBM ? int(rows_left) : kBM;

  Merge<G> mg;
  int steps = 0;  // RECORDS: this group's steps and their records
  const int32_t* recs = nullptr;
  if constexpr (RECORDS) {
    const int64_t groups = (p.lines + G - 1) / G;
    const int first = __ldg(p.steps + group);
    steps = __ldg(p.steps + group + 1) - first;
    recs = p.steps + groups + 1 + int64_t(first) * C::REC;
  } else {
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (j < lines_here) {
        mg.h[j] = __ldg(p.ptr + line0 + j);
        mg.end[j] = __ldg(p.ptr + line0 + j + 1);
      } else {
        mg.h[j] = mg.end[j] = 0;
      }
      mg.hv[j] = mg.h[j] < mg.end[j] ? __ldg(p.idx + mg.h[j]) : INT_MAX;
    }
  }
  const Copies cp(p, g, row0, tid);

  // A step's fields: RECORDS, step t's record (t past the last: all -1); else the next R
  // union rows merged in turn (-1 past the end), each kept only where one of this
  // thread's chunks needs it.
  auto fetch = [&](int t, Fields& f) {
    cp.Fetch(recs + int64_t(t) * C::REC, t < steps, f);
  };
  auto merge = [&](Fields& f) {
    int want[Copies::GB::CH];
#pragma unroll
    for (int i = 0; i < Copies::GB::CH; ++i) want[i] = cp.BN_(i) / BS;
#pragma unroll
    for (int u = 0; u < R; ++u) {
      int row, got[Copies::GB::CH];
      mg.Next(p, row, want, got);
#pragma unroll
      for (int i = 0; i < Copies::GA::CH; ++i)
        if (u == 0 || cp.AK(i) / BS == u) f.a_row[i] = row;
#pragma unroll
      for (int i = 0; i < Copies::GB::CH; ++i)
        if (u == 0 || cp.BK(i) / BS == u) f.b_blk[i] = got[i];
    }
  };
  // Copies of one step into slot `slot` (zeros for the -1 fields: the 64-column products
  // read every place).
  auto issue = [&](const Fields& f, int slot) {
    const uint32_t st = ring + uint32_t(slot * C::STAGE_BYTES);
    cp.template Issue<true>(st, st + C::A_BYTES, f);
  };

  // ---- MMA operands: descriptors of stage 0, k16 slice 0 of this warpgroup
  const int wgi = tid / 128;
  constexpr uint32_t kSbo = 1024;
  constexpr uint32_t kALbo = kAMn ? kBK * kLine : 16, kBLbo = kBMn ? kBK * kLine : 16;
  constexpr uint32_t kAkk = kAMn ? 16 * kLine : 32, kBkk = kBMn ? 16 * kLine : 32;
  const uint64_t da0 = wg::Desc(ring + uint32_t(wgi * 64 * kLine), kALbo, kSbo);
  const uint64_t db0 = wg::Desc(ring + C::A_BYTES, kBLbo, kSbo);

  float acc[kBN / 2];
#pragma unroll
  for (int i = 0; i < kBN / 2; ++i) acc[i] = 0.f;

  // ---- the pipeline: `issued` steps copied so far, a step issued while the merge has rows
  // (RECORDS: while steps are left; the next step's fields loaded after each copy);
  // steps -(STAGES - 2)..-1 only copy (the prologue). One call site of `issue` (inlined).
  Fields f;
  if constexpr (RECORDS) fetch(0, f);
  int issued = 0;
  for (int s = -(STAGES - 2); s < issued; ++s) {
    if (s >= 0) {
      tc::CpAsyncWait<STAGES - 3>();
      wg::FenceProxyAsync();
      __syncthreads();
      const uint64_t so = uint64_t(((s % STAGES) * C::STAGE_BYTES) >> 4);
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(acc[i]);
      wg::Fence();
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk)
        wg::Mma<T, kBN, kAMn ? 1 : 0, kBMn ? 1 : 0>(acc, da0 + so + ((kk * kAkk) >> 4),
                                                     db0 + so + ((kk * kBkk) >> 4));
      wg::Commit();
    }
    // step s + STAGES - 2 (== issued while the merge has rows) into the slot step s - 2 read
    if constexpr (RECORDS) {
      if (issued < steps) {
        issue(f, issued % STAGES);
        fetch(++issued, f);
      }
    } else if (!mg.Done()) {
      merge(f);
      issue(f, issued++ % STAGES);
    }
    tc::CpAsyncCommit();
    if (s >= 0) {
      wg::Wait<1>();
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(acc[i]);
    }
  }
  // ---- epilogue: tile -> smem (in the output's orientation) -> the valid columns in global
  wg::FinishGroupTile<T, kBM, kBN, kNT>(p, g, acc, smem, row0, col0, rows_valid,
                                        lines_here * BS, wgi, tid);
}

template <typename T, class C, bool TA, bool TB, bool RECORDS>
__global__ void __launch_bounds__(kNT, C::MINB) WgsKernel(const TcArgs p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = tc::SmemAddr(smem_raw);
  unsigned char* smem = smem_raw + ((1024u - (base & 1023u)) & 1023u);
  // x: the group of lines; y: the row tile (consecutive CTAs share the dense panel in L2).
  const int64_t groups = (p.lines + C::G - 1) / C::G;
  for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
    for (int64_t mt = blockIdx.y; mt < p.m_tiles; mt += gridDim.y)
      for (int64_t l = blockIdx.x; l < groups; l += gridDim.x) {
        Tile<T, C, TA, TB, RECORDS>(p, g, l, mt, smem);
        __syncthreads();
      }
#else
  __trap();  // built without sm_90a code: SmallUsable() never lets this run
#endif
}

template <typename T, class C, bool TA, bool TB>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  const dim3 grid = wg::GroupGrid<C::G, kBM>(args);
  const int64_t groups = (args.lines + C::G - 1) / C::G;
  // Records of this kernel's width (kBN columns) are read (a buffer that does not fit them
  // is the caller's error, not a reason to merge instead); others (another kernel's, or
  // none) leave the merge to the threads.
  const bool records = args.group_columns == kBN;
  if (records && (args.steps == nullptr || !wg::RecordsFit(args.steps_count, groups, C::REC)))
    return cudaErrorInvalidValue;
  if (records)
    return tc::LaunchTile<WgsKernel<T, C, TA, TB, true>>(grid, kNT, C::SMEM, args, stream);
  return tc::LaunchTile<WgsKernel<T, C, TA, TB, false>>(grid, kNT, C::SMEM, args, stream);
}

// Whether this kernel can run `args` here: DS mode at block size 16 or 32, and (Sm90Usable)
// 16-byte aligned operand rows, an sm_90 device and the kernels built for sm_90a.
template <typename T>
bool SmallUsable(const TcArgs& args, int block_size) {
  return (block_size == 16 || block_size == 32) && !args.sdd &&
         wg::Sm90Usable<WgsKernel<T, Small16, false, false, false>>(args);
}

// The launchers and the check the dispatch table names (as JBS_WGMMA_LAUNCHERS).
#define JBS_WGS_LAUNCHERS(PREFIX, T)         \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Small16) \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Small32) \
  PREFIX bool SmallUsable<T>(const TcArgs&, int);

}  // namespace wgs
}  // namespace jax_blocksparse
