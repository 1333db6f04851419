// Attention backward for Hopper (sm_90a) in one pass, the FlashAttention-3 backward design
// made block-sparse and deterministic (issue 19, item 1): backward variant 4 of the
// dispatch table. Semantics and metadata: attention.h; bwd_sm90.cu (variant 2: a dQ kernel
// and a dK/dV kernel, 7 products per block pair) is the model of the machinery, and the
// FA2 backward (fa2.cuh) the functional spec.
//
// Scope: block size 128, head dims 64 and 128, bf16 / f16; static or traced block lists,
// shared by the batch or per batch entry (MaskHead), causal (bottom-right aligned, or at
// q_offset's positions: QueryOffset), kv_lengths, segment ids (compared on the lists'
// partial entries), GQA, shared or per-head masks, any scale, a cotangent on lse (in
// delta). Tq and Tk multiples of 128. Nothing else (partial last tiles, tile bits):
// dispatch.cu refuses those for this row (cudaErrorNotSupported) and the Python routing
// never sends them.
//
// Four launches, in stream order:
//  1. LaunchDelta (the FA2 one's): delta = rowsum(dO * O) - d_lse, float32 [B, Hq, Tq]; and
//     cudaMemsetAsync of the semaphores (dq_accum is not zeroed: below).
//  2. OnePassKernel: one CTA per (batch, kv head, 128-key block n). 384 threads: warpgroup
//     0 the producer (setmaxnreg 40): its thread 0 issues the TMA loads (K_n, V_n once;
//     then per step the 64-query tiles of Q and dO and the tile's lse and delta rows into
//     a STAGES-deep ring with full / empty mbarriers), its warps 1 and 2 the dQ writers
//     (below);
//     warpgroups 1 and 2 the consumers (setmaxnreg 232), owning key rows [64 c, 64 c + 64).
//     The CTA walks, for each query head of the kv head's group in turn, the key block's
//     listed query blocks (by_key lists) in 64-query steps, from the list's end (the
//     producer's QueryCursor, reversed: the last query tile first; the consumers and the
//     dQ writer learn each step from the producer's meta ring, below). Per step,
//     consumer c:
//       S^T = K_c Q^T, dP^T = V_c dO^T      (SS, m64n64k16, K-major operands)
//       P^T = 2^(S^T scale log2e - lse log2e), masked
//       dV_c += P^T dO                      (RS, m64nDk16, dO N-major)
//       dS^T = P^T (dP^T - delta), masked
//       dK_c += dS^T Q                      (RS, m64nDk16, Q N-major)
//       dS^T -> shared memory (bf16 / f16: 128 keys x 64 queries, both halves), barrier
//       dQ partial = dS K_n                 (SS, m64n64k16 over the 128 keys: A = dS^T
//                                            read M-major, B = K N-major)
//     That is 5 products per block pair (variant 2: 7). dK, dV accumulate in registers
//     over the whole group (no atomics across heads). The dQ product is split over the
//     consumers by columns at D = 128 (consumer c: columns [64 c, 64 c + 64)); at D = 64
//     consumer (step % 2) computes all 64 columns (the other one goes on).
//  3. The dQ writers: per step, the consumers store the float32 dQ partial (64 x D) into a
//     shared-memory buffer (DQB of them, mbarriers dq_full / dq_empty) in the order of
//     their accumulator registers (float4 per thread, conflict free). kDqWriters warps take
//     the steps in turn (writer w: steps w, w + kDqWriters, ..., so buffer s always has
//     writer s % kDqWriters): one writer's chain per step (rank loads, semaphore, the
//     reduction's completion) stalled the consumers on a free buffer for 28% of the
//     kernel's stall samples (ncu, RESULTS 2026-12-06 sixth session); with two, a step's
//     chain overlaps the next one's. A writer warp
//     learns the step's (query head, query tile) from the producer as the step's loads are
//     issued (a ring of kMetaSlots), counts its rank and, lane 0, waits for its turn on the
//     step's semaphore while the consumers compute; then, the partial in, adds it to
//     dq_accum with one bulk reduction (cp.reduce.async.bulk .add.f32, contiguous bytes:
//     dq_accum keeps each 64-row tile in the same register order, so no tensor map is
//     needed; the first adder of a tile, rank 0, stores with a bulk copy instead), frees
//     the buffer once the copy has read it, waits for its completion and releases the
//     semaphore (+1). Bulk reduction
//     from one thread rather than red.global.add from 256 threads: the consumers never
//     wait for the semaphore (only for a free buffer), and one completion wait per step.
//  4. DqConvertKernel: dQ = scale * (slot 0 + slot 1) of dq_accum (undoing the register
//     order), q's dtype; a slot's tile whose semaphore is still 0 (no key block added into
//     it: never written) counts 0. By default (EARLY) a programmatic dependent launch: its
//     CTAs take the SMs the one-pass kernel's last wave leaves free and convert each tile
//     once its semaphores count all of the tile's adders (the convert's 134 MB read and 67
//     MB write at S 8192, B 2, H 16, D 128 overlap that wave instead of following it).
//
// A logit soft cap (a.cap_log2 > 0: the kernel's CAP instances, so the uncapped ones keep
// their registers; persistent or not, as the uncapped kernel; issue 21): while dP^T runs,
// the consumers compute t = tanh(s scale_cap) in place in s; once dP^T is done,
// P^T = 2^(cap_log2 t - lse2) (the forward's capped log2-domain score, so the forward's
// lse normalises it; masked -> 0)
// replaces t in s and dp becomes (dP^T - delta) (1 - t^2) (the cap's derivative), then P^T
// is packed for dV as without a cap and the dS loop takes dS^T = s dp =
// P^T (dP^T - delta) (1 - t^2), all float32 before packing: no register more than the
// uncapped step (t, then P^T, in s; the factor in dp). Forms that kept P^T or t beside the
// fragments while dP^T ran (P^T packed as it came with P^T (1 - t^2) in s; t in s with
// P^T recomputed in the dS loop; P^T in s with t recovered from it) spilled 16-104 bytes at
// D 128 and ptxas serialized every wgmma (C7512); this one gives up only the exp2's overlap
// with dP^T (the tanh still overlaps it).
//
// dQ slots (a.dq_slots: kOnePassDqSlots = 2, or 4 as jax_blocksparse/_cuda.py
// onepass_dq_slots chooses, or 8 under JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=8, read
// from the workspace's size): a key block
// whose list holds at least half the query tiles (by its count in the launch order's mask
// head: bigbird's global key blocks, which every other adder of a tile would wait for) adds
// into slot 1 of dq_accum and the semaphores, the others into slot 0. With 4 slots, a tile
// of a long query line (its by-query list holds at least half the key blocks: bigbird's
// global query rows, whose tiles every key block adds into, an ordered chain as long as the
// key axis that stalled the consumers on a free dQ buffer, 22 of a CTA's 81 us, RESULTS
// 2026-12-07 third session; causal's lower half too) spreads slot 0's adders over slots 0,
// 2 and 3: its i-th adder of slot 0 in the order below (i from 0) adds into slot 0, 2, 3
// for i mod 3 = 0, 1, 2, with rank i / 3, so three chains of a third the length run side
// by side. The long lists keep slot 1: in one chain with the others they would make every
// other adder wait for their CTAs' last steps (the schedule model, --spread: bigbird 1.65
// -> 4.08 over the ideal; spread over slots 0, 2, 3: 1.55). With 8 slots the same over
// slots 0, 2, ..., 7: 7 chains, adder i in chain i mod 7 (the model: 1.51). DqConvertKernel
// sums the slots in slot order.
// Determinism (bitwise identical results run to run): every dq_accum element receives, in
// each step touching it, exactly one float add, and the adds into one 64-query tile
// (b, h, qt) of one slot happen in a fixed order (on a long query line with S slots, slots
// 0, 2, ..., S - 1: every (S - 1)-th adder of slot 0's order, as above): the launch order
// of their CTAs, the by-key `order`
// of the group's first mask head (longest list first, equal lengths by ascending key
// block: n' before n iff count(n') > count(n), or equal and n' < n). The semaphore
// sem[b, h, qt] (zeroed each call) counts the adds done; the CTA of key block n adds when
// it equals rank(n) = the number of key blocks n' before n of its slot that add into this
// tile: the entries n' of the by_query list of (mask head of h, query block qt / 2) before
// n, in n's slot, with n' < lim, where lim
// excludes the key blocks that start at or past kv_lengths[b] and, when causal, those that
// causality masks for the whole tile (n' 128 > last query + Tk - Tq): exactly the blocks
// whose CTAs do not skip the step (QueryCursor's rule), so every counted block adds once.
// The writer spins with ld.relaxed.gpu and, having seen its rank, fences (fence.acq_rel.gpu:
// with that load, an acquire); after the reduction completes (wait_group 0) it orders it
// before the release with fence.proxy.async.global and increments with red.release.gpu;
// the next waiter fences the async proxy after its acquire.
//
// Deadlock freedom: a CTA only ever waits for CTAs of the same (batch, kv head) before it
// in `order`. The grid is one-dimensional: the (batch, kv head) pairs in groups of
// `group` (all of them unless JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP says fewer), a group's
// CTAs before the next group's, inside a group the position in `order` slowest: the CTAs
// a CTA can wait for have smaller block indices, and the hardware dispatches CTAs in
// increasing index (the assumption FlashAttention-3's deterministic backward rests on
// too). Take the unfinished CTA with the smallest linear index: it is resident (every CTA before it has
// finished, so a slot was free for it), every CTA it can wait for has finished and so has
// made each increment it will ever make: all its waits succeed, it finishes. By induction
// every CTA finishes. Inside a CTA nothing else waits on other CTAs (the ring and the dQ
// buffers are local).
// Persistent (the default, JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0 opts out; PERSISTENT;
// measured in RESULTS 2026-12-07 fifth session, cuda/switches.h): the work
// items (batch, kv head, key block) keep that launch order, but a grid of one CTA per SM
// takes them one at a time: the producer thread takes the next item from a global
// counter (atomicAdd; the int after the semaphores, zeroed with them) and hands it to the
// dQ writers and the consumers through a ring of kItemSlots (item_full / item_empty,
// every reading thread arrives); every role walks the same items (an item without steps
// is skipped by all; a value >= items ends the walk). The consumers store an item's dK,
// dV through the K and V tiles' shared memory by TMA (the epilogue below); each half's
// storing thread arrives on kv_empty once its stores have read the tiles, and the
// producer then loads the next item's K and V, then its stages (while the stores' global
// writes complete): of the ~7.5 us of K/V wait, fill and dK/dV store a CTA spent beside its
// steps (the timeline, RESULTS 2026-12-07 third session) the consumers keep the
// shared-memory writes and the K/V load. Stages, dS and dQ buffers count
// steps across items; meta slots count steps plus each item's kDqWriters ends; a writer's
// step is its slot less kDqWriters per ended item. The consumers read every meta slot
// (the ends included) and arrive on its meta_empty beside the writer's lanes, so no slot
// is rewritten before both have read it (items of one step would otherwise let the
// producer lap a slot the consumers have yet to read). Deadlock freedom as above, over
// items: only a running CTA takes an item, and each CTA's items increase; the unfinished
// item with the smallest index was taken by a running CTA whose earlier items are smaller,
// so finished: its roles are on this item, which waits only for smaller items: it
// finishes. (Items striped over the grid by blockIdx.x would need every CTA resident at
// once: another kernel holding SMs could leave an item's CTA unstarted while resident
// ones wait on it.) The producer takes the next item once the consumers have released
// this item's last stage (done with its products; the claim then overlaps the dK/dV
// store), not when it has issued that stage's loads: claimed that early,
// an item waited behind its CTA's last steps, which on bigbird wait in the ordered dQ chain
// of the global query tiles, while other CTAs went free (H100, RESULTS 2026-12-07 fourth
// session: 0.90x the one-CTA-per-item kernel on bigbird; modelled, groups of 4, --fixed 5:
// bigbird 1.839 -> 1.614, fixed 1.477 -> 1.440, causal, local, strided unchanged).
// Why longest first with the last query tile first: the longest CTAs start in the first
// waves, not in the tail (descending n, FlashAttention-3's causal order, launched the
// causal grid's longest key blocks last); with the steps reversed, key block n reaches a
// query tile after the blocks before it (for causal: blocks n' < n, which started earlier
// on the same last tiles), so in steady state no CTA waits long for its turn. Modelled
// (benchmarks/onepass_schedule_model.py: S 8192, B x Hkv = 32, 132 SMs; makespan over the
// ideal), against descending n with ascending steps: causal 1.085 -> 1.025, fixed(512)
// 1.254 -> 1.079, local(1024) 1.124 -> 1.095, strided 1.102 -> 1.073, bigbird 1.314 ->
// 1.295 (its two global query tiles are listed under every key block: a chain of 64
// ordered adds; its global key blocks are the long CTAs, first in every tile's order,
// that every other adder waits for; measured with the key blocks fastest: 0.71x variant
// 2), 1.101 with the global key blocks in a slot of their own (the slots above; no change
// on the other four). (batch, kv head) varies fastest, so a head's CTAs start
// spread over the waves, not all in one. The cost of that (the same model, an LRU of 25 MB
// over the steps' 64 KB tiles of Q, dO and dq_accum): the waves touch query tiles of every
// head, and on the sparse layouts 37-56% of the touches miss (causal: 13%); groups of 4
// pairs cut the misses to 2-16% for a longer makespan (--groups: 1.06-1.17 on four
// layouts, 1.5-1.9 on fixed and bigbird): the switch above, to be measured.
//
// Masks: as variant 2's dK/dV kernel (element masks on partial entries and on the key
// block cut by kv_lengths; masked elements get P = 0 and dS = 0 by selection). The dS K
// product reads all 128 K rows of the block: rows past kv_lengths (NaN may be there) are
// overwritten with zeros in shared memory before any product (dS is 0 there, 0 * NaN is
// NaN). A key block starting at or past kv_lengths[b] loads nothing, adds nothing and
// stores zero dK, dV.
//
// Shared memory (1024-aligned): K (2 64-row tiles), V (2), STAGES x (Q tile, dO tile), 2 dS
// buffers (128 lines of 64 queries: double-buffered so one barrier per step orders them),
// DQB dQ buffers (64 x D float32), STAGES x (lse, delta) rows, mbarriers. D = 128: 2
// stages, 2 dQ buffers: 226 KB; D = 64: 3 stages, 2 dQ buffers: 147 KB. One CTA per SM.
//
// Shared with bwd_sm90.cu: slabs.cuh (tile layout, descriptor offsets, accumulator
// helpers), tma::LoadBulk.
#include "bwd_sm90_onepass.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../launch_util.h"
#include "../switches.h"
#include "../tma.cuh"
#include "../wgmma.cuh"
#include "common.cuh"
#include "fa2.cuh"
#include "slabs.cuh"

