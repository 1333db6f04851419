// Attention forward for Hopper (sm_90a) in the FlashAttention-3 design: TMA loads into an
// mbarrier ring, a producer warp and two consumer warpgroups (warp specialization with
// register reallocation), wgmma for both products, the output stored through shared
// memory by TMA. Semantics and metadata: attention.h; the FA2 forward (FwdKernel in
// fa2.cuh) is the functional spec this kernel follows.
//
// Scope (issue 18): block sizes 128 and 64, head dims 64, 96, 128 and 256, bf16 / f16;
// static or traced block lists, causal (bottom-right aligned), kv_lengths, GQA, shared or
// per-head masks, masks per batch entry, segment ids, Tq and Tk that are not multiples of
// the block size (partial last tiles), query positions per batch entry (q_offset: the
// causal offset of query row 0 is read from a.q_pos instead of Tk - Tq), any scale; masks
// of block size 16 and 32 on the block-128 kernel, every head dim (below: "Fine masks"),
// a logit soft cap (issue 21: a.cap_log2 > 0, a runtime branch in the consumers' softmax:
// cap_log2 tanh.approx(scale_cap s) on the raw S before the masks, the FA2 kernels'
// expression, so the backwards' P = 2^(that - lse log2 e), FA2 and Hopper (bwd_sm90.cu),
// matches this forward's); attention sinks (issue 21: a.sinks non-null, a runtime branch
// at each work item's start: the rows' running max and sum start from the sink's term,
// SinkStart in shared.cuh; the backwards need nothing more, their
// P = 2^(s - lse log2 e) with this lse is already the sink-normalised one).
// Variant 2 of the dispatch table (the default on sm_90) is PINGPONG = true at block 128,
// variant 3 false; at block 64 both run the one kernel below.
//
// Block 64 (Geom<64, D>): the same code with one consumer warpgroup: a CTA is one 64-row
// query block, 256 threads, each list entry one 64-key tile (wgmma m64n64k16 for S, PV
// with k = 64), 2 CTAs per SM (launch bounds (256, 2): 128 registers at launch, producer
// 24 / consumer 232 after reallocation; smem 80 KB at D = 128 and 96 with 2 stages, 72 KB
// at D = 64 with 4); no ping-pong inside a CTA (the two CTAs of an SM overlap instead).
// D = 256 runs one CTA per SM (below). The text further below describes block 128.
//
// Head dim 96: shared memory holds two 64-column slabs per tile, as at D = 128; the tensor
// maps have 96 columns, so the second slab's box (columns 64..127) is zero filled past
// column 96 by the loads and the output's store drops those columns. QK^T runs D / 16 = 6
// k16 slices (the zero columns are not read); PV runs N = 128 (O keeps 64 accumulators per
// thread, the last 16 of them stay 0): 33% more PV work than an exact N = 96, for one
// smem layout and descriptor scheme shared with D = 128 (no 64-byte swizzle, no partial
// swizzle atom in the MN-major V operand: an N = 96 or N = 32 B operand in the 128-byte
// swizzle is not a canonical wgmma layout). Smem and registers as D = 128.
// Head dim 256: O is 64 x 256 per consumer warpgroup, 128 fp32 per thread; S of a 128-key
// tile (64 more) and P (32) beside it would not fit 240 registers, and 128-key K and V
// tiles (64 KB each) beside Q (64 KB) allow no second stage. So the key tile is 64 keys
// (Smem::kBN): a list entry of 128 keys is two pipeline steps (Tiles: n and npart count
// tiles), S = 32, P = 16 registers, QK^T 16 k16 slices of m64n64k16, PV m64n256k16 (one
// per k16 slice, V's four 64-column slabs via the descriptor's LBO). Block 128: Q 64 KB +
// 2 stages x (K 32 KB + V 32 KB) = 192 KB, registers 24 / 240 / 240 at 168 per thread at
// launch (ptxas uses the raised limit after setmaxnreg: registers up to R237 in the
// SASS). Block 64: 64-key tiles are the blocks; ptxas compiles the m64n256k16 only with at
// least 158 registers at launch, so one CTA per SM (launch bounds (256, 1)) with 2 stages,
// 160 KB, and no register reallocation (252 registers per thread from the launch on). Element masks, skips and the V tail zeroing work per tile,
// unchanged (a tile past kv_lengths or the causal limit is skipped like an entry).
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
//    TMA writes with CU_TENSOR_MAP_SWIZZLE_128B. D = 128 (and 96): 2 stages, 160 KB; D = 64:
//    3 stages, 112 KB; D = 256: 2 stages of 64-row K, V tiles, 192 KB; one CTA per SM.
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
//  * Fine masks (a.mask_bits; block size 2^a.mask_lg = 16 or 32, attention.h): the lists
//    are those of 128 x 128 tiles, each partial entry with a 64-bit word of the mask blocks
//    of its tile that are visited (attention_metadata.tile_lists; layout: common.cuh). The
//    softmax of a partial entry reads the word's row of its thread's rows (one block row:
//    rows rl, rl + 8) and sets the scores of unvisited blocks to -inf next to the one
//    element predicate (common.cuh's Unvisited after Allowed: one bit per 8 keys,
//    SpreadBits of the row; folded into Allowed's expression it spilled; compiled at block
//    128 only: kFine). At D = 256 a 128-key entry is two 64-key
//    tiles: the word is the entry's (tile e / kSub), the key's column the one within the
//    128-key entry (the row's bits shifted by the sub-tile's 8-key groups). Keys in block
//    columns that no row of the entry visits are never attended: their V rows are zeroed
//    in shared memory together with the kv_lengths tail (zero_v, one pass), so NaN there
//    cannot reach O. The words are re-read from global memory (L1) where used, never held
//    across the loop (holding them spilled at 168 registers): the previous tile's index
//    rides in bits 1 and up of `pph`.
//  * Epilogue: each consumer warpgroup writes its normalized 64 x D rows into its own
//    rows of the Q buffer (same swizzle: conflict-free) and one thread stores them with a
//    TMA store; lse (float32) from registers. Rows with no allowed key: o = 0, lse = -inf
//    (with attention sinks: lse = the head's sink).
//
// Grid: x = (batch, head), y = position in `order` (longest lines first, x fastest), as
// the FA2 forward. Every output element is written once, sums run in a fixed order: the
// results are bitwise deterministic.
//
// Persistent form (PERSISTENT, opt-in: JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1; issue 18):
// short lines (packed documents: ~12 key tiles per query block) pay the per-CTA prologue
// (Q load, pipeline fill) and epilogue (O store) many times. The grid is one CTA per SM (two
// at block 64, D < 256), CTA c taking one work item of each round of gridDim.x items of the
// non-persistent grid's order (item i: y = i / (B Hq), x = i % (B Hq): longest first across
// all (b, h)), item c of even rounds and gridDim.x - 1 - c of odd ones (a snake: CTA loads
// balance within about one round's spread of item lengths; no workspace). Per item the
// producer and the consumers run the code above; between items:
//  * the ring's stage and phase continue (one tile counter per CTA, both roles), so the
//    producer fills stages with the next item's first K/V tiles while the consumers finish
//    this one;
//  * Q has two buffers (QBUFS; D = 256 at block 128 has room for one): item k uses buffer
//    k % 2, its "full_q" barrier at phase k / 2, so the next item's Q is loaded during this
//    item; the epilogue stages O in the item's own Q buffer (its Q is no longer read) and
//    TMA-stores it; an "empty_q" barrier (one arrival per consumer warpgroup, by the thread
//    that issued the store, after the store has read shared memory) gives the buffer back
//    to the producer. That wait is deferred into the next item (after its first QK^T is
//    issued), so the store overlaps the next item's start; with one buffer it comes at
//    once, and the producer issues the next item's first STAGES K/V tiles before its Q;
//  * the ping-pong turns and the V-tail barrier balance within each item (both consumer
//    warpgroups run the same items and tiles), so they pair up across items too.
// Each output tile is still computed by one CTA with the same code in the same order: the
// persistent and plain kernels give the same bits.
#include "fwd_sm90.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../attention_decode.h"
#include "../launch_util.h"
#include "../switches.h"
#include "../tma.cuh"
#include "../wgmma.cuh"
#include "common.cuh"
#include "fa2.cuh"

