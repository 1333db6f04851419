// Hopper (sm_90a) kernel of the DS-mode ops (dds, and dsd run as its transpose; tc_tile.cuh
// has the mapping) at block sizes 64 / 128, 16-bit types: persistent, warp-specialized, its
// operands brought by the bulk tensor copy engine (TMA), the blocks multicast to the two
// CTAs of a cluster (issue 20, item 2). The default at bs 64 and 128
// (JAX_BLOCKSPARSE_MATMUL_TMA=64: 64 alone, =0: neither). On an H100 (RESULTS 2026-12-06,
// third session; 8192^3, density 0.1) 1.20-1.38x wgmma_lines.cuh at bs 64, 1.22-1.27x at
// bs 128 (fwd 522 TFLOP/s; 0.78-0.86x before its items ran in a snake, below); memcheck,
// racecheck, synccheck clean.
//
// Work: an item is (batch entry g, pair of 256-row tiles, line u in `order`, longest first),
// the pairs in order and the lines of each in a snake: longest first in even pairs,
// shortest first in odd ones. The two CTAs of a cluster take the same items (cluster c:
// items c, c + clusters, ...), so a cluster's line moves by `clusters` mod `lines` per
// round: by 2 with 66 clusters and 64 lines (bs 128, N 8192), where without the snake the
// first clusters take the longest lines of every pair (simulated at density 0.1: the last
// cluster ends at 1.32x the mean work, 1.06x with the snake, the last round's tail
// included) and the clusters drift apart over the pairs. CTA rank r of a cluster takes
// the row tile 2 pair + r: both walk the line's blocks in the same steps (64 of K each),
// so each loads half of a step's B tile (64 x bs of op(block)) and multicasts it to both,
// and its own A tile (256 x 64 of op(A)). The line varies fastest, so the clusters at work
// at one time share the A panels of a few row tiles in L2 (an H100's profiles of bs 128,
// density 0.1: without the snake 726 MB from DRAM, 2.6x the operands and output, L2 86%
// busy, tensor pipes 39%, 287 us; with it 461 MB, tensor pipes 58%, 207 us). Operand
// traffic into the SMs: 1/bs + 1/512 bytes per useful FLOP at 16 bits (wgmma_lines.cuh:
// 1/bs + 1/256; RESULTS 2026-12-05 third session: the estimate that bounds bs 128 near
// 486 TFLOP/s at the L2 rate measured, 583 with this multicast).
//
// Roles (384 threads): warpgroup 0 the producer (setmaxnreg 40; its thread 0 issues the
// copies into a STAGES-deep ring: full[s] counts the stage's bytes, both halves of B among
// them, one from the peer's multicast; empty[s] counts 16 arrivals, one per consumer warp
// of both CTAs, since the producer's B half lands in both); warpgroups 1 and 2 the
// consumers (setmaxnreg 232), warpgroup c rows [128 c, 128 c + 128) of the tile as two
// m64nBSk16 wgmmas per 16 of K, float32 accumulators in registers, one wgmma group in
// flight (a stage is released, locally and to the peer, once the group after it has been
// issued and it has completed). Epilogue, bs 64: the consumers stage the tile in shared
// memory of its own, in the swizzled line layout (slabs of 64 output columns), and one
// thread hands it to a TMA store, which runs on while the consumers start the next item's
// MMAs; before staging the next tile that thread waits until the store has read the
// buffer. bs 128: the two consumer warpgroups take turns with one buffer that holds one
// warpgroup's 128 rows (so the ring keeps a fourth stage): warpgroup c stages its rows,
// its first thread hands them to a TMA store and waits until the store has read them, and
// the warpgroup then signals the other (named barrier kBarFree + the other's index, arrive
// / sync), which stages next; warpgroup 0 waits for warpgroup 1's signal before staging
// the next item's rows. So at bs 128 each item's path holds the store's read of the buffer
// and the other warpgroup's turn; the stores' global writes run on under the next item's
// MMAs, and the ring keeps filling with its operands meanwhile. Every output element is
// written once (deterministic); an empty line stores zeros. A row tile past M (the second
// of an odd last pair) loads zeros (TMA fills out-of-bounds boxes) and stores nothing, as
// the store drops rows past M.
//
// Shared memory (1024-aligned): the ring (STAGES x (A: 256 lines, B: bs lines of the
// swizzled line layout of ../wgmma.cuh), the epilogue's buffer, the mbarriers. bs 128: 4
// stages, 225 KB; bs 64: 4 stages, 193 KB.
#pragma once