namespace jax_blocksparse {
namespace attn {

// The FA2 backward takes the calls TMA cannot (Tq = 0 or Tk = 0).
JBS_ATTENTION_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_LAUNCHERS(extern template, __half)

namespace sm90onepass {

using namespace slabs;  // kLine, kSlab, KSlice, NSlice, StoreAcc, PackA, FenceAcc

constexpr int kBS = 128;       // keys of a CTA, queries of a block
constexpr int kBQ = 64;        // queries per step
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
[[maybe_unused]] constexpr int kConsumers = 256;
// 40 + 2 x 232 = 3 x 168, the launch's registers (the consumers fit 232 without spills;
// the dQ writer's rank by launch order spilled at 24; PERSISTENT: the producer warpgroup
// spills 8-10 words, its counters across items, in its own loops; the consumers none;
// 48 + 2 x 224 spilled in the consumers)
[[maybe_unused]] constexpr int kProducerRegs = 40, kConsumerRegs = 232;
[[maybe_unused]] constexpr int kBarStep = 1;   // named barrier: both consumers, dS written
[[maybe_unused]] constexpr int kBarZeroK = 2;  // named barrier: both consumers, K tail zeroed
// named barriers of the dK/dV store through shared memory (STORE_TMA): both consumers done
// with K (the other's dQ product reads it), then each consumer's half written (4 + cw; an
// id in a register: ptxas reserves all 16 barriers, as in the forward's epilogue)
[[maybe_unused]] constexpr int kBarKvRead = 3, kBarHalfWritten = 4;

// One 64-row tile (rows row .. row + 63 of head `head`; 3-d maps over [B * T, H, D]: whole
// tiles only) by TMA into `dst`.
template <int D>
__device__ __forceinline__ void LoadTile64(uint32_t dst, const CUtensorMap* map, int head, int row,
                                           uint32_t bar) {
#pragma unroll
  for (int sl = 0; sl < D / 64; ++sl) tma::Load3d(dst + sl * kSlab, map, sl * 64, head, row, bar);
}

// ------------------------------------------------------------ new PTX wrappers
// dst[0 .. bytes) += src (float32, shared -> global, one bulk reduction of this thread's
// bulk group; 16-byte aligned, 16-byte multiple).
__device__ __forceinline__ void BulkReduceAddF32(float* dst, uint32_t src, uint32_t bytes) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(
                   dst),
               "r"(src), "r"(bytes)
               : "memory");
#endif
}
// dst[0 .. bytes) = src (shared -> global, one bulk copy of this thread's bulk group).
__device__ __forceinline__ void BulkStore(void* dst, uint32_t src, uint32_t bytes) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src),
               "r"(bytes)
               : "memory");
