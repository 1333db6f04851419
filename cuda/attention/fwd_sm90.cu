// Attention forward for Hopper (sm_90a) in the FlashAttention-3 design: TMA loads into an
// mbarrier ring, a producer warp and two consumer warpgroups (warp specialization with
// register reallocation), wgmma for both products, the output stored through shared
// memory by TMA. Semantics and metadata: attention.h; the FA2 forward (FwdKernel in
// attention_kernels.cuh) is the functional spec this kernel follows.
//
// Scope (issue 18): block sizes 128 and 64, head dims 64 and 128, bf16 / f16; static or
// traced block lists, causal (bottom-right aligned), kv_lengths, GQA, shared or per-head
// masks, masks per batch entry, segment ids, Tq and Tk that are not multiples of the block
// size (partial last tiles), query positions per batch entry (q_offset: the causal offset
// of query row 0 is read from a.q_pos instead of Tk - Tq), any scale. Variant 2 of the dispatch table (the default on sm_90) is PINGPONG =
// true at block 128, variant 3 false; at block 64 both run the one kernel below.
//
// Block 64 (Geom<64>): the same code with one consumer warpgroup: a CTA is one 64-row
// query block, 256 threads, each list entry one 64-key tile (wgmma m64n64k16 for S, PV
// with k = 64), 2 CTAs per SM (launch bounds (256, 2): 128 registers at launch, producer
// 24 / consumer 232 after reallocation; smem 80 KB at D = 128 with 2 stages, 72 KB at D = 64
// with 4); no ping-pong inside a CTA (the two CTAs of an SM overlap instead). The text
// below describes block 128.
//
// CTA: one query block (128 rows) of one (batch, head); 384 threads = 3 warpgroups.
//  * Warpgroup 0, the producer, gives registers back (setmaxnreg 24); its thread 0 issues
//    every TMA load: the Q tile once, then for each listed key block (128 keys: one tile)
//    the K tile and the V tile into a STAGES-deep ring. Each slot has a "full" mbarrier
//    (arrive.expect_tx by the producer, completed by the copy's bytes) and an "empty" one
//    (arrived by all 256 consumer threads once their wgmmas have read the slot).
//  * Warpgroups 1 and 2, the consumers (setmaxnreg 240), own query rows [0, 64) and
//    [64, 128) of the tile. Per key tile: S = Q K^T by wgmma m64n128k16 with both operands
//    in shared memory (K-major), online softmax in registers (log2 domain, exp2), then
//    O += P V by wgmma with P from registers (the accumulator layout of S is the A-fragment
//    layout of P: no shuffles) and V in shared memory (N-major). With PINGPONG the two
//    warpgroups take turns issuing their products (named barriers), so one's softmax
//    overlaps the other's wgmmas. Overlap inside a
//    warpgroup: the QK^T of tile n is issued together with the PV of tile n - 1; the
//    warpgroup waits only for S_n and runs softmax(S_n) while PV_{n-1} runs, and waits for
//    PV_{n-1} at the top of the next iteration (then rescales O and packs P_n).
//  * Tensor maps: 4-d [B, T, H, D] (boxes of 64 columns x 1 head x BS rows x 1 batch
//    entry): rows past T in a partial last tile are zero filled by the loads (keys there
//    are past kv_lengths: masked) and dropped by the output's store; lse rows past Tq are
//    not written. Segment ids come padded to whole tiles (the Python lowering) so that
//    their loads need no bounds checks (which cost spills at 168 registers).
//  * Shared memory: Q + STAGES x (K, V), 128-row tiles in the 128-byte swizzled line
//    layout of wgmma.cuh (a 128 x D tile is D / 64 column slabs of 128 lines), the layout
//    TMA writes with CU_TENSOR_MAP_SWIZZLE_128B. D = 128: 2 stages, 160 KB; D = 64: 3
//    stages, 112 KB; one CTA per SM.
//  * Lists per batch entry (a.mb == B: segment ids, a BlockMask with Bm = B) or shared.
//    Segment ids: the partial entries also mask pairs of different documents (the lists
//    mark every block pair that mixes documents partial; full entries are one document).
//  * Element masks (causal diagonal, kv_lengths) only on the `partial` entries and the
//    tile that contains kv_lengths[b]; tiles starting at or past kv_lengths[b] (or past
//    the causal limit of the tile's last row) are skipped by producer and consumers alike.
//  * Keys past kv_lengths inside the cut tile: their scores are set to -inf (NaN or not),
//    and their V rows are overwritten with zeros in shared memory by the 256 consumer
//    threads (then fence.proxy.async and a named barrier) before the PV that reads them,
//    so NaN/Inf there cannot reach O through 0 * NaN. (A per-batch TMA extent would need
//    kv_lengths on the host.)
//  * Epilogue: each consumer warpgroup writes its normalized 64 x D rows into its own
//    rows of the Q buffer (same swizzle: conflict-free) and one thread stores them with a
//    TMA store; lse (float32) from registers. Rows with no allowed key: o = 0, lse = -inf.
//
// Grid: x = (batch, head), y = position in `order` (longest lines first, x fastest), as
// the FA2 forward. Every output element is written once, sums run in a fixed order: the
// results are bitwise deterministic.
#include "fwd_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>