namespace jax_blocksparse {
namespace attn {

// The FA2 launcher (attention_<dtype>.cu) takes the calls with no key at all (Tk = 0: no
// tensor map of K / V can be encoded).
JBS_ATTENTION_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_LAUNCHERS(extern template, __half)

namespace sm90 {

// Per block size BS (128 or 64) and head dim D: query rows per CTA are BS; BS / 64
// consumer warpgroups (64 query rows each) after the producer one.
template <int BS, int D>
struct Geom {
  static_assert(BS == 64 || BS == 128, "block size 64 or 128");
  static constexpr int kBM = BS;
  static constexpr int kNC = BS / 64;              // consumer warpgroups
  static constexpr int kConsumers = 128 * kNC;
  static constexpr int kThreads = 128 + kConsumers;
  // CTAs per SM: block 64 at D = 256 takes one (ptxas compiles the m64n256k16 of its PV,
  // 128 accumulators, only with at least 158 registers at launch: 2 CTAs of 256 threads
  // leave 128)
  static constexpr int kMinBlocks = BS == 64 && D != 256 ? 2 : 1;
  // register reallocation: 128 * (producer + consumers) per consumer warpgroup fits the
  // launch's per-thread budget (65536 / (kThreads * kMinBlocks): 168 at 384 threads, 128 at
  // 256 threads x 2 CTAs)
  static constexpr int kProducerRegs = 24, kConsumerRegs = kMinBlocks == 2 ? 232 : 240;
  // none when one CTA of 256 threads has the register file to itself (block 64, D = 256:
  // every thread may have 255 registers from the launch on)
  static constexpr bool kRealloc = kThreads * kMinBlocks * 255 > 65536;
};
[[maybe_unused]] constexpr int kLine = 128;  // bytes per swizzled smem line (64 elements)
// named barriers (0 is __syncthreads)
[[maybe_unused]] constexpr int kBarZeroV = 1;     // the two consumer warpgroups around the V tail zeroing
[[maybe_unused]] constexpr int kBarEpilogue = 2;  // + consumer index: one consumer warpgroup
[[maybe_unused]] constexpr int kBarTurn = 4;  // + consumer index: its turn to issue (ping-pong)

// Per head dim D and block size BS: the shared-memory layout (QBUFS Q buffers, then
// STAGES x (K, V), then the mbarriers) and the key tile (keys per pipeline step). QBUFS:
// 1, or 2 in the persistent kernel where they fit (the next work item's Q loads while
// this one's runs).
template <int D, int STAGES, int BS, int QBUFS = 1>
struct Smem {
  static_assert(D == 64 || D == 96 || D == 128 || D == 256, "head dim 64, 96, 128 or 256");
  // columns in shared memory: whole 64-column slabs (D = 96: two, the last 32 columns zero
  // filled by the loads: out of the tensor maps' bounds)
  static constexpr int kDS = (D + 63) / 64 * 64;
  static constexpr int kSlabs = kDS / 64;
  // keys per tile: a list entry (BS keys) is kSub tiles (D = 256: 64-key tiles, S and P
  // in 32 + 16 registers beside O's 128)
  static constexpr int kBN = D == 256 ? 64 : BS;
  static constexpr int kSub = BS / kBN;
  static constexpr int kQSlab = BS * kLine, kKVSlab = kBN * kLine;  // bytes of a slab
  static constexpr int kQTile = kSlabs * kQSlab, kKVTile = kSlabs * kKVSlab;
  static constexpr int kKV = QBUFS * kQTile;                  // offset of stage 0's K tile
  static constexpr int kBars = kKV + 2 * STAGES * kKVTile;     // offset of the mbarriers
  static constexpr int kNumBars = 2 * QBUFS + 4 * STAGES;  // Q full / empty, K, V full / empty
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;  // + 1024-byte alignment
};

// threadIdx.x, read again (volatile: not merged with the first read), for indices better
// recomputed than kept in a register across a loop
__device__ __forceinline__ int FreshTid() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
  return t;
}

// Work items: (batch entry, head, query block), item i = position pos in `order` (the
// lines of a (batch entry, mask head), longest first) of (b, h) = bh: pos = i / (B Hq),
// bh = i % (B Hq) -- bh fastest, so the items go longest first across all (b, h), as the
// non-persistent grid's (x = bh, y = pos) runs them.
struct WorkItem {
  int b, h;      // batch entry, query head
  int64_t line;  // the query block's line in the lists (its row of counts, lists, ...)
  int q0;        // its first query row
};

template <int BS>
__device__ __forceinline__ WorkItem DecodeItem(const Args& a, int pos, int bh) {
  const Lists& L = a.by_query;
  WorkItem w;
  w.b = bh / a.hq;
  w.h = bh % a.hq;
  const int64_t lines0 = FirstLine(a, L, w.b, a.hm == 1 ? 0 : w.h);  // per batch or shared
  const int r = __ldg(L.order + lines0 + pos);
  w.line = lines0 + r;
  w.q0 = r * BS;
  return w;
}

// ---- GQA-packed decode (PACKED): CTA x = b * Hkv + g, y = split + splits (chunk + chunks
// part) (decode.cu's order); tile row r = (t - t0) * G + j: query t, head g G + j
struct PackedWork {
  int b, g, split, row, t0, nq, limit;
};
template <int BM>
__device__ __forceinline__ PackedWork DecodePacked(const Args& a) {
  PackedWork w;
  w.b = int(blockIdx.x) / a.hkv;
  w.g = int(blockIdx.x) % a.hkv;
  const int qpt = BM >> a.group_lg;  // queries per tile
  const int chunks = (a.tq + qpt - 1) / qpt;
  w.split = int(blockIdx.y) % a.splits;
  const int chunk = (int(blockIdx.y) / a.splits) % chunks;
  const int part = int(blockIdx.y) / (a.splits * chunks);
  const int row_pos = __ldg(a.q_rows + w.b);
  w.row = FloorDiv(row_pos, a.bs) + part;
  const int i0 = max(part == 0 ? 0 : w.row * a.bs - row_pos, 0);
  const int i1 = min((w.row + 1) * a.bs - row_pos, a.tq);
  w.t0 = i0 + chunk * qpt;
  w.nq = min(i1 - w.t0, qpt);
  const int kvlen = KvLength(a, w.b);
  w.limit = max(a.causal ? min(kvlen, QueryOffset(a, w.b) + w.t0 + w.nq) : kvlen, 0);
  return w;
}
constexpr int kPackedCap = kDecodeSplitCapacity;  // listed blocks one split holds
// The split's share of the mask row's blocks that start before w.limit (ranks [lo, hi) in
// list order), their first keys compacted into starts[]; all NT threads; returns hi - lo.
template <int NT>
__device__ int PackedStarts(const Args& a, const PackedWork& w, int* starts, int* wcount) {
  const Lists& L = a.by_query;  // counts [Bm, 1, R], lists [Bm, 1, R, W]
  int n = 0;
  const int32_t* list = L.lists;
  if (w.row >= 0 && w.row < a.mask_rows) {
    const int64_t line = int64_t(a.mb == 1 ? 0 : w.b) * a.mask_rows + w.row;
    n = __ldg(L.counts + line);
    list += line * L.max_len;
  }
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int valid = 0;
  for (int e0 = 0; e0 < n; e0 += NT) {
    const int e = e0 + tid;
    valid += __syncthreads_count(e < n && __ldg(list + e) * a.bs < w.limit);
  }
  const int lo = int(int64_t(valid) * w.split / a.splits);
  const int hi = int(int64_t(valid) * (w.split + 1) / a.splits);
  for (int e0 = 0, base = 0; e0 < n && base < hi; e0 += NT) {
    const int e = e0 + tid;
    const int start = e < n ? __ldg(list + e) * a.bs : INT32_MAX;
    const bool ok = e < n && start < w.limit;
    const unsigned ballot = __ballot_sync(0xffffffffu, ok);
    if (lane == 0) wcount[warp] = __popc(ballot);
    __syncthreads();
    int rank = base + __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int x = 0; x < NT / 32; ++x) {
      rank += x < warp ? wcount[x] : 0;
      total += wcount[x];
    }
    if (ok && rank >= lo && rank < hi) starts[rank - lo] = start;
    __syncthreads();
    base += total;
  }
  __syncthreads();
  return hi - lo;
}
// KeyTiles' interface over the compacted starts: tile e is sub-tile e % sub of entry e / sub,
// those starting at or past `limit` skipped (as KeyTiles skips them: the entry holding the
// limit, listed first when partial, may have kBN-key tiles wholly past it)
template <int kBN>
struct RangeTiles {
  const int* starts;
  const int32_t* list;       // unused (the fine masks' code reads it: compiled, never run)
  int n, npart, sub, e, limit;
  __device__ __forceinline__ int Start() const { return starts[e / sub] + (e % sub) * kBN; }
  __device__ __forceinline__ void Skip() {
    while (e < n && Start() >= limit) ++e;
  }
  __device__ __forceinline__ void Next() {
    ++e;
    Skip();
  }
  __device__ __forceinline__ bool Done() const { return e >= n; }
  __device__ __forceinline__ void Begin(const int* s, int entries, int bs, int key_limit,
                                        const int32_t* l) {
    starts = s;
    list = l;
    sub = bs / kBN;
    n = entries * sub;
    npart = 0;
    limit = key_limit;
    e = 0;
    Skip();
  }
};

// PERSISTENT = false: one CTA per work item (grid x = bh, y = pos). PERSISTENT = true: a
// grid of at most (SMs x CTAs per SM) CTAs, CTA c runs one item of each round of gridDim.x
// items in the longest-first order, c in even rounds and gridDim.x - 1 - c in odd ones (a
// static snake: no workspace, a fixed assignment; plain striding gave the first CTAs the
// longest item of every round, about 12% more work than the last on causal masks). The
// producer runs ahead into the next item: its Q (into the other of QBUFS = 2 buffers; with one buffer, D = 256 at
// block 128, after the first STAGES K/V tiles, once the consumers released the buffer) and
// its first K/V tiles (the ring's stages and phases run on across items: one tile counter
// `it` for the whole CTA); the consumers' O of item k goes out through Q buffer k % QBUFS
// by TMA store, and the buffer is released to the producer (mbarrier "empty_q", one
// arrival per consumer warpgroup) once the store has read it: at QBUFS = 2 deferred to
// the next item's first QK^T (the store overlaps the next item's start), at QBUFS = 1 at
// once.
template <typename T, int D, int BS, int STAGES, bool PINGPONG, bool PERSISTENT, int QBUFS,
          bool PACKED = false>
__global__ void __launch_bounds__(Geom<BS, D>::kThreads, Geom<BS, D>::kMinBlocks)
    FwdKernel(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
              const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
              const __grid_constant__ CUtensorMap tm_o) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(PERSISTENT || QBUFS == 1, "a second Q buffer serves the next work item");
  static_assert(!PACKED || !PERSISTENT, "packed: one item per CTA");
  using S = Smem<D, STAGES, BS, QBUFS>;
  using G = Geom<BS, D>;
  constexpr int kBM = G::kBM, kBN = S::kBN, kConsumers = G::kConsumers;
  constexpr int kDS = S::kDS, kSlabs = S::kSlabs;
  constexpr int kQSlab = S::kQSlab, kKVSlab = S::kKVSlab;
  constexpr int kQTile = S::kQTile, kKVTile = S::kKVTile;
  constexpr bool kPing = PINGPONG && G::kNC == 2;  // ping-pong needs two consumer warpgroups
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = ptx::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;  // 1024-byte aligned: the swizzle atoms
  const uint32_t base = raw + pad;
  // Q buffer qb at base + qb kQTile; stage st: K at base + S::kKV + 2 st kKVTile, V
  // kKVTile further
  const uint32_t bars = base + S::kBars;
  auto full_q = [&](int qb) { return bars + 8u * qb; };
  auto empty_q = [&](int qb) { return bars + 8u * (QBUFS + qb); };
  auto full_k = [&](int st) { return bars + 8u * (2 * QBUFS + st); };
  auto full_v = [&](int st) { return bars + 8u * (2 * QBUFS + STAGES + st); };
  auto empty_k = [&](int st) { return bars + 8u * (2 * QBUFS + 2 * STAGES + st); };
  auto empty_v = [&](int st) { return bars + 8u * (2 * QBUFS + 3 * STAGES + st); };

