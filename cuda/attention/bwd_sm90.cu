// Attention backward for Hopper (sm_90a) in the FlashAttention-3 design: TMA loads into an
// mbarrier ring, a producer warp and two consumer warpgroups (warp specialization with
// register reallocation), wgmma for every product. Semantics and metadata: attention.h;
// the FA2 backward (DeltaKernel, DqKernel, DkvKernel, RunBackward in fa2.cuh)
// is the functional spec, and the Hopper forward (fwd_sm90.cu) the model of the machinery.
//
// Scope (issue 19): block size 128, head dims 64 and 128, bf16 / f16; static or traced
// block lists, causal, kv_lengths, GQA, shared or per-head masks, any scale, and every mask
// source of the Hopper forward (fwd_sm90.cu; AttentionKernel::documents): lists per batch
// entry (a.mb == B, both directions: segment ids, a BlockMask with Bm = B), segment ids
// (compared on the partial entries), query positions per batch entry (q_offset: the causal
// position of query row 0 is read from a.q_pos instead of Tk - Tq), Tq and Tk that are not
// multiples of the block size (partial last tiles), masks of block size 16, 32 and 64 on
// these 128 x 128 tiles (a.mask_bits, a.mask_bits_key: below), and a logit soft cap (issue 21:
// below). Backward variants 2 and 3 of the dispatch table. Head dim 96 is compiled (the
// D = 128 layout in shared memory, kDS; 96 columns in the tensor maps and the stores) but
// has no dispatch row yet: not run on a GPU.
//
// Three kernels, in stream order:
//  1. StatsKernel: per query row, lse in the log2 domain and delta = rowsum(dO * O) -
//     d_lse, float32, into the workspace [B, Hq, 2, Tqp] (Tqp: Tq rounded up to whole
//     blocks); rows past Tq get lse +inf (P = 0) and delta 0.
//  2. DqKernel: one CTA per (batch, query head, 128-query block), walking the block's key
//     blocks (by_query lists, `order`: longest first). 384 threads: warpgroup 0 the
//     producer (setmaxnreg 24; its thread 0 issues the TMA loads: Q and dO once, then each
//     listed 128-key tile's K and V into a STAGES-deep ring with full / empty mbarriers);
//     warpgroups 1 and 2 the consumers (setmaxnreg 240), owning query rows [0, 64) and
//     [64, 128). Per key tile, per 64-key half: S = Q K^T and dP = dO V^T (wgmma m64n64k16,
//     both operands in shared memory, K-major), P = 2^(S scale log2e - lse log2e) from the
//     workspace, dS = P (dP - delta) in registers, dQ += dS K (wgmma m64nDk16, dS from
//     registers: the accumulator layout of S is the A-fragment layout; K N-major in shared
//     memory). dQ = scale * sum, stored once from registers.
//  3. DkvKernel: one CTA per (batch, kv head, 128-key block), walking, for each query head
//     of the kv head's group in turn (h = hk * group + gi), the key block's listed query
//     blocks (by_key lists: the transposed lists, partial entries first) in 64-query
//     tiles. The producer loads K and V once, then streams per step the Q and dO tiles
//     (TMA) and the tile's workspace rows of lse and delta (bulk copies) into the ring. Consumer
//     warpgroup c owns key rows [64 c, 64 c + 64): S^T = K Q^T and dP^T = V dO^T (SS,
//     m64n64k16), P^T, dS^T = P^T (dP^T - delta), dV += P^T dO and dK += dS^T Q (RS,
//     m64nDk16, dO and Q N-major). dK, dV accumulate in registers over the whole group:
//     no atomics across heads. dK = scale * sum.
//
// Shared memory: every operand tile is a sequence of 64-row tiles of D / 64 slabs of 64
// lines (128 bytes, 128-byte swizzle: the layout TMA writes with SWIZZLE_128B and
// wgmma.cuh describes), so a 64-row tile is one m64 A operand, one n64 B operand, or a
// k-extent of 64 of an N-major B operand (slab stride 8192 = LBO).
//
// Masks: one element predicate (common.cuh, Allowed: kv_lengths, the causal diagonal at the
// query's position, equal segment ids) only on `partial` entries and on the key tile that
// contains kv_lengths[b]; tiles starting at or past kv_lengths[b] (or past the causal
// limit) are skipped. Masked elements get P = 0 and dS = 0 by selection (never a product
// with NaN). Segment ids come padded to whole tiles (the Python lowering) and are loaded
// on the partial entries only (L1 hits), as in the forward.
//
// Fine masks (block size 2^a.mask_lg = 16, 32 or 64, attention.h): the lists are those of the
// 128 x 128 tiles (attention_metadata.tile_lists by query, key_tiles by key: the same
// entries, partial flags and 64-bit words, bit s * f + t for mask block (query row s, key
// column t), f = 128 >> lg), a.mask_bits per by_query entry and a.mask_bits_key per by_key
// entry. On a partial entry both kernels join the word's term to the element predicate:
// the dQ kernel's thread reads its rows' block row (SpreadBits: one bit per 8 keys), the
// dK/dV kernel's thread its keys' block column (ColumnBits, then SpreadBits: one bit per
// 8 queries). The dQ kernel also zeroes the K rows of block columns that no row of the
// entry visits (EmptyColumns), with the kv_lengths tail: their dS is 0 by selection, but
// 0 * NaN is NaN. The words are read where used (L1), never held across the loop.
//
// Partial last tiles: 4-d tensor maps [B, T, H, D] zero fill rows past Tq or Tk; a 64-row
// half of a tile wholly past them is not loaded (Halves). In the dQ kernel query rows past
// Tq are row-local and not stored; in the dK/dV kernel their zero Q and dO rows meet lse +inf and
// delta 0 from the padded workspace (P = 0, dS = 0: they add nothing to dK, dV), and
// 64-query tiles wholly past Tq are skipped. Keys past Tk are past kv_lengths (masked, K
// rows zeroed in the dQ kernel as below); dK, dV rows past Tk are not stored.
//
// NaN past kv_lengths: keys past kv_lengths inside the cut tile are read by TMA (NaN may be
// there): in the dQ kernel their K rows are overwritten with zeros in shared memory before
// the dS K product reads them (dS is 0 there, but 0 * NaN is NaN); their V rows only reach
// dP, whose masked elements are not used. In the dK/dV kernel they are the CTA's own key
// rows: their S^T, dP^T rows are masked, so their dK, dV rows are 0; a key block starting
// at or past kv_lengths[b] loads nothing and stores zeros.
//
// Soft cap (a.cap_log2 > 0: cap log2(e); a.scale_cap: scale / cap; a runtime branch in both
// kernels, the uncapped code as before): the log2-domain score is cap_log2 t with
// t = tanh.approx(s scale_cap), before the masks, the Hopper forward's expression (one
// FFMA with the row's term, as there), so P = 2^(t cap_log2 - lse log2 e) is the forward's P; the
// score's derivative takes the factor 1 - t^2, dS = P (dP - delta) (1 - t^2) (the final
// factor `scale` as before). t is kept where the uncapped path keeps P (the same registers):
// the dQ kernel forms P and dP' = (dP - delta) (1 - t^2) from it once dP is done; the dK/dV
// kernel (overlapped, variant 2) packs P^T for dV from t as it goes and recomputes it (the
// same instructions: the same bits) for dS^T; without the overlap (variant 3) it forms P^T
// once, with dS^T, and packs it for dV after. The FA2 backward instead recovers t from P by
// a log2 in its dK/dV kernel; recomputing keeps t as tanh.approx gave it (the recovery adds
// the rounding of log2 P + lse, which 1 - t^2 magnifies where |t| is near 1) for as many
// special-function instructions per element (tanh, exp2 and, with the overlap, a second
// exp2 here; tanh, exp2, log2 there).
//
// Determinism: every output element is written by one CTA, sums run in a fixed order
// (list order, group order): results are bitwise identical run to run.
#include "bwd_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>

