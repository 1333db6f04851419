// Hopper (sm_90a) kernel of the SDD-mode op (sdd: the weight gradient's product) at block
// sizes 64 and 128, 16-bit types: persistent, warp-specialized, TMA copies, runs of blocks
// that share a block row (issue 20, item 2: dW at >= 90% of the forward's rate). The
// default at block size 128 where the call's items fill the card (dispatch.cu,
// SddTmaByDefault); JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1 at 64 and 128 always, =0 never. On an
// H100 (RESULTS 2026-12-06, third session) 1.09x wgmma_lines.cuh at bs 128 density 0.1,
// 0.74x at 0.02 (41 items), 0.89x at bs 64; memcheck, racecheck, synccheck clean.
//
// Why: one bs x bs output block per CTA (wgmma_lines.cuh's Sdd64 / Sdd128, the default)
// reads a bs-row panel of op(A) and a bs-column panel of op(B) per block: 2 / bs bytes per
// useful FLOP (1/32 at bs 64: 7.75 TB/s into the SMs at the 248 TFLOP/s it ran on an H100,
// RESULTS 2026-12-06, second session; the forward, 1/64 + 1/512, ran 361). Here a CTA takes
// up to RUN = 256 / bs consecutive blocks of the sorted layout and reads the A panel once
// per run of them in one block row: (1 + L) / (L bs) bytes per FLOP for a run of L (0.0195
// at bs 64, L 4; 0.0117 at bs 128, L 2).
//
// Work: an item is (batch entry g, chunk u of RUN sorted entries); a chunk that crosses a
// block row's end runs as one pass per row (tc::Runs). The producer (warpgroup 0's thread
// 0; setmaxnreg 40) walks each pass's K steps (64 of K each; TMA zero-fills the tail) into a
// STAGES-deep ring: per step the A panel (bs rows x 64 k) and one B tile (64 k x bs n) per
// block of the pass, in 64 x 64 boxes; full[s] counts the bytes, empty[s] the 8 consumer
// warps. Consumer warpgroup c (setmaxnreg 232) has two slots per pass: at bs 64 the
// pass's blocks c and c + 2 (those that exist: passes of 2 to 4 blocks keep both
// warpgroups busy), at bs 128 its rows [64 c, 64 c + 64) of blocks 0 and 1; one
// m64nBSk16 wgmma per slot per 16 of K, one wgmma group in flight (a stage is released
// once the group after it has been issued and it has completed). The slot count is a
// template argument of the pass: with it as branches between the wgmmas ptxas closed each
// group early. Epilogue: each warpgroup stages its slots in its own shared memory
// (swizzled lines, wgt::StageTile: 64-column slabs of 128 lines, slot b in lines
// [64 b, 64 b + 64)) and its first thread stores them by TMA through the output's tensor
// map ([nnz * bs rows of bs] per batch entry, 64 x 64 boxes), which runs on under the next
// pass's MMAs; before staging again that thread waits until the stores have read the
// buffer. Each output element is written once (deterministic).
//
// Shared memory (1024-aligned): the ring, the two warpgroups' staging buffers, the
// mbarriers: bs 64 4 stages of 40 KB + 2 x 16 KB (193 KB), bs 128 3 stages of 48 KB +
// 2 x 32 KB (209 KB); one CTA per SM.
#pragma once

#include <type_traits>

#include "wgmma_tma.cuh"  // wgt::StageTile, the TMA and mbarrier helpers