  const int tid = threadIdx.x, wgi = tid / 128;
  const Lists& L = a.by_query;
  // this CTA's work items k = 0, 1, ... while has_item(k) (one without PERSISTENT: a
  // constant trip count, the loops below fold away); item k of CTA c is k gridDim.x + c for
  // even k, k gridDim.x + gridDim.x - 1 - c for odd k (a snake over the longest-first
  // items: the CTAs that take a round's longer items take the next round's shorter ones);
  // the bound recomputed from the parameters (a register less held across the loops)
  auto item_index = [&](int k) {
    const int c = (k & 1) ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
    return k * int(gridDim.x) + c;
  };
  auto has_item = [&](int k) {
    return PERSISTENT ? item_index(k) < a.batch * a.hq * L.lines : k < 1;
  };
  // PACKED: this CTA's rows and key limit (one item)
  PackedWork pw{};
  if constexpr (PACKED) pw = DecodePacked<kBM>(a);
  auto item = [&](int k) {
    if constexpr (PACKED) {
      return WorkItem{pw.b, pw.g, 0, pw.t0};
    } else if constexpr (PERSISTENT) {
      const int bhs = a.batch * a.hq;
      const int i = item_index(k), pos = i / bhs;
      return DecodeItem<kBM>(a, pos, i - pos * bhs);
    } else {
      const Cell cell = CellOf(a);
      return DecodeItem<kBM>(a, cell.rank, cell.bh);
    }
  };
  // item k's Q buffer and the phase of its barriers
  auto q_buf = [&](int k) { return k % QBUFS; };
  auto q_phase = [&](int k) { return uint32_t(k / QBUFS) & 1u; };

