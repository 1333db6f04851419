// The Hopper attention backward (bwd_sm90.cu, variants 2 and 3) at head dim 256. The same
// design (TMA loads into an mbarrier ring, a producer warp and two consumer warpgroups,
// wgmma for every product), the same statistics kernel, lists, masks and mask sources;
// only the work a CTA owns differs, because a 64-row warpgroup cannot hold 64 x 256
// float accumulators twice (dK and dV: 256 registers a thread) and a 128-row tile of
// 256 columns does not leave room for a ring (Q and dO of 128 rows: 128 KB).
//
//  * Each CTA owns 64 rows: the dK/dV kernel 64 keys (half of a 128-key block: grid z),
//    the dQ kernel 64 queries (half of a query block). Consumer warpgroup c owns output
//    columns [128 c, 128 c + 128) of those rows (dK and dV: 64 + 64 registers; dQ: 64).
//  * The scores are split by columns instead: warpgroup c computes S and dP for 32 of the
//    64 columns of a step (wgmma m64n32k16 over D = 256, both operands K-major in shared
//    memory), forms P and dS for them, and writes them (16-bit) into a shared 64 x 64
//    tile; after a named barrier of the two warpgroups each runs its output half's
//    product with that tile as the A operand from shared memory (m64n128k16, B N-major):
//    dV += P^T dO and dK += dS^T Q (dK/dV kernel), dQ += dS K (dQ kernel). No product is
//    computed twice. The exchange tiles are double-buffered by step parity: a warpgroup
//    writes buffer x at step n after it passed the barrier of step n - 1, which the other
//    reached only after its products of step n - 2 (the last reading x) completed.
//  * The dK/dV kernel (variant 2, PIPE) issues dV once P^T is published, while it forms
//    dS^T; variant 3 issues dV with dK after dS^T; each step ends with its products done
//    (the stage then released). The dQ kernel (PIPE) forms P while dP runs and leaves its
//    dQ product running under the next step's S (the stage released once it is done);
//    variant 3 waits for each product.
//  * The dQ kernel walks each 128-key list entry as two 64-key stages (a half wholly past
//    kv_lengths or the causal limit of the CTA's last query is neither loaded nor run).
//
// Shared memory (2 stages): dK/dV K, V (32 KB each), Q + dO per stage (64 KB), lse/delta
// rows, P^T and dS^T tiles (2 x 2 x 8 KB): 226 KB; dQ Q, dO (32 KB each), K + V per stage
// (64 KB), dS tiles (2 x 8 KB): 209 KB. One CTA per SM.
//
// Masks, NaN safety (K rows past kv_lengths or in empty fine-mask columns zeroed before
// the dQ product reads them), the soft cap (t = tanh(s scale_cap), P from t, dS times
// 1 - t^2) and determinism (every output element written by one CTA, sums in list and
// group order) are those of bwd_sm90.cu.
#include "bwd_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>

#include "../launch_util.h"
#include "../tma.cuh"
#include "../wgmma.cuh"
#include "bwd_sm90_common.cuh"

namespace jax_blocksparse {
namespace attn {
namespace sm90bwd {

constexpr int kD = 256;
[[maybe_unused]] constexpr int kSlabs = kD / 64;
constexpr int kTile = 64 * kD * 2;    // a 64-row tile of 256 columns (16-bit): 32 KB
constexpr int kXTile = 64 * kLine;    // a 64 x 64 16-bit exchange tile (one slab): 8 KB
constexpr int kStages256 = 2;
[[maybe_unused]] constexpr int kBarP = 2, kBarDS = 3;  // named barriers: both consumers

// Element (row r, column q) of a 64 x 64 exchange tile (128-byte swizzle, K-major for the
// A operand): a thread stores its pairs of columns 8 j + 2 t, + 1 of rows r0 and r0 + 8
// for its 32-column half `half` as 32-bit words.
template <typename T>
__device__ __forceinline__ void StoreExchange(unsigned char* tile, const float (&x)[16], int r0,
                                              int t, int half) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    *reinterpret_cast<uint32_t*>(tile + wg::ChunkOffset(r0, 4 * half + j) + 4 * t) =
        Ops<T>::Pack(x[4 * j], x[4 * j + 1]);
    *reinterpret_cast<uint32_t*>(tile + wg::ChunkOffset(r0 + 8, 4 * half + j) + 4 * t) =
        Ops<T>::Pack(x[4 * j + 2], x[4 * j + 3]);
  }
}

// The score products of a step for one warpgroup's 32 columns: s = A_s B_s^T and
// dp = A_p B_p^T over D = 256 (16 k16 slices of m64n32k16, both operands K-major in shared
// memory; the B descriptors at the warpgroup's 32 rows), issued as two commit groups (S,
// then dP: S can be waited for alone) when SPLIT, else as one. The caller waits.
template <typename T, bool SPLIT>
__device__ __forceinline__ void IssueScores(float (&s)[16], float (&dp)[16], uint64_t a_s,
                                            uint64_t b_s, uint64_t a_p, uint64_t b_p) {
  FenceAcc(s);
  FenceAcc(dp);
  wg::Fence();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
    wg::MmaSS<T, 32>(s, a_s + KSlice(kk), b_s + KSlice(kk), kk > 0);
  if constexpr (SPLIT) wg::Commit();
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk)
    wg::MmaSS<T, 32>(dp, a_p + KSlice(kk), b_p + KSlice(kk), kk > 0);
  wg::Commit();
}