#include "../launch_util.h"
#include "../tma.cuh"
#include "wgmma_common.cuh"

namespace jax_blocksparse {
namespace wgt {

using tc::TcArgs;
using wg::kBK;  // K per step: one 128-byte line of 16-bit elements
using wg::kLine;

constexpr int kThreads = 384;          // producer warpgroup + 2 consumer warpgroups
constexpr int kConsumerThreads = 256;
constexpr int kBM = 256;               // rows of a tile (128 per consumer warpgroup)
constexpr int kClusterCtas = 2;        // row tiles 2 pair, 2 pair + 1
constexpr int kEmptyArrivals = 8 * kClusterCtas;  // consumer warps of the cluster
// named barriers of the epilogue: at bs 64 one over both consumer warpgroups; at bs 128
// (in turn) 1, 2: the buffer free for warpgroup 0, 1, and 3, 4: its rows staged
constexpr int kBarEpilogue = 1, kBarFree = 1, kBarStaged = 3;
constexpr int kProducerRegs = 40, kConsumerRegs = 232;

template <int BS>
struct Cfg {
  static_assert(BS == 64 || BS == 128, "block size");
  static constexpr int STAGES = 4;
  static constexpr int A_BYTES = kBM * kLine;  // 256 lines
  static constexpr int B_BYTES = BS * kLine;   // bs lines (K-major) or bs / 64 slabs of 64
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int RING = STAGES * STAGE_BYTES;
  // the staged rows (bs 128: one warpgroup's at a time, IN_TURN; bs 64: the tile's), 2-byte
  // elements in swizzled lines: BS / 64 slabs of EPI_ROWS lines (output rows) of 64
  // columns, or, stored transposed (dsd), EPI_ROWS / 64 slabs of BS lines of 64 rows
  static constexpr bool IN_TURN = BS == 128;
  static constexpr int EPI_ROWS = IN_TURN ? kBM / 2 : kBM;
  static constexpr int EPI = 2 * EPI_ROWS * BS;
  static constexpr int O_SLABS = BS / 64, OT_SLABS = EPI_ROWS / 64;
  static constexpr int BARS = RING + EPI;            // full[STAGES], empty[STAGES]
  static constexpr int SMEM = BARS + 16 * STAGES + 1024;  // + 1024-byte alignment
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

// Consumer thread `ct`'s accumulators of row group `rg` of the staged rows (64 rows:
// [64 rg, 64 rg + 64)) into the buffer at `os` (Cfg::EPI above; SLAB_LINES lines per
// 64-column slab), converted to T. Each warp's stores fall on 32 distinct banks (the
// swizzle spreads its 8 rows, or its 4 column pairs, over the chunks of a line). The byte
// offsets are a per-thread part and a per-step constant in disjoint bits (line, 16-byte
// chunk, byte in the chunk), so each store's address is one XOR or add of an immediate.
template <typename T, int BS, int SLAB_LINES = Cfg<BS>::EPI_ROWS>
__device__ __forceinline__ void StageTile(const float* acc, unsigned char* os, bool o_trans,
                                          int rg, int ct) {
  const int lane = ct & 31, w4 = (ct >> 5) & 3, q = lane >> 2, cb2 = 2 * (lane & 3);
  if (o_trans) {
    // element (r, c) -> slab rg, line c = 8 j + cb2 + e, chunk (2 w4 + h) ^ (c & 7), byte
    // 2 q: the offset of step (j, h, e) is 1024 j + that of (0, h, e)
    unsigned char* slab = os + rg * (BS * kLine);
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int line = cb2 + e;
        unsigned char* base = slab + line * kLine + (((2 * w4 + h) ^ line) << 4) + 2 * q;
#pragma unroll
        for (int j = 0; j < BS / 8; ++j)
          *reinterpret_cast<T*>(base + 1024 * j) = tc::FromF<T>(acc[4 * j + 2 * h + e]);
      }
  } else {
    // element pair (r, c..c+1), r = 64 rg + 16 w4 + q + 8 h, c = 8 j + cb2 -> slab j / 8,
    // line r, chunk (j % 8) ^ (r & 7) = (j % 8) ^ q, byte 2 cb2
    const int r0 = 64 * rg + 16 * w4 + q;
    const int t0 = r0 * kLine + (q << 4) + 2 * cb2;
#pragma unroll
    for (int j = 0; j < BS / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int off = ((t0 + 1024 * h) ^ ((j % 8) << 4)) + (j / 8) * (SLAB_LINES * kLine);
        *reinterpret_cast<wg::Pair<T>*>(os + off) =
            wg::Pair<T>{tc::FromF<T>(acc[4 * j + 2 * h]), tc::FromF<T>(acc[4 * j + 2 * h + 1])};
      }
  }
}

// Item w of the persistent loop, as CTA `rank` of its cluster takes it: batch entry, line
// position in `order`, the line, its first list entry and K steps (ksub per block), the
// row tile's first row.
struct Item {
  int64_t g, u;
  int line, e0, steps, row0;
};
__device__ __forceinline__ Item ItemAt(const TcArgs& p, int64_t w, int64_t pairs, uint32_t rank,
                                       int ksub) {
  Item it;
  it.g = w / (pairs * p.lines);
  const int64_t pass = w / p.lines, pos = w % p.lines;  // (g, pair) in order; line position
  it.u = pass & 1 ? p.lines - 1 - pos : pos;             // the snake (see the top)
  it.line = __ldg(p.order + it.u);
  it.e0 = __ldg(p.ptr + it.line);
  it.steps = (__ldg(p.ptr + it.line + 1) - it.e0) * ksub;
  it.row0 = int(2 * (pass % pairs) + rank) * kBM;  // TmaUsable: M < 2^30
  return it;
}

template <typename T, int BS, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads, 1)
    WgtKernel(const __grid_constant__ TcArgs p, const __grid_constant__ CUtensorMap map_a,
              const __grid_constant__ CUtensorMap map_b,
              const __grid_constant__ CUtensorMap map_o, int64_t pairs) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Cfg<BS>;
  constexpr int STAGES = C::STAGES, KSUB = BS / kBK;
  constexpr bool kAMn = TA;   // A stored M-major (imm-trans-a = 1)
  constexpr bool kBMn = !TB;  // op(block) stored N-major (imm-trans-b = 1)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = tc::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t ring = raw + pad;
  auto full = [&](int s) { return ring + C::BARS + 8u * s; };
  auto empty = [&](int s) { return ring + C::BARS + 8u * (STAGES + s); };