#include "../attention_kernels.cuh"
#include "../launch_util.h"
#include "../tma.cuh"
#include "../wgmma.cuh"
#include "common.cuh"

namespace jax_blocksparse {
namespace attn {

// The FA2 launcher (attention_<dtype>.cu) takes the calls with no key at all (Tk = 0: no
// tensor map of K / V can be encoded).
JBS_ATTENTION_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_LAUNCHERS(extern template, __half)

namespace sm90 {

// Per block size BS (128 or 64): query rows per CTA and keys per tile (one list entry)
// are both BS; BS / 64 consumer warpgroups (64 query rows each) after the producer one.
template <int BS>
struct Geom {
  static_assert(BS == 64 || BS == 128, "block size 64 or 128");
  static constexpr int kBM = BS, kBN = BS;
  static constexpr int kNC = BS / 64;              // consumer warpgroups
  static constexpr int kConsumers = 128 * kNC;
  static constexpr int kThreads = 128 + kConsumers;
  static constexpr int kSlabBytes = BS * 128;      // BS rows (lines) x 64 columns
  static constexpr int kMinBlocks = BS == 64 ? 2 : 1;  // CTAs per SM
  // register reallocation: 128 * (producer + consumers) per consumer warpgroup fits the
  // launch's per-thread budget (65536 / (kThreads * kMinBlocks): 168 at 384 threads, 128 at
  // 256 threads x 2 CTAs)
  static constexpr int kProducerRegs = 24, kConsumerRegs = BS == 64 ? 232 : 240;
};
[[maybe_unused]] constexpr int kLine = 128;  // bytes per swizzled smem line (64 elements)
// named barriers (0 is __syncthreads)
[[maybe_unused]] constexpr int kBarZeroV = 1;     // the two consumer warpgroups around the V tail zeroing
[[maybe_unused]] constexpr int kBarEpilogue = 2;  // + consumer index: one consumer warpgroup
[[maybe_unused]] constexpr int kBarTurn = 4;  // + consumer index: its turn to issue (ping-pong)

template <int D, int STAGES, int BS>
struct Smem {
  static_assert(D == 64 || D == 128, "head dim 64 or 128 (one or two 64-column slabs)");
  static constexpr int kTile = BS * D * 2;  // bytes of a BS-row tile (Q, K or V)
  static constexpr int kBars = (1 + 2 * STAGES) * kTile;  // offset of the mbarriers
  static constexpr int kNumBars = 1 + 4 * STAGES;
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;  // + 1024-byte alignment
};

template <typename T, int D, int BS, int STAGES, bool PINGPONG>
__global__ void __launch_bounds__(Geom<BS>::kThreads, Geom<BS>::kMinBlocks)
    FwdKernel(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
              const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
              const __grid_constant__ CUtensorMap tm_o) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Smem<D, STAGES, BS>;
  using G = Geom<BS>;
  constexpr int kTile = S::kTile;
  constexpr int kBM = G::kBM, kBN = G::kBN, kConsumers = G::kConsumers;
  constexpr int kSlabBytes = G::kSlabBytes;
  constexpr bool kPing = PINGPONG && G::kNC == 2;  // ping-pong needs two consumer warpgroups
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = ptx::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;  // 1024-byte aligned: the swizzle atoms
  const uint32_t base = raw + pad;
  const uint32_t sQ = base;
  // stage st: K at base + (1 + 2 st) kTile, V at base + (2 + 2 st) kTile
  const uint32_t bars = base + S::kBars;
  const uint32_t bar_q = bars;
  auto full_k = [&](int st) { return bars + 8u * (1 + st); };
  auto full_v = [&](int st) { return bars + 8u * (1 + STAGES + st); };
  auto empty_k = [&](int st) { return bars + 8u * (1 + 2 * STAGES + st); };
  auto empty_v = [&](int st) { return bars + 8u * (1 + 3 * STAGES + st); };