#endif
}
// Wait until this thread's bulk groups have completed (writes done, not only reads).
__device__ __forceinline__ void BulkWaitAll() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}
// Orders this thread's global accesses between the generic and the async proxy.
__device__ __forceinline__ void FenceProxyAsyncGlobal() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
#endif
}
// threadIdx.x through an opaque move: what is derived from it is computed where it is used,
// not hoisted out of the persistent kernel's items loop (live across the step loop, such
// values made the consumers spill)
__device__ __forceinline__ int OpaqueTid() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
}
// ------------------------------------------------------------ the timeline
// Instrumentation for benchmarks/attention_harness.cu --timeline (SetOnePassTimeline): the
// launcher then runs OnePassKernel with TIMELINE, and each CTA writes kTimelineSlots int64
// at timeline[blockIdx.x * kTimelineSlots]: its SM, %globaltimer (ns) at its start and
// end, clock64 (the SM's cycles) at its milestones, and cycles summed over its steps spent
// waiting (consumer 0's thread 0: for a full stage, for a free dQ buffer; the dQ writers'
// lane 0: for their rank, for the consumers' partial). Without TIMELINE (the package) none
// of it is compiled. What it is for: where the per-CTA cost beyond the steps goes (about
// 23 us a CTA on the sparse layouts, RESULTS 2026-12-07).
enum TimelineSlot {
  kTlSm, kTlStartNs, kTlStart, kTlKv, kTlFirst, kTlStepsEnd, kTlStored, kTlEndNs,
  kTlWriterEnd, kTlWriterEndNs, kTlRankWait, kTlPartialWait, kTlSteps, kTlStageWait,
  kTlBufferWait, kTimelineSlots = kOnePassTimelineSlots
};
template <bool ON>
struct Timeline {
  long long* base;  // the kernel's parameter: read from the constant bank at each use
  __device__ __forceinline__ unsigned long long* At(int slot) const {
    return reinterpret_cast<unsigned long long*>(base + size_t(blockIdx.x) * kTimelineSlots +
                                                 slot);
  }
  __device__ __forceinline__ void Record(int slot, long long v) const {
    if constexpr (ON) *At(slot) = static_cast<unsigned long long>(v);
  }
  __device__ __forceinline__ void RecordMax(int slot, long long v) const {  // the writers
    if constexpr (ON) atomicMax(At(slot), static_cast<unsigned long long>(v));
  }
  __device__ __forceinline__ void Accumulate(int slot, long long v) const {
    if constexpr (ON) atomicAdd(At(slot), static_cast<unsigned long long>(v));
  }
  __device__ __forceinline__ long long Clock() const {  // 0 without ON: no clock read
    if constexpr (ON) return clock64();
    return 0;
  }
  __device__ __forceinline__ long long Ns() const {
    uint64_t t = 0;
    if constexpr (ON) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return static_cast<long long>(t);
  }
  __device__ __forceinline__ long long Sm() const {
    uint32_t sm = 0;
    if constexpr (ON) asm("mov.u32 %0, %%smid;" : "=r"(sm));
    return sm;
  }
};

// ------------------------------------------------------------ the kernel
// The producer tells the dQ writer and the consumers each step's (query head, first
// query, whether the lists' entry is partial) through a ring of kMetaSlots in shared memory
// (mbarriers meta_full, one arrival; MetaOf / the second int is 2 first query + partial),
// as it issues the step's loads: the writer works out its rank and waits for its turn on
// the semaphore while the consumers compute the step, and needs no cursor of its own (it
// runs in the producer warpgroup's 40 registers); the consumers walk no list in global
// memory between their steps (a dependent load there stalled both warpgroups with the
// tensor pipe empty). After the last step the producer writes (-1, -1) into kDqWriters
// slots (one seen by each writer).
// A slot is free again once its readers are done with it: its dQ writer (each slot holds
// the steps of one writer: kMetaSlots a multiple of kDqWriters) arrives on the slot's
// meta_empty from all 32 lanes after reading it, and the producer waits for that before
// writing the slot again (racecheck, RESULTS 2026-12-06 seventh session, reported the
// writers' reads against the next write while the reuse rested on a count of steps
// through the other barriers); the consumers read step i's slot before they release
// stage i % STAGES, which the producer holds before writing step i + STAGES, so their
// reads are done if kMetaSlots > STAGES.
constexpr int kMetaSlots = 8;
constexpr int kDqWriters = 2;  // warps 1 and 2 of the producer warpgroup
constexpr int kItemSlots = 4;  // the item ring (PERSISTENT): items the producer runs ahead
static_assert(kMetaSlots % kDqWriters == 0, "each meta slot read by one dQ writer");
__device__ __forceinline__ int2 MetaOf(int h, int s0, bool partial) {
  return make_int2(h, 2 * s0 + (partial ? 1 : 0));
}
// A slot's first query and partial flag, from its second int.
__device__ __forceinline__ int MetaStart(int y) { return y >> 1; }
__device__ __forceinline__ bool MetaPartial(int y) { return (y & 1) != 0; }

// The key blocks that add into the 64-query tile s0 of query head h of batch entry b (header
// comment, Determinism): the entries n' of the by-query list of (mask head of h, query block
// s0 / 128) with n' < lim (lim: the blocks starting before kv_lengths and, when causal,
// those causality leaves visible to some query of the tile). Returns this lane's count of
// the entries lane, lane + 32, ... for which pick(n', count(n')) holds, count(n') the
// by-key count of n' in the launch order's mask head (order_line0: its first line). 32-bit
// index arithmetic: the dQ writers run in 40 registers.
template <class Pick>
__device__ __forceinline__ int LaneAdders(const Args& a, int b, int h, int s0, int kv_blocks,
                                          int off, unsigned order_line0, int lane, Pick pick) {
  int lim = kv_blocks;
  if (a.causal) {
    const int c = s0 + kBQ - 1 + off;  // keys up to c are causally visible
    const int cl = c < 0 ? 0 : c / kBS + 1;
    lim = cl < lim ? cl : lim;
  }
  const unsigned line = unsigned(MaskHead(a, b, a.hm == 1 ? 0 : h)) *
                            unsigned(a.by_query.lines) + unsigned(s0 / kBS);
  const int cnt = __ldg(a.by_query.counts + line);
  const int32_t* lst = a.by_query.lists + size_t(line) * unsigned(a.by_query.max_len);
  int mine = 0;
#pragma unroll 1
  for (int e = lane; e < cnt; e += 32) {
    const int n2 = __ldg(lst + e);
    if (n2 < lim && pick(n2, __ldg(a.by_key.counts + (order_line0 + unsigned(n2))))) ++mine;
  }
  return mine;
}
// A key block's dQ slot (header comment): 1 for a list of at least half the query tiles.
__device__ __forceinline__ bool LongList(const Args& a, int count) {
  return 2 * count >= a.by_query.lines;
}
// Whether the 64-query tile s0 of query head h of batch entry b lies on a long query line
// (its by-query list holds at least half the key blocks): its adders spread over the dQ
// slots in turn (header comment, dQ slots).
__device__ __forceinline__ bool LongQueryLine(const Args& a, int b, int h, int s0) {
  const unsigned line = unsigned(MaskHead(a, b, a.hm == 1 ? 0 : h)) *
                            unsigned(a.by_query.lines) + unsigned(s0 / kBS);
  return 2 * __ldg(a.by_query.counts + line) >= a.by_key.lines;
}

template <int D, int STAGES, int DQB>
struct Smem {
  static constexpr int kT = 64 * D * 2;  // a 64-row tile: D / 64 slabs
  static constexpr int kDsBytes = 2 * kBS * kLine;  // 128 key lines of 64 queries
  static constexpr int kDqBytes = kBQ * D * 4;       // 64 x D float32
  // K: 2 tiles at 0, V at 2 kT; stage st: Q at (4 + 2 st) kT, dO + kT
  static constexpr int kQ = 4 * kT;
  static constexpr int kDs = (4 + 2 * STAGES) * kT;  // dS buffer s at kDs + s kDsBytes / 2
  static constexpr int kDq = kDs + kDsBytes;         // dQ buffer s at kDq + s kDqBytes
  static constexpr int kLD = kDq + DQB * kDqBytes;   // lse, delta rows of stage st: + 512 st
  static constexpr int kMeta = kLD + 512 * STAGES;   // kMetaSlots x (query head, first query)
  static constexpr int kItems = kMeta + 8 * kMetaSlots;  // kItemSlots x the item (PERSISTENT)
  static constexpr int kBars = kItems + 16 * ((4 * kItemSlots + 15) / 16);
  // kv, full[STAGES], empty[STAGES], dq_full[DQB], dq_empty[DQB], meta_full[kMetaSlots],
  // meta_empty[kMetaSlots], kv_empty, item_full[kItemSlots], item_empty[kItemSlots]
  static constexpr int kNumBars = 2 + 2 * STAGES + 2 * DQB + 2 * kMetaSlots + 2 * kItemSlots;
  static_assert(kMetaSlots > STAGES, "the meta ring: the consumers' reads");
  static_assert(DQB % kDqWriters == 0, "one writer per dQ buffer");
  static constexpr int kBytes = kBars + 8 * kNumBars + 1024;
  static_assert(kBytes <= 227 * 1024, "shared memory");
};

template <int D> constexpr int kStages = D == 128 ? 2 : 3;
template <int D> constexpr int kDqBuffers = 2;

// DQ_FIRST (the default; JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST=0 opts out): the end of a
// step in FlashAttention-3's order: dS^T stored and the barrier first, then dQ and dK
// issued back to back, and the dQ partial copied out while dK runs (else dK is issued
// before the dS^T store, and the copy waits for both products).
// PERSISTENT (the default; JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0 opts out): a grid of
// one CTA per SM that takes the work items from a counter (header comment, Persistent);
// else one CTA per item (the loops over items below run once).
// CAP: a logit soft cap (header comment; a.cap_log2 > 0): no timeline.
template <typename T, int D, int STAGES, int DQB, bool DQ_FIRST, bool TIMELINE, bool PERSISTENT,
          bool CAP = false>