#include "../launch_util.h"
#include "../tma.cuh"
#include "../wgmma.cuh"
#include "bwd_sm90_common.cuh"
#include "fa2.cuh"

namespace jax_blocksparse {
namespace attn {

// The FA2 backward takes the calls TMA cannot (Tq = 0 or Tk = 0).
JBS_ATTENTION_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_LAUNCHERS(extern template, __half)

namespace sm90bwd {

// Columns in shared memory and of the dQ, dK, dV accumulators: whole 64-column slabs
// (D = 96: two, as D = 128; the tensor maps have 96 columns, so the second slab's box is
// zero filled past column 96 and the zero columns add nothing to S, dP; stores write 96).
template <int D> constexpr int kDS = D == 96 ? 128 : D;

template <int D> struct T64 {  // a 64-row tile: kDS / 64 slabs
  static_assert(D == 64 || D == 96 || D == 128, "head dim 64, 96 or 128");
  static constexpr int kBytes = 64 * kDS<D> * 2;
};

// One 64-row tile (rows row .. row + 63 of head `head`, batch entry b; 4-d maps
// [B, T, H, D]: rows past T are zero filled) by TMA into `dst`.
template <int D>
__device__ __forceinline__ void LoadTile64(uint32_t dst, const CUtensorMap* map, int head, int row,
                                           int b, uint32_t bar) {
  LoadSlabs<kDS<D> / 64>(dst, map, head, row, b, bar);
}

// ============================================================== dQ
template <int D, int STAGES>
struct DqSmem {
  static constexpr int kT = T64<D>::kBytes;
  // Q: 2 x 64-row tiles at 0, dO at 2 kT; stage st: K at (4 + 4 st) kT (2 tiles), V + 2 kT
  static constexpr int kKV = 4 * kT;
  static constexpr int kBars = (4 + 4 * STAGES) * kT;
  static constexpr int kNumBars = 1 + 2 * STAGES;
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;
};

template <typename T, int D, int STAGES, bool PIPE>
__global__ void __launch_bounds__(kThreads, 1)
    DqKernel(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
             const __grid_constant__ CUtensorMap tm_do, const __grid_constant__ CUtensorMap tm_k,
             const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = DqSmem<D, STAGES>;
  constexpr int kT = S::kT;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = ptx::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t base = raw + pad;
  const uint32_t bars = base + S::kBars;
  const uint32_t bar_q = bars;
  auto full = [&](int st) { return bars + 8u * (1 + st); };
  auto empty = [&](int st) { return bars + 8u * (1 + STAGES + st); };
  auto kv_off = [&](int st) { return S::kKV + st * 4 * kT; };  // K of stage st (bytes)

  const int tid = threadIdx.x, wgi = tid / 128;
  const Cell cell = CellOf(a);
  const int bh = cell.bh, b = bh / a.hq, h = bh % a.hq;
  const Lists& L = a.by_query;
  const int64_t lines0 = FirstLine(a, L, b, a.hm == 1 ? 0 : h);
  const int r = __ldg(L.order + lines0 + cell.rank);
  const int q0 = r * kBS;
  const int hk = h / a.group;
  const int off = QueryOffset(a, b);  // causal position of query row 0
  const int kvlen = KvLength(a, b);

  KeyTiles<kBS> tiles;
  tiles.Begin(L, lines0 + r, kvlen, q0 + kBS - 1 + off, a.causal);

  if (tid == 0) {
    tma::MbarInit(bar_q, 1);
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      tma::MbarInit(full(st), 1);
      tma::MbarInit(empty(st), kConsumers);
    }
    tma::FenceMbarInit();
  }
  __syncthreads();

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0 && !tiles.Done()) {
      tma::PrefetchMap(&tm_q);
      tma::PrefetchMap(&tm_do);
      tma::PrefetchMap(&tm_k);
      tma::PrefetchMap(&tm_v);
      const int halves = Halves(q0, a.tq);  // a box's full bytes, zero-filled part too
      tma::MbarArriveExpectTx(bar_q, 2 * halves * kT);
      for (int hh = 0; hh < halves; ++hh) {
        LoadTile64<D>(base + hh * kT, &tm_q, h, q0 + 64 * hh, b, bar_q);
        LoadTile64<D>(base + (2 + hh) * kT, &tm_do, h, q0 + 64 * hh, b, bar_q);
      }
      for (int it = 0; !tiles.Done(); ++it, tiles.Next()) {
        const int st = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int k0 = tiles.Start();
        const uint32_t sk = base + kv_off(st);
        tma::MbarWait(empty(st), ph ^ 1);
        const int halves = Halves(k0, a.tk);
        tma::MbarArriveExpectTx(full(st), 2 * halves * kT);
        for (int hh = 0; hh < halves; ++hh) {
          LoadTile64<D>(sk + hh * kT, &tm_k, hk, k0 + 64 * hh, b, full(st));
          LoadTile64<D>(sk + (2 + hh) * kT, &tm_v, hk, k0 + 64 * hh, b, full(st));
        }
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    const int cw = wgi - 1, ctid = tid - 128;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int i0 = q0 + cw * 64 + w4 * 16 + g, i1 = i0 + 8;  // this thread's query rows
    const float* stats = Stats(a, b, h);  // padded rows: i0, i1 past Tq are in range
    const float lse0 = stats[i0], lse1 = stats[i1];
    const float dl0 = stats[PaddedRows(a.tq) + i0], dl1 = stats[PaddedRows(a.tq) + i1];
    const float sl2 = a.scale_log2;
    const bool segs = a.kv_ids != nullptr;
    // a logit soft cap (a.cap_log2 > 0; a runtime branch, as in the forward): S becomes
    // t = tanh(s scale_cap) while dP runs, then, once dP is done, P = 2^(cap_log2 t - lse)
    // (the forward's capped log2-domain score: P matches its lse) and dP' = (dP - delta)
    // (1 - t^2), the derivative of the cap folded in; the dS loop then subtracts no delta
    const bool capped = a.cap_log2 > 0.f;
    const float de0 = capped ? 0.f : dl0, de1 = capped ? 0.f : dl1;

    float dq[kDS<D> / 2];
#pragma unroll
    for (int i = 0; i < kDS<D> / 2; ++i) dq[i] = 0.f;
    const uint64_t dQ = wg::Desc(base + cw * kT, 16, 1024);
    const uint64_t dO = wg::Desc(base + (2 + cw) * kT, 16, 1024);

    KeyTiles<kBS> cur = tiles;
    if (!cur.Done()) tma::MbarWait(bar_q, 0);
    int pend = -1;  // PIPE: the stage whose dQ product may still be in flight (not released)
    for (int it = 0; !cur.Done(); ++it, cur.Next()) {
      const int st = it % STAGES;
      const uint32_t ph = (it / STAGES) & 1;
      const int start = cur.Start();
      const bool cut = start + kBS > kvlen;
      const bool masked = cur.e < cur.npart || cut;
      const bool causal_part = a.causal && cur.e < cur.npart;
      const uint32_t sk = base + kv_off(st), sv = sk + 2 * kT;
      // a fine mask (a.mask_bits, block size 16 / 32 / 64): the word of a partial entry; bit j of
      // `groups` whether this thread's rows (one mask block row) visit keys 8j + [0, 8) of
      // the tile; `unvisited` the block columns that no row visits (their K rows are zeroed
      // below, as past kv_lengths: dS is 0 there, but 0 * NaN is NaN)
      uint32_t groups = ~0u, unvisited = 0u;
      if (a.mask_bits != nullptr && cur.e < cur.npart) {
        const uint64_t w = __ldg(a.mask_bits + (cur.list - L.lists) + cur.e);
        const int lg = a.mask_lg;
        const int row_block = (cw * 64 + w4 * 16 + g) >> lg;
        groups = SpreadBits(uint32_t(w >> (row_block * (kBS >> lg))), lg);
        unvisited = EmptyColumns(w, lg);
      }
      tma::MbarWait(full(st), ph);
      if (cut || unvisited != 0u) {  // zero the K rows of keys >= kvlen and of empty columns
        const int valid = kvlen - start;  // (both warpgroups, then a barrier)
        const int first = unvisited != 0u ? 0 : valid;  // rows before it are kept
        unsigned char* pk = smem + kv_off(st);
        const int chunks = (kBS - first) * 8;  // 16-byte chunks per slab column
        for (int c = ctid; c < (kDS<D> / 64) * chunks; c += kConsumers) {
          const int sl = c / chunks, rem = c - sl * chunks;
          const int row = first + rem / 8;
          if (row >= valid || ((unvisited >> (row >> a.mask_lg)) & 1u))
            *reinterpret_cast<uint4*>(pk + (row / 64) * kT + sl * kSlab + (row % 64) * kLine +
                                      (rem % 8) * 16) = make_uint4(0, 0, 0, 0);
        }
        tma::FenceProxyAsync();
        tma::NamedBarrier(kBarZeroK, kConsumers);
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int kh0 = start + 64 * hh;
        if (kh0 >= kvlen) break;  // the whole half is past kv_lengths (uniform)
        float s[32], dp[32];
        const uint64_t dK = wg::Desc(sk + hh * kT, 16, 1024);
        const uint64_t dV = wg::Desc(sv + hh * kT, 16, 1024);
        FenceAcc(s);
        FenceAcc(dp);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wg::MmaSS<T, 64>(s, dQ + KSlice(kk), dK + KSlice(kk), kk > 0);
        if constexpr (PIPE) wg::Commit();  // S, then dP: P is computed while dP runs
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wg::MmaSS<T, 64>(dp, dO + KSlice(kk), dV + KSlice(kk), kk > 0);
        wg::Commit();
        if constexpr (PIPE) {
          wg::Wait<1>();  // S done, and the dQ product before it (issued earlier)
          FenceAcc(s);
          if (pend >= 0) {  // that product has read its K: release the stage
            tma::MbarArrive(empty(pend));
            pend = -1;
          }
        } else {
          wg::Wait<0>();
          FenceAcc(s);
        }
        if (capped) {  // t (into s)
#pragma unroll
          for (int i = 0; i < 32; ++i) s[i] = Tanh(s[i] * a.scale_cap);
        } else {  // P (into s)
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e)
              s[4 * j + e] = Exp2(fmaf(s[4 * j + e], sl2, -((e >> 1) ? lse1 : lse0)));
        }
        if constexpr (PIPE) wg::Wait<0>();  // dP done
        FenceAcc(dp);
        if (capped) {  // P (into s) and dP' (into dp) from t (one FFMA, as the forward)
#pragma unroll
          for (int i = 0; i < 32; ++i) {
            const float tt = s[i];
            const bool hi = (i >> 1) & 1;  // element 4 j + e: row i1 for e = 2, 3
            s[i] = Exp2(fmaf(tt, a.cap_log2, -(hi ? lse1 : lse0)));
            dp[i] = (dp[i] - (hi ? dl1 : dl0)) * (1.f - tt * tt);
          }
        }
        // dS (into dp); on partial entries 0 where the pair is not allowed (by selection:
        // dP may be NaN there, from V rows past kv_lengths). Segment ids (none: all 0) are
        // loaded here (L1 hits after the first partial tile; ids padded to whole tiles)
        // rather than kept in registers across the loop.
        int qid0 = 0, qid1 = 0;
        if (masked && segs) {
          const int32_t* qids = PaddedIds(a.q_ids, b, a.tq, kBS);
          qid0 = __ldg(qids + i0);
          qid1 = __ldg(qids + i1);
        }
        const uint32_t hgroups = groups >> (8 * hh);  // this half's 8-key groups
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          int kid0 = 0, kid1 = 0;  // documents of keys kh0 + 8j + 2t, + 1
          if (masked && segs) {
            const int32_t* kids = PaddedIds(a.kv_ids, b, a.tk, kBS) + kh0 + 8 * j + 2 * t;
            kid0 = __ldg(kids);
            kid1 = __ldg(kids + 1);
          }
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hi = e >> 1;
            float ds = s[4 * j + e] * (dp[4 * j + e] - (hi ? de1 : de0));
            if (masked && (!Allowed(hi ? i1 : i0, kh0 + 8 * j + 2 * t + (e & 1), kvlen,
                                    causal_part, off, hi ? qid1 : qid0, (e & 1) ? kid1 : kid0) ||
                           !((hgroups >> j) & 1u)))
              ds = 0.f;
            dp[4 * j + e] = ds;
          }
        }
        uint32_t fa[4][4];
        PackA<T>(fa, dp);
        const uint64_t dKn = wg::Desc(sk + hh * kT, kSlab, 1024);
        FenceAcc(dq);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, kDS<D>, 1>(dq, fa[kk], dKn + NSlice(kk));
        wg::Commit();
        if constexpr (!PIPE) {
          wg::Wait<0>();
          FenceAcc(dq);
        }
      }
      if constexpr (PIPE) {
        pend = st;  // released once its last dQ product is done (next S wait, or the end)
      } else {
        tma::MbarArrive(empty(st));
      }
    }
    if constexpr (PIPE) {
      wg::Wait<0>();
      FenceAcc(dq);
      if (pend >= 0) tma::MbarArrive(empty(pend));
    }
    const int64_t qstride = int64_t(a.hq) * D;
    T* g0 = static_cast<T*>(a.dq) + (int64_t(b) * a.tq + i0) * qstride + int64_t(h) * D;
    StoreAcc<T, kDS<D>, D>(dq, a.scale, g0, g0 + 8 * qstride, t, i0 < a.tq, i1 < a.tq);
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// ============================================================== dK, dV
template <int D, int STAGES>
struct DkvSmem {
  static constexpr int kT = T64<D>::kBytes;
  // K: 2 tiles at 0, V at 2 kT; stage st: Q at (4 + 2 st) kT, dO + kT; lse, delta rows
  // (64 floats each) at kLD + 512 st
  static constexpr int kQ = 4 * kT;
  static constexpr int kLD = (4 + 2 * STAGES) * kT;
  static constexpr int kBars = kLD + 512 * STAGES;
  static constexpr int kNumBars = 1 + 2 * STAGES;
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;
};

template <typename T, int D, int STAGES, bool PIPE>
__global__ void __launch_bounds__(kThreads, 1)
    DkvKernel(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
              const __grid_constant__ CUtensorMap tm_do, const __grid_constant__ CUtensorMap tm_k,
              const __grid_constant__ CUtensorMap tm_v) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = DkvSmem<D, STAGES>;
  constexpr int kT = S::kT;
  constexpr int BQ = 64;  // queries per step
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = ptx::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t base = raw + pad;
  const uint32_t bars = base + S::kBars;
  const uint32_t bar_kv = bars;
  auto full = [&](int st) { return bars + 8u * (1 + st); };
  auto empty = [&](int st) { return bars + 8u * (1 + STAGES + st); };