  if (tid == 0) {
#pragma unroll
    for (int qb = 0; qb < QBUFS; ++qb) {
      tma::MbarInit(full_q(qb), 1);
      tma::MbarInit(empty_q(qb), G::kNC);  // the storing thread of each consumer warpgroup
    }
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
  // PACKED: the split's key blocks into shared memory (after the mbarriers), all threads
  int* const p_starts = reinterpret_cast<int*>(smem + S::kBars + 8 * S::kNumBars);
  int packed_n = 0;
  if constexpr (PACKED) {
    if (pw.nq <= 0) return;  // uniform: this (part, chunk) has no query
    packed_n = PackedStarts<G::kThreads>(a, pw, p_starts, p_starts + kPackedCap);
  }
  using Tiles = typename std::conditional<PACKED, RangeTiles<kBN>, KeyTiles<BS, kBN>>::type;

  if (wgi == 0) {
    // ------------------------------------------------------------- producer
    if constexpr (G::kRealloc) tma::RegDealloc<G::kProducerRegs>();
    if (tid == 0) {
      tma::PrefetchMap(&tm_q);
      tma::PrefetchMap(&tm_k);
      tma::PrefetchMap(&tm_v);
      // One K or V tile (kBN keys from kstart) into dst. PACKED with a paged cache (maps
      // over the pools [P, page_size, Hkv, D], boxes of min(page_size, kBN) keys): a piece
      // per page, each at its rows of the tile (page sizes are multiples of 16: pieces start
      // on whole 1024-byte swizzle atoms); keys past Tk (the last tile) read page 0, masked
      // and their V rows zeroed as any key past the limit.
      auto load_kv = [&](uint32_t dst, const CUtensorMap* map, int hk, int kstart, int b,
                         uint32_t bar) {
        if constexpr (PACKED) {
          if (a.page_table != nullptr) {
            const int piece = min(a.page_size, kBN);
            for (int c = 0; c < kBN; c += piece) {
              const int key = kstart + c;
              const int page = key < a.tk ? __ldg(a.page_table + int64_t(b) * a.pages_per_seq +
                                                  key / a.page_size)
                                          : 0;
#pragma unroll
              for (int sl = 0; sl < kSlabs; ++sl)
                tma::Load4d(dst + uint32_t(sl * kKVSlab + c * kLine), map, sl * 64, hk,
                            key % a.page_size, page, bar);
            }
            return;
          }
        }
#pragma unroll
        for (int sl = 0; sl < kSlabs; ++sl)
          tma::Load4d(dst + uint32_t(sl * kKVSlab), map, sl * 64, hk, kstart, b, bar);
      };
      // With one Q buffer the next item's Q waits for this item's output store: its first
      // kQLead K/V tiles go first (their slots free up as the consumers finish this item)
      constexpr int kQLead = PERSISTENT && QBUFS == 1 ? STAGES : 0;
      int it = 0;  // K/V tiles loaded, all items: ring stage it % STAGES, phase it / STAGES
      for (int k = 0; has_item(k); ++k) {
        const WorkItem w = item(k);
        const int hk = PACKED ? w.h : w.h / a.group;
        Tiles tiles;
        if constexpr (PACKED)
          tiles.Begin(p_starts, packed_n, a.bs, pw.limit, L.lists);
        else
          tiles.Begin(L, w.line, KvLength(a, w.b), w.q0 + kBM - 1 + QueryOffset(a, w.b),
                      a.causal);
        // 4-d maps [B, T, H, D]: rows past T (a partial last tile) are zero filled here and
        // dropped by the output's store; a box's full bytes count, the zero-filled part too
        // (rows past T, columns past D = 96)
        auto load_q = [&]() {
          const int qb = q_buf(k);
          if constexpr (PERSISTENT) tma::MbarWait(empty_q(qb), q_phase(k) ^ 1u);
          tma::MbarArriveExpectTx(full_q(qb), kQTile);
#pragma unroll
          for (int sl = 0; sl < kSlabs; ++sl) {
            if constexpr (PACKED)  // rows (t, j): G heads x kBM / G queries
              tma::Load5d(base + uint32_t(qb * kQTile + sl * kQSlab), &tm_q, sl * 64, 0, w.h,
                          w.q0, w.b, full_q(qb));
            else
              tma::Load4d(base + uint32_t(qb * kQTile + sl * kQSlab), &tm_q, sl * 64, w.h, w.q0,
                          w.b, full_q(qb));
          }
        };
        if constexpr (kQLead == 0) load_q();
        int j = 0;  // this item's tiles
        for (; !tiles.Done(); ++it, ++j, tiles.Next()) {
          if constexpr (kQLead > 0) {
            if (j == kQLead) load_q();
          }
          const int st = it % STAGES;
          const uint32_t ph = (it / STAGES) & 1;
          const int kstart = tiles.Start();
          const uint32_t sk = base + uint32_t(S::kKV + 2 * st * kKVTile), sv = sk + kKVTile;
          tma::MbarWait(empty_k(st), ph ^ 1);
          tma::MbarArriveExpectTx(full_k(st), kKVTile);
          load_kv(sk, &tm_k, hk, kstart, w.b, full_k(st));
          tma::MbarWait(empty_v(st), ph ^ 1);
          tma::MbarArriveExpectTx(full_v(st), kKVTile);
          load_kv(sv, &tm_v, hk, kstart, w.b, full_v(st));
        }
        if constexpr (kQLead > 0) {
          if (j <= kQLead) load_q();
        }
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    if constexpr (G::kRealloc) tma::RegAlloc<G::kConsumerRegs>();
    const int cw = wgi - 1, ctid = tid - 128;
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const int rl = cw * 64 + w4 * 16 + g;  // tile row of s/o[4j + 0, 1]; rl + 8: [4j + 2, 3]
    // PACKED: the kv head's k scale joins the score scale (ones for a cache in q's dtype,
    // as the decode primitive passes them), its v scale the output (the epilogue)
    const float kscale =
        PACKED && a.k_scale != nullptr ? __ldg(a.k_scale + int(blockIdx.x) % a.hkv) : 1.f;
    const float sl2 = a.scale_log2 * kscale, scale_cap = a.scale_cap * kscale;
    // a logit soft cap (a.cap_log2 > 0): the scores become t = tanh(s scale_cap) before the
    // masks, and their log2-domain value cap_log2 t is taken where used (the maxima, and
    // P = 2^(t cap_log2 - m): one FFMA, as for a positive scale); both backwards (FA2,
    // Hopper) recompute P from this lse with the same FFMA
    const bool capped = a.cap_log2 > 0.f;
    const bool pos_scale = sl2 > 0.f && !capped;
    // factor of the tile maxima and of the exponent's FFMA (1: scores scaled in place)
    const float sl2_max = capped ? a.cap_log2 : pos_scale ? sl2 : 1.f;
    int it = 0;  // K/V tiles consumed, all items (the producer's count: ring stage, phase)
    for (int k = 0; has_item(k); ++k) {
      // ---- one work item: its rows, key tiles, Q buffer
      const WorkItem w = item(k);
      const int b = w.b, h = w.h, q0 = w.q0;
      const int off = QueryOffset(a, b);  // causal position of query row 0
      // PACKED: keys at or past the tile's limit (kv_lengths, the last query's causal
      // position) are masked for every row, their V rows zeroed
      const int kvlen = PACKED ? pw.limit : KvLength(a, b);
      const int qb = q_buf(k);
      const uint32_t sQ = base + uint32_t(qb * kQTile);
      Tiles cur;  // the tile in work
      if constexpr (PACKED)
        cur.Begin(p_starts, packed_n, a.bs, kvlen, L.lists);
      else
        cur.Begin(L, w.line, kvlen, q0 + kBM - 1 + off, a.causal);
      // A mask of block size 16 / 32 on these tiles (a.mask_bits): the word of the mask
      // blocks that partial entry visits joins the element predicate; every other entry
      // has ~0 (without one, a.mask_lg = log2(BS): one block per entry). Tile e is of entry
      // e / kSub. Read where used, not kept in registers (168 at 384 threads): bits
      // [32 half, 32 half + 32).
      // the launchers take mask bits at block 128 only, and not for packed rows
      constexpr bool kFine = BS == 128 && !PACKED;
      constexpr int kSub = S::kSub;
      auto mask_half = [&](int e, int half) -> uint32_t {
        return kFine && a.mask_bits != nullptr && e < cur.npart
                   ? __ldg(reinterpret_cast<const uint32_t*>(a.mask_bits + (cur.list - L.lists) +
                                                             e / kSub) + half)
                   : ~0u;
      };
      // the mask block columns of tile e (bit c: its keys [c << lg, (c + 1) << lg)) that no
      // row of its entry visits (EmptyColumns of the entry, the tile's part), 0 without bits
      auto empty_columns = [&](int e) -> uint32_t {
        if (!kFine || a.mask_bits == nullptr) return 0u;
        const int lg = a.mask_lg, per_tile = kBN >> lg;
        const uint32_t empty =
            EmptyColumns(uint64_t(mask_half(e, 1)) << 32 | mask_half(e, 0), lg);
        if constexpr (kSub == 1) return empty;
        return (empty >> ((e % kSub) * per_tile)) & ((1u << per_tile) - 1u);
      };

      // o: kDS columns (D = 96: 128, the last 32 stay zero: V's columns there are)
      float o[kDS / 2], s[kBN / 2];
      uint32_t p[kBN / 16][4];
#pragma unroll
      for (int i = 0; i < kBN / 2; ++i) s[i] = 0.f;
#pragma unroll
      for (int i = 0; i < kDS / 2; ++i) o[i] = 0.f;
      float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
      // attention sinks (a.sinks): the rows start from the sink's term (SinkStart,
      // shared.cuh): m = sink log2(e), l = 1 on lane t == 0 of the quad
      SinkStart(a.sinks, h, t == 0, m0, l0);
      SinkStart(a.sinks, h, t == 0, m1, l1);
      if (a.cap_is_max) m0 = m1 = a.cap_log2;  // (never with sinks: dispatch.cu)

      // descriptors: Q rows of this warpgroup, K and V of stage 0 (a stage adds 2 kKVTile)
      const uint64_t dq = wg::Desc(sQ + uint32_t(cw * 64 * kLine), 16, 1024);
      const uint64_t dk = wg::Desc(base + S::kKV, 16, 1024);
      const uint64_t dv = wg::Desc(base + S::kKV + kKVTile, kKVSlab, 1024);

      // S = Q K^T of stage st (one commit group); D / 16 k16 slices (D = 96: 6, the zero
      // columns are not read)
      auto issue_qk = [&](int st) {
        const uint64_t so = uint64_t((st * 2 * kKVTile) >> 4);
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          const uint64_t qo = uint64_t(((kk / 4) * kQSlab + (kk % 4) * 32) >> 4);
          const uint64_t ko = uint64_t(((kk / 4) * kKVSlab + (kk % 4) * 32) >> 4);
          wg::MmaSS<T, kBN>(s, dq + qo, dk + so + ko, kk > 0 ? 1 : 0);
        }
        wg::Commit();
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
      };
      // O += P V of stage st (one commit group; N = kDS: one wgmma per k16 slice)
      auto issue_pv = [&](int st) {
        const uint64_t so = uint64_t((st * 2 * kKVTile) >> 4);
#pragma unroll
        for (int i = 0; i < kDS / 2; ++i) wg::FenceOperand(o[i]);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk)
          wg::MmaRS<T, kDS, 1>(o, p[kk], dv + so + uint64_t((kk * 16 * kLine) >> 4));
        wg::Commit();
#pragma unroll
        for (int i = 0; i < kDS / 2; ++i) wg::FenceOperand(o[i]);
      };
      // Zero the V rows of stage st that no query of the tile attends: keys >= kvlen (the
      // cut tile: keys [start, start + kBN) contain kv_lengths; valid = kvlen - start) and
      // the mask blocks' columns in `empty` (empty_columns), shared by the consumer
      // warpgroups (each waited for the slot).
      auto zero_v = [&](int st, int valid, uint32_t empty) {
        unsigned char* sv = smem + S::kKV + (2 * st + 1) * kKVTile;
        const int first = kFine && empty != 0 ? 0 : valid;  // rows before it are kept
        const int chunks = (kBN - first) * 8;               // 16-byte chunks per slab
        for (int c = ctid; c < kSlabs * chunks; c += kConsumers) {
          const int sl = c / chunks, rem = c - sl * chunks, row = first + rem / 8;
          if (!kFine || row >= valid || ((empty >> (row >> a.mask_lg)) & 1u))
            *reinterpret_cast<uint4*>(sv + sl * kKVSlab + row * kLine + (rem % 8) * 16) =
                make_uint4(0, 0, 0, 0);
        }
        tma::FenceProxyAsync();
        tma::NamedBarrier(kBarZeroV, kConsumers);
      };
      // Online softmax of S (this tile, cur.e: keys from `start`): masks (when `masked`), folds
      // the maxima into m0 / m1, rescales l0 / l1, leaves P = 2^(S - m) in s (float) and
      // the factor of the old accumulators in c0 / c1.
      auto softmax = [&](int start, bool masked, bool causal_part, float& c0, float& c1) {
        // scores in the log2 domain: scaled here unless the scale is positive (then the
        // maxima of the raw scores times the scale, and P = 2^(s * scale - m): one FFMA);
        // masks after scaling (a -inf score stays -inf for any scale). Soft-capped:
        // t = tanh(s scale_cap) (tanh.approx; the masks after it; factor cap_log2 > 0)
        if (capped) {
#pragma unroll
          for (int i = 0; i < kBN / 2; ++i) s[i] = Tanh(s[i] * scale_cap);
        } else if (!pos_scale) {
#pragma unroll
          for (int i = 0; i < kBN / 2; ++i) s[i] *= sl2;
        }
        if (masked) {
          const int j0 = start + 2 * t;
          // the query index of tile row rl; in the persistent kernel from a fresh read of
          // the thread index (i0 kept live across the loop spilled there at D = 256)
          const int ft = PERSISTENT ? FreshTid() : tid;
          const int i0 = q0 + (PERSISTENT ? (ft / 128 - 1) * 64 + ((ft >> 5) & 3) * 16 +
                                                ((ft & 31) >> 2)
                                          : rl);
          // segment ids (none: every id 0), loaded here (L1 hits after the first partial
          // tile) rather than kept in registers across the loop (168 at 384 threads)
          const bool segs = !PACKED && a.kv_ids != nullptr;
          int qid0 = 0, qid1 = 0;
          if (segs) {
            // ids padded to whole tiles: rows past Tq are not stored, keys past Tk are past
            // kv_lengths (masked); no bounds checks here (they cost spills at 168 registers)
            const int32_t* qids = PaddedIds(a.q_ids, b, a.tq, BS);
            qid0 = __ldg(qids + i0);
            qid1 = __ldg(qids + i0 + 8);
          }
          // the mask block row of rows rl, rl + 8 (one: blocks of 16 or more rows): bit j of
          // `cols` says whether it visits keys 8j + [0, 8) of this tile (its entry's groups
          // from the sub-tile's first: columns within the 128-key entry)
          uint32_t cols = ~0u;
          if (kFine && a.mask_bits != nullptr && cur.e < cur.npart) {
            // rl >> 4 = the consumer warp (tid >> 5) - 4, from a fresh read of the thread
            // index (rl kept live here spilled at D = 256)
            const int bit0 = (((FreshTid() >> 5) - 4) >> (a.mask_lg - 4)) * (BS >> a.mask_lg);
            const uint32_t wrow = mask_half(cur.e, bit0 >> 5) >> (bit0 & 31);
            cols = SpreadBits(wrow, a.mask_lg);
            if constexpr (kSub > 1) cols >>= (cur.e % kSub) * (kBN / 8);
          }
#pragma unroll
          for (int j = 0; j < kBN / 8; ++j) {
            int kid0 = 0, kid1 = 0;  // documents of keys j0 + 8j, + 1 (all 0 without ids)
            if (segs) {  // (padded to whole blocks, not key tiles)
              const int32_t* kids = PaddedIds(a.kv_ids, b, a.tk, BS);
              kid0 = __ldg(kids + j0 + 8 * j);
              kid1 = __ldg(kids + j0 + 8 * j + 1);
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              // PACKED: tile row rl (+ 8) is query q0 + (row >> lg) (i0 - q0 = rl)
              const int kj = j0 + 8 * j + (e & 1);
              const int qi = PACKED ? q0 + ((i0 - q0 + (e >> 1) * 8) >> a.group_lg)
                                    : i0 + (e >> 1) * 8;
              if (!Allowed(qi, kj, kvlen, causal_part, off, (e >> 1) ? qid1 : qid0,
                           (e & 1) ? kid1 : kid0))
                s[4 * j + e] = -INFINITY;
            }
          }
          Unvisited<kBN / 8>(s, cols);  // the fine masks' term, next to Allowed
        }
        // a.cap_is_max: every row's maximum is the cap's bound (m = cap_log2, set at the
        // item's start), no tile maxima, nothing rescaled
        float mu0 = m0, mu1 = m1;
        c0 = c1 = 1.f;
        if (!a.cap_is_max) {
          float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
          for (int j = 0; j < kBN / 8; ++j) {
            mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
            mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
          }
          mx0 = fmaxf(m0, QuadMax(mx0) * sl2_max);
          mx1 = fmaxf(m1, QuadMax(mx1) * sl2_max);
          // lazy rescale: the running maximum stays while the tile's is within the slack
          // (slack 0: moves with every new maximum; -inf - -inf is NaN: stays -inf)
          if (mx0 - m0 <= a.rescale_slack) mx0 = m0;
          if (mx1 - m1 <= a.rescale_slack) mx1 = m1;
          mu0 = mx0 == -INFINITY ? 0.f : mx0;
          mu1 = mx1 == -INFINITY ? 0.f : mx1;
          c0 = Exp2(m0 - mu0);
          c1 = Exp2(m1 - mu1);
          m0 = mx0;
          m1 = mx1;
        }
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
          for (int i = 0; i < 4; ++i)
            p[kk][i] = Ops<T>::Pack(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
      };

      // Ping-pong: the two consumer warpgroups take turns to issue their wgmmas (named
      // barrier kBarTurn + cw: synced by its owner, arrived at by the other one after its
      // issue), so one's softmax runs while the other's products do. Warpgroup 0 goes first
      // (warpgroup 1 arrives once up front); both have the same n + 1 issue points (n
      // tiles), and warpgroup 1 skips the arrive after its last: the arrivals match the syncs
      // (within each work item: the persistent kernel's items pair up one after the other).
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

      // Item k - 1's output store has read its Q buffer (QBUFS = 2: waited for here, in
      // this item, after its first QK^T is issued): the producer may load item k + 1's Q there
      auto release_prev_q = [&]() {
        if constexpr (PERSISTENT && QBUFS == 2) {
          if (k > 0 && (ctid & 127) == 0) {
            tma::StoreWaitRead();
            tma::MbarArrive(empty_q(q_buf(k - 1)));
          }
        }
      };

      // whether tile `start` needs the element masks: a partial entry, the cut tile, or
      // (PACKED: no partial flags) a key past the first query's causal position
      auto diag = [&](int start) {
        return cur.e < cur.npart || start + kBN > kvlen ||
               (PACKED && a.causal && start + kBN - 1 > off + q0);
      };
      tma::MbarWait(full_q(qb), q_phase(k));  // also before the epilogue reuses the Q buffer
      if (cur.Done()) {
        release_prev_q();
      } else {
        if constexpr (kPing) {
          if (cw == 1) tma::NamedArrive(kBarTurn, kConsumers);
        }
        // first tile: S, softmax, P (O is still zero)
        int start = cur.Start();
        const int st0 = it % STAGES;
        const uint32_t ph0 = (it / STAGES) & 1;
        tma::MbarWait(full_k(st0), ph0);
        turn_begin();
        issue_qk(st0);
        turn_end(false);
        release_prev_q();
        wg::Wait<0>();
#pragma unroll
        for (int i = 0; i < kBN / 2; ++i) wg::FenceOperand(s[i]);
        tma::MbarArrive(empty_k(st0));
        float c0, c1;
        softmax(start, diag(start), a.causal && (PACKED || cur.e < cur.npart), c0, c1);
        // Loop invariant at the top of iteration it: s holds P of tile it - 1 (float, not yet
        // multiplied by V), c0 / c1 its rescale factors; the PV of tile it - 2 may be in
        // flight (reading V stage vst). The wait for that PV comes first in the body: ptxas
        // schedules a wgmma wait early in its basic block (it was seen hoisted above the
        // softmax when placed after it), and at the top of the loop nothing precedes it.
        // tile it - 1: its stage, first key, and (one register: 168 at 384 threads) its
        // phase in bit 0, its index cur.e from bit 1 on
        int pst = st0, pstart = start;
        uint32_t pph = kFine ? ph0 | uint32_t(cur.e) << 1 : ph0;
        bool v_busy = false;  // a PV in flight reads V stage vst
        int vst = 0;
        auto retire_pv = [&]() {  // the PV in flight is done; O *= c; P to registers
          wg::Wait<0>();
#pragma unroll
          for (int i = 0; i < kDS / 2; ++i) wg::FenceOperand(o[i]);
          if (v_busy) tma::MbarArrive(empty_v(vst));
          // all of them: skipping D = 96's zero columns made ptxas serialize the wgmmas;
          // under the lazy rescale none in a warp whose rows all kept their maximum (c = 1:
          // the same values); without it always, as measured
          if (a.rescale_slack == 0.f || __any_sync(0xffffffffu, c0 != 1.f || c1 != 1.f)) {
#pragma unroll
            for (int j = 0; j < kDS / 8; ++j) {
              o[4 * j] *= c0; o[4 * j + 1] *= c0; o[4 * j + 2] *= c1; o[4 * j + 3] *= c1;
            }
          }
          pack_p();
        };
        ++it;
        cur.Next();
        for (; !cur.Done(); ++it, cur.Next()) {
          const int st = it % STAGES;
          const uint32_t ph = (it / STAGES) & 1;
          start = cur.Start();
          retire_pv();
          tma::MbarWait(full_k(st), ph);
          const uint32_t pempty = empty_columns(int(pph >> 1));
          tma::MbarWait(full_v(pst), pph & 1u);
          if (pstart + kBN > kvlen || pempty != 0) zero_v(pst, max(kvlen - pstart, 0), pempty);
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
          softmax(start, diag(start), a.causal && (PACKED || cur.e < cur.npart), c0, c1);
          pst = st;
          pph = kFine ? ph | uint32_t(cur.e) << 1 : ph;
          pstart = start;
        }
        retire_pv();
        const uint32_t pempty = empty_columns(int(pph >> 1));
        tma::MbarWait(full_v(pst), pph & 1u);
        if (pstart + kBN > kvlen || pempty != 0) zero_v(pst, max(kvlen - pstart, 0), pempty);
        turn_begin();
        issue_pv(pst);
        turn_end(true);
        wg::Wait<0>();
#pragma unroll
        for (int i = 0; i < kDS / 2; ++i) wg::FenceOperand(o[i]);
        tma::MbarArrive(empty_v(pst));
      }

      // ---- epilogue: O / l -> this warpgroup's rows of the Q buffer -> TMA store; lse
      // this thread's rows; at D = 96 again from a fresh read of the thread index (kept live
      // across the loop they spilled with ping-pong; at D = 256 the fresh read spills)
      const int ecw = (D == 96 ? FreshTid() : tid) / 128 - 1;
      const int erl = ecw * 64 + w4 * 16 + g, ei0 = q0 + erl;
      l0 = QuadSum(l0);
      l1 = QuadSum(l1);
      const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
      if constexpr (PACKED) {
        // this split's normalized rows (float32) and log2 lse, in the layout of the decode
        // combine (decode.cu): part_o [B, Hq, Tq, S, D], part_lse [B, Hq, Tq, S]
        const float vscale = a.v_scale != nullptr ? __ldg(a.v_scale + h) : 1.f;
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = erl + 8 * hh, tl = row >> a.group_lg;
          if (tl >= pw.nq) continue;  // past the part's queries (or Tq): not stored
          const int hd = h * a.group + (row & (a.group - 1));
          const int64_t prow =
              ((int64_t(b) * a.hq + hd) * a.tq + q0 + tl) * a.splits + pw.split;
          float* out = a.part_o + prow * D;
          const float inv = (hh ? inv1 : inv0) * vscale;
#pragma unroll
          for (int j = 0; j < D / 8; ++j)
            *reinterpret_cast<float2*>(out + 8 * j + 2 * t) =
                make_float2(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
          const float l = hh ? l1 : l0, m = hh ? m1 : m0;
          if (t == 0) a.part_lse[prow] = l > 0.f ? m + __log2f(l) : -INFINITY;
        }
      } else {
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = erl + 8 * hh;
            const float inv = hh ? inv1 : inv0;
            const int byte = (j / 8) * kQSlab + wg::ChunkOffset(row, j % 8) + 4 * t;
            *reinterpret_cast<uint32_t*>(smem + qb * kQTile + byte) =
                Ops<T>::Pack(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
          }
        tma::FenceProxyAsync();
        tma::NamedBarrier(kBarEpilogue + ecw, 128);
        if ((ctid & 127) == 0) {
#pragma unroll
          for (int sl = 0; sl < kSlabs; ++sl)  // rows past Tq (columns past D = 96) are dropped
            tma::Store4d(&tm_o, sl * 64, h, q0 + ecw * 64, b,
                         sQ + uint32_t(sl * kQSlab + ecw * 64 * kLine));
          tma::StoreCommit();
        }
        if (t == 0) {
          float* gl = a.out_lse + (int64_t(b) * a.hq + h) * a.tq;
          const float lse0 = l0 > 0.f ? (m0 + __log2f(l0)) * kLn2 : -INFINITY;
          const float lse1 = l1 > 0.f ? (m1 + __log2f(l1)) * kLn2 : -INFINITY;
          const int lim = a.tq - ei0;  // rows past Tq (a partial last tile) are not written
          if (lim > 0) gl[ei0] = lse0;
          if (lim > 8) gl[ei0 + 8] = lse1;
        }
        if ((ctid & 127) == 0) {
          if constexpr (!PERSISTENT) {
            tma::StoreWaitRead();  // smem stays until the store has read it
          } else if constexpr (QBUFS == 1) {
            tma::StoreWaitRead();  // the next item's Q waits for this
            tma::MbarArrive(empty_q(qb));
          }
        }
      }
    }
    if constexpr (PERSISTENT && QBUFS == 2) {
      if ((ctid & 127) == 0) tma::StoreWaitRead();  // the last item's (not released)
    }
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// ring depth. Block 128 (one CTA per SM): 160 KB of smem at D = 128 and 96, 112 KB at
// D = 64, 192 KB at D = 256 (Q 64 KB + 2 stages of 64-key K and V tiles, 32 KB each).
// Block 64 (two CTAs per SM, at most 113 KB each): 80 KB at D = 128 and 96 (3 stages would
// need 104 bytes more than fit beside the 1024-byte alignment pad), 72 KB at D = 64; D = 256
// (one CTA per SM, Geom): 160 KB.
template <int D, int BS>
constexpr int kStages = D == 64 ? (BS == 128 ? 3 : 4) : 2;

// Q buffers: 2 in the persistent kernel where they fit (a CTA's 227 KB; 113 KB each at two
// CTAs per SM): every combination but D = 256 at block 128 (Q 64 KB + 2 stages x 64 KB).
// Persistent smem (with the mbarriers and the alignment pad): block 128 193 KB at D = 128,
// 96 and 256, 129 KB at D = 64; block 64 97 KB at D = 128 and 96, 81 KB at D = 64, 193 KB
// at D = 256.
template <int D, int BS, bool PERSISTENT>
constexpr int kQBufs =
    PERSISTENT && Smem<D, kStages<D, BS>, BS, 2>::kBytes <=
                      (Geom<BS, D>::kMinBlocks == 2 ? 113 * 1024 : 227 * 1024)
        ? 2
        : 1;

// No key at all (Tk = 0) at the head dims the FA2 forward lacks: o = 0, lse = -inf (with
// sinks: lse = sinks[h], the sink alone in the row; lse is [B, Hq, Tq]).
__global__ void EmptyKernel(uint16_t* o, int64_t n_o, float* lse, int64_t n_lse,
                            const float* sinks, int hq, int tq) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_o; i += stride) o[i] = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_lse; i += stride)
    lse[i] = sinks != nullptr ? sinks[(i / tq) % hq] : -INFINITY;
}

// Per device: 0 unknown, 1 usable, 2 not: an sm_90 device running this kernel's sm_90a
// code (a build without 90a would run nothing useful there).
template <typename T, int D>
bool DeviceOk() {
#ifndef JBS_WGMMA_BUILT  // CMake: the architectures include 90a
  return false;
#else
  static std::atomic<uint8_t> state[64];
  const void* kernel =
      reinterpret_cast<const void*>(FwdKernel<T, D, 128, kStages<D, 128>, true, false, 1>);
  return UsableAsSm90(state, kernel,
                      tma::GetEncodeTiled() != nullptr);
#endif
}

}  // namespace sm90