__global__ void __launch_bounds__(kThreads, 1)
    OnePassKernel(const __grid_constant__ Args a, const __grid_constant__ CUtensorMap tm_q,
                  const __grid_constant__ CUtensorMap tm_do,
                  const __grid_constant__ CUtensorMap tm_k,
                  const __grid_constant__ CUtensorMap tm_v,
                  const __grid_constant__ CUtensorMap tm_dk,
                  const __grid_constant__ CUtensorMap tm_dv, const int group,
                  const bool store_tma, long long* const timeline) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Smem<D, STAGES, DQB>;
  constexpr int kT = S::kT;
  constexpr int kNW = D / 64;  // consumers that write a step's dQ partial
  static_assert(!(TIMELINE && PERSISTENT), "the timeline records one item per CTA");
  static_assert(!PERSISTENT || DQB == kDqWriters, "a step's dQ buffer: its slot's writer");
  const Timeline<TIMELINE> tl{timeline};
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = ptx::SmemAddr(smem_raw);
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = smem_raw + pad;
  const uint32_t base = raw + pad;
  int2* meta = reinterpret_cast<int2*>(smem + S::kMeta);
  const uint32_t bars = base + S::kBars;
  const uint32_t bar_kv = bars;
  auto full = [&](int st) { return bars + 8u * (1 + st); };
  auto empty = [&](int st) { return bars + 8u * (1 + STAGES + st); };
  auto dq_full = [&](int s) { return bars + 8u * (1 + 2 * STAGES + s); };
  auto dq_empty = [&](int s) { return bars + 8u * (1 + 2 * STAGES + DQB + s); };
  auto meta_full = [&](int s) { return bars + 8u * (1 + 2 * STAGES + 2 * DQB + s); };
  auto meta_empty = [&](int s) {
    return bars + 8u * (1 + 2 * STAGES + 2 * DQB + kMetaSlots + s);
  };
  const uint32_t kv_empty = bars + 8u * (1 + 2 * STAGES + 2 * DQB + 2 * kMetaSlots);
  auto item_full = [&](int j) { return kv_empty + 8u * (1 + j); };
  auto item_empty = [&](int j) { return kv_empty + 8u * (1 + kItemSlots + j); };
  volatile int* item_ring = reinterpret_cast<volatile int*>(smem + S::kItems);

  const int tid = threadIdx.x, wgi = tid / 128;
  const Lists& L = a.by_key;
  // the work items: one per (batch, kv head, key block), in the launch order of the header
  // comment. This CTA's: without PERSISTENT blockIdx.x alone; with it, the producer takes
  // each from the item counter (the int after the semaphores, zeroed with them) and hands
  // it to the other roles through the item ring (header comment, Persistent)
  const int items = a.batch * a.hkv * L.lines;
  int* const item_counter = a.dq_sem + size_t(a.dq_slots) * unsigned(a.batch) *
                                           unsigned(a.hq) * unsigned(a.tq / kBQ);
  auto take_item = [&](int n) {  // the producer's
    if constexpr (!PERSISTENT) return int(blockIdx.x);
    const int j = n % kItemSlots;
    tma::MbarWait(item_empty(j), ((n / kItemSlots) & 1) ^ 1);  // before taking one
    const int w = atomicAdd(item_counter, 1);
    item_ring[j] = w;
    tma::MbarArrive(item_full(j));
    return w;
  };
  auto read_item = [&](int n) {  // the dQ writers' and the consumers' (each thread arrives)
    if constexpr (!PERSISTENT) return int(blockIdx.x);
    const int j = n % kItemSlots;
    tma::MbarWait(item_full(j), (n / kItemSlots) & 1);
    const int w = item_ring[j];
    tma::MbarArrive(item_empty(j));
    return w;
  };
  int b = 0, hk = 0, h_first = 0, hm0 = 0, rk = 0, k0 = 0, off = 0, kvlen = 0;
  // q_end: no 64-query tile is past Tq (a multiple of 128 here): a constant, since a.tq
  // would cost a register (spills)
  QueryCursor<kBQ, true> qc;
  // item w's (batch, kv head, key block) and its query cursor: the (batch, kv head) pairs
  // in groups of `group`, each group's items before the next group's, the pairs of a group
  // fastest; the key block by the group's first mask head's launch order (with lists per
  // batch entry: of batch entry b)
  auto enter = [&](int w) {
    const int pairs = a.batch * a.hkv, c0 = w / (group * L.lines) * group;
    const int in_group = min(group, pairs - c0), rel = w - c0 * L.lines;
    const int bh = c0 + rel % in_group;
    b = bh / a.hkv;
    hk = bh % a.hkv;
    h_first = hk * a.group;
    hm0 = MaskHead(a, b, a.hm == 1 ? 0 : h_first);
    rk = __ldg(L.order + int64_t(hm0) * L.lines + rel / in_group);
    k0 = rk * kBS;
    off = QueryOffset(a, b);  // causal position of query row 0
    kvlen = KvLength(a, b);
    qc.Init(L, rk, hm0, a.hm == 1 ? 0 : 1, kBS, a.group, k0, off, kvlen, 0x7fffffff, a.causal);
  };
  // without PERSISTENT the one item, entered by every thread before the roles split (as
  // the kernel did before it had a persistent form: the consumers then fit 232 registers
  // without spills; entered inside their branch they spilled 5 words in the step loop)
  if constexpr (!PERSISTENT) enter(int(blockIdx.x));

  if (tid == 0) {
    tl.Record(kTlStartNs, tl.Ns());
    tl.Record(kTlStart, tl.Clock());
    tl.Record(kTlSm, tl.Sm());
    tma::MbarInit(bar_kv, 1);
#pragma unroll
    for (int st = 0; st < STAGES; ++st) {
      tma::MbarInit(full(st), 1);
      tma::MbarInit(empty(st), kConsumers);
    }
#pragma unroll
    for (int s = 0; s < DQB; ++s) {
      tma::MbarInit(dq_full(s), 128 * kNW);
      tma::MbarInit(dq_empty(s), 1);
    }
#pragma unroll
    for (int s = 0; s < kMetaSlots; ++s) {
      tma::MbarInit(meta_full(s), 1);
      // the lanes of the slot's dQ writer (PERSISTENT: and the consumers, header comment)
      tma::MbarInit(meta_empty(s), PERSISTENT ? 32 + kConsumers : 32);
    }
    tma::MbarInit(kv_empty, PERSISTENT ? 2 : kConsumers);
#pragma unroll
    for (int j = 0; j < kItemSlots; ++j) {
      tma::MbarInit(item_full(j), 1);
      tma::MbarInit(item_empty(j), 32 * kDqWriters + kConsumers);
    }
    tma::FenceMbarInit();
  }
  __syncthreads();
  // an early DqConvertKernel (EARLY) may become resident once every CTA of this grid is
  // (it waits on the semaphores, not for this grid's end); without one, a no-op
  ptx::LaunchDependents();

  if (wgi == 0) {
    tma::RegDealloc<kProducerRegs>();
    const int warp = tid / 32;
    if (tid == 0) {
      // --------------------------------------------------------- producer (TMA)
      tma::PrefetchMap(&tm_q);
      tma::PrefetchMap(&tm_do);
      tma::PrefetchMap(&tm_k);
      tma::PrefetchMap(&tm_v);
      if (PERSISTENT || store_tma) {
        tma::PrefetchMap(&tm_dk);
        tma::PrefetchMap(&tm_dv);
      }
      // steps issued (the stage ring), meta slots written (steps and each item's
      // kDqWriters ends), items whose K, V were loaded
      int it = 0, slot = 0, kvn = 0;
      for (int n = 0; PERSISTENT || n == 0; ++n) {  // without PERSISTENT: once
        const int w = take_item(n);
        if (w >= items) break;
        if constexpr (PERSISTENT) enter(w);
        if (qc.Done()) continue;  // no step: no load, no meta (every role skips it)
        // the consumers are done with the previous item's K, V (its last products)
        if constexpr (PERSISTENT) tma::MbarWait(kv_empty, (kvn & 1) ^ 1);
        ++kvn;
        const int krow = b * a.tk + k0;
        tma::MbarArriveExpectTx(bar_kv, 4 * kT);
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          LoadTile64<D>(base + hh * kT, &tm_k, hk, krow + 64 * hh, bar_kv);
          LoadTile64<D>(base + (2 + hh) * kT, &tm_v, hk, krow + 64 * hh, bar_kv);
        }
        for (; !qc.Done(); ++it, ++slot, qc.Next()) {
          const int st = it % STAGES, ms = slot % kMetaSlots;
          const uint32_t ph = (it / STAGES) & 1;
          const int h = h_first + qc.gi;
          const int s0 = qc.Start(qc.t);
          const uint32_t sq = base + S::kQ + st * 2 * kT;
          const int64_t li = (int64_t(b) * a.hq + h) * a.tq + s0;
          tma::MbarWait(empty(st), ph ^ 1);
          tma::MbarWait(meta_empty(ms), ((slot / kMetaSlots) & 1) ^ 1);
          meta[ms] = MetaOf(h, s0, qc.Partial());
          tma::MbarArrive(meta_full(ms));
          tma::MbarArriveExpectTx(full(st), 2 * kT + 512);
          LoadTile64<D>(sq, &tm_q, h, b * a.tq + s0, full(st));
          LoadTile64<D>(sq + kT, &tm_do, h, b * a.tq + s0, full(st));
          tma::LoadBulk(base + S::kLD + 512 * st, a.lse + li, 256, full(st));
          tma::LoadBulk(base + S::kLD + 512 * st + 256, a.delta + li, 256, full(st));
        }
#pragma unroll
        for (int wr = 0; wr < kDqWriters; ++wr, ++slot) {  // the item's end (one per writer)
          tma::MbarWait(meta_empty(slot % kMetaSlots), ((slot / kMetaSlots) & 1) ^ 1);
          meta[slot % kMetaSlots] = make_int2(-1, -1);
          tma::MbarArrive(meta_full(slot % kMetaSlots));
        }
        // the next item is taken once the consumers are done with this one's last step (its
        // stage released), not as its loads are issued: a CTA whose last steps (all but the
        // last kDqBuffers dQ adds) wait in a dQ chain takes no item another CTA could start
        // first (header comment, Persistent)
        if constexpr (PERSISTENT) tma::MbarWait(empty((it - 1) % STAGES), ((it - 1) / STAGES) & 1);
      }
    } else if (warp >= 1 && warp <= kDqWriters) {
      // --------------------------------------------------------- dQ writers
      const int lane = tid & 31;
      // this writer's meta slots (warp - 1, + kDqWriters, ...) and the items it ended: a
      // slot's step is slot - kDqWriters x ended (each item ends in kDqWriters slots)
      int slot = warp - 1, ended = 0;
      for (int n = 0; PERSISTENT || n == 0; ++n) {  // without PERSISTENT: once
        const int w = read_item(n);
        if (w >= items) break;
        if constexpr (PERSISTENT) enter(w);
        if (qc.Done()) continue;
        const int kv_blocks = (kvlen + kBS - 1) / kBS;  // blocks starting before kv_lengths
        // the launch order's key (header comment): the by-key counts of the first mask head
        const unsigned order_line0 = unsigned(hm0) * unsigned(L.lines);
        const int my_count = __ldg(a.by_key.counts + (order_line0 + unsigned(rk)));
        const bool my_long = LongList(a, my_count);
        // 64-row tiles of a dQ slot (the workspaces: dq_slots x [B, Hq, Tq, D] / Tq / 64)
        const unsigned slot_tiles = unsigned(a.batch) * unsigned(a.hq) * unsigned(a.tq / kBQ);
        for (;; slot += kDqWriters) {  // this writer's steps of item w
          const int it = slot - kDqWriters * ended;  // the step: its dQ buffer and phase
          const int s = it % DQB, ms = slot % kMetaSlots;
          tma::MbarWait(meta_full(ms), (slot / kMetaSlots) & 1);
          const int h = reinterpret_cast<volatile int*>(meta + ms)[0];
          const int s0 = MetaStart(reinterpret_cast<volatile int*>(meta + ms)[1]);
          tma::MbarArrive(meta_empty(ms));  // read (each lane): the producer may reuse it
          if (h < 0) {  // the item's end
            if (lane == 0) {
              tl.RecordMax(kTlWriterEnd, tl.Clock());
              tl.RecordMax(kTlWriterEndNs, tl.Ns());
            }
            slot += kDqWriters;
            ++ended;
            break;
          }
          // the key blocks of rk's slot (1 for a long list, else 0) before rk in the launch
          // order that add into this 64-query tile (header comment): the rank; with S = 4 or
          // 8 slots, slot 0's adders on a long query line spread over slots 0, 2, ..., S - 1
          // (the number modulo S - 1 picks the slot, the quotient is the rank)
          const bool spread =
              a.dq_slots > kOnePassDqSlots && !my_long && LongQueryLine(a, b, h, s0);
          const int mine = LaneAdders(a, b, h, s0, kv_blocks, off, order_line0, lane,
                                      [&](int n2, int c2) {
                                        const bool before =
                                            c2 > my_count || (c2 == my_count && n2 < rk);
                                        return before && LongList(a, c2) == my_long;
                                      });
          const int earlier = __reduce_add_sync(0xffffffffu, mine);
          const int chains = a.dq_slots - 1;  // slot 0's on a spread tile: 0, 2, ...
          const int rank = spread ? earlier / chains : earlier;
          if (lane == 0) {
            const int k = spread ? earlier % chains : 0;
            const unsigned dq_slot = k > 0 ? unsigned(k + 1) : unsigned(my_long);
            const unsigned bh_q = unsigned(b) * unsigned(a.hq) + unsigned(h);
            const size_t tile = size_t(dq_slot) * slot_tiles + bh_q * unsigned(a.tq / kBQ) +
                                unsigned(s0 / kBQ);
            int32_t* sem = a.dq_sem + tile;
            float* dst = a.dq_accum + tile * (kBQ * D);
            // our turn (while the consumers compute). By-query and by-key lists that disagree
            // (not transposes of one mask) could make a rank that never comes: trap after
            // ~10 s rather than hang.
            const long long t0 = clock64();
            while (tma::LoadRelaxedGpu(sem) != rank) {
              if (clock64() - t0 > (20LL << 30)) __trap();
            }
            tma::FenceAcquireGpu();  // with the load that saw `rank`: the acquire
            const long long t1 = tl.Clock();
            tl.Accumulate(kTlRankWait, t1 - t0);
            tma::MbarWait(dq_full(s), (it / DQB) & 1);  // the consumers' partial is in
            tl.Accumulate(kTlPartialWait, tl.Clock() - t1);
            FenceProxyAsyncGlobal();  // the acquire before the async-proxy reduction
            if (rank == 0) {  // the first adder stores: dq_accum needs no zeroing
              BulkStore(dst, base + S::kDq + s * S::kDqBytes, S::kDqBytes);
            } else {
              BulkReduceAddF32(dst, base + S::kDq + s * S::kDqBytes, S::kDqBytes);
            }
            tma::StoreCommit();
            tma::StoreWaitRead();  // the buffer is read: the consumers may refill it
            tma::MbarArrive(dq_empty(s));
            BulkWaitAll();
            FenceProxyAsyncGlobal();  // the reduction's writes before the release
            tma::AddReleaseGpu(sem, 1);
          }
          __syncwarp();
        }
      }
    }
  } else {
    // ------------------------------------------------------------- consumers
    tma::RegAlloc<kConsumerRegs>();
    const int cw = wgi - 1, ct = tid - 128 * wgi;  // consumer, thread in its warpgroup
    const int lane = tid & 31, w4 = (tid >> 5) & 3, g = lane >> 2, t = lane & 3;
    const float sl2 = a.scale_log2;
    const bool segs = a.kv_ids != nullptr;
    const uint64_t dK = wg::Desc(base + cw * kT, 16, 1024);
    const uint64_t dV = wg::Desc(base + (2 + cw) * kT, 16, 1024);

    // meta slot `slot`'s (query head, first query), from the producer's ring (PERSISTENT:
    // then each thread arrives on the slot's meta_empty, header comment)
    auto step_meta = [&](int slot) {
      const int ms = slot % kMetaSlots;
      tma::MbarWait(meta_full(ms), (slot / kMetaSlots) & 1);
      const volatile int* m = reinterpret_cast<volatile int*>(meta + ms);
      const int2 v = make_int2(m[0], m[1]);
      if constexpr (PERSISTENT) tma::MbarArrive(meta_empty(ms));
      return v;
    };
    // steps before this item, items ended (a meta slot: step + kDqWriters ends), items
    // with K, V (all 0 without PERSISTENT: no register in the step loop)
    int steps = 0, ends = 0, kvn = 0;
    for (int n = 0; PERSISTENT || n == 0; ++n) {  // without PERSISTENT: once
      const int w = read_item(n);
      if (PERSISTENT && w >= items) break;
      if constexpr (PERSISTENT) enter(w);
      const int key0 = k0 + cw * 64 + w4 * 16 + g;  // this thread's key rows: key0, key0 + 8
      const bool cut = k0 + kBS > kvlen;
      // segment ids (compared on partial entries): this thread's two key rows' ids, once
      const int2 kid = KeyRowIds<kBS>(a, b, key0, segs);
      float dk[D / 2], dv[D / 2];
#pragma unroll
      for (int i = 0; i < D / 2; ++i) dk[i] = dv[i] = 0.f;

      const bool has_steps = !qc.Done();
      int2 step = has_steps ? step_meta(steps + kDqWriters * ends) : make_int2(-1, -1);
      if (step.x >= 0) {
        tma::MbarWait(bar_kv, kvn & 1);
        if constexpr (PERSISTENT) ++kvn;
        if (TIMELINE && tid == 128) tl.Record(kTlKv, tl.Clock());
        if (cut) {  // K rows past kv_lengths -> 0 (the dS K product reads every row)
          const int first = kvlen - k0;  // first row to clear, 0 < first < 128
          // 16-byte chunks of this half (PERSISTENT: the first from OpaqueTid, else the
          // loop's trip count, kept live across the items loop, spilled)
          for (int i = PERSISTENT ? OpaqueTid() & 127 : ct; i < 64 * (D / 8); i += 128) {
            const int r = cw * 64 + i / (D / 8), c = i % (D / 8);
            if (r >= first) {
              unsigned char* p =
                  smem + (r / 64) * kT + (c / 8) * kSlab + (r % 64) * kLine + (c % 8) * 16;
              *reinterpret_cast<uint4*>(p) = make_uint4(0u, 0u, 0u, 0u);
            }
          }
          tma::FenceProxyAsync();
          tma::NamedBarrier(kBarZeroK, kConsumers);
        }
      }
      int it = steps;
      for (; step.x >= 0; ++it, step = step_meta(it + kDqWriters * ends)) {
        const int st = it % STAGES;
        const uint32_t ph = (it / STAGES) & 1;
        const int s0 = MetaStart(step.y);
        // a partial entry of the lists: the element predicate (causality, segment ids)
        const bool partial = MetaPartial(step.y);
        const bool causal_part = a.causal && partial;
        const bool masked = partial || cut;
        const uint32_t sq = base + S::kQ + st * 2 * kT, sdo = sq + kT;
        const long long w0 = tl.Clock();
        tma::MbarWait(full(st), ph);
        if (TIMELINE && tid == 128) {
          if (it == 0) tl.Record(kTlFirst, tl.Clock());
          tl.Accumulate(kTlStageWait, tl.Clock() - w0);
          tl.Accumulate(kTlSteps, 1);
        }
        float s[32], dp[32];
        {
          const uint64_t dq_ = wg::Desc(sq, 16, 1024), do_ = wg::Desc(sdo, 16, 1024);
          FenceAcc(s);
          FenceAcc(dp);
          wg::Fence();
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk)
            wg::MmaSS<T, 64>(s, dK + KSlice(kk), dq_ + KSlice(kk), kk > 0);
          wg::Commit();  // S^T, then dP^T: P^T is computed while dP^T runs
#pragma unroll
          for (int kk = 0; kk < D / 16; ++kk)
            wg::MmaSS<T, 64>(dp, dV + KSlice(kk), do_ + KSlice(kk), kk > 0);
          wg::Commit();
          wg::Wait<1>();
          FenceAcc(s);
        }
        // P^T (into s), then dS^T (into dp): columns are queries s0 + 8j + 2t (+1)
        const float* sl = reinterpret_cast<const float*>(smem + S::kLD + 512 * st);
        // the element predicate of a masked step as bits (no branches in the loops below)
        const uint32_t allow =
            masked ? AllowedBitsOf(s0, key0, kvlen, causal_part, off,
                                   StepQueryIds<kBS>(a, b, s0, t, segs), kid.x, kid.y, t)
                   : ~0u;
        auto keep = [&](int j, int e) { return ((allow >> (4 * j + e)) & 1u) != 0; };
        uint32_t pa[4][4], da[4][4];
        if constexpr (CAP) {
          // t = tanh(s scale_cap) in place while dP^T runs; then (dP^T done) P^T = 2^(cap_log2
          // t - lse2) replaces t in s and dp becomes (dP^T - delta) (1 - t^2), so dS^T below is
          // s dp: no register more than the uncapped step (header comment)
#pragma unroll
          for (int i = 0; i < 32; ++i) s[i] = Tanh(s[i] * a.scale_cap);
          wg::Wait<0>();  // dP^T done (the Wait<1> after the dV product below then is a no-op)
          FenceAcc(dp);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);
            const float l2[2] = {Lse2(lq.x), Lse2(lq.y)};
            const float2 dl = *reinterpret_cast<const float2*>(sl + 64 + 8 * j + 2 * t);
            const float dlt[2] = {dl.x, dl.y};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float tt = s[4 * j + e];
              float p = Exp2(fmaf(tt, a.cap_log2, -l2[e & 1]));
              if (!keep(j, e)) p = 0.f;
              s[4 * j + e] = p;
              dp[4 * j + e] = (dp[4 * j + e] - dlt[e & 1]) * fmaf(-tt, tt, 1.f);
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float2 lq = *reinterpret_cast<const float2*>(sl + 8 * j + 2 * t);
            const float l2[2] = {Lse2(lq.x), Lse2(lq.y)};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float p = Exp2(fmaf(s[4 * j + e], sl2, -l2[e & 1]));
              if (!keep(j, e)) p = 0.f;
              s[4 * j + e] = p;
            }
          }
        }
        PackA<T>(pa, s);
        const uint64_t don = wg::Desc(sdo, kSlab, 1024), dqn = wg::Desc(sq, kSlab, 1024);
        FenceAcc(dv);
        wg::Fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, D, 1>(dv, pa[kk], don + NSlice(kk));
        wg::Commit();  // dV += P^T dO runs while dS^T is computed
        wg::Wait<1>();  // dP^T done
        FenceAcc(dp);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float2 dl = *reinterpret_cast<const float2*>(sl + 64 + 8 * j + 2 * t);
          const float dlt[2] = {dl.x, dl.y};
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            // CAP: dp holds (dP^T - delta) (1 - t^2) already (above)
            float ds = s[4 * j + e] * (CAP ? dp[4 * j + e] : dp[4 * j + e] - dlt[e & 1]);
            if (!keep(j, e)) ds = 0.f;
            dp[4 * j + e] = ds;
          }
        }
        PackA<T>(da, dp);
        auto issue_dk = [&] {
          FenceAcc(dk);
          wg::Fence();
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) wg::MmaRS<T, D, 1>(dk, da[kk], dqn + NSlice(kk));
          wg::Commit();
        };
        if constexpr (!DQ_FIRST) issue_dk();  // dK += dS^T Q runs while dS^T goes to smem
        // dS^T -> buffer it % 2: line = key row (64 cw + r), 64 queries per line, swizzled.
        // da[kk][i]: row 16 w4 + g + 8 (i & 1), columns 16 kk + 8 (i >> 1) + 2t (+1).
        const uint32_t sds = base + S::kDs + (it & 1) * (S::kDsBytes / 2);
        {
          unsigned char* p = smem + S::kDs + (it & 1) * (S::kDsBytes / 2);
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int line = cw * 64 + w4 * 16 + g + 8 * (i & 1);
              const int chunk = 2 * kk + (i >> 1);
              *reinterpret_cast<uint32_t*>(p + wg::ChunkOffset(line, chunk) + 4 * t) = da[kk][i];
            }
        }
        tma::FenceProxyAsync();
        tma::NamedBarrier(kBarStep, kConsumers);  // both halves of dS^T written
        // dQ partial = dS K_n over the 128 keys: A = dS^T (M-major: 64 queries per line), B =
        // K (N-major), k16 slice kk = keys 16 kk .. 16 kk + 15 (K tile kk / 4).
        const bool writes = kNW == 2 || cw == (it & 1);
        const int wcol = kNW == 2 ? cw : 0;  // 64-column slab of dQ this consumer computes
        float dq[32];
        // dV += P^T dO done: P^T's fragments are free before dq is live
        wg::Wait<DQ_FIRST ? 0 : 1>();
        if (writes) {
#pragma unroll
          for (int i = 0; i < 32; ++i) dq[i] = 0.f;
          FenceAcc(dq);
          wg::Fence();
          const uint64_t dsa = wg::Desc(sds, kSlab, 1024);
#pragma unroll
          for (int kk = 0; kk < 8; ++kk) {
            const uint64_t kb = wg::Desc(base + (kk / 4) * kT + wcol * kSlab, kSlab, 1024);
            wg::Mma<T, 64, 1, 1>(dq, dsa + NSlice(kk), kb + NSlice(kk % 4));
          }
          wg::Commit();
        }
        auto consumed = [&] {
          wg::Wait<0>();
          FenceAcc(dv);
          FenceAcc(dk);
          tma::MbarArrive(empty(st));  // Q, dO, lse, delta of this stage are consumed
        };
        if constexpr (DQ_FIRST) {
          issue_dk();  // dK += dS^T Q runs while the dQ partial goes to shared memory
          wg::Wait<1>();  // the dQ product done (where it ran: unconditional, so ptxas sees
                          // the wait on every path to the dQ reads below)
        } else {
          consumed();
        }
        if (writes) {
          FenceAcc(dq);
          const int sb = it % DQB;
          const long long w1 = tl.Clock();
          tma::MbarWait(dq_empty(sb), ((it / DQB) & 1) ^ 1);
          if (TIMELINE && tid == 128) tl.Accumulate(kTlBufferWait, tl.Clock() - w1);
          // float4 i4 of this thread (accumulators 4 i4 .. 4 i4 + 3) at
          // ((i4 kNW + wcol) 128 + ct) float4s: the order DqConvertKernel undoes
          float4* buf = reinterpret_cast<float4*>(smem + S::kDq + sb * S::kDqBytes);
#pragma unroll
          for (int i4 = 0; i4 < 8; ++i4)
            buf[(i4 * kNW + wcol) * 128 + ct] =
                make_float4(dq[4 * i4], dq[4 * i4 + 1], dq[4 * i4 + 2], dq[4 * i4 + 3]);
          tma::FenceProxyAsync();  // generic writes before the bulk reduction reads them
          tma::MbarArrive(dq_full(sb));
        }
        if constexpr (DQ_FIRST) consumed();
      }
      if (TIMELINE && tid == 128) tl.Record(kTlStepsEnd, tl.Clock());
      if constexpr (PERSISTENT) {
        steps = it;
        if (has_steps) {  // the item's end: its first end slot was read above
          const int slot = it + kDqWriters * ends;
#pragma unroll
          for (int e = 1; e < kDqWriters; ++e) {  // every slot gets its consumers' arrivals
            tma::MbarWait(meta_full((slot + e) % kMetaSlots), ((slot + e) / kMetaSlots) & 1);
            tma::MbarArrive(meta_empty((slot + e) % kMetaSlots));
          }
          ++ends;
        }
      }
      if ((PERSISTENT || store_tma) && has_steps) {
        // dK, dV through shared memory: each half into its own K and V tiles (free once
        // both consumers' last products are done: the other half's dQ product reads this
        // K tile), the slabs' swizzled layout, then TMA stores of this half's two tiles
        // (always in the persistent kernel: its producer reloads K, V once both halves'
        // stores have read them, kv_empty)
        tma::NamedBarrier(kBarKvRead, kConsumers);
        unsigned char* tk_ = smem + cw * kT;
        unsigned char* tv_ = smem + (2 + cw) * kT;
        // this thread's rows and columns (PERSISTENT: from OpaqueTid, else the swizzled
        // offsets are shared with the dS^T store's and hoisted out of the items loop)
        const int et = PERSISTENT ? OpaqueTid() : tid;
        const int ew4 = (et >> 5) & 3, eg = (et & 31) >> 2, ett = et & 3;
#pragma unroll
        for (int j = 0; j < D / 8; ++j)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int byte =
                (j / 8) * kSlab + wg::ChunkOffset(ew4 * 16 + eg + 8 * hh, j % 8) + 4 * ett;
            *reinterpret_cast<uint32_t*>(tk_ + byte) =
                Ops<T>::Pack(dk[4 * j + 2 * hh] * a.scale, dk[4 * j + 2 * hh + 1] * a.scale);
            *reinterpret_cast<uint32_t*>(tv_ + byte) =
                Ops<T>::Pack(dv[4 * j + 2 * hh], dv[4 * j + 2 * hh + 1]);
          }
        tma::FenceProxyAsync();  // generic writes before the TMA store reads them
        tma::NamedBarrier(kBarHalfWritten + cw, 128);
        if (ct == 0) {
          const int row = b * a.tk + k0 + cw * 64;
#pragma unroll
          for (int sl = 0; sl < D / 64; ++sl) {
            tma::Store3d(&tm_dk, sl * 64, hk, row, base + cw * kT + sl * kSlab);
            tma::Store3d(&tm_dv, sl * 64, hk, row, base + (2 + cw) * kT + sl * kSlab);
          }
          tma::StoreCommit();
          tma::StoreWaitRead();  // K, V's shared memory is read: the next item may load
          if constexpr (PERSISTENT) tma::MbarArrive(kv_empty);
        }
      } else {  // registers to global memory
        const int64_t kstride = int64_t(a.hkv) * D;
        const int64_t ko = (int64_t(b) * a.tk + key0) * kstride + int64_t(hk) * D;
        T* gk = static_cast<T*>(a.dk) + ko;
        T* gv = static_cast<T*>(a.dv) + ko;
        StoreAcc<T, D>(dk, a.scale, gk, gk + 8 * kstride, t);
        StoreAcc<T, D>(dv, 1.f, gv, gv + 8 * kstride, t);
      }
      if (TIMELINE && tid == 128) {
        tl.Record(kTlStored, tl.Clock());
        tl.Record(kTlEndNs, tl.Ns());
      }
    }
  }