  const int tid = threadIdx.x, wgi = tid / 128;
  const int bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
  const Lists& L = a.by_query;
  const int hm = a.hm == 1 ? 0 : h;
  const int64_t lines0 = FirstLine(a, L, b, hm);  // lists per batch entry or shared
  const int r = __ldg(L.order + lines0 + blockIdx.y);
  const int q0 = r * kBM;
  const int hk = h / a.group;
  const int off = QueryOffset(a, b);  // causal position of query row 0
  const int kvlen = KvLength(a, b);

  KeyTiles<kBN> tiles;
  tiles.Begin(L, lines0 + r, kvlen, q0 + kBM - 1 + off, a.causal);

  if (tid == 0) {
    tma::MbarInit(bar_q, 1);
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      tma::MbarInit(full_k(st), 1);
      tma::MbarInit(full_v(st), 1);
      tma::MbarInit(empty_k(st), kConsumers);
      tma::MbarInit(empty_v(st), kConsumers);
    }
    tma::FenceMbarInit();
  }
  __syncthreads();

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    tma::RegDealloc<G::kProducerRegs>();
    if (tid == 0) {
      tma::PrefetchMap(&tm_q);
      tma::PrefetchMap(&tm_k);
      tma::PrefetchMap(&tm_v);
      // 4-d maps [B, T, H, D]: rows past T (a partial last tile) are zero filled here and
      // dropped by the output's store
      tma::MbarArriveExpectTx(bar_q, kTile);  // a box's full bytes, zero-filled part too
#pragma unroll
      for (int sl = 0; sl < D / 64; ++sl)
        tma::Load4d(sQ + sl * kSlabBytes, &tm_q, sl * 64, h, q0, b, bar_q);
      for (int it = 0; !tiles.Done(); ++it, tiles.Next()) {
        const int st = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int kstart = tiles.Start(tiles.e);
        const uint32_t sk = base + uint32_t((1 + 2 * st) * kTile), sv = sk + kTile;
        tma::MbarWait(empty_k(st), ph ^ 1);
        tma::MbarArriveExpectTx(full_k(st), kTile);
#pragma unroll
        for (int sl = 0; sl < D / 64; ++sl)
          tma::Load4d(sk + sl * kSlabBytes, &tm_k, sl * 64, hk, kstart, b, full_k(st));
        tma::MbarWait(empty_v(st), ph ^ 1);
        tma::MbarArriveExpectTx(full_v(st), kTile);
#pragma unroll
        for (int sl = 0; sl < D / 64; ++sl)
          tma::Load4d(sv + sl * kSlabBytes, &tm_v, sl * 64, hk, kstart, b, full_v(st));
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<G::kConsumerRegs>();
    const int cw = wgi - 1, ctid = tid - 128;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int rl = cw * 64 + w4 * 16 + g;  // tile row of s/o[4j + 0, 1]; rl + 8: [4j + 2, 3]
    const int i0 = q0 + rl;                // its query index
    const float sl2 = a.scale_log2;
    const bool pos_scale = sl2 > 0.f;
    const float sl2_max = pos_scale ? sl2 : 1.f;  // factor of the raw tile maxima

    float o[D / 2], s[kBN / 2];
    uint32_t p[kBN / 16][4];
#pragma unroll
    for (int i = 0; i < kBN / 2; ++i) s[i] = 0.f;
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    // descriptors: Q rows of this warpgroup, K and V of stage 0 (a stage adds 2 kTile)
    const uint64_t dq = wg::Desc(sQ + uint32_t(cw * 64 * kLine), 16, 1024);
    const uint64_t dk = wg::Desc(base + kTile, 16, 1024);
    const uint64_t dv = wg::Desc(base + 2 * kTile, kSlabBytes, 1024);

    // S = Q K^T of stage st (one commit group)
    auto issue_qk = [&](int st) {
      const uint64_t so = uint64_t((st * 2 * kTile) >> 4);
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
      wg::Fence();
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint64_t ko = uint64_t(((kk / 4) * kSlabBytes + (kk % 4) * 32) >> 4);
        wg::MmaSS<T, kBN>(s, dq + ko, dk + so + ko, kk > 0 ? 1 : 0);
      }
      wg::Commit();
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
    };
    // O += P V of stage st (one commit group)
    auto issue_pv = [&](int st) {
      const uint64_t so = uint64_t((st * 2 * kTile) >> 4);
#pragma unroll
      for (int i = 0; i < D / 2; ++i) wg::FenceOperand(o[i]);
      wg::Fence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wg::MmaRS<T, D, 1>(o, p[kk], dv + so + uint64_t((kk * 16 * kLine) >> 4));
      wg::Commit();
#pragma unroll
      for (int i = 0; i < D / 2; ++i) wg::FenceOperand(o[i]);
    };
    // The cut tile (keys [start, start + kBN) contain kv_lengths): zero the V rows of keys
    // >= kvlen in stage st, shared by the consumer warpgroups (each waited for the slot).
    auto zero_v_tail = [&](int st, int valid) {
      unsigned char* sv = smem + (2 + 2 * st) * kTile;
      const int chunks = (kBN - valid) * 8;  // 16-byte chunks per slab
      for (int c = ctid; c < (D / 64) * chunks; c += kConsumers) {
        const int sl = c / chunks, rem = c - sl * chunks;
        *reinterpret_cast<uint4*>(sv + sl * kSlabBytes + (valid + rem / 8) * kLine +
                                  (rem % 8) * 16) = make_uint4(0, 0, 0, 0);
      }
      tma::FenceProxyAsync();
      tma::NamedBarrier(kBarZeroV, kConsumers);
    };
    // Online softmax of S (this tile: keys from `start`): masks (when `masked`), folds
    // the maxima into m0 / m1, rescales l0 / l1, leaves P = 2^(S - m) in s (float) and
    // the factor of the old accumulators in c0 / c1.
    auto softmax = [&](int start, bool masked, bool causal_part, float& c0, float& c1) {
      // scores in the log2 domain: scaled here unless the scale is positive (then the
      // maxima of the raw scores times the scale, and P = 2^(s * scale - m): one FFMA);
      // masks after scaling (a -inf score stays -inf for any scale)
      if (!pos_scale) {
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) s[i] *= sl2;
      }
      if (masked) {
        const int j0 = start + 2 * t;
        // segment ids (none: every id 0), loaded here (L1 hits after the first partial
        // tile) rather than kept in registers across the loop (168 at 384 threads)
        const bool segs = a.kv_ids != nullptr;
        int qid0 = 0, qid1 = 0;
        if (segs) {
          // ids padded to whole tiles: rows past Tq are not stored, keys past Tk are past
          // kv_lengths (masked); no bounds checks here (they cost spills at 168 registers)
          const int32_t* qids = PaddedIds(a.q_ids, b, a.tq, kBM);
          qid0 = __ldg(qids + i0);
          qid1 = __ldg(qids + i0 + 8);
        }
#pragma unroll
        for (int j = 0; j < kBN / 8; ++j) {
          int kid0 = 0, kid1 = 0;  // documents of keys j0 + 8j, + 1 (all 0 without ids)
          if (segs) {
            const int32_t* kids = PaddedIds(a.kv_ids, b, a.tk, kBN);
            kid0 = __ldg(kids + j0 + 8 * j);
            kid1 = __ldg(kids + j0 + 8 * j + 1);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kj = j0 + 8 * j + (e & 1), qi = i0 + (e >> 1) * 8;
            if (!Allowed(qi, kj, kvlen, causal_part, off, (e >> 1) ? qid1 : qid0,
                         (e & 1) ? kid1 : kid0))
              s[4 * j + e] = -INFINITY;
          }
        }
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
      }
      mx0 = fmaxf(m0, QuadMax(mx0) * sl2_max);
      mx1 = fmaxf(m1, QuadMax(mx1) * sl2_max);
      const float mu0 = mx0 == -INFINITY ? 0.f : mx0, mu1 = mx1 == -INFINITY ? 0.f : mx1;
      c0 = Exp2(m0 - mu0);
      c1 = Exp2(m1 - mu1);
      m0 = mx0;
      m1 = mx1;
      float r0 = 0.f, r1 = 0.f;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        s[4 * j] = Exp2(fmaf(s[4 * j], sl2_max, -mu0));
        s[4 * j + 1] = Exp2(fmaf(s[4 * j + 1], sl2_max, -mu0));
        s[4 * j + 2] = Exp2(fmaf(s[4 * j + 2], sl2_max, -mu1));
        s[4 * j + 3] = Exp2(fmaf(s[4 * j + 3], sl2_max, -mu1));
        r0 += s[4 * j] + s[4 * j + 1];
        r1 += s[4 * j + 2] + s[4 * j + 3];
      }
      l0 = l0 * c0 + r0;
      l1 = l1 * c1 + r1;
    };
    auto pack_p = [&]() {
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) p[kk][i] = Ops<T>::Pack(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
    };