bool Sm90ForwardAvailable() { return sm90::DeviceOk<__nv_bfloat16, 128>(); }

namespace sm90 {
// The K and V maps of k, v [B, Tk, Hkv, D]: 4-d, dims D, Hkv, Tk, B (innermost first),
// boxes of 64 columns (one swizzled slab) x 1 head x `box_keys` keys x 1 batch entry; keys
// past Tk zero filled by the loads. Page pools [P, page_size, Hkv, D] take the same maps
// (keys = page_size, batch = P).
template <typename T, int D>
cudaError_t EncodeKvMaps(CUtensorMap* tk, CUtensorMap* tv, const void* k, const void* v,
                         int hkv, int keys, int batch, int box_keys) {
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  const uint64_t dims[4] = {uint64_t(D), uint64_t(hkv), uint64_t(keys), uint64_t(batch)};
  const uint64_t strides[3] = {D * e, uint64_t(hkv) * D * e, uint64_t(keys) * hkv * D * e};
  const uint32_t box[4] = {64, 1, uint32_t(box_keys), 1};
  cudaError_t err = tma::EncodeTiled<4>(tk, kBf16, k, dims, strides, box);
  return err == cudaSuccess ? tma::EncodeTiled<4>(tv, kBf16, v, dims, strides, box) : err;
}
}  // namespace sm90