  const int tid = threadIdx.x;
  const uint32_t rank = tma::ClusterCtaRank();
  const int64_t cluster = blockIdx.x / kClusterCtas, clusters = gridDim.x / kClusterCtas;
  const int64_t items = p.batch * pairs * p.lines;

  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      tma::MbarInit(full(s), 1);
      tma::MbarInit(empty(s), kEmptyArrivals);
    }
    tma::FenceMbarInit();
  }
  tma::ClusterSync();  // both CTAs' barriers initialised before any multicast or remote arrive

  if (tid < 128) {
    // ------------------------------------------------------------- producer (TMA)
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0) {
      tma::PrefetchMap(&map_a);
      tma::PrefetchMap(&map_b);
      int it = 0;
      for (int64_t w = cluster; w < items; w += clusters) {
        const Item item = ItemAt(p, w, pairs, rank, KSUB);
        const int e0 = item.e0, steps = item.steps, row0 = item.row0;
        const int ga = p.a_bstride != 0 ? int(item.g) : 0;
        const int gb = p.b_bstride != 0 ? int(item.g) : 0;
        for (int s = 0; s < steps; ++s, ++it) {
          const int e = e0 + s / KSUB, kin = (s % KSUB) * kBK;
          const int k = __ldg(p.idx + e) * BS + kin;  // K of op(A)
          const int brow = __ldg(p.blk + e) * BS;     // the block's first row in map_b
          const int st = it % STAGES;
          tma::MbarWait(empty(st), ((it / STAGES) & 1) ^ 1);
          tma::MbarArriveExpectTx(full(st), C::STAGE_BYTES);
          const uint32_t sa = ring + uint32_t(st * C::STAGE_BYTES), sb = sa + C::A_BYTES;
          if constexpr (kAMn) {  // 4 slabs of 64 rows, 64 lines of k each
#pragma unroll
            for (int j = 0; j < kBM / 64; ++j)
              tma::Load3d(sa + j * 64 * kLine, &map_a, row0 + 64 * j, k, ga, full(st));
          } else {  // 256 lines (rows) of 64 k
            tma::Load3d(sa, &map_a, k, row0, ga, full(st));
          }
          // this CTA's half of B, into both CTAs (rank r: the second half's bytes)
          const uint32_t sbh = sb + rank * (C::B_BYTES / 2);
          if constexpr (kBMn && BS == 128) {  // slab r: columns [64 r, 64 r + 64), 64 k lines
            tma::Load3dMulticast(sbh, &map_b, 64 * int(rank), brow + kin, gb, full(st), 0x3);
          } else if constexpr (kBMn) {  // the one slab's k lines [32 r, 32 r + 32)
            tma::Load3dMulticast(sbh, &map_b, 0, brow + kin + 32 * int(rank), gb, full(st), 0x3);
          } else {  // K-major: lines (columns n) [bs/2 r, bs/2 r + bs/2) of 64 k
            tma::Load3dMulticast(sbh, &map_b, kin, brow + (BS / 2) * int(rank), gb, full(st),
                                 0x3);
          }
        }
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    // the warpgroup index made warp-uniform (the descriptors' math in uniform registers)
    const int ct = tid - 128, cw = __shfl_sync(0xffffffffu, ct / 128, 0), lane = tid & 31;
    const uint32_t peer = rank ^ 1u;
    constexpr uint32_t kSbo = 1024;
    constexpr uint32_t kALbo = kAMn ? kBK * kLine : 16, kBLbo = kBMn ? kBK * kLine : 16;
    constexpr uint32_t kAkk = kAMn ? 16 * kLine : 32, kBkk = kBMn ? 16 * kLine : 32;
    // row group rg (64 rows) of this warpgroup: line 64 (2 cw + rg) (K-major) or slab 2 cw + rg
    const uint64_t da0 = wg::Desc(ring + uint32_t((2 * cw) * 64 * kLine), kALbo, kSbo);
    const uint64_t da1 = wg::Desc(ring + uint32_t((2 * cw + 1) * 64 * kLine), kALbo, kSbo);
    const uint64_t db0 = wg::Desc(ring + C::A_BYTES, kBLbo, kSbo);
    // a consumed stage back to both producers: one arrival per warp on each CTA's barrier
    auto release = [&](int st) {
      __syncwarp();
      if (lane == 0) tma::MbarArrive(empty(st));
      else if (lane == 1) tma::MbarArriveCluster(empty(st), peer);
    };
    unsigned char* os = smem + C::RING;
    const uint32_t os_addr = ring + uint32_t(C::RING);
    if (ct == 0) tma::PrefetchMap(&map_o);

    int it = 0;
    for (int64_t w = cluster; w < items; w += clusters) {
      const Item item = ItemAt(p, w, pairs, rank, KSUB);
      const int steps = item.steps;
      const int64_t row0 = item.row0;

      float acc0[BS / 2], acc1[BS / 2];
#pragma unroll
      for (int i = 0; i < BS / 2; ++i) acc0[i] = acc1[i] = 0.f;
      for (int s = 0; s < steps; ++s, ++it) {
        const int st = it % STAGES;
        tma::MbarWait(full(st), (it / STAGES) & 1);
        const uint64_t so = uint64_t((st * C::STAGE_BYTES) >> 4);
        wg::FenceAcc(acc0);
        wg::FenceAcc(acc1);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          const uint64_t db = db0 + so + ((kk * kBkk) >> 4);
          wg::Mma<T, BS, kAMn ? 1 : 0, kBMn ? 1 : 0>(acc0, da0 + so + ((kk * kAkk) >> 4), db);
          wg::Mma<T, BS, kAMn ? 1 : 0, kBMn ? 1 : 0>(acc1, da1 + so + ((kk * kAkk) >> 4), db);
        }
        wg::Commit();
        wg::Wait<1>();  // the previous step's group is done: its stage goes back
        wg::FenceAcc(acc0);
        wg::FenceAcc(acc1);
        if (s > 0) release((it - 1) % STAGES);
      }
      wg::Wait<0>();
      wg::FenceAcc(acc0);
      wg::FenceAcc(acc1);
      if (steps > 0) release((it - 1) % STAGES);

      // ---- epilogue: the rows -> shared memory (the output's orientation) -> TMA store
      // of the staged rows [r0, r0 + EPI_ROWS) of the tile, by the calling thread
      auto store = [&](int64_t r0) {
        const int col0 = item.line * BS, g = int(item.g);
        if (p.o_trans) {  // map_o: [N lines of M] per batch entry; slab j: rows 64 j..
#pragma unroll
          for (int j = 0; j < C::OT_SLABS; ++j)
            if (r0 + 64 * j < p.M)  // (a slab wholly past M: nothing to write)
              tma::Store3d(&map_o, int(r0) + 64 * j, col0, g, os_addr + j * (BS * kLine));
        } else if (r0 < p.M) {  // map_o: [M lines of N]; slab j: columns 64 j..
#pragma unroll
          for (int j = 0; j < C::O_SLABS; ++j)
            tma::Store3d(&map_o, col0 + 64 * j, int(r0), g, os_addr + j * (C::EPI_ROWS * kLine));
        }
        tma::StoreCommit();
      };
      if constexpr (C::IN_TURN) {  // the warpgroups in turn, 0 first (top of the file)
        const bool first = w == cluster, last = w + clusters >= items;
        if (cw == 1 || !first) tma::NamedBarrier(kBarFree + cw, kConsumerThreads);
        StageTile<T, BS>(acc0, os, p.o_trans, 0, ct);
        StageTile<T, BS>(acc1, os, p.o_trans, 1, ct);
        tma::FenceProxyAsync();  // the staged rows before the async proxy reads them
        tma::NamedBarrier(kBarStaged + cw, 128);
        if (ct % 128 == 0) {
          store(row0 + C::EPI_ROWS * cw);  // this warpgroup's rows
          tma::StoreWaitRead();            // the buffer read: the other warpgroup may stage
        }
        __syncwarp();
        if (cw == 0 || !last) tma::NamedArrive(kBarFree + (cw ^ 1), kConsumerThreads);
      } else {  // the whole tile at once; its store read under the next item's MMAs
        if (ct == 0) tma::StoreWaitRead();  // the last item's store has read the buffer
        tma::NamedBarrier(kBarEpilogue, kConsumerThreads);
        StageTile<T, BS>(acc0, os, p.o_trans, 2 * cw, ct);
        StageTile<T, BS>(acc1, os, p.o_trans, 2 * cw + 1, ct);
        tma::FenceProxyAsync();  // the staged tile before the async proxy reads it
        tma::NamedBarrier(kBarEpilogue, kConsumerThreads);
        if (ct == 0) store(row0);
      }
    }
    if (!C::IN_TURN && ct == 0) tma::StoreWaitRead();  // the buffer stays until read
  }
  __syncwarp();        // warp 0 reconverged (its thread 0 was the producer)
  tma::ClusterSync();  // no CTA leaves while its peer may still write into its ring