  const int tid = threadIdx.x, wgi = tid / 128;
  const Cell cell = CellOf(a);
  const int bh = cell.bh, b = bh / a.hkv, hk = bh % a.hkv;
  const Lists& L = a.by_key;
  const int h_first = hk * a.group;
  const int mh0 = MaskHead(a, b, a.hm == 1 ? 0 : h_first);  // lines of the group's first head
  const int rk = __ldg(L.order + int64_t(mh0) * L.lines + cell.rank);
  const int k0 = rk * kBS;
  const int off = QueryOffset(a, b);  // causal position of query row 0
  const int kvlen = KvLength(a, b);

  // (q_end Tq: the second 64-query tile of a partial last block may hold no query)
  QueryCursor<BQ> qc;
  qc.Init(L, rk, mh0, a.hm == 1 ? 0 : 1, kBS, a.group, k0, off, kvlen, a.tq, a.causal);

  if (tid == 0) {
    tma::MbarInit(bar_kv, 1);
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      tma::MbarInit(full(st), 1);
      tma::MbarInit(empty(st), kConsumers);
    }
    tma::FenceMbarInit();
  }
  __syncthreads();

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    tma::RegDealloc<kProducerRegs>();
    if (tid == 0 && !qc.Done()) {
      tma::PrefetchMap(&tm_q);
      tma::PrefetchMap(&tm_do);
      tma::PrefetchMap(&tm_k);
      tma::PrefetchMap(&tm_v);
      const int halves = Halves(k0, a.tk);  // rows past Tk: zero filled
      tma::MbarArriveExpectTx(bar_kv, 2 * halves * kT);
      for (int hh = 0; hh < halves; ++hh) {
        LoadTile64<D>(base + hh * kT, &tm_k, hk, k0 + 64 * hh, b, bar_kv);
        LoadTile64<D>(base + (2 + hh) * kT, &tm_v, hk, k0 + 64 * hh, b, bar_kv);
      }
      for (int it = 0; !qc.Done(); ++it, qc.Next()) {
        const int st = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int h = h_first + qc.gi;
        const int s0 = qc.Start(qc.t);
        const uint32_t sq = base + S::kQ + st * 2 * kT;
        const float* stats = Stats(a, b, h) + s0;  // padded rows: 64 in range, 16-byte aligned
        tma::MbarWait(empty(st), ph ^ 1);
        tma::MbarArriveExpectTx(full(st), 2 * kT + 512);
        LoadTile64<D>(sq, &tm_q, h, s0, b, full(st));
        LoadTile64<D>(sq + kT, &tm_do, h, s0, b, full(st));
        tma::LoadBulk(base + S::kLD + 512 * st, stats, 256, full(st));
        tma::LoadBulk(base + S::kLD + 512 * st + 256, stats + PaddedRows(a.tq), 256, full(st));
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    const int cw = wgi - 1;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int key0 = k0 + cw * 64 + w4 * 16 + g, key1 = key0 + 8;  // this thread's key rows
    const float sl2 = a.scale_log2;
    const bool cut = k0 + kBS > kvlen;
    const bool segs = a.kv_ids != nullptr;
    // a logit soft cap (a.cap_log2 > 0; a runtime branch, as in the forward): s keeps
    // t = tanh(s scale_cap) where the uncapped path keeps P^T; P^T = 2^(cap_log2 t - lse)
    // is formed from t for the dV product (PIPE: straight into its fragments) and for dS^T,
    // which takes the factor 1 - t^2 (PIPE recomputes P^T there: bitwise the same).
    const bool capped = a.cap_log2 > 0.f;

    float dk[kDS<D> / 2], dv[kDS<D> / 2];
#pragma unroll
    for (int i = 0; i < kDS<D> / 2; ++i) dk[i] = dv[i] = 0.f;
    const uint64_t dK = wg::Desc(base + cw * kT, 16, 1024);
    const uint64_t dV = wg::Desc(base + (2 + cw) * kT, 16, 1024);

    QueryCursor<BQ> cur = qc;
    if (!cur.Done()) tma::MbarWait(bar_kv, 0);
    for (int it = 0; !cur.Done(); ++it, cur.Next()) {
      const int st = it % STAGES;
      const uint32_t ph = (it / STAGES) & 1;
      const int s0 = cur.Start(cur.t);
      const bool masked = cur.Partial() || cut;
      const bool causal_part = a.causal && cur.Partial();
      const uint32_t sq = base + S::kQ + st * 2 * kT, sdo = sq + kT;
      tma::MbarWait(full(st), ph);
      float s[32], dp[32];
      {
        const uint64_t dq_ = wg::Desc(sq, 16, 1024), do_ = wg::Desc(sdo, 16, 1024);
        FenceAcc(s);
        FenceAcc(dp);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wg::MmaSS<T, 64>(s, dK + KSlice(kk), dq_ + KSlice(kk), kk > 0);
        if constexpr (PIPE) wg::Commit();  // S^T, then dP^T: P^T is computed while dP^T runs
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) wg::MmaSS<T, 64>(dp, dV + KSlice(kk), do_ + KSlice(kk), kk > 0);
        wg::Commit();
        if constexpr (PIPE) {
          wg::Wait<1>();
        } else {
          wg::Wait<0>();
        }
        FenceAcc(s);
      }
      // P^T (into s), then dS^T (into dp): columns are queries s0 + 8j + 2t (+1)
      const float* sl = reinterpret_cast<const float*>(smem + S::kLD + 512 * st);
      uint32_t allow = masked ? AllowedBits(a, b, s0, key0, kvlen, causal_part, off, segs, t)
                              : ~0u;
      // a fine mask (a.mask_bits_key, block size 16 / 32 / 64): on a partial entry, the 8-query
      // groups of this step whose mask block row visits this thread's key column (its keys
      // key0, key1: one block column) keep their elements
      if (a.mask_bits_key != nullptr && cur.Partial()) {
        const uint64_t w = __ldg(a.mask_bits_key + (cur.list - L.lists) + cur.t / cur.qh);
        const int lg = a.mask_lg;
        const uint32_t qg =
            SpreadBits(ColumnBits(w, lg, (cw * 64 + w4 * 16 + g) >> lg), lg) >> ((s0 & 127) >> 3);
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (!((qg >> j) & 1u)) allow &= ~(0xfu << (4 * j));
      }
      auto keep = [&](int j, int e) { return ((allow >> (4 * j + e)) & 1u) != 0; };
      // the capped P^T from t and the row's lse (log2 domain): one FFMA, as in the forward
      auto capped_p = [&](float tt, float l2) { return Exp2(fmaf(tt, a.cap_log2, -l2)); };
      uint32_t pa[4][4], da[4][4];
      if (!capped) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);  // log2 domain
          const float l2[2] = {lq.x, lq.y};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float p = Exp2(fmaf(s[4 * j + e], sl2, -l2[e & 1]));
            if (!keep(j, e)) p = 0.f;
            s[4 * j + e] = p;
          }
        }
        PackA<T>(pa, s);
      } else if constexpr (PIPE) {
        // t (into s); P^T packed pairwise for the dV product issued next (PackA's layout:
        // element 4j + 2u + c)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);
          const float l2[2] = {lq.x, lq.y};
#pragma unroll
          for (int u = 0; u < 2; ++u) {
            float p[2];
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              const int e = 2 * u + c;
              const float tt = Tanh(s[4 * j + e] * a.scale_cap);
              s[4 * j + e] = tt;
              p[c] = keep(j, e) ? capped_p(tt, l2[c]) : 0.f;
            }
            pa[j / 2][2 * (j % 2) + u] = Ops<T>::Pack(p[0], p[1]);
          }
        }
      } else {
        // t (into s); P^T is formed with dS^T below and packed after it (the dV product
        // comes after dS^T here: fragments packed now would live across dS^T and spill)
#pragma unroll
        for (int i = 0; i < 32; ++i) s[i] = Tanh(s[i] * a.scale_cap);
      }
      const uint64_t don = wg::Desc(sdo, kSlab, 1024), dqn = wg::Desc(sq, kSlab, 1024);
      if constexpr (PIPE) {  // dV += P^T dO runs while dS^T is computed
        FenceAcc(dv);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, kDS<D>, 1>(dv, pa[kk], don + NSlice(kk));
        wg::Commit();
        wg::Wait<1>();  // dP^T done (the dV product may still run)
      }
      FenceAcc(dp);
      if (capped) {  // dS^T = P^T (dP^T - delta) (1 - t^2), P^T (re)computed from t in s
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);
          const float2 dq = *reinterpret_cast<const float2*>(sl + 64 + 8 * j + 2 * t);
          const float l2[2] = {lq.x, lq.y}, dl[2] = {dq.x, dq.y};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float tt = s[4 * j + e];
            const float p = capped_p(tt, l2[e & 1]);
            float ds = p * (dp[4 * j + e] - dl[e & 1]) * (1.f - tt * tt);
            if (!keep(j, e)) ds = 0.f;
            dp[4 * j + e] = ds;
            if constexpr (!PIPE) s[4 * j + e] = keep(j, e) ? p : 0.f;  // P^T, packed below
          }
        }
        if constexpr (!PIPE) PackA<T>(pa, s);
      } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 dq = *reinterpret_cast<const float2*>(sl + 64 + 8 * j + 2 * t);
          const float dl[2] = {dq.x, dq.y};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float ds = s[4 * j + e] * (dp[4 * j + e] - dl[e & 1]);
            if (!keep(j, e)) ds = 0.f;
            dp[4 * j + e] = ds;
          }
        }
      }
      PackA<T>(da, dp);
      FenceAcc(dk);
      if constexpr (!PIPE) FenceAcc(dv);
      wg::Fence();
      if constexpr (!PIPE) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, kDS<D>, 1>(dv, pa[kk], don + NSlice(kk));
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, kDS<D>, 1>(dk, da[kk], dqn + NSlice(kk));
      wg::Commit();
      wg::Wait<0>();
      FenceAcc(dv);
      FenceAcc(dk);
      tma::MbarArrive(empty(st));
    }
    const int64_t kstride = int64_t(a.hkv) * D;
    const int64_t ko = (int64_t(b) * a.tk + key0) * kstride + int64_t(hk) * D;
    T* gk = static_cast<T*>(a.dk) + ko;
    T* gv = static_cast<T*>(a.dv) + ko;
    StoreAcc<T, kDS<D>, D>(dk, a.scale, gk, gk + 8 * kstride, t, key0 < a.tk, key1 < a.tk);
    StoreAcc<T, kDS<D>, D>(dv, 1.f, gv, gv + 8 * kstride, t, key0 < a.tk, key1 < a.tk);
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// ring depths: dQ 2 stages of K + V (192 KB of smem at D = 128), dK/dV 3 stages of Q + dO
// (162 KB at D = 128); one CTA per SM
template <int D> constexpr int kDqStages = kDS<D> == 128 ? 2 : 3;
template <int D> constexpr int kDkvStages = kDS<D> == 128 ? 3 : 4;