namespace jax_blocksparse {
namespace wgr {

using tc::TcArgs;
using wg::kBK;  // K per step: one 128-byte line
using wg::kLine;
// the roles of wgmma_tma.cuh: a producer warpgroup and 2 consumer warpgroups, their registers
using wgt::kConsumerRegs;
using wgt::kProducerRegs;
using wgt::kThreads;

constexpr int kEmptyArrivals = 8;              // consumer warps
constexpr int kBarStaged = 1;                  // named barriers 1, 2: warpgroup 0's, 1's
constexpr int kBox = 64 * kLine;               // a 64 x 64 box of 16-bit elements: 8 KB

template <int BS>
struct SddCfg {
  static_assert(BS == 64 || BS == 128, "block size");
  static constexpr int RUN = 256 / BS;            // sorted entries per chunk (item)
  static constexpr int STAGES = BS == 64 ? 4 : 3;
  static constexpr int PANEL = BS / 64 * kBox;    // the A panel (bs rows x 64 k) or one
                                                  // block's B tile (64 k x bs n)
  static constexpr int STAGE_BYTES = (1 + RUN) * PANEL;
  static constexpr int RING = STAGES * STAGE_BYTES;
  // per consumer warpgroup: its two 64 x 64 blocks (bs 64), or its 64 rows of the two
  // blocks as two 64-column slabs of 128 lines, block b in lines [64 b, 64 b + 64) (bs 128)
  static constexpr int STAGING = BS == 64 ? 2 * kBox : 4 * kBox;
  static constexpr int BARS = RING + 2 * STAGING;  // full[STAGES], empty[STAGES]
  static constexpr int SMEM = BARS + 16 * STAGES + 1024;  // + 1024-byte alignment
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

template <typename T, int BS, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads, 1)
    SddTmaKernel(const __grid_constant__ TcArgs p, const __grid_constant__ CUtensorMap map_a,
                 const __grid_constant__ CUtensorMap map_b,
                 const __grid_constant__ CUtensorMap map_o, int64_t chunks) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = SddCfg<BS>;
  constexpr int STAGES = C::STAGES, RUN = C::RUN, BOXES = BS / 64;
  constexpr bool kAMn = TA;   // op(A) stored [K, m]: M-major (imm-trans-a = 1)
  constexpr bool kBMn = !TB;  // op(B) stored [K, n]: N-major (imm-trans-b = 1)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = tc::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t ring = raw + pad;
  auto full = [&](int s) { return ring + C::BARS + 8u * s; };
  auto empty = [&](int s) { return ring + C::BARS + 8u * (STAGES + s); };

