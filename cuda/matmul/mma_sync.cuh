// Tile configurations per block size and the launcher of the tensor-core kernel; its
// instantiations live in one translation unit per dtype (mma_sync_{bf16,f16,f32}.cu) so
// that the CUDA build compiles them in parallel.
#pragma once

#include "tc_tile.cuh"

namespace jax_blocksparse {
namespace tc {

// DS mode (dds, dsd): BM = 128 rows of the dense dimension x one line (BN = bs).
// Small blocks stage several blocks per K step (BK = 64); bs = 128 walks a block in
// four steps of 32.
using Ds16 = Config<16, 128, 16, 64, 4, 1, 3>;
using Ds32 = Config<32, 128, 32, 64, 4, 1, 3>;
using Ds64 = Config<64, 128, 64, 64, 4, 2, 3>;
using Ds128 = Config<128, 128, 128, 32, 2, 4, 4>;
// SDD mode: one bs x bs block per CTA, dense K in steps of BK. bs = 128 shares Ds128.
using Sdd16 = Config<16, 16, 16, 64, 1, 1, 3>;
using Sdd32 = Config<32, 32, 32, 64, 2, 2, 3>;
using Sdd64 = Config<64, 64, 64, 64, 4, 2, 3>;

template <typename T, class C>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  dim3 grid;
  if (args.sdd) {
    grid = dim3(Clamp(args.nnz, 0x7fffffff), 1, Clamp(args.batch, 65535));
  } else {
    args.m_tiles = (args.M + C::BM - 1) / C::BM;
    grid = dim3(Clamp(args.lines, 0x7fffffff), Clamp(args.m_tiles, 65535),
                Clamp(args.batch, 65535));
  }
  return LaunchTile<TcKernel<T, C>>(grid, C::kThreads, C::template SmemBytes<T>(), args,
                                    stream);
}

// The launchers the dispatch table (dispatch.cu) names: declared `extern template` there,
// instantiated in mma_sync_<dtype>.cu. Block size 128 runs Ds128 in both modes.
#define JBS_TC_LAUNCHERS(PREFIX, T)                          \
  PREFIX cudaError_t Run<T, Sdd16>(TcArgs, cudaStream_t);    \
  PREFIX cudaError_t Run<T, Sdd32>(TcArgs, cudaStream_t);    \
  PREFIX cudaError_t Run<T, Sdd64>(TcArgs, cudaStream_t);    \
  PREFIX cudaError_t Run<T, Ds16>(TcArgs, cudaStream_t);     \
  PREFIX cudaError_t Run<T, Ds32>(TcArgs, cudaStream_t);     \
  PREFIX cudaError_t Run<T, Ds64>(TcArgs, cudaStream_t);     \
  PREFIX cudaError_t Run<T, Ds128>(TcArgs, cudaStream_t);

}  // namespace tc
}  // namespace jax_blocksparse
