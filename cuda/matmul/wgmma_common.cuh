// What the two sm_90a matmul kernels (wgmma_lines.cuh at block sizes 64/128, wgmma_small.cuh
// at 16/32) share: the geometry of their cp.async copies into the swizzled lines of
// ../wgmma.cuh, the first half of their epilogue (accumulators -> shared memory; the second
// half is tc::StoreTile) and the host check that they can run here. The wgmma atoms and
// descriptors themselves are ../wgmma.cuh, shared with the attention kernels.
#pragma once

#include <atomic>

#include "../launch_util.h"
#include "../ptx.cuh"
#include "../wgmma.cuh"
#include "tc_tile.cuh"

namespace jax_blocksparse {
namespace wg {

using tc::TcArgs;

constexpr int kBK = 64;     // K step: one 128-byte line of 16-bit elements
constexpr int kLine = 128;  // bytes per smem line

// Geometry of one thread's copies of an operand tile with EXT (the M or N extent) x kBK
// elements, MN-major (MN contiguous in global memory) or K-major, by NT threads: 16-byte
// chunks along the contiguous axis, CPR per global row; chunk i of the thread is global row
// r0 + i*RSTEP, chunk column cc. In smem it goes to line (MN ? slab*kBK + k : row); RSTEP is
// a multiple of 8, so all of a thread's chunks share one swizzle phase and lie i*RSTEP lines
// apart.
template <int EXT, int NT, bool MN>
struct Copies {
  static constexpr int CPR = MN ? EXT / 8 : kBK / 8;
  static constexpr int RSTEP = NT / CPR;
  static constexpr int CH = EXT * kBK / 8 / NT;
  static_assert(CH >= 1 && CH * NT * 8 == EXT * kBK, "chunks per thread");
  static_assert(RSTEP % 8 == 0, "swizzle phase");
  int r0, cc;
  uint32_t dst0;  // byte offset of chunk 0 in the tile
  __device__ __forceinline__ explicit Copies(int tid) {
    r0 = tid / CPR;
    cc = tid % CPR;
    const int line0 = MN ? (cc / 8) * kBK + r0 : r0;
    dst0 = uint32_t(line0 * kLine + (((cc & 7) ^ (r0 & 7)) << 4));
  }
};

template <typename T> struct alignas(4) Pair { T x, y; };

// First half of the epilogue: thread tid's N/2 accumulators `acc` of an m64nN wgmma
// (warpgroup wgi = tid / 128 owns rows [64 wgi, 64 wgi + 64) of the tile) converted to T
// and staged in smem `os` (rows of o_pitch elements) in the output's orientation:
// transposed when p.o_trans. A macro, not a function: the same code inlined from a function
// comes out of the compiler with its registers numbered in another order, and ptxas then
// allocates differently (92 instead of 96 registers in WgKernel<bf16, Wg64>); this keeps
// the kernels' code what it was.
#define JBS_WG_STAGE_ACCUMULATORS(T, N, p, acc, os, o_pitch, wgi, tid)                        \
  {                                                                                          \
    const int lane = tid & 31, w4 = (tid >> 5) & 3;                                          \
    const int rb = wgi * 64 + w4 * 16 + (lane >> 2), cb2 = 2 * (lane & 3);                   \
    _Pragma("unroll") for (int j = 0; j < N / 8; ++j)                                        \
    _Pragma("unroll") for (int h = 0; h < 2; ++h) {                                          \
      const int r = rb + 8 * h, c = 8 * j + cb2;                                             \
      const T v0 = tc::FromF<T>(acc[4 * j + 2 * h]), v1 = tc::FromF<T>(acc[4 * j + 2 * h + 1]); \
      if (p.o_trans) {                                                                       \
        os[c * o_pitch + r] = v0;                                                            \
        os[(c + 1) * o_pitch + r] = v1;                                                      \
      } else { /* one 4-byte store (c even) */                                               \
        *reinterpret_cast<wg::Pair<T>*>(os + r * o_pitch + c) = wg::Pair<T>{v0, v1};         \
      }                                                                                      \
    }                                                                                        \
  }

// The copies of the grouped-lines kernels (wgmma_small.cuh, wgmma_group.cuh), whose CTA
// owns BM rows x BN output columns (G = BN / BS lines) and walks the union of its lines'
// block rows, R = kBK / BS a step: the A tile (BM x kBK of op(A), swizzled lines) gathers
// the step's union rows' BS-wide slices; the B tile (BN x kBK) takes each (union row, line)
// place's block. NT threads; each thread's chunks as Copies. TA: A stored M-major; TB: the
// blocks read transposed (op(block) stored K-major).
template <typename T, int BM, int BN, int NT, int BS, bool TA, bool TB>
struct GroupCopies {
  static constexpr bool kAMn = TA;   // A stored M-major (imm-trans-a = 1)
  static constexpr bool kBMn = !TB;  // op(block) stored N-major (imm-trans-b = 1)
  static constexpr int G = BN / BS, R = kBK / BS;
  // A step's record (jax_blocksparse/layout.py, group_steps with BN columns): R union rows
  // (-1 past the group's last), MW words of presence mask (bit r G + j), the block id of
  // each (r, j) place (-1: none)
  static constexpr int MW = (R * G + 31) / 32, REC = R + MW + R * G;
  using GA = Copies<BM, NT, kAMn>;
  using GB = Copies<BN, NT, kBMn>;
  // The union row of each of a thread's A chunks and the block of each B chunk (-1: none)
  struct Fields {
    int a_row[GA::CH], b_blk[GB::CH];
  };