template <typename T, int D, int BS, bool PINGPONG, bool PERSISTENT>
cudaError_t LaunchForwardSm90(const Args& a, cudaStream_t stream) {
  using namespace sm90;
  using G = Geom<BS, D>;
  if (a.bs != BS) return cudaErrorInvalidValue;
  // the mask's block: 16 or 32 with bits (block 128 only, any head dim), else the list
  // entry's (the kernel's predicate shifts by it)
  if (a.mask_bits != nullptr ? BS != 128 || (a.mask_lg != 4 && a.mask_lg != 5)
                             : (1 << a.mask_lg) != BS)
    return cudaErrorInvalidValue;
  if (!DeviceOk<T, D>()) return cudaErrorNotSupported;
  // partial last tiles (Tq or Tk not a multiple of the block): 4-d tensor maps
  const bool rows4d = a.tq % BS != 0 || a.tk % BS != 0;
  // what the FA2 forward takes: lists shared by the batch, no segment ids, whole tiles, no
  // query positions, no fine mask
  const bool fa2_ok =
      a.mb == 1 && a.q_ids == nullptr && a.q_pos == nullptr && !rows4d && a.mask_bits == nullptr;
  constexpr bool kFa2 = D == 64 || D == 128;  // the head dims of the FA2 forward
  if (a.tk == 0) {  // no key: o = 0, lse = -inf (with sinks: the sink)
    if constexpr (kFa2) {
      if (!fa2_ok) return cudaErrorInvalidValue;  // the Python routing never sends these
      return LaunchForwardTile<T, D, 64, 2>(a, stream);
    } else {
      const int64_t n_lse = int64_t(a.batch) * a.hq * a.tq, n_o = n_lse * D;
      const int64_t blocks = (n_o + 255) / 256;
      EmptyKernel<<<unsigned(blocks < 1024 ? blocks : 1024), 256, 0, stream>>>(
          static_cast<uint16_t*>(a.out_o), n_o, a.out_lse, n_lse, a.sinks, a.hq, a.tq);
      return cudaGetLastError();
    }
  }
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  // operands TMA cannot address (XLA's buffers are aligned: not seen) run the FA2 forward
  if (!aligned(a.q) || !aligned(a.k) || !aligned(a.v) || !aligned(a.out_o)) {
    if (!fa2_ok || !kFa2) return cudaErrorInvalidValue;
    if constexpr (kFa2) return LaunchForwardTile<T, D, 64, 2>(a, stream);
  }
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  CUtensorMap tq{}, tk{}, tv{}, to{};
  // [B, T, H, D]: dims D, H, T, B (innermost first); boxes of 64 columns (one swizzled
  // slab), one head, BS rows for Q (64: one consumer warpgroup's rows for the output; the
  // key tile's rows for K and V), one batch entry. Rows past T: zero filled by loads,
  // dropped by stores (partial last tiles); so are the columns past D = 96 of the second
  // slab.
  const uint64_t qd4[4] = {uint64_t(D), uint64_t(a.hq), uint64_t(a.tq), uint64_t(a.batch)};
  const uint64_t qs4[3] = {D * e, uint64_t(a.hq) * D * e, uint64_t(a.tq) * a.hq * D * e};
  const uint32_t box_q[4] = {64, 1, uint32_t(BS), 1}, box_out[4] = {64, 1, 64, 1};
  cudaError_t err = tma::EncodeTiled<4>(&tq, kBf16, a.q, qd4, qs4, box_q);
  if (err == cudaSuccess)
    err = EncodeKvMaps<T, D>(&tk, &tv, a.k, a.v, a.hkv, a.tk, a.batch,
                             Smem<D, kStages<D, BS>, BS>::kBN);
  if (err == cudaSuccess) err = tma::EncodeTiled<4>(&to, kBf16, a.out_o, qd4, qs4, box_out);
  if (err != cudaSuccess) return err;

  constexpr int kQB = kQBufs<D, BS, PERSISTENT>;
  constexpr int smem = Smem<D, kStages<D, BS>, BS, kQB>::kBytes;
  static_assert(smem <= 227 * 1024, "shared memory of one CTA");
  static_assert(G::kMinBlocks == 1 || 2 * (smem + 1024) <= 228 * 1024, "two CTAs per SM");
  static std::atomic<uint64_t> configured{0};
  auto kern = sm90::FwdKernel<T, D, BS, kStages<D, BS>, PINGPONG, PERSISTENT, kQB>;
  err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(kern), smem);
  if (err != cudaSuccess) return err;
  dim3 grid;
  if constexpr (PERSISTENT) {
    // as many CTAs as run at once (kMinBlocks per SM), at most one per work item (and at
    // most JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS: tests)
    const int64_t work = int64_t(a.batch) * a.hq * a.by_query.lines;
    const int sms = MultiProcessors();
    if (sms <= 0) return cudaErrorUnknown;
    int64_t ctas = int64_t(sms) * G::kMinBlocks;
    // int item indices (the last one a CTA tests, item_index past the end of the snake,
    // reaches work + 2 gridDim.x - 2)
    if (work + 2 * ctas > INT32_MAX) return cudaErrorInvalidValue;
    const int cap = GetSwitches().attn_fwd_persistent_ctas;
    if (cap > 0 && cap < ctas) ctas = cap;
    grid = dim3(Clamp(work, ctas));
  } else {
    if (a.by_query.lines > 65535) return cudaErrorInvalidValue;
    grid = dim3(unsigned(a.batch * a.hq), unsigned(a.by_query.lines));
  }
  // the plain grid's cells in sections whose K/V stay in L2 (CellOf; the persistent CTAs
  // take their own order)
  const Args cells = PERSISTENT ? a : QueryHeadCells<T, D>(a);
  kern<<<grid, G::kThreads, smem, stream>>>(cells, tq, tk, tv, to);
  return cudaGetLastError();
}