  const int tid = threadIdx.x;
  const int64_t items = p.batch * chunks;
  const int steps = int((p.K + kBK - 1) / kBK);

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      tma::MbarInit(full(s), 1);
      tma::MbarInit(empty(s), kEmptyArrivals);
    }
    tma::FenceMbarInit();
  }
  __syncthreads();

  if (tid < 128) {
    // ------------------------------------------------------------- producer (TMA)
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0) {
      tma::PrefetchMap(&map_a);
      tma::PrefetchMap(&map_b);
      int it = 0;
      for (int64_t w = blockIdx.x; w < items; w += gridDim.x) {
        const int64_t g = w / chunks;
        const int ga = p.a_bstride != 0 ? int(g) : 0, gb = p.b_bstride != 0 ? int(g) : 0;
        tc::Runs<RUN>(p, w % chunks, [&](int64_t e0, int64_t n) {
          const int row = __ldg(p.coords + 2 * e0) * BS;  // the pass's rows of op(A)
          int col[RUN];                                    // its blocks' columns of op(B)
#pragma unroll
          for (int i = 0; i < RUN; ++i)
            col[i] = i < n ? __ldg(p.coords + 2 * (e0 + i) + 1) * BS : 0;
          for (int s = 0; s < steps; ++s, ++it) {
            const int st = it % STAGES, k = s * kBK;
            tma::MbarWait(empty(st), ((it / STAGES) & 1) ^ 1);
            tma::MbarArriveExpectTx(full(st), uint32_t((1 + n) * C::PANEL));
            const uint32_t sa = ring + uint32_t(st * C::STAGE_BYTES);
            // box j: rows (or m) [64 j, 64 j + 64) of the panel, n [64 j, 64 j + 64) of a tile
#pragma unroll
            for (int j = 0; j < BOXES; ++j) {
              const uint32_t dst = sa + j * kBox;
              if constexpr (kAMn) tma::Load3d(dst, &map_a, row + 64 * j, k, ga, full(st));
              else tma::Load3d(dst, &map_a, k, row + 64 * j, ga, full(st));
            }
#pragma unroll
            for (int i = 0; i < RUN; ++i) {
              if (i >= n) break;
              const uint32_t sb = sa + uint32_t((1 + i) * C::PANEL);
#pragma unroll
              for (int j = 0; j < BOXES; ++j) {
                const uint32_t dst = sb + j * kBox;
                if constexpr (kBMn) tma::Load3d(dst, &map_b, col[i] + 64 * j, k, gb, full(st));
                else tma::Load3d(dst, &map_b, k, col[i] + 64 * j, gb, full(st));
              }
            }
          }
        });
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    // the warpgroup index made warp-uniform (the descriptors' math in uniform registers)
    const int ct = tid - 128, cw = __shfl_sync(0xffffffffu, ct / 128, 0), lane = tid & 31;
    constexpr uint32_t kSbo = 1024;
    constexpr uint32_t kALbo = kAMn ? kBK * kLine : 16, kBLbo = kBMn ? kBK * kLine : 16;
    constexpr uint32_t kAkk = kAMn ? 16 * kLine : 32, kBkk = kBMn ? 16 * kLine : 32;
    // this warpgroup's share of a pass, two slots b: at bs 64 the blocks cw + 2 b (B tiles
    // 1 + cw + 2 b of a stage; A's 64 rows), at bs 128 its rows [64 cw, 64 cw + 64) of the
    // blocks b (A's row group cw; B tiles 1 + b)
    const uint64_t da = wg::Desc(ring + uint32_t(BS == 128 ? cw * kBox : 0), kALbo, kSbo);
    const uint64_t db0 =
        wg::Desc(ring + uint32_t((BS == 64 ? 1 + cw : 1) * C::PANEL), kBLbo, kSbo);
    const uint64_t db1 = db0 + uint64_t(((BS == 64 ? 2 : 1) * C::PANEL) >> 4);
    auto release = [&](int st) {
      __syncwarp();
      if (lane == 0) tma::MbarArrive(empty(st));
    };
    unsigned char* os = smem + C::RING + cw * C::STAGING;
    const uint32_t os_addr = ring + uint32_t(C::RING + cw * C::STAGING);
    const bool issuer = ct % 128 == 0;
    if (issuer) tma::PrefetchMap(&map_o);

    int it = 0;
    // A pass with NB (0, 1 or 2) slots of this warpgroup, e0 the entry of slot 0 (slot b:
    // e0 + 2 b at bs 64, e0 + b at bs 128): the K steps (one straight wgmma sequence per
    // step: one group in flight), then the epilogue.
    auto pass = [&](auto nb, int64_t e0, int g) {
      constexpr int NB = decltype(nb)::value;
      constexpr int kEntryStep = BS == 64 ? 2 : 1;
      float acc[2][BS / 2];
#pragma unroll
      for (int b = 0; b < 2; ++b)
#pragma unroll
        for (int i = 0; i < BS / 2; ++i) acc[b][i] = 0.f;
      for (int s = 0; s < steps; ++s, ++it) {
        const int st = it % STAGES;
        tma::MbarWait(full(st), (it / STAGES) & 1);
        const uint64_t so = uint64_t((st * C::STAGE_BYTES) >> 4);
#pragma unroll
        for (int b = 0; b < NB; ++b) wg::FenceAcc(acc[b]);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk)
#pragma unroll
          for (int b = 0; b < NB; ++b)
            wg::Mma<T, BS, kAMn ? 1 : 0, kBMn ? 1 : 0>(
                acc[b], da + so + ((kk * kAkk) >> 4),
                (b == 0 ? db0 : db1) + so + ((kk * kBkk) >> 4));
        wg::Commit();
        wg::Wait<1>();  // the previous step's group is done: its stage goes back
#pragma unroll
        for (int b = 0; b < NB; ++b) wg::FenceAcc(acc[b]);
        if (s > 0) release((it - 1) % STAGES);
      }
      wg::Wait<0>();
#pragma unroll
      for (int b = 0; b < NB; ++b) wg::FenceAcc(acc[b]);
      if (steps > 0) release((it - 1) % STAGES);
      if constexpr (NB > 0) {
        // ---- epilogue: the slots -> this warpgroup's staging buffer -> TMA stores
        if (issuer) tma::StoreWaitRead();  // its last stores have read the buffer
        __syncwarp();
        tma::NamedBarrier(kBarStaged + cw, 128);
#pragma unroll
        for (int b = 0; b < NB; ++b) wgt::StageTile<T, BS, 128>(acc[b], os, false, b, ct);
        tma::FenceProxyAsync();  // the staged blocks before the async proxy reads them
        tma::NamedBarrier(kBarStaged + cw, 128);
        if (issuer) {
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            const int row = int((e0 + kEntryStep * b) * BS) + (BS == 128 ? 64 * cw : 0);
#pragma unroll
            for (int h = 0; h < BOXES; ++h)  // 64-column slab h: lines 64 b.. of slab h
              tma::Store3d(&map_o, 64 * h, row, g, os_addr + h * (2 * kBox) + b * kBox);
          }
          tma::StoreCommit();
        }
      }
    };
    for (int64_t w = blockIdx.x; w < items; w += gridDim.x) {
      const int g = int(w / chunks);
      tc::Runs<RUN>(p, w % chunks, [&](int64_t e0, int64_t n) {
        // bs 64: blocks cw, cw + 2 of the pass that exist; bs 128: all (n) of them
        const int slots = BS == 64 ? int(n - cw + 1) / 2 : int(n);
        const int64_t first = BS == 64 ? e0 + cw : e0;
        if (slots > 1) pass(std::integral_constant<int, 2>(), first, g);
        else if (slots == 1) pass(std::integral_constant<int, 1>(), first, g);
        else pass(std::integral_constant<int, 0>(), first, g);
      });
    }
    if (issuer) tma::StoreWaitRead();  // the shared memory stays until the last store read it
  }