#else
  __trap();  // built without sm_90a code: TmaUsable() never lets this run
#endif
}

// Clusters of `kernel` that fit on the device at once (asked once per device and kernel:
// `value`, the caller's; one per two SMs when the query fails).
template <typename Kernel>
int MaxClusters(Kernel kernel, cudaLaunchConfig_t cfg, std::atomic<int> (&value)[64]) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  int n = value[dev & 63].load(std::memory_order_acquire);
  if (n == 0) {
    if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      n = MultiProcessors() / kClusterCtas;
    }
    n = n > 0 ? n : 1;
    value[dev & 63].store(n, std::memory_order_release);
  }
  return n;
}

// The tensor maps of op(A) (K-major: [M rows, K], M-major: [K rows, M]) and of the blocks
// as a matrix of nnz * bs rows of bs (op(block)'s k rows when N-major, its n rows when
// K-major), each with the batch as the third dimension (extent 1 for an operand shared by
// the batch), and their boxes: A 64 x 256 (K-major) or 64 x 64 (M-major, one slab), B one
// CTA's half of a step; and the output's (M rows of N = lines x bs, or N rows of M when
// stored transposed) with the batch third, its box one slab of the staged rows (64
// columns x Cfg::EPI_ROWS rows, 256 at bs 64 and 128 at bs 128, or 64 rows x bs of N).
template <typename T, int BS, bool TA, bool TB>
cudaError_t EncodeMaps(const TcArgs& a, CUtensorMap* map_a, CUtensorMap* map_b,
                       CUtensorMap* map_o) {
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  cudaError_t err = tma::EncodeMatrices(map_a, kBf16, a.a, TA ? a.K : a.M, TA ? a.M : a.K, a.lda,
                                        a.a_bstride, a.batch, 64, TA ? 64u : uint32_t(kBM));
  if (err != cudaSuccess) return err;
  // N-major: bs 128 one 64-column slab of the step's 64 k rows, bs 64 half its k rows;
  // K-major: half the block's n rows, 64 k each
  err = tma::EncodeMatrices(map_b, kBf16, a.b, a.nnz * BS, BS, BS, a.b_bstride, a.batch, 64,
                            !TB ? (BS == 128 ? 64u : 32u) : uint32_t(BS / 2));
  if (err != cudaSuccess) return err;
  const int64_t n = a.lines * BS;
  return tma::EncodeMatrices(map_o, kBf16, a.out, a.o_trans ? n : a.M, a.o_trans ? a.M : n,
                             a.ldo, a.o_bstride, a.batch, 64,
                             a.o_trans ? uint32_t(BS) : uint32_t(Cfg<BS>::EPI_ROWS));
}

