// The shared-memory tiles of the Hopper attention backwards (bwd_sm90.cu,
// bwd_sm90_onepass.cu): 64-row tiles of D / 64 slabs of 64 lines (128 bytes, 128-byte
// swizzle: the layout TMA writes with SWIZZLE_128B and wgmma.cuh describes), their wgmma
// descriptor offsets, and the register-side helpers both kernels share.
#pragma once

#include <cstdint>

#include "../wgmma.cuh"
#include "shared.cuh"

namespace jax_blocksparse {
namespace attn {
namespace slabs {

constexpr int kLine = 128;         // bytes per swizzled smem line (64 elements)
constexpr int kSlab = 64 * kLine;  // 64 rows x 64 columns

// Descriptor offsets (16-byte units) of k16 slice kk: K-major operand (slices along the
// line, then the next slab) and N-major operand (16 lines further).
__device__ __forceinline__ uint64_t KSlice(int kk) {
  return uint64_t(((kk / 4) * kSlab + (kk % 4) * 32) >> 4);
}
__device__ __forceinline__ uint64_t NSlice(int kk) { return uint64_t((kk * 16 * kLine) >> 4); }

// Store a warpgroup's 64 x D float accumulators (times mul) as T rows: this thread's rows
// row0 (acc[4j], acc[4j + 1]; at g0, when ok0) and row0 + 8 (acc[4j + 2, 3]; at g1, when
// ok1: rows past the end of a partial last tile are not stored), columns 8j + 2t.
template <typename T, int D, int DG = D>
__device__ __forceinline__ void StoreAcc(const float (&acc)[D / 2], float mul, T* g0, T* g1, int t,
                                         bool ok0 = true, bool ok1 = true) {
#pragma unroll
  for (int j = 0; j < DG / 8; ++j) {  // the first DG columns (D = 128 in smem, DG = 96)
    if (ok0)
      *reinterpret_cast<uint32_t*>(g0 + 8 * j + 2 * t) =
          Ops<T>::Pack(acc[4 * j] * mul, acc[4 * j + 1] * mul);
    if (ok1)
      *reinterpret_cast<uint32_t*>(g1 + 8 * j + 2 * t) =
          Ops<T>::Pack(acc[4 * j + 2] * mul, acc[4 * j + 3] * mul);
  }
}

// A warpgroup's 64 x 64 float tile as four k16 A fragments (16-bit pairs).
template <typename T>
__device__ __forceinline__ void PackA(uint32_t (&f)[4][4], const float (&x)[32]) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) f[kk][i] = Ops<T>::Pack(x[8 * kk + 2 * i], x[8 * kk + 2 * i + 1]);
}

using wg::FenceAcc;  // wgmma operand fences on every register of an accumulator

}  // namespace slabs
}  // namespace attn
}  // namespace jax_blocksparse