// ============================================================== dQ
struct DqSmem256 {
  // Q at 0, dO at kTile; stage st: K at kKV + 2 st kTile, V + kTile; dS tiles at kX
  static constexpr int kKV = 2 * kTile;
  static constexpr int kX = kKV + 2 * kStages256 * kTile;
  static constexpr int kBars = kX + 2 * kXTile;
  static constexpr int kNumBars = 1 + 2 * kStages256;
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;
};

// Whether the dQ kernel runs the 64-key half starting at kh0 (producer and consumers skip
// the same halves): a key before kv_lengths and, when causal, not past the last query.
__device__ __forceinline__ bool HalfRuns(int kh0, int kvlen, bool causal, int qlast_off) {
  return kh0 < kvlen && (!causal || kh0 <= qlast_off);
}

template <typename T, bool PIPE>
__global__ void __launch_bounds__(kThreads, 1)
    DqKernel256(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
                const __grid_constant__ CUtensorMap tm_do, const __grid_constant__ CUtensorMap tm_k,
                const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = DqSmem256;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const Ring<kStages256> ring = Ring<kStages256>::At(smem_raw, S::kBars);
  unsigned char* smem = ring.ptr;
  const uint32_t base = ring.base;
  const uint32_t bar_q = ring.Once();
  auto full = [&](int st) { return ring.Full(st); };
  auto empty = [&](int st) { return ring.Empty(st); };
  auto kv_off = [&](int st) { return S::kKV + st * 2 * kTile; };  // K of stage st (bytes)

  const int tid = threadIdx.x, wgi = tid / 128;
  const Cell cell = CellOf(a);
  const int bh = cell.bh, b = bh / a.hq, h = bh % a.hq;
  const Lists& L = a.by_query;
  const int64_t lines0 = FirstLine(a, L, b, a.hm == 1 ? 0 : h);
  const int r = __ldg(L.order + lines0 + cell.rank);
  const int q0 = r * kBS + 64 * int(blockIdx.z);  // this CTA's 64 queries
  if (q0 >= a.tq) return;  // the second half of a partial last block holds none (uniform)
  const int hk = h / a.group;
  const int off = QueryOffset(a, b);  // causal position of query row 0
  const int kvlen = KvLength(a, b);
  const int qlast = q0 + 63 + off;

  KeyTiles<kBS> tiles;
  tiles.Begin(L, lines0 + r, kvlen, qlast, a.causal);

  ring.Init(tid == 0);

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0 && !tiles.Done()) {
      PrefetchMaps(&tm_q, &tm_do, &tm_k, &tm_v);
      tma::MbarArriveExpectTx(bar_q, 2 * kTile);
      LoadSlabs<kSlabs>(base, &tm_q, h, q0, b, bar_q);
      LoadSlabs<kSlabs>(base + kTile, &tm_do, h, q0, b, bar_q);
      int n = 0;  // stages issued
      for (; !tiles.Done(); tiles.Next()) {
        const int start = tiles.Start();
        for (int hh = 0; hh < 2; ++hh) {
          const int kh0 = start + 64 * hh;
          if (!HalfRuns(kh0, kvlen, a.causal, qlast)) continue;
          const int st = n % kStages256;
          const uint32_t ph = (n / kStages256) & 1;
          ++n;
          const uint32_t sk = base + kv_off(st);
          tma::MbarWait(empty(st), ph ^ 1);
          tma::MbarArriveExpectTx(full(st), 2 * kTile);
          LoadSlabs<kSlabs>(sk, &tm_k, hk, kh0, b, full(st));
          LoadSlabs<kSlabs>(sk + kTile, &tm_v, hk, kh0, b, full(st));
        }
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    const int cw = wgi - 1, ctid = tid - 128;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int r0 = w4 * 16 + g;               // this thread's rows r0, r0 + 8 of the CTA
    const int i0 = q0 + r0, i1 = i0 + 8;      // ... as query rows
    const float* stats = Stats(a, b, h);  // padded rows: i0, i1 past Tq are in range
    const float lse0 = stats[i0], lse1 = stats[i1];
    const float dl0 = stats[PaddedRows(a.tq) + i0], dl1 = stats[PaddedRows(a.tq) + i1];
    const float sl2 = a.scale_log2;
    const bool segs = a.kv_ids != nullptr;
    const bool capped = a.cap_log2 > 0.f;  // soft cap: s keeps t = tanh(s scale_cap)

    float dq[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) dq[i] = 0.f;
    const uint64_t dQ = wg::Desc(base, 16, 1024);
    const uint64_t dO = wg::Desc(base + kTile, 16, 1024);

    KeyTiles<kBS> cur = tiles;
    if (!cur.Done()) tma::MbarWait(bar_q, 0);
    int n = 0;      // stages consumed
    int pend = -1;  // PIPE: the stage whose dQ product may still be in flight (not released)
    for (; !cur.Done(); cur.Next()) {
      const int start = cur.Start();
      const bool partial = cur.e < cur.npart;
      const bool causal_part = a.causal && partial;
      // a fine mask (a.mask_bits, block size 16 / 32 / 64): the word of a partial entry;
      // bit j of `groups` whether this thread's rows (one mask block row) visit keys
      // 8j + [0, 8) of the 128-key entry; `unvisited` the block columns no row visits
      uint32_t groups = ~0u, unvisited = 0u;
      if (a.mask_bits != nullptr && partial) {
        const uint64_t w = __ldg(a.mask_bits + (cur.list - L.lists) + cur.e);
        const int lg = a.mask_lg;
        const int row_block = (64 * int(blockIdx.z) + r0) >> lg;
        groups = SpreadBits(uint32_t(w >> (row_block * (kBS >> lg))), lg);
        unvisited = EmptyColumns(w, lg);
      }
#pragma unroll 1
      for (int hh = 0; hh < 2; ++hh) {
        const int kh0 = start + 64 * hh;
        if (!HalfRuns(kh0, kvlen, a.causal, qlast)) continue;
        const int st = n % kStages256;
        const uint32_t ph = (n / kStages256) & 1;
        unsigned char* xtile = smem + S::kX + (n & 1) * kXTile;
        ++n;
        const uint32_t sk = base + kv_off(st), sv = sk + kTile;
        const bool cut = kh0 + 64 > kvlen;
        const bool masked = partial || cut;
        // this half's block columns that no row visits (bit c: keys [c << lg, ...) of the
        // entry; this half holds columns (64 hh) >> lg onwards)
        uint32_t empty_cols = 0u;
        if (unvisited != 0u) {
          const int lg = a.mask_lg;
          const int per_half = 64 >> lg;
          empty_cols = (unvisited >> (hh * per_half)) & ((1u << per_half) - 1u);
        }
        tma::MbarWait(full(st), ph);
        if (cut || empty_cols != 0u) {  // zero the K rows of keys >= kvlen and of empty columns
          unsigned char* pk = smem + kv_off(st);
          for (int c = ctid; c < kSlabs * 64 * 8; c += kConsumers) {  // 16-byte chunks
            const int sl = c / 512, row = (c / 8) % 64;
            if (kh0 + row >= kvlen ||
                (empty_cols != 0u && ((empty_cols >> (row >> a.mask_lg)) & 1u)))
              *reinterpret_cast<uint4*>(pk + sl * kSlab + row * kLine + (c % 8) * 16) =
                  make_uint4(0, 0, 0, 0);
          }
          tma::FenceProxyAsync();
          tma::NamedBarrier(kBarZeroK, kConsumers);
        }
        // S and dP for keys kh0 + 32 cw + [0, 32): Q / dO (A) times K / V rows (B), K-major
        float s[16], dp[16];
        {
          // PIPE: S, then dP (P is formed while dP runs)
          IssueScores<T, PIPE>(s, dp, dQ, wg::Desc(sk + 32 * cw * kLine, 16, 1024), dO,
                               wg::Desc(sv + 32 * cw * kLine, 16, 1024));
          if constexpr (PIPE) {
            wg::Wait<1>();  // S done, and the dQ product before it (issued earlier)
            FenceAcc(s);
            if (pend >= 0) {  // that product has read its K: release the stage
              FenceAcc(dq);
              tma::MbarArrive(empty(pend));
              pend = -1;
            }
          } else {
            wg::Wait<0>();
            FenceAcc(s);
          }
        }
        // P (into s; capped: t into tc, then P from it)
        float tc[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          const float l2 = (i >> 1) & 1 ? lse1 : lse0;  // element 4 j + e: row i1 for e = 2, 3
          if (capped) {
            tc[i] = Tanh(s[i] * a.scale_cap);
            s[i] = Exp2(fmaf(tc[i], a.cap_log2, -l2));
          } else {
            tc[i] = 0.f;
            s[i] = Exp2(fmaf(s[i], sl2, -l2));
          }
        }
        if constexpr (PIPE) wg::Wait<0>();  // dP done
        FenceAcc(dp);
        // dS (into dp); on partial entries 0 where the pair is not allowed (by selection)
        int qid0 = 0, qid1 = 0;
        if (masked && segs) {
          const int32_t* qids = PaddedIds(a.q_ids, b, a.tq, kBS);
          qid0 = __ldg(qids + i0);
          qid1 = __ldg(qids + i1);
        }
        const uint32_t hgroups = groups >> (8 * hh + 4 * cw);  // this warpgroup's 8-key groups
        const int key_base = kh0 + 32 * cw + 2 * t;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          int kid0 = 0, kid1 = 0;  // documents of keys key_base + 8 j, + 1
          if (masked && segs) {
            const int32_t* kids = PaddedIds(a.kv_ids, b, a.tk, kBS) + key_base + 8 * j;
            kid0 = __ldg(kids);
            kid1 = __ldg(kids + 1);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hi = e >> 1, i = 4 * j + e;
            float ds = s[i] * (dp[i] - (hi ? dl1 : dl0));
            if (capped) ds *= 1.f - tc[i] * tc[i];
            if (masked && (!Allowed(hi ? i1 : i0, key_base + 8 * j + (e & 1), kvlen, causal_part,
                                    off, hi ? qid1 : qid0, (e & 1) ? kid1 : kid0) ||
                           !((hgroups >> j) & 1u)))
              ds = 0.f;
            dp[i] = ds;
          }
        }
        StoreExchange<T>(xtile, dp, r0, t, cw);
        tma::FenceProxyAsync();
        tma::NamedBarrier(kBarDS, kConsumers);
        // dQ[:, 128 cw ..] += dS (64 x 64, A from shared memory) K[:, 128 cw ..] (N-major)
        const uint64_t dS = wg::Desc(base + S::kX + ((n - 1) & 1) * kXTile, 16, 1024);
        const uint64_t dKn = wg::Desc(sk + 2 * cw * kSlab, kSlab, 1024);
        FenceAcc(dq);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::Mma<T, 128, 0, 1>(dq, dS + KSlice(kk), dKn + NSlice(kk));
        wg::Commit();
        if constexpr (PIPE) {
          pend = st;  // released once the product is done (next S wait, or the end)
        } else {
          wg::Wait<0>();
          FenceAcc(dq);
          tma::MbarArrive(empty(st));
        }
      }
    }
    if constexpr (PIPE) {
      wg::Wait<0>();
      FenceAcc(dq);
      if (pend >= 0) tma::MbarArrive(empty(pend));
    }
    const int64_t qstride = int64_t(a.hq) * kD;
    T* g0 = static_cast<T*>(a.dq) + (int64_t(b) * a.tq + i0) * qstride + int64_t(h) * kD + 128 * cw;
    StoreAcc<T, 128>(dq, a.scale, g0, g0 + 8 * qstride, t, i0 < a.tq, i1 < a.tq);
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// ============================================================== dK, dV
struct DkvSmem256 {
  // K at 0, V at kTile; stage st: Q at kQ + 2 st kTile, dO + kTile; lse, delta rows (64
  // floats each) at kLD + 512 st; P^T tiles at kX, dS^T tiles at kX + 2 kXTile
  static constexpr int kQ = 2 * kTile;
  static constexpr int kLD = kQ + 2 * kStages256 * kTile;
  static constexpr int kX = kLD + 512 * kStages256;
  static constexpr int kBars = kX + 4 * kXTile;
  static constexpr int kNumBars = 1 + 2 * kStages256;
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;
};

template <typename T, bool PIPE>
__global__ void __launch_bounds__(kThreads, 1)
    DkvKernel256(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
                 const __grid_constant__ CUtensorMap tm_do,
                 const __grid_constant__ CUtensorMap tm_k,
                 const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = DkvSmem256;
  constexpr int BQ = 64;  // queries per step
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const Ring<kStages256> ring = Ring<kStages256>::At(smem_raw, S::kBars);
  unsigned char* smem = ring.ptr;
  const uint32_t base = ring.base;
  const uint32_t bar_kv = ring.Once();
  auto full = [&](int st) { return ring.Full(st); };
  auto empty = [&](int st) { return ring.Empty(st); };

  const int tid = threadIdx.x, wgi = tid / 128;
  const Cell cell = CellOf(a);
  const int bh = cell.bh, b = bh / a.hkv, hk = bh % a.hkv;
  const Lists& L = a.by_key;
  const int h_first = hk * a.group;
  const int mh0 = MaskHead(a, b, a.hm == 1 ? 0 : h_first);  // lines of the group's first head
  const int rk = __ldg(L.order + int64_t(mh0) * L.lines + cell.rank);
  const int kcol = 64 * int(blockIdx.z);  // this CTA's first key column of the block
  const int k0 = rk * kBS + kcol;
  if (k0 >= a.tk) return;  // the second half of a partial last block holds none (uniform)
  const int off = QueryOffset(a, b);
  const int kvlen = KvLength(a, b);

  QueryCursor<BQ> qc;
  qc.Init(L, rk, mh0, a.hm == 1 ? 0 : 1, kBS, a.group, k0, off, kvlen, a.tq, a.causal);

  ring.Init(tid == 0);

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0 && !qc.Done()) {
      PrefetchMaps(&tm_q, &tm_do, &tm_k, &tm_v);
      tma::MbarArriveExpectTx(bar_kv, 2 * kTile);  // rows past Tk: zero filled
      LoadSlabs<kSlabs>(base, &tm_k, hk, k0, b, bar_kv);
      LoadSlabs<kSlabs>(base + kTile, &tm_v, hk, k0, b, bar_kv);
      for (int it = 0; !qc.Done(); ++it, qc.Next()) {
        const int st = it % kStages256;
        const uint32_t ph = (it / kStages256) & 1;
        const int h = h_first + qc.gi;
        const int s0 = qc.Start(qc.t);
        const uint32_t sq = base + S::kQ + st * 2 * kTile;
        const float* stats = Stats(a, b, h) + s0;  // padded rows: 64 in range, 16-byte aligned
        tma::MbarWait(empty(st), ph ^ 1);
        tma::MbarArriveExpectTx(full(st), 2 * kTile + 512);
        LoadSlabs<kSlabs>(sq, &tm_q, h, s0, b, full(st));
        LoadSlabs<kSlabs>(sq + kTile, &tm_do, h, s0, b, full(st));
        tma::LoadBulk(base + S::kLD + 512 * st, stats, 256, full(st));
        tma::LoadBulk(base + S::kLD + 512 * st + 256, stats + PaddedRows(a.tq), 256, full(st));
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    const int cw = wgi - 1;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int r0 = w4 * 16 + g;                // this thread's key rows r0, r0 + 8 of the CTA
    const int key0 = k0 + r0, key1 = key0 + 8;
    const float sl2 = a.scale_log2;
    const bool cut = k0 + 64 > kvlen;
    const bool segs = a.kv_ids != nullptr;
    const bool capped = a.cap_log2 > 0.f;  // soft cap: t = tanh(s scale_cap) kept in tc

    float dk[64], dv[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) dk[i] = dv[i] = 0.f;
    const uint64_t dK = wg::Desc(base, 16, 1024);
    const uint64_t dV = wg::Desc(base + kTile, 16, 1024);

    QueryCursor<BQ> cur = qc;
    if (!cur.Done()) tma::MbarWait(bar_kv, 0);
    for (int it = 0; !cur.Done(); ++it, cur.Next()) {
      const int st = it % kStages256;
      const uint32_t ph = (it / kStages256) & 1;
      const int s0 = cur.Start(cur.t);
      const int c0 = s0 + 32 * cw;  // this warpgroup's 32 queries
      const bool masked = cur.Partial() || cut;
      const bool causal_part = a.causal && cur.Partial();
      const uint32_t sq = base + S::kQ + st * 2 * kTile, sdo = sq + kTile;
      const uint32_t xp = S::kX + (it & 1) * kXTile, xds = xp + 2 * kXTile;  // exchange tiles
      tma::MbarWait(full(st), ph);
      // S^T and dP^T for queries c0 + [0, 32): K / V (A) times Q / dO rows (B), K-major
      float s[16], dp[16];
      {
        IssueScores<T, true>(s, dp, dK, wg::Desc(sq + 32 * cw * kLine, 16, 1024), dV,
                             wg::Desc(sdo + 32 * cw * kLine, 16, 1024));
        wg::Wait<1>();  // S^T done; dP^T may still run
        FenceAcc(s);
      }
      // the element predicate (partial entries, the kv_lengths tail) and a fine mask
      // (a.mask_bits_key: the 8-query groups whose mask block row visits this thread's
      // key column)
      uint32_t allow = masked ? AllowedBits<4>(a, b, c0, key0, kvlen, causal_part, off, segs, t)
                              : ~0u;
      if (a.mask_bits_key != nullptr && cur.Partial()) {
        const uint64_t w = __ldg(a.mask_bits_key + (cur.list - L.lists) + cur.t / cur.qh);
        const int lg = a.mask_lg;
        const uint32_t qg =
            SpreadBits(ColumnBits(w, lg, (kcol + r0) >> lg), lg) >> ((c0 & 127) >> 3);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (!((qg >> j) & 1u)) allow &= ~(0xfu << (4 * j));
      }
      auto keep = [&](int i) { return ((allow >> i) & 1u) != 0; };
      const float* sl = reinterpret_cast<const float*>(smem + S::kLD + 512 * st) + 32 * cw;
      // P^T (into s; capped: t into tc, P^T from it), published for the dV product
      float tc[16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);  // log2 domain
        const float l2[2] = {lq.x, lq.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * j + e;
          float p;
          if (capped) {
            tc[i] = Tanh(s[i] * a.scale_cap);
            p = Exp2(fmaf(tc[i], a.cap_log2, -l2[e & 1]));
          } else {
            tc[i] = 0.f;
            p = Exp2(fmaf(s[i], sl2, -l2[e & 1]));
          }
          s[i] = keep(i) ? p : 0.f;
        }
      }
      StoreExchange<T>(smem + xp, s, r0, t, cw);
      tma::FenceProxyAsync();
      tma::NamedBarrier(kBarP, kConsumers);
      const uint64_t pT = wg::Desc(base + xp, 16, 1024), dsT = wg::Desc(base + xds, 16, 1024);
      const uint64_t don = wg::Desc(sdo + 2 * cw * kSlab, kSlab, 1024);
      const uint64_t dqn = wg::Desc(sq + 2 * cw * kSlab, kSlab, 1024);
      if constexpr (PIPE) {  // dV[:, 128 cw ..] += P^T dO[:, 128 cw ..] runs while dS^T is formed
        FenceAcc(dv);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::Mma<T, 128, 0, 1>(dv, pT + KSlice(kk), don + NSlice(kk));
        wg::Commit();
        wg::Wait<1>();  // dP^T done (the dV product may still run)
      } else {
        wg::Wait<0>();
      }
      FenceAcc(dp);
      // dS^T = P^T (dP^T - delta) (1 - t^2 when capped)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 dq = *reinterpret_cast<const float2*>(sl + 64 + 8 * j + 2 * t);
        const float dl[2] = {dq.x, dq.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = 4 * j + e;
          float ds = s[i] * (dp[i] - dl[e & 1]);
          if (capped) ds *= 1.f - tc[i] * tc[i];
          dp[i] = keep(i) ? ds : 0.f;
        }
      }
      StoreExchange<T>(smem + xds, dp, r0, t, cw);
      tma::FenceProxyAsync();
      tma::NamedBarrier(kBarDS, kConsumers);
      FenceAcc(dk);
      if constexpr (!PIPE) FenceAcc(dv);
      wg::Fence();
      if constexpr (!PIPE) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::Mma<T, 128, 0, 1>(dv, pT + KSlice(kk), don + NSlice(kk));
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wg::Mma<T, 128, 0, 1>(dk, dsT + KSlice(kk), dqn + NSlice(kk));
      wg::Commit();
      wg::Wait<0>();
      FenceAcc(dv);
      FenceAcc(dk);
      tma::MbarArrive(empty(st));
    }
    const int64_t kstride = int64_t(a.hkv) * kD;
    const int64_t ko = (int64_t(b) * a.tk + key0) * kstride + int64_t(hk) * kD + 128 * cw;
    T* gk = static_cast<T*>(a.dk) + ko;
    T* gv = static_cast<T*>(a.dv) + ko;
    StoreAcc<T, 128>(dk, a.scale, gk, gk + 8 * kstride, t, key0 < a.tk, key1 < a.tk);
    StoreAcc<T, 128>(dv, 1.f, gv, gv + 8 * kstride, t, key0 < a.tk, key1 < a.tk);
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

template <typename T, bool PIPE>
bool DeviceOk256() {
#ifndef JBS_WGMMA_BUILT  // CMake: the architectures include 90a
  return false;
#else
  static std::atomic<uint8_t> state[64];
  return UsableAsSm90(state, reinterpret_cast<const void*>(DkvKernel256<T, PIPE>),
                      tma::GetEncodeTiled() != nullptr);
#endif
}

// Zero `count` elements of T at p (a gradient no query or no key reaches).
template <typename T>
cudaError_t Zero(void* p, int64_t count, cudaStream_t stream) {
  return count > 0 ? cudaMemsetAsync(p, 0, size_t(count) * sizeof(T), stream) : cudaSuccess;
}

}  // namespace sm90bwd