    // Ping-pong: the two consumer warpgroups take turns to issue their wgmmas (named
    // barrier kBarTurn + cw: synced by its owner, arrived at by the other one after its
    // issue), so one's softmax runs while the other's products do. Warpgroup 0 goes first
    // (warpgroup 1 arrives once up front); both have the same n + 1 issue points (n
    // tiles), and warpgroup 1 skips the arrive after its last: the arrivals match the syncs.
    // Nothing inside a turn waits for the other warpgroup (the V tail zeroing and its
    // barrier come before the turn).
    auto turn_begin = [&]() {
      if constexpr (kPing) tma::NamedBarrier(kBarTurn + cw, kConsumers);
    };
    auto turn_end = [&](bool last) {
      if constexpr (kPing) {
        if (!(last && cw == 1)) tma::NamedArrive(kBarTurn + (1 - cw), kConsumers);
      }
    };

    KeyTiles<kBN> cur = tiles;
    tma::MbarWait(bar_q, 0);  // also before the epilogue reuses the Q buffer
    if (!cur.Done()) {
      if constexpr (kPing) {
        if (cw == 1) tma::NamedArrive(kBarTurn, kConsumers);
      }
      // first tile: S, softmax, P (O is still zero)
      int start = cur.Start(cur.e);
      tma::MbarWait(full_k(0), 0);
      turn_begin();
      issue_qk(0);
      turn_end(false);
      wg::Wait<0>();
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
      tma::MbarArrive(empty_k(0));
      float c0, c1;
      softmax(start, cur.e < cur.npart || start + kBN > kvlen, a.causal && cur.e < cur.npart,
              c0, c1);
      // Loop invariant at the top of iteration it: s holds P of tile it - 1 (float, not yet
      // multiplied by V), c0 / c1 its rescale factors; the PV of tile it - 2 may be in
      // flight (reading V stage vst). The wait for that PV comes first in the body: ptxas
      // schedules a wgmma wait early in its basic block (it was seen hoisted above the
      // softmax when placed after it), and at the top of the loop nothing precedes it.
      int pst = 0, pstart = start;  // tile it - 1: its stage, phase, first key
      uint32_t pph = 0;
      bool v_busy = false;  // a PV in flight reads V stage vst
      int vst = 0;
      auto retire_pv = [&]() {  // the PV in flight is done; O *= c; P to registers
        wg::Wait<0>();
#pragma unroll
        for (int i = 0; i < D / 2; ++i) wg::FenceOperand(o[i]);
        if (v_busy) tma::MbarArrive(empty_v(vst));
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          o[4 * j] *= c0; o[4 * j + 1] *= c0; o[4 * j + 2] *= c1; o[4 * j + 3] *= c1;
        }
        pack_p();
      };
      cur.Next();
      for (int it = 1; !cur.Done(); ++it, cur.Next()) {
        const int st = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        start = cur.Start(cur.e);
        retire_pv();
        tma::MbarWait(full_k(st), ph);
        tma::MbarWait(full_v(pst), pph);
        if (pstart + kBN > kvlen) zero_v_tail(pst, kvlen - pstart);
        turn_begin();
        issue_qk(st);
        issue_pv(pst);
        turn_end(false);
        v_busy = true;
        vst = pst;
        wg::Wait<1>();  // S of this tile (the PV of the last one may still run)
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
        tma::MbarArrive(empty_k(st));
        softmax(start, cur.e < cur.npart || start + kBN > kvlen, a.causal && cur.e < cur.npart,
                c0, c1);
        pst = st;
        pph = ph;
        pstart = start;
      }
      retire_pv();
      tma::MbarWait(full_v(pst), pph);
      if (pstart + kBN > kvlen) zero_v_tail(pst, kvlen - pstart);
      turn_begin();
      issue_pv(pst);
      turn_end(true);
      wg::Wait<0>();
#pragma unroll
      for (int i = 0; i < D / 2; ++i) wg::FenceOperand(o[i]);
      tma::MbarArrive(empty_v(pst));
    }

    // ---- epilogue: O / l -> this warpgroup's rows of the Q buffer -> TMA store; lse
    l0 = QuadSum(l0);
    l1 = QuadSum(l1);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = rl + 8 * hh;
        const float inv = hh ? inv1 : inv0;
        const int byte = (j / 8) * kSlabBytes + row * kLine + (((j % 8) ^ (row & 7)) << 4) + 4 * t;
        *reinterpret_cast<uint32_t*>(smem + byte) =
            Ops<T>::Pack(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
      }
    tma::FenceProxyAsync();
    tma::NamedBarrier(kBarEpilogue + cw, 128);
    if ((ctid & 127) == 0) {
#pragma unroll
      for (int sl = 0; sl < D / 64; ++sl)  // rows past Tq are dropped
        tma::Store4d(&tm_o, sl * 64, h, q0 + cw * 64, b,
                     sQ + uint32_t(sl * kSlabBytes + cw * 64 * kLine));
      tma::StoreCommit();
    }
    if (t == 0) {
      float* gl = a.out_lse + (int64_t(b) * a.hq + h) * a.tq;
      const float lse0 = l0 > 0.f ? (m0 + __log2f(l0)) * kLn2 : -INFINITY;
      const float lse1 = l1 > 0.f ? (m1 + __log2f(l1)) * kLn2 : -INFINITY;
      const int lim = a.tq - i0;  // rows past Tq (a partial last tile) are not written
      if (lim > 0) gl[i0] = lse0;
      if (lim > 8) gl[i0 + 8] = lse1;
    }
    if ((ctid & 127) == 0) tma::StoreWaitRead();
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// ring depth. Block 128 (one CTA per SM): 160 KB of smem at D = 128, 112 KB at D = 64.
// Block 64 (two CTAs per SM, at most 113 KB each): 80 KB at D = 128 (3 stages would need
// 104 bytes more than fit beside the 1024-byte alignment pad), 72 KB at D = 64.
template <int D, int BS> constexpr int kStages = BS == 128 ? (D == 128 ? 2 : 3) : (D == 128 ? 2 : 4);