template <typename T, int BS, bool TA, bool TB>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  using C = Cfg<BS>;
  args.m_tiles = (args.M + kBM - 1) / kBM;
  const int64_t pairs = (args.m_tiles + 1) / 2;
  const int64_t items = args.batch * pairs * args.lines;
  if (items == 0) return cudaSuccess;  // an empty output
  CUtensorMap map_a{}, map_b{}, map_o{};
  cudaError_t err = EncodeMaps<T, BS, TA, TB>(args, &map_a, &map_b, &map_o);
  if (err != cudaSuccess) return err;
  const auto kernel = WgtKernel<T, BS, TA, TB>;
  static std::atomic<uint64_t> configured{0};
  err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(kernel), C::SMEM);
  if (err != cudaSuccess) return err;
  // one cluster for the occupancy query, then as many as fit (at most one per item)
  ClusterLaunch launch(dim3(kClusterCtas), kThreads, C::SMEM, kClusterCtas, stream);
  static std::atomic<int> clusters[64];  // per device
  const int64_t fit = MaxClusters(kernel, launch.cfg, clusters);
  launch.cfg.gridDim = dim3(unsigned(kClusterCtas * (items < fit ? items : fit)));
  return cudaLaunchKernelEx(&launch.cfg, kernel, args, map_a, map_b, map_o, pairs);
}

