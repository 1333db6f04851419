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