#else
  __trap();  // built without sm_90a code: DeviceOk never lets this run
#endif
}

// dQ = scale * (slot 0 + slot 1) of dq_accum in q's dtype: one CTA of kConvertThreads per
// 64-row tile (b, h, qt). A tile's slot holds 16 D float4s; float4 f is accumulators
// 4 i4 .. 4 i4 + 3 of thread ct of the consumer computing column slab w,
// f = (i4 kNW + w) 128 + ct: rows 16 w4 + g (+ 8), columns 64 w + 8 i4 + 2t (+ 1) (the
// wgmma accumulator layout). The CTA reads its float4s in that order (each warp 512
// contiguous bytes), writes q's dtype into a row-major copy of the tile in shared memory
// (rows padded by 16 bytes: the 4-byte writes of a warp's 8 rows x 4 columns fall in 32
// distinct banks), then stores whole rows, 16 bytes a thread. A slot's tile no key block
// added into (semaphore still 0) was never written: it counts 0 and is not read. (The
// former form, one thread per float4 finding its tile by two divisions, ran about 148
// SASS instructions a float4 and stored 4 bytes at a time; this one about 60.)
// EARLY (JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT): launched as a programmatic
// dependent of OnePassKernel, whose CTAs all run ptx::LaunchDependents first, so these CTAs
// get resident on the SMs its last wave leaves free, while that wave runs (they wait for no
// CTA that is not resident: no deadlock). Warp 0 counts each slot's adders of the tile
// (LaneAdders, all of them: the writers' rank rule), thread 0 spins until each slot's
// semaphore holds its count (an acquire, pairing with the writers' release after their
// reduction completed), and the tile's float32 sums are read through L2 (ld.cg: no stale
// L1 line). Without the early launch the counts are already there: the same sums, the same
// adds, bit for bit. SLOTS: the most dQ slots the instance sums (4 for calls of 2 or 4, 8
// for 8: the instances of 2 and 4 slots keep their code).
constexpr int kConvertThreads = 256;
template <typename T, int D, bool EARLY, int SLOTS>
__global__ void __launch_bounds__(kConvertThreads) DqConvertKernel(const Args a) {
  constexpr int kNW = D / 64;
  constexpr int kTileF4 = 16 * D;        // float4s of a tile's slot
  constexpr int kRowBytes = 2 * D + 16;  // a staged row of q's dtype, padded
  __shared__ __align__(16) unsigned char staged[kBQ * kRowBytes];
  const int qtiles = a.tq / kBQ;
  const int64_t tiles = int64_t(a.batch) * a.hq * qtiles;  // 64-row tiles of a slot
  const int64_t tile = blockIdx.x;
  const int qt = int(tile % qtiles);
  const int bh = int(tile / qtiles), h = bh % a.hq, b = bh / a.hq;
  const float4* src = reinterpret_cast<const float4*>(a.dq_accum) + tile * kTileF4;
  bool written[SLOTS];
  const int slots = a.dq_slots;
  if constexpr (EARLY) {
    __shared__ int adders[SLOTS];
    if (threadIdx.x < 32) {
      const int lane = int(threadIdx.x);
      const int kvlen = KvLength(a, b);
      // the launch order's mask head: that of the first query head of h's group
      const int hm0 = MaskHead(a, b, a.hm == 1 ? 0 : h / a.group * a.group);
      const unsigned order_line0 = unsigned(hm0) * unsigned(a.by_key.lines);
      auto adders_where = [&](auto pick) {
        return __reduce_add_sync(
            0xffffffffu, LaneAdders(a, b, h, qt * kBQ, (kvlen + kBS - 1) / kBS,
                                    QueryOffset(a, b), order_line0, lane, pick));
      };
      // slot 1: the long lists' adders; slot 0: the others, on a long query line with 4
      // slots spread over slots 0, 2, 3 in turn (the writers' rule)
      static_assert(kOnePassDqSlots == 2, "slots 0 and 1 are LongList's answer");
      const int chains = slots - 1;
      const bool spread = slots > kOnePassDqSlots && LongQueryLine(a, b, h, qt * kBQ);
      const int shorts = adders_where([&](int, int c2) { return !LongList(a, c2); });
#pragma unroll 1
      for (int slot = 0; slot < slots; ++slot) {
        const int k = slot == 0 ? 0 : slot - 1;  // a spread tile's chain of slot 0's adders
        const int count =
            slot == 1 ? adders_where([&](int, int c2) { return LongList(a, c2); })
            : spread  ? (shorts + chains - 1 - k) / chains
            : slot == 0 ? shorts
                        : 0;
        if (lane == 0) {
          const int32_t* sem = a.dq_sem + slot * tiles + tile;
          const long long t0 = clock64();
          while (tma::LoadRelaxedGpu(sem) != count) {  // as the writers: trap, not hang
            if (clock64() - t0 > (20LL << 30)) __trap();
            __nanosleep(256);
          }
          tma::FenceAcquireGpu();  // with the load that saw `count`: the acquire
          adders[slot] = count;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int slot = 0; slot < SLOTS; ++slot)
      written[slot] = slot < slots && adders[slot] != 0;
  } else {
#pragma unroll
    for (int slot = 0; slot < SLOTS; ++slot)
      written[slot] = slot < slots && __ldg(a.dq_sem + slot * tiles + tile) != 0;
  }
  static_assert(kTileF4 % kConvertThreads == 0 && kBQ * (D / 8) % kConvertThreads == 0);
#pragma unroll
  for (int k = 0; k < kTileF4 / kConvertThreads; ++k) {  // every load in flight at once
    const int f = k * kConvertThreads + int(threadIdx.x);
    const int ct = f % 128, w = (f / 128) % kNW, i4 = f / (128 * kNW);
    const int lane = ct & 31, w4 = ct >> 5, g = lane >> 2, t = lane & 3;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int slot = 0; slot < SLOTS; ++slot) {  // in slot order
      if (written[slot]) {
        const float4 y = __ldcg(src + slot * tiles * kTileF4 + f);
        x = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
      }
    }
    unsigned char* p = staged + (16 * w4 + g) * kRowBytes + 2 * (64 * w + 8 * i4 + 2 * t);
    *reinterpret_cast<uint32_t*>(p) = Ops<T>::Pack(x.x * a.scale, x.y * a.scale);
    *reinterpret_cast<uint32_t*>(p + 8 * kRowBytes) = Ops<T>::Pack(x.z * a.scale, x.w * a.scale);
  }
  __syncthreads();
  const int64_t qstride = int64_t(a.hq) * D;
  T* out = static_cast<T*>(a.dq) + (int64_t(b) * a.tq + int64_t(qt) * kBQ) * qstride +
           int64_t(h) * D;
  constexpr int kChunks = D / 8;  // 16-byte pieces of a row
#pragma unroll
  for (int k = 0; k < kBQ * kChunks / kConvertThreads; ++k) {
    const int c = k * kConvertThreads + int(threadIdx.x);
    const int row = c / kChunks, piece = c % kChunks;
    *reinterpret_cast<uint4*>(out + row * qstride + piece * 8) =
        *reinterpret_cast<const uint4*>(staged + row * kRowBytes + piece * 16);
  }
}

// Per device: 0 unknown, 1 usable, 2 not (as the forward's DeviceOk).
template <typename T, int D>
bool DeviceOk() {
#ifndef JBS_WGMMA_BUILT  // CMake: the architectures include 90a
  return false;
#else
  static std::atomic<uint8_t> state[64];
  const void* kernel =
      reinterpret_cast<const void*>(OnePassKernel<T, D, kStages<D>, kDqBuffers<D>, false, false,
                                                  false>);
  return UsableAsSm90(state, kernel,
                      tma::GetEncodeTiled() != nullptr);
#endif
}

std::atomic<long long*> timeline_buffer{nullptr};  // SetOnePassTimeline's

}  // namespace sm90onepass