// What the TMA matmul kernels (this one, wgmma_sdd_tma.cuh) need of any call: block size 64
// or 128, 16-byte aligned operand and output rows (the output's too: the TMA store),
// blocks and a contracted size (a tensor map's extents are non-zero: a layout without
// blocks runs wgmma_lines.cuh, which stores the zeros), coordinates that fit the copies'
// 32-bit ones (`extent`: each kernel's largest other coordinate), an sm_90 device, sm_90a
// code built (`kernel`, probed once per device into `state`) and the tensor-map encoder.
inline bool TmaCallFits(const TcArgs& args, int block_size, int64_t extent,
                        std::atomic<uint8_t> (&state)[64], const void* kernel) {
#ifndef JBS_WGMMA_BUILT
  return false;
#endif
  const int64_t kLimit = int64_t(1) << 30;
  if ((block_size != 64 && block_size != 128) || !args.a_vec || !args.b_vec || !args.o_vec ||
      args.nnz <= 0 || args.K <= 0 || args.K >= kLimit || extent >= kLimit ||
      int64_t(args.nnz) * block_size >= kLimit || args.batch >= kLimit)
    return false;
  return UsableAsSm90(state, kernel, tma::GetEncodeTiled() != nullptr);
}

// Whether this kernel can run `args` here (TmaCallFits; its coordinates: the output's
// columns, lines x bs, and the row tiles' rows, up to M + 2 x 256).
template <typename T>
bool TmaUsable(const TcArgs& args, int block_size) {
  static std::atomic<uint8_t> state[64];  // per device: 0 unknown, 1 usable, 2 not
  const int64_t lines = args.lines * block_size, rows = args.M + 2 * kBM;
  return TmaCallFits(args, block_size, lines > rows ? lines : rows, state,
                     reinterpret_cast<const void*>(WgtKernel<T, 64, false, false>));
}

// Run<T, BS, TA, TB> for every transposition (the TMA kernels' launchers).
#define JBS_TMA_TRANS_RUNS(PREFIX, T, BS)                              \
  PREFIX cudaError_t Run<T, BS, false, false>(TcArgs, cudaStream_t);   \
  PREFIX cudaError_t Run<T, BS, false, true>(TcArgs, cudaStream_t);    \
  PREFIX cudaError_t Run<T, BS, true, false>(TcArgs, cudaStream_t);    \
  PREFIX cudaError_t Run<T, BS, true, true>(TcArgs, cudaStream_t);
// The launchers (one per block size and transposition) and the check the dispatch table
// (dispatch.cu) names: declared `extern template` there, instantiated in
// wgmma_tma_<dtype>.cu.
#define JBS_WGT_LAUNCHERS(PREFIX, T) \
  JBS_TMA_TRANS_RUNS(PREFIX, T, 64)  \
  JBS_TMA_TRANS_RUNS(PREFIX, T, 128) \
  PREFIX bool TmaUsable<T>(const TcArgs&, int);

}  // namespace wgt
}  // namespace jax_blocksparse