template <typename T, bool PIPE>
cudaError_t RunBackwardSm90D256(const Args& a, cudaStream_t stream) {
  using namespace sm90bwd;
  if (a.bs != kBS) return cudaErrorInvalidValue;
  if (!DeviceOk256<T, PIPE>()) return cudaErrorNotSupported;
  if (a.tq == 0 || a.tk == 0) {  // no tensor map: dQ (no key) or dK, dV (no query) are 0
    cudaError_t err = Zero<T>(a.dq, int64_t(a.batch) * a.tq * a.hq * kD, stream);
    if (err == cudaSuccess) err = Zero<T>(a.dk, int64_t(a.batch) * a.tk * a.hkv * kD, stream);
    if (err == cudaSuccess) err = Zero<T>(a.dv, int64_t(a.batch) * a.tk * a.hkv * kD, stream);
    return err;
  }
  BackwardMaps maps{};  // as bwd_sm90.cu's, of 256 columns (four slabs a 64-row tile)
  cudaError_t err = PrepareBackward<T, kD>(a, stream, maps);
  // grid z: the 64-row half of each 128-row block
  const dim3 dq_grid(unsigned(a.batch * a.hq), unsigned(a.by_query.lines), 2);
  const dim3 dkv_grid(unsigned(a.batch * a.hkv), unsigned(a.by_key.lines), 2);
  if (err == cudaSuccess)
    err = LaunchBackwardKernel<DqKernel256<T, PIPE>>(DqSmem256::kBytes, dq_grid,
                                                     QueryHeadCells<T, kD>(a), maps, stream);
  if (err == cudaSuccess)
    err = LaunchBackwardKernel<DkvKernel256<T, PIPE>>(DkvSmem256::kBytes, dkv_grid,
                                                      KeyHeadCells<T, kD>(a), maps, stream);
  return err;
}

JBS_ATTENTION_BWD_SM90_D256_LAUNCHERS(template, __nv_bfloat16)
JBS_ATTENTION_BWD_SM90_D256_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