namespace {
// The packed grid's y extent: splits x row chunks (`rows` rows: rows / G queries) x mask-row
// parts (the rows Tq consecutive positions can touch), as DecodePacked decodes it; `rows`
// per tile (DecodePackedSm90Rows).
int64_t PackedGridY(const AttentionDecodeParams& p, int rows) {
  const int64_t chunks = (int64_t(p.tq) * (p.hq / p.hkv) + rows - 1) / rows;
  const int64_t parts = p.tq > 1 ? (p.tq - 2) / p.block_size + 2 : 1;
  return int64_t(p.splits) * chunks * parts;
}

// Whether a tile of `rows` (64 or 128; its keys as many) takes p: the mask's blocks and a
// paged cache's pages whole tiles or whole parts of one (load_kv), the group within a tile.
bool PackedTileOk(const AttentionDecodeParams& p, int rows) {
  const int group = p.hq / p.hkv;
  const bool pages_ok = p.page_table == nullptr ||
                        (p.page_size > 0 && p.page_size % kDecodeTileKeys == 0 &&
                         (p.page_size % rows == 0 || rows % p.page_size == 0));
  return group <= rows && p.block_size % rows == 0 && pages_ok &&
         PackedGridY(p, rows) <= 65535;
}
}  // namespace

int DecodePackedSm90Rows(const AttentionDecodeParams& p) {
  const Switches& sw = GetSwitches();
  const int group = p.hkv > 0 ? p.hq / p.hkv : 0;
  if (!sw.decode_packed || (p.head_dim != 64 && p.head_dim != 128) || p.mask_heads != 1 ||
      group <= 0 || (group & (group - 1)) != 0 || int64_t(group) * p.tq <= kDecodeWarpRows ||
      p.tk <= 0 || p.splits < 1 || int64_t(p.width) > int64_t(p.splits) * sm90::kPackedCap ||
      !Sm90ForwardAvailable())
    return 0;
  // the switch's tile, else 64-row tiles for up to 64 rows (half the products of a
  // 128-row tile), 128-row ones for more, whichever the call allows
  const int64_t rows = int64_t(group) * p.tq;
  const int first = sw.decode_packed_tile != 0 ? sw.decode_packed_tile : rows <= 64 ? 64 : 128;
  const int second = sw.decode_packed_tile != 0 ? first : 192 - first;
  return PackedTileOk(p, first) ? first : PackedTileOk(p, second) ? second : 0;
}