  const T* a;  // this batch entry's operands
  const T* b;
  int64_t lda, row0;
  GA ga;
  GB gb;
  int a_bytes_mn, a_rows;  // M-major: bytes of the chunk's rows below M; K-major: rows

  __device__ __forceinline__ GroupCopies(const TcArgs& p, int64_t g, int64_t row0_, int tid)
      : a(static_cast<const T*>(p.a) + g * p.a_bstride),
        b(static_cast<const T*>(p.b) + g * p.b_bstride), lda(p.lda), row0(row0_), ga(tid),
        gb(tid), a_bytes_mn(16), a_rows(0) {
    const int64_t rows_left = p.M - row0;
    // A, K-major: chunk i is row row0 + r0 + i*RSTEP, k = cc*8 (one union row for all i).
    // A, M-major: chunk i is k = r0 + i*RSTEP, rows row0 + cc*8 .. +8.
    if (kAMn) {
      const int64_t left = rows_left - ga.cc * 8;
      a_bytes_mn = left <= 0 ? 0 : (left < 8 ? int(left) * 2 : 16);
    } else {
      const int64_t left = rows_left - ga.r0;
      a_rows = left <= 0 ? 0 : (left > BM ? BM : int(left));
    }
  }
  // Chunk i's k in the step (union row k / BS) and, for B, its column (line n / BS).
  __device__ __forceinline__ int AK(int i) const {
    return kAMn ? ga.r0 + i * GA::RSTEP : ga.cc * 8;
  }
  __device__ __forceinline__ int BK(int i) const {
    return kBMn ? gb.r0 + i * GB::RSTEP : gb.cc * 8;
  }
  __device__ __forceinline__ int BN_(int i) const {
    return kBMn ? gb.cc * 8 : gb.r0 + i * GB::RSTEP;
  }
  // This thread's fields of the record `rec` (all -1 unless `live`).
  __device__ __forceinline__ void Fetch(const int32_t* rec, bool live, Fields& f) const {
#pragma unroll
    for (int i = 0; i < GA::CH; ++i)  // K-major: one union row for all chunks, loaded once
      f.a_row[i] = !kAMn && i > 0 ? f.a_row[0] : live ? __ldg(rec + AK(i) / BS) : -1;
#pragma unroll
    for (int i = 0; i < GB::CH; ++i)
      f.b_blk[i] = live ? __ldg(rec + R + MW + (BK(i) / BS) * G + BN_(i) / BS) : -1;
  }
  // The copies of one step into the A tile at shared address `sa` and the B tile at `sb`:
  // A chunks of union rows -1 and rows past M zero filled; B chunks of absent blocks zero
  // filled where ZERO_ABSENT (a product reads them), else left as they are.
  template <bool ZERO_ABSENT>
  __device__ __forceinline__ void Issue(uint32_t sa, uint32_t sb, const Fields& f) const {
#pragma unroll
    for (int i = 0; i < GA::CH; ++i) {
      const int k = AK(i), ur = f.a_row[i];
      const int64_t ka = int64_t(ur) * BS + k % BS;
      int n;
      const T* src;
      if (kAMn) {
        n = ur >= 0 ? a_bytes_mn : 0;
        src = a + ka * lda + row0 + ga.cc * 8;
      } else {
        n = ur >= 0 && i * GA::RSTEP < a_rows ? 16 : 0;
        src = a + (row0 + ga.r0 + i * GA::RSTEP) * lda + ka;
      }
      tc::CpAsync16(sa + ga.dst0 + i * GA::RSTEP * kLine, n > 0 ? src : a, n);
    }
#pragma unroll
    for (int i = 0; i < GB::CH; ++i) {
      // N-major: stored row = k, chunk column = n/8; K-major: stored row = n, column = k/8
      const int k = BK(i), nn = BN_(i), bk = f.b_blk[i];
      if (!ZERO_ABSENT && bk < 0) continue;
      const T* src = b + int64_t(bk) * (BS * BS) +
                     (kBMn ? (k % BS) * BS + nn % BS : (nn % BS) * BS + k % BS);
      tc::CpAsync16(sb + gb.dst0 + i * GB::RSTEP * kLine, bk >= 0 ? src : b,
                    bk >= 0 ? 16 : 0);
    }
  }
};

// Whether `count` ints hold whole group records of `rec` ints after the groups + 1 step
// offsets (GroupCopies's records, as jax_blocksparse/layout.py group_steps writes them).
inline bool RecordsFit(int64_t count, int64_t groups, int rec) {
  const int64_t body = count - groups - 1;
  return body >= 0 && body % rec == 0;
}

// Second half of the grouped-lines kernels' epilogue (wgmma_small.cuh, wgmma_group.cuh):
// the BM x BN tile staged in `os` (rows of o_pitch elements, in the output's orientation)
// stored as 16-byte chunks, only its rows_valid rows and cols_valid columns (a last group
// of lines may be partial; cols_valid a multiple of 16: whole chunks). As tc::StoreTile
// with a column mask, kept apart: StoreTile with the mask compiles to other code.
template <typename T, int BM, int BN, int NT>
__device__ __forceinline__ void StoreColumns(const TcArgs& p, int64_t g, const T* os,
                                             int o_pitch, int64_t row0, int64_t col0,
                                             int rows_valid, int cols_valid, int tid) {
  T* out = static_cast<T*>(p.out) + g * p.o_bstride +
           (p.o_trans ? col0 * p.ldo + row0 : row0 * p.ldo + col0);
  constexpr int VEC = 8, OCH = BM * BN / VEC;
  for (int id = tid; id < OCH; id += NT) {
    int i, j, n;
    if (p.o_trans) {  // smem rows are output rows (tile columns), chunks along tile rows
      i = id / (BM / VEC);
      j = (id % (BM / VEC)) * VEC;
      const int left = rows_valid - j;
      n = i >= cols_valid || left <= 0 ? 0 : (left < VEC ? left : VEC);
    } else {
      i = id / (BN / VEC);
      j = (id % (BN / VEC)) * VEC;
      n = i < rows_valid && j < cols_valid ? VEC : 0;
    }
    const T* src = os + i * o_pitch + j;
    T* dst = out + i * p.ldo + j;
    if (n == VEC && p.o_vec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int v = 0; v < n; ++v) dst[v] = src[v];
    }
  }
}

// The grouped-lines kernels' grid (wgmma_small.cuh, wgmma_group.cuh): x the groups of G
// lines, y the BM-row tiles (consecutive CTAs share the dense panel in L2), z the batch;
// sets args.m_tiles. (Their kernels' loops over it stay written out in each: the same loop
// through a shared function compiled to other code.)
template <int G, int BM>
dim3 GroupGrid(TcArgs& args) {
  args.m_tiles = (args.M + BM - 1) / BM;
  const int64_t groups = (args.lines + G - 1) / G;
  return dim3(Clamp(groups, 0x7fffffff), Clamp(args.m_tiles, 65535), Clamp(args.batch, 65535));
}

// The end of a grouped-lines tile (wgmma_small.cuh, wgmma_group.cuh): the last wgmma group
// and cp.async copies drained, the BM x BN accumulators of this thread (warpgroup wgi: rows
// [64 wgi, 64 wgi + 64)) staged in shared memory over the ring, then the tile's rows_valid
// rows and cols_valid columns stored (StoreColumns).
template <typename T, int BM, int BN, int NT>
__device__ __forceinline__ void FinishGroupTile(const TcArgs& p, int64_t g, float (&acc)[BN / 2],
                                                unsigned char* smem, int64_t row0, int64_t col0,
                                                int rows_valid, int cols_valid, int wgi,
                                                int tid) {
  Wait<0>();
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) FenceOperand(acc[i]);
  tc::CpAsyncWait<0>();
  __syncthreads();  // the ring is reused below
  T* os = reinterpret_cast<T*>(smem);
  const int o_pitch = p.o_trans ? BM + 8 : BN + 8;
  JBS_WG_STAGE_ACCUMULATORS(T, BN, p, acc, os, o_pitch, wgi, tid)
  __syncthreads();
  StoreColumns<T, BM, BN, NT>(p, g, os, o_pitch, row0, col0, rows_valid, cols_valid, tid);
}