cudaError_t SetOnePassTimeline(long long* buffer) {
  sm90onepass::timeline_buffer.store(buffer);
  return cudaSuccess;
}

template <typename T, int D>
cudaError_t RunBackwardSm90OnePass(const Args& a, cudaStream_t stream) {
  using namespace sm90onepass;
  if (a.bs != kBS || a.tq % kBS != 0 || a.tk % kBS != 0)
    return cudaErrorNotSupported;
  if (!DeviceOk<T, D>()) return cudaErrorNotSupported;
  if (a.tq == 0 || a.tk == 0) return RunBackward<T, D>(a, stream);  // no tensor map
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (a.dq_accum == nullptr || a.dq_sem == nullptr ||
      !OnePassDqSlotsValid(a.dq_slots))
    return cudaErrorInvalidValue;
  if (!aligned(a.q) || !aligned(a.k) || !aligned(a.v) || !aligned(a.d_o) || !aligned(a.lse) ||
      !aligned(a.delta) || !aligned(a.dq_accum))
    return cudaErrorInvalidValue;
  const int pairs = a.batch * a.hkv;  // (batch, kv head)
  const int64_t ctas = int64_t(pairs) * a.by_key.lines;  // the one-pass grid
  if (ctas > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t tiles = int64_t(a.batch) * a.hq * (a.tq / kBQ);  // 64-row tiles of dQ
  if (tiles > 0x7fffffff) return cudaErrorInvalidValue;  // DqConvertKernel's grid

  // dq_accum needs no zeroing: each tile's first adder stores (DqConvertKernel reads only
  // the tiles whose semaphore moved)
  cudaError_t err = cudaMemsetAsync(
      a.dq_sem, 0,
      size_t(OnePassSemaphoreElements(a.batch, a.hq, a.tq, a.dq_slots)) * sizeof(int32_t),
      stream);
  if (err != cudaSuccess) return err;
  err = LaunchDelta<T, D>(a, stream);
  if (err != cudaSuccess) return err;

  constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
  const uint64_t e = sizeof(T);
  CUtensorMap tq{}, tdo{}, tk{}, tv{}, tdk{}, tdv{};
  const uint64_t qdims[3] = {uint64_t(D), uint64_t(a.hq), uint64_t(a.batch) * a.tq};
  const uint64_t qstr[2] = {D * e, uint64_t(a.hq) * D * e};
  const uint64_t kdims[3] = {uint64_t(D), uint64_t(a.hkv), uint64_t(a.batch) * a.tk};
  const uint64_t kstr[2] = {D * e, uint64_t(a.hkv) * D * e};
  const uint32_t box[3] = {64, 1, 64};
  err = tma::EncodeTiled3d(&tq, kBf16, a.q, qdims, qstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled3d(&tdo, kBf16, a.d_o, qdims, qstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled3d(&tk, kBf16, a.k, kdims, kstr, box);
  if (err == cudaSuccess) err = tma::EncodeTiled3d(&tv, kBf16, a.v, kdims, kstr, box);
  if (err != cudaSuccess) return err;
  // dK, dV stored through shared memory by TMA (the default; always in the persistent kernel:
  // without the maps it is not launched), their maps with K's geometry
  const bool persistent_asked = GetSwitches().attn_bwd_onepass_persistent;
  const bool dkdv_maps =
      (GetSwitches().attn_bwd_onepass_store_tma || persistent_asked) && aligned(a.dk) &&
      aligned(a.dv) && tma::EncodeTiled3d(&tdk, kBf16, a.dk, kdims, kstr, box) == cudaSuccess &&
      tma::EncodeTiled3d(&tdv, kBf16, a.dv, kdims, kstr, box) == cudaSuccess;
  const bool store_tma = dkdv_maps && GetSwitches().attn_bwd_onepass_store_tma;

  {
    constexpr int smem = Smem<D, kStages<D>, kDqBuffers<D>>::kBytes;
    static std::atomic<uint64_t> configured[10];
    const bool dq_first = GetSwitches().attn_bwd_onepass_dq_first;
    long long* const timeline = timeline_buffer.load();  // the harness's instrumentation
    // a soft cap: the CAP instances (persistent or not), without the timeline
    const bool capped = a.cap_log2 > 0.f;
    if (capped && timeline != nullptr) return cudaErrorNotSupported;
    // the timeline records one item per CTA: the one-CTA-per-item grid
    const bool persistent = persistent_asked && dkdv_maps && timeline == nullptr;
    constexpr int S = kStages<D>, B = kDqBuffers<D>;
    auto kern = timeline != nullptr ? (dq_first ? OnePassKernel<T, D, S, B, true, true, false>
                                                : OnePassKernel<T, D, S, B, false, true, false>)
                : capped && persistent
                    ? (dq_first ? OnePassKernel<T, D, S, B, true, false, true, true>
                                : OnePassKernel<T, D, S, B, false, false, true, true>)
                : capped ? (dq_first ? OnePassKernel<T, D, S, B, true, false, false, true>
                                     : OnePassKernel<T, D, S, B, false, false, false, true>)
                : persistent        ? (dq_first ? OnePassKernel<T, D, S, B, true, false, true>
                                                : OnePassKernel<T, D, S, B, false, false, true>)
                                    : (dq_first ? OnePassKernel<T, D, S, B, true, false, false>
                                                : OnePassKernel<T, D, S, B, false, false, false>);
    const int form = timeline != nullptr ? 1 : persistent ? (capped ? 4 : 2) : capped ? 3 : 0;
    err = AllowDynamicSmem(configured[int(dq_first) + 2 * form],
                           reinterpret_cast<const void*>(kern), smem);
    if (err != cudaSuccess) return err;
    // one CTA per work item (batch, kv head, key block), in the launch order of the header
    // comment; persistent: one CTA per SM (one fits: its shared memory; at most
    // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT_CTAS), each taking items from the counter
    const int switched = GetSwitches().attn_bwd_onepass_group;
    const int group = switched > 0 && switched < pairs ? switched : pairs;
    const int cap = GetSwitches().attn_bwd_onepass_persistent_ctas;  // tests: a smaller grid
    const int sms = MultiProcessors() > 0 ? MultiProcessors() : 1;
    const int64_t grid =
        persistent ? std::min<int64_t>(ctas, cap > 0 ? std::min(cap, sms) : sms) : ctas;
    kern<<<unsigned(grid), kThreads, smem, stream>>>(a, tq, tdo, tk, tv, tdk, tdv, group,
                                                     store_tma, timeline);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (tiles > 0) {  // one CTA per 64-row tile
    const bool eight = a.dq_slots > 4;
    if (GetSwitches().attn_bwd_onepass_early_convert) {
      DependentLaunch launch(dim3(unsigned(tiles)), kConvertThreads, true, stream);
      err = cudaLaunchKernelEx(&launch.cfg, eight ? DqConvertKernel<T, D, true, 8>
                                                  : DqConvertKernel<T, D, true, 4>, a);
    } else {
      (eight ? DqConvertKernel<T, D, false, 8> : DqConvertKernel<T, D, false, 4>)
          <<<unsigned(tiles), kConvertThreads, 0, stream>>>(a);
      err = cudaGetLastError();
    }
  }
  return err;
}

JBS_ATTENTION_BWD_SM90_ONEPASS_LAUNCHERS(template, __nv_bfloat16)
JBS_ATTENTION_BWD_SM90_ONEPASS_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
