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

// The list entries of one query block that survive kv_lengths and causality, in order
// (tiles of kBN keys, one per entry).
template <int kBN>
struct KeyTiles {
  const int32_t* list;
  int n, npart, kvlen, qlast_off;  // qlast_off: causal position of the block's last query
  bool causal;
  int e;  // current entry, n when done
  __device__ __forceinline__ int Start(int i) const { return __ldg(list + i) * kBN; }
  __device__ __forceinline__ bool Valid(int i) const {
    const int s = Start(i);
    return s < kvlen && (!causal || s <= qlast_off);
  }
  __device__ __forceinline__ void Skip() {
    while (e < n && !Valid(e)) ++e;
  }
  __device__ __forceinline__ void Next() {
    ++e;
    Skip();
  }
  __device__ __forceinline__ bool Done() const { return e >= n; }
  // the cursor at the first surviving entry of line `line` (query block q0 .. q0 + kBM - 1)
  __device__ __forceinline__ void Begin(const Lists& L, int64_t line, int kvlen_, int qlast,
                                        bool causal_) {
    list = L.lists + line * L.max_len;
    n = __ldg(L.counts + line);
    npart = __ldg(L.partial + line);
    kvlen = kvlen_;
    qlast_off = qlast;
    causal = causal_;
    e = 0;
    Skip();
  }
};

}  // namespace attn
}  // namespace jax_blocksparse