// Per device: 0 unknown, 1 usable, 2 not (as the forward's DeviceOk).
template <typename T, int D, bool PIPE>
bool DeviceOk() {
#ifndef JBS_WGMMA_BUILT  // CMake: the architectures include 90a
  return false;
#else
  static std::atomic<uint8_t> state[64];
  const void* kernel = reinterpret_cast<const void*>(DkvKernel<T, D, kDkvStages<D>, PIPE>);
  return UsableAsSm90(state, kernel,
                      tma::GetEncodeTiled() != nullptr);
#endif
}

}  // namespace sm90bwd

template <typename T, int D, bool PIPE>
cudaError_t RunBackwardSm90(const Args& a, cudaStream_t stream) {
  using namespace sm90bwd;
  if (a.bs != kBS) return cudaErrorInvalidValue;
  if (!DeviceOk<T, D, PIPE>()) return cudaErrorNotSupported;
  if (a.tq == 0 || a.tk == 0) {  // no tensor map: the FA2 backward, for what it takes
    const bool fa2_ok = a.mb == 1 && a.q_ids == nullptr && a.q_pos == nullptr &&
                        a.tq % kBS == 0 && a.tk % kBS == 0;
    if constexpr (D == 96) {  // (none at D = 96)
      return cudaErrorInvalidValue;
    } else {
      return fa2_ok ? RunBackward<T, D>(a, stream) : cudaErrorInvalidValue;
    }
  }
  BackwardMaps maps{};
  cudaError_t err = PrepareBackward<T, D>(a, stream, maps);
  const dim3 dq_grid(unsigned(a.batch * a.hq), unsigned(a.by_query.lines));
  const dim3 dkv_grid(unsigned(a.batch * a.hkv), unsigned(a.by_key.lines));
  if (err == cudaSuccess)
    err = LaunchBackwardKernel<sm90bwd::DqKernel<T, D, kDqStages<D>, PIPE>>(
        DqSmem<D, kDqStages<D>>::kBytes, dq_grid, QueryHeadCells<T, D>(a), maps,
        stream);
  if (err == cudaSuccess)
    err = LaunchBackwardKernel<sm90bwd::DkvKernel<T, D, kDkvStages<D>, PIPE>>(
        DkvSmem<D, kDkvStages<D>>::kBytes, dkv_grid, KeyHeadCells<T, D>(a), maps,
        stream);
  return err;
}

JBS_ATTENTION_BWD_SM90_LAUNCHERS(template, __nv_bfloat16)
JBS_ATTENTION_BWD_SM90_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