#else
  __trap();  // built without sm_90a code: SddTmaUsable() never lets this run
#endif
}

// The tensor maps of op(A) (stored [m, K] or, TA, [K, m]), op(B) (stored [K, n] or, TB,
// [n, K]) and the output ([nnz * bs rows of bs] per batch entry), each with the batch as the
// third dimension (extent 1 for an operand shared by the batch); every box 64 x 64.
template <typename T, int BS, bool TA, bool TB>
cudaError_t EncodeMaps(const TcArgs& a, CUtensorMap* map_a, CUtensorMap* map_b,
                       CUtensorMap* map_o) {
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  cudaError_t err = tma::EncodeMatrices(map_a, kBf16, a.a, TA ? a.K : a.M, TA ? a.M : a.K, a.lda,
                                        a.a_bstride, a.batch, 64, 64);
  if (err != cudaSuccess) return err;
  err = tma::EncodeMatrices(map_b, kBf16, a.b, TB ? a.N : a.K, TB ? a.K : a.N, a.ldb,
                            a.b_bstride, a.batch, 64, 64);
  if (err != cudaSuccess) return err;
  return tma::EncodeMatrices(map_o, kBf16, a.out, a.nnz * BS, BS, a.ldo, a.o_bstride, a.batch,
                             64, 64);
}

template <typename T, int BS, bool TA, bool TB>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  using C = SddCfg<BS>;
  const int64_t chunks = (args.nnz + C::RUN - 1) / C::RUN;
  const int64_t items = args.batch * chunks;
  if (items == 0) return cudaSuccess;  // an empty output
  CUtensorMap map_a{}, map_b{}, map_o{};
  cudaError_t err = EncodeMaps<T, BS, TA, TB>(args, &map_a, &map_b, &map_o);
  if (err != cudaSuccess) return err;
  const auto kernel = SddTmaKernel<T, BS, TA, TB>;
  static std::atomic<uint64_t> configured{0};
  err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(kernel), C::SMEM);
  if (err != cudaSuccess) return err;
  const int64_t sms = MultiProcessors() > 0 ? MultiProcessors() : 1;  // one CTA per SM
  kernel<<<unsigned(items < sms ? items : sms), kThreads, C::SMEM, stream>>>(
      args, map_a, map_b, map_o, chunks);
  return cudaGetLastError();
}

// Whether this kernel can run `args` here (wgt::TmaCallFits; its coordinates: op(A)'s m and
// op(B)'s n).
template <typename T>
bool SddTmaUsable(const TcArgs& args, int block_size) {
  static std::atomic<uint8_t> state[64];  // per device: 0 unknown, 1 usable, 2 not
  return args.M > 0 && args.N > 0 &&
         wgt::TmaCallFits(args, block_size, args.M > args.N ? args.M : args.N, state,
                          reinterpret_cast<const void*>(SddTmaKernel<T, 64, false, false>));
}

// The launchers (one per block size and transposition) and the check the dispatch table
// (dispatch.cu) names: declared `extern template` there, instantiated in
// wgmma_sdd_tma_<dtype>.cu.
#define JBS_WGR_LAUNCHERS(PREFIX, T) \
  JBS_TMA_TRANS_RUNS(PREFIX, T, 64)  \
  JBS_TMA_TRANS_RUNS(PREFIX, T, 128) \
  PREFIX bool SddTmaUsable<T>(const TcArgs&, int);

}  // namespace wgr
}  // namespace jax_blocksparse