namespace {
// The packed partial kernel of BS-row tiles (128: two consumer warpgroups, ping-pong; 64:
// one, two CTAs per SM), its dynamic shared memory (the forward's, plus the split's
// compacted key starts and a count per warp) set once per device.
template <typename T, int D, int BS>
struct PackedKernel {
  static constexpr int kBS = BS;
  using G = sm90::Geom<kBS, D>;
  static constexpr int kStagesP = sm90::kStages<D, kBS>;
  static constexpr int kSmem =
      sm90::Smem<D, kStagesP, kBS, 1>::kBytes + 4 * (sm90::kPackedCap + G::kThreads / 32);
  static_assert(kSmem <= 227 * 1024, "shared memory of one CTA");
  static constexpr auto kKernel =
      sm90::FwdKernel<T, D, kBS, kStagesP, BS == 128, false, 1, true>;
  static cudaError_t Configure() {  // the largest carveout: two 64-row CTAs per SM
    static std::atomic<uint64_t> configured{0}, carveout{0};
    const void* kernel = reinterpret_cast<const void*>(kKernel);
    cudaError_t err = AllowDynamicSmem(configured, kernel, kSmem);
    return err == cudaSuccess ? PreferSharedMemory(carveout, kernel) : err;
  }
};
}  // namespace

template <typename T, int D, int BS>
int DecodePackedSm90ResidentCtas() {
  using K = PackedKernel<T, D, BS>;
  if (!Sm90ForwardAvailable() || K::Configure() != cudaSuccess) return 0;
  return CtasPerWave(reinterpret_cast<const void*>(K::kKernel), K::G::kThreads, K::kSmem);
}

// The GQA-packed split-KV partial kernel: rows (query t, head j of kv head g) of one mask
// row, BS per CTA (DecodePackedSm90Rows); part_o / part_lse as the decode combine reads them.
template <typename T, int D, int BS>
cudaError_t LaunchDecodePartialSm90(const AttentionDecodeParams& p, cudaStream_t stream) {
  using namespace sm90;
  using G = Geom<BS, D>;
  if (DecodePackedSm90Rows(p) != BS || p.head_dim != D) return cudaErrorInvalidValue;
  const int group = p.hq / p.hkv;  // a power of two (DecodePackedSm90Rows)
  Args a{};
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.kv_lengths = p.kv_lengths;
  a.batch = p.batch;
  a.tq = p.tq;
  a.tk = p.tk;
  a.hq = p.hq;
  a.hkv = p.hkv;
  a.group = group;
  a.bs = p.block_size;
  a.hm = 1;
  SetScoreScale(a, p.scale, p.softcap);
  a.causal = p.causal;
  a.mb = p.mask_batch;
  a.q_pos = p.q_positions;
  a.qp_batch = p.batch;
  a.by_query.counts = p.counts;
  a.by_query.lists = p.lists;
  a.by_query.lines = p.rows;
  a.by_query.max_len = p.width;
  a.mask_lg = 7;
  a.q_rows = p.q_rows;
  a.k_scale = p.k_scale;
  a.v_scale = p.v_scale;
  a.part_o = p.part_o;
  a.part_lse = p.part_lse;
  a.splits = p.splits;
  a.group_lg = __builtin_ctz(unsigned(group));
  a.mask_rows = p.rows;
  a.page_table = p.page_table;
  a.page_size = p.page_size;
  a.pages_per_seq = p.pages_per_seq;
  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  CUtensorMap tq{}, tk{}, tv{};
  // q [B, Tq, Hq, D] as [B, Tq, Hkv, G, D]: dims D, G, Hkv, Tq, B; box 64 columns x G heads
  // x 1 kv head x BS / G queries x 1 batch entry = BS rows (t, j), query-major
  const uint64_t qd5[5] = {uint64_t(D), uint64_t(group), uint64_t(p.hkv), uint64_t(p.tq),
                           uint64_t(p.batch)};
  const uint64_t qs5[4] = {D * e, uint64_t(group) * D * e, uint64_t(p.hq) * D * e,
                           uint64_t(p.tq) * p.hq * D * e};
  const uint32_t box_q[5] = {64, uint32_t(group), 1, uint32_t(BS / group), 1};
  using K = PackedKernel<T, D, BS>;
  cudaError_t err = tma::EncodeTiled<5>(&tq, kBf16, p.q, qd5, qs5, box_q);
  // K and V: [B, Tk, Hkv, D], or the pools [P, page_size, Hkv, D] in pieces of a page
  constexpr int kBN = Smem<D, K::kStagesP, BS>::kBN;
  static_assert(kBN == BS, "PackedTileOk takes a tile's keys as its rows");
  if (err == cudaSuccess)
    err = p.page_table == nullptr
              ? EncodeKvMaps<T, D>(&tk, &tv, p.k, p.v, p.hkv, p.tk, p.batch, kBN)
              : EncodeKvMaps<T, D>(&tk, &tv, p.k, p.v, p.hkv, p.page_size, p.pool_pages,
                                   p.page_size < kBN ? p.page_size : kBN);
  if (err != cudaSuccess) return err;
  err = K::Configure();
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(p.batch * p.hkv), unsigned(PackedGridY(p, BS)));
  K::kKernel<<<grid, G::kThreads, K::kSmem, stream>>>(a, tq, tk, tv, tq);
  return cudaGetLastError();
}
#define JBS_DECODE_PACKED(T, D, BS)                                                         \
  template cudaError_t LaunchDecodePartialSm90<T, D, BS>(const AttentionDecodeParams&,       \
                                                         cudaStream_t);                      \
  template int DecodePackedSm90ResidentCtas<T, D, BS>();
JBS_DECODE_PACKED(__nv_bfloat16, 64, 64)
JBS_DECODE_PACKED(__nv_bfloat16, 64, 128)
JBS_DECODE_PACKED(__nv_bfloat16, 128, 64)
JBS_DECODE_PACKED(__nv_bfloat16, 128, 128)
JBS_DECODE_PACKED(__half, 64, 64)
JBS_DECODE_PACKED(__half, 64, 128)
JBS_DECODE_PACKED(__half, 128, 64)
JBS_DECODE_PACKED(__half, 128, 128)
#undef JBS_DECODE_PACKED

JBS_ATTENTION_SM90_LAUNCHERS(template, __nv_bfloat16)
JBS_ATTENTION_SM90_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
