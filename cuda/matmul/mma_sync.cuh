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
// SDD mode at bs 16/32, runs of one block row (default; JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 off;
// issue 20): up to 128 / bs blocks per CTA, so the A panel (bs x K) is read once per run
// instead of once per block. Operand bytes per useful FLOP (16-bit, K long): (1 + NB) /
// (NB bs) against 2 / bs for one block per CTA: 0.070 at bs 16 (NB 8; was 0.125), 0.039 at
// bs 32 (NB 4; was 0.0625). 238 / 254 registers (90a) leave two CTAs (8 warps) per SM;
// capping them for 3 or 4 CTAs spilled 200-2400 bytes.
using SddRuns16 = Config<16, 16, 128, 64, 1, 4, 3>;
using SddRuns32 = Config<32, 32, 128, 64, 1, 4, 3>;

template <typename T, class C>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  dim3 grid;
  if (args.sdd) {  // chunks of BN / bs entries (TcKernel: the runs in them)
    const int64_t chunks = (args.nnz + C::BN / C::BS - 1) / (C::BN / C::BS);
    grid = dim3(Clamp(chunks, 0x7fffffff), 1, Clamp(args.batch, 65535));
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

// The block-row runs, 16-bit types only (float32's 4-byte chunks, twice as many per thread,
// spilled 360-550 bytes).
#define JBS_TC_RUNS_LAUNCHERS(PREFIX, T)                       \
  PREFIX cudaError_t Run<T, SddRuns16>(TcArgs, cudaStream_t); \
  PREFIX cudaError_t Run<T, SddRuns32>(TcArgs, cudaStream_t);

}  // namespace tc
}  // namespace jax_blocksparse
