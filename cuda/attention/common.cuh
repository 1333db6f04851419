// The mask sources of the Hopper attention kernels (fwd_sm90.cu, bwd_sm90.cu), defined once:
// where a (batch, mask head)'s block lists start, the causal position of query row 0, the
// clamped kv length, the segment ids padded to whole tiles, the one element predicate of
// the partial entries, and the cursor over a query block's key tiles. Semantics:
// attention.h (DESIGN.md §7, "one predicate, many sources").
#pragma once

#include <cstdint>

#include "../attention_kernels.cuh"

namespace jax_blocksparse {
namespace attn {

// Index of (batch entry b, mask head hm) among the [mb, hm] groups of lines: lists per
// batch entry (a.mb == B: segment ids, a BlockMask with Bm = B) or shared (a.mb == 1).
__device__ __forceinline__ int MaskHead(const Args& a, int b, int hm) {
  return (a.mb == 1 ? 0 : b) * a.hm + hm;
}
// Its first line in one direction of the lists.
__device__ __forceinline__ int64_t FirstLine(const Args& a, const Lists& L, int b, int hm) {
  return int64_t(MaskHead(a, b, hm)) * L.lines;
}

// Causal position of query row 0 of batch entry b: q_offset's q_positions when given,
// else Tk - Tq (bottom-right aligned).
__device__ __forceinline__ int QueryOffset(const Args& a, int b) {
  return a.q_pos != nullptr ? __ldg(a.q_pos + (a.qp_batch == 1 ? 0 : b)) : a.tk - a.tq;
}

// kv_lengths[b] clamped into [0, Tk].
__device__ __forceinline__ int KvLength(const Args& a, int b) {
  const int n = __ldg(a.kv_lengths + b);
  return n < 0 ? 0 : (n > a.tk ? a.tk : n);
}

// Row b of segment ids padded to whole tiles of `bs` ([B, ceil(t / bs) * bs], the Python
// lowering): loads of a partial last tile need no bounds checks.
__device__ __forceinline__ const int32_t* PaddedIds(const int32_t* ids, int b, int t, int bs) {
  return ids + int64_t(b) * ((t + bs - 1) / bs * bs);
}

// The element predicate of a partial entry: query i (at causal position i + off, document
// qid) may attend key j (document kid). Without segment ids both ids are 0. Bitwise, not
// short-circuit: predicates, no branches, in the unrolled element loops.
__device__ __forceinline__ bool Allowed(int i, int j, int kvlen, bool causal, int off, int qid,
                                        int kid) {
  return (j < kvlen) & !(causal & (j > i + off)) & (qid == kid);
}

// The key tiles of one query block's list entries that survive kv_lengths and causality,
// in order: kSub = BS / kBN tiles of kBN keys per entry of BS keys (the forward at D = 256
// walks 64-key tiles of 128-key entries; otherwise one tile per entry). Tile e is tile
// e % kSub of entry e / kSub.
template <int BS, int kBN = BS>
struct KeyTiles {
  static constexpr int kSub = BS / kBN;
  const int32_t* list;
  // n, npart: in tiles (e < npart: a partial entry's tile, element masks); qlast_off: the
  // causal position of the block's last query
  int n, npart, kvlen, qlast_off;
  bool causal;
  int e;  // current tile, n when done
  __device__ __forceinline__ int Start() const {
    return __ldg(list + e / kSub) * BS + (e % kSub) * kBN;
  }
  __device__ __forceinline__ bool Valid() const {
    const int s = Start();
    return s < kvlen && (!causal || s <= qlast_off);
  }
  __device__ __forceinline__ void Skip() {
    while (e < n && !Valid()) ++e;
  }
  __device__ __forceinline__ void Next() {
    ++e;
    Skip();
  }
  __device__ __forceinline__ bool Done() const { return e >= n; }
  // the cursor at the first surviving tile of line `line` (query block q0 .. q0 + kBM - 1)
  __device__ __forceinline__ void Begin(const Lists& L, int64_t line, int kvlen_, int qlast,
                                        bool causal_) {
    list = L.lists + line * L.max_len;
    n = __ldg(L.counts + line) * kSub;
    npart = __ldg(L.partial + line) * kSub;
    kvlen = kvlen_;
    qlast_off = qlast;
    causal = causal_;
    e = 0;
    Skip();
  }
};

}  // namespace attn
}  // namespace jax_blocksparse