// Whether the sm_90a kernel `Kernel` can run `args` here: 16-byte aligned operand rows, an
// sm_90 device and the kernel built for sm_90a (CMake: the architectures include 90a).
// Checked once per device (cached); no stream work.
template <void (*Kernel)(TcArgs)>
bool Sm90Usable(const TcArgs& args) {
#ifndef JBS_WGMMA_BUILT
  return false;
#endif
  if (!args.a_vec || !args.b_vec) return false;
  static std::atomic<uint8_t> state[64];  // per device: 0 unknown, 1 usable, 2 not
  return UsableAsSm90(state, reinterpret_cast<const void*>(Kernel));
}

// The four launchers of configuration C, one per transposition (`Run<T, C, TA, TB>` of the
// namespace where it is expanded), declared `extern template` in the dispatch table and
// instantiated in the per-dtype translation units.
#define JBS_WG_TRANS_LAUNCHERS(PREFIX, T, C)                         \
  PREFIX cudaError_t Run<T, C, false, false>(TcArgs, cudaStream_t);  \
  PREFIX cudaError_t Run<T, C, false, true>(TcArgs, cudaStream_t);   \
  PREFIX cudaError_t Run<T, C, true, false>(TcArgs, cudaStream_t);   \
  PREFIX cudaError_t Run<T, C, true, true>(TcArgs, cudaStream_t);

}  // namespace wg
}  // namespace jax_blocksparse