// Per device: 0 unknown, 1 usable, 2 not: an sm_90 device running this kernel's sm_90a
// code (a build without 90a would run nothing useful there).
template <typename T, int D>
bool DeviceOk() {
#ifndef JBS_WGMMA_BUILT  // CMake: the architectures include 90a
  return false;
#else
  static std::atomic<uint8_t> state[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  std::atomic<uint8_t>& st = state[dev & 63];
  uint8_t v = st.load(std::memory_order_acquire);
  if (v == 0) {
    int major = 0, minor = 0;
    cudaFuncAttributes attr{};
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
        major == 9 && minor == 0 &&
        cudaFuncGetAttributes(&attr, FwdKernel<T, D, 128, kStages<D, 128>, true>) == cudaSuccess &&
        attr.binaryVersion == 90 && tma::GetEncodeTiled() != nullptr;
    if (!ok) (void)cudaGetLastError();
    v = ok ? 1 : 2;
    st.store(v, std::memory_order_release);
  }
  return v == 1;
#endif
}

}  // namespace sm90

bool Sm90ForwardAvailable() { return sm90::DeviceOk<__nv_bfloat16, 128>(); }

template <typename T, int D, int BS, bool PINGPONG>
cudaError_t LaunchForwardSm90(const Args& a, cudaStream_t stream) {
  using namespace sm90;
  using G = Geom<BS>;
  if (a.bs != BS) return cudaErrorInvalidValue;
  if (!DeviceOk<T, D>()) return cudaErrorNotSupported;
  // partial last tiles (Tq or Tk not a multiple of the block): 4-d tensor maps
  const bool rows4d = a.tq % BS != 0 || a.tk % BS != 0;
  // what the FA2 forward takes: lists shared by the batch, no segment ids, whole tiles, no
  // query positions
  const bool fa2_ok = a.mb == 1 && a.q_ids == nullptr && a.q_pos == nullptr && !rows4d;
  if (a.tk == 0) {  // no key: o = 0, lse = -inf
    if (!fa2_ok) return cudaErrorInvalidValue;  // the Python routing never sends these
    return LaunchForwardTile<T, D, 64, 2>(a, stream);
  }
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  // operands TMA cannot address (XLA's buffers are aligned: not seen) run the FA2 forward
  if (!aligned(a.q) || !aligned(a.k) || !aligned(a.v) || !aligned(a.out_o)) {
    if (!fa2_ok) return cudaErrorInvalidValue;
    return LaunchForwardTile<T, D, 64, 2>(a, stream);
  }
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  CUtensorMap tq{}, tk{}, tv{}, to{};
  // [B, T, H, D]: dims D, H, T, B (innermost first); boxes of 64 columns (one swizzled
  // slab), one head, BS rows (64: one consumer warpgroup's rows for the output), one batch
  // entry. Rows past T: zero filled by loads, dropped by stores (partial last tiles).
  const uint64_t qd4[4] = {uint64_t(D), uint64_t(a.hq), uint64_t(a.tq), uint64_t(a.batch)};
  const uint64_t qs4[3] = {D * e, uint64_t(a.hq) * D * e, uint64_t(a.tq) * a.hq * D * e};
  const uint64_t kd4[4] = {uint64_t(D), uint64_t(a.hkv), uint64_t(a.tk), uint64_t(a.batch)};
  const uint64_t ks4[3] = {D * e, uint64_t(a.hkv) * D * e, uint64_t(a.tk) * a.hkv * D * e};
  const uint32_t box_in[4] = {64, 1, uint32_t(BS), 1}, box_out[4] = {64, 1, 64, 1};
  cudaError_t err = tma::EncodeTiled<4>(&tq, kBf16, a.q, qd4, qs4, box_in);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&tk, kBf16, a.k, kd4, ks4, box_in);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&tv, kBf16, a.v, kd4, ks4, box_in);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&to, kBf16, a.out_o, qd4, qs4, box_out);
  if (err != cudaSuccess) return err;

  constexpr int smem = Smem<D, kStages<D, BS>, BS>::kBytes;
  static_assert(BS == 128 || 2 * (smem + 1024) <= 228 * 1024, "two CTAs per SM at block 64");
  static std::atomic<uint64_t> configured{0};
  auto kern = sm90::FwdKernel<T, D, BS, kStages<D, BS>, PINGPONG>;
  err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(kern), smem);
  if (err != cudaSuccess) return err;
  if (a.by_query.lines > 65535) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(a.batch * a.hq), unsigned(a.by_query.lines));
  kern<<<grid, G::kThreads, smem, stream>>>(a, tq, tk, tv, to);
  return cudaGetLastError();
}

JBS_ATTENTION_SM90_LAUNCHERS(template, __nv_bfloat16)
JBS_ATTENTION_SM90_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
