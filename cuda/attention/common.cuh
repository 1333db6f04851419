// The mask sources of the Hopper attention kernels (fwd_sm90.cu, bwd_sm90.cu), defined once:
// where a (batch, mask head)'s block lists start, the causal position of query row 0, the
// clamped kv length, the segment ids padded to whole tiles, the one element predicate of
// the partial entries (and next to it the fine masks' block bits: the forward at block
// 128), and the cursor over a query block's key tiles. Semantics: attention.h (DESIGN.md
// §7, "one predicate, many sources").
#pragma once

#include <cstdint>

#include "../launch_util.h"
#include "../switches.h"
#include "shared.cuh"

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

// This CTA's cell of a grid of (B x heads, lines[, z]) CTAs: its (batch x head) index and
// its rank among the lines (an index into `order`: longest first). The hardware starts CTAs
// in linear order, x fastest. The columns (x) are taken in sections of
// a.section_columns (0: one section of all): section after section, and inside one the
// cells rank by rank (longest first) across its columns. One section of all columns is the
// cell (x, y): a rank's CTAs of every head together, longest first across all heads (the
// best load balance). Sections sized to L2 (InSections) keep what a section's CTAs share
// (K/V in the forward and the dQ kernel, Q/dO in the dK/dV kernel) in L2 while they run;
// sections of one column run one head's lines back to back (FlashAttention-3 orders its
// tiles in such L2-sized sections of heads). a.section_split > 0 (InSections): the first
// that many columns in sections of a.section_columns, the rest in sections of
// a.section_narrow (one unit narrower).
struct Cell {
  int bh, rank;
};
__device__ __forceinline__ Cell CellOf(const Args& a) {
  const int columns = int(gridDim.x);
  int n = a.section_columns;
  if (n <= 0 || n >= columns) return Cell{int(blockIdx.x), int(blockIdx.y)};
  int64_t id = int64_t(blockIdx.y) * columns + blockIdx.x;  // launch order
  // near-equal sections (InSections): past the first section_split columns, one narrower
  const int64_t split_ids = int64_t(a.section_split) * gridDim.y;
  int base = 0;
  if (a.section_split > 0 && id >= split_ids) {
    id -= split_ids;
    base = a.section_split;
    n = a.section_narrow;
  }
  const int64_t per_section = int64_t(n) * gridDim.y;  // the last one may be narrower
  const int section = int(id / per_section);
  const int first = base + section * n, width = min(n, columns - first);
  const int64_t i = id - section * per_section;
  return Cell{first + int(i % width), int(i / width)};
}

// `a` with its sections of grid columns chosen (CellOf) for a kernel whose CTAs of one
// column share `bytes_per_column` of operands and whose `columns` come in groups of `unit`
// that share them too (the query heads of one key head): JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS
// N (N columns), "l2" (as many whole units as half the L2 holds, at least one), "" or "0"
// one section of all (Switches); unset, "l2" where the call asks (Args::l2_sections), else
// one section. With JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN as many sections
// (ceil(columns / N)) of widths that differ by one unit at most, the wider first (32
// columns in sections of 6: 6, 6, 5, 5, 5, 5, not 6 x 5 + 2, whose narrow last section
// starts its long lines late and ends in a tail: benchmarks/head_sections_model.py).
inline Args InSections(Args a, double bytes_per_column, int unit, int columns) {
  const Switches& switches = GetSwitches();
  const int setting = switches.attn_head_sections_set ? switches.attn_head_sections
                      : a.l2_sections                 ? -1
                                                      : 0;
  a.section_split = 0;
  if (setting != -1) {
    a.section_columns = setting;
  } else {
    const int l2 = L2CacheBytes();  // 0: unknown, one section of all
    const double units = 0.5 * l2 / (bytes_per_column * unit);
    a.section_columns =
        l2 <= 0 ? 0 : units >= 1.0 ? int(units < 65536.0 ? units : 65536.0) * unit : unit;
  }
  const int n = a.section_columns;
  if (!switches.attn_head_sections_even || n <= 0 || n >= columns) return a;
  const int u = n % unit == 0 && columns % unit == 0 ? unit : 1;  // balance whole units
  const int all = columns / u, count = (all + n / u - 1) / (n / u);
  const int q = all / count, r = all % count;  // r sections of q + 1 units, then q
  a.section_columns = (r > 0 ? q + 1 : q) * u;
  a.section_split = r * (q + 1) * u;
  a.section_narrow = q * u;
  return a;
}

// The sections of a grid whose columns are (b, query head) and whose CTAs stream their key
// head's K and V, shared by the group's columns (the forward, the backward's dQ kernels).
template <typename T, int D>
Args QueryHeadCells(const Args& a) {
  return InSections(a, 2.0 * a.tk * D * sizeof(T) / a.group, a.group, a.batch * a.hq);
}
// ... whose columns are (b, key head) and whose CTAs stream Q and dO of the group's query
// heads (the backward's dK/dV kernels).
template <typename T, int D>
Args KeyHeadCells(const Args& a) {
  return InSections(a, 2.0 * a.tq * D * sizeof(T) * a.group, 1, a.batch * a.hkv);
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

// The element predicate (Allowed) over a thread's J x 4 elements of a dK/dV step of the
// Hopper backwards (bwd_sm90.cu, bwd_sm90_d256.cu, bwd_sm90_onepass.cu) on a partial entry
// (J = 8: 64 queries; 4: the 32 of a head-dim-256 warpgroup): bit 4j + e for key row
// key0 + 8 (e >> 1) and query s0 + 8j + 2t + (e & 1). Computed once per step (P^T and dS^T
// both use it: selections, no branches). With segment ids, `qids` points at the ids of
// query s0 + 2t and kid0 / kid1 are those of the two key rows; without, qids is null.
template <int J = 8>
__device__ __forceinline__ uint32_t AllowedBitsOf(int s0, int key0, int kvlen, bool causal,
                                                  int off, const int32_t* qids, int kid0,
                                                  int kid1, int t) {
  const int kid[2] = {kid0, kid1};
  uint32_t bits = 0;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    int qid[2] = {0, 0};
    if (qids != nullptr) {
      qid[0] = __ldg(qids + 8 * j);
      qid[1] = __ldg(qids + 8 * j + 1);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (Allowed(s0 + 8 * j + 2 * t + (e & 1), key0 + 8 * (e >> 1), kvlen, causal, off,
                  qid[e & 1], kid[e >> 1]))
        bits |= 1u << (4 * j + e);
  }
  return bits;
}
// AllowedBitsOf's ids of batch entry b (padded to whole tiles of BS: no bounds checks; L1
// hits after the first step): those of key rows key0 and key0 + 8 (0 without segment ids)
// and where the step's query ids start (null without).
template <int BS = 128>
__device__ __forceinline__ int2 KeyRowIds(const Args& a, int b, int key0, bool segs) {
  if (!segs) return make_int2(0, 0);
  const int32_t* kids = PaddedIds(a.kv_ids, b, a.tk, BS);
  return make_int2(__ldg(kids + key0), __ldg(kids + key0 + 8));
}
template <int BS = 128>
__device__ __forceinline__ const int32_t* StepQueryIds(const Args& a, int b, int s0, int t,
                                                       bool segs) {
  return segs ? PaddedIds(a.q_ids, b, a.tq, BS) + s0 + 2 * t : nullptr;
}
// AllowedBitsOf with the ids loaded here.
template <int J = 8, int BS = 128>
__device__ __forceinline__ uint32_t AllowedBits(const Args& a, int b, int s0, int key0, int kvlen,
                                                bool causal, int off, bool segs, int t) {
  const int2 kid = KeyRowIds<BS>(a, b, key0, segs);
  return AllowedBitsOf<J>(s0, key0, kvlen, causal, off, StepQueryIds<BS>(a, b, s0, t, segs),
                          kid.x, kid.y, t);
}

// Fine masks: a mask of block size 2^lg (16, 32; 64 in the backward) on 128 x 128 list
// entries (the forward and the backward at block 128, Args::mask_bits; the backward's
// by-key entries: Args::mask_bits_key, the same words). Each partial entry has a 64-bit
// word w of f = 128 >> lg rows of f bits (bit r * f + c: mask block (r, c) of the entry is
// visited); every other entry visits all its blocks. The columns are those of the 128-key
// entry, also where the kernel walks it in 64-key sub-tiles (D = 256): key j of the entry
// is in column (j % 128) >> lg.
//
// The block columns (bit c: keys [c << lg, (c + 1) << lg) of the entry) that no row of w
// visits (w = ~0: none).
__device__ __forceinline__ uint32_t EmptyColumns(uint64_t w, int lg) {
  const int f = 128 >> lg;
  for (int sh = 32; sh >= f; sh >>= 1) w |= w >> sh;  // the rows OR-ed into bits [0, f)
  return ~uint32_t(w) & ((1u << f) - 1u);
}

// Bits [0, 128 >> lg) of x (one row of w, shifted down), each repeated (1 << lg) / 8
// times: bit j of the result is bit (8 j) >> lg of x, whether the row visits the entry's
// keys [8 j, 8 j + 8) (lg 4: 8 bits -> 16, each twice; lg 5: 4 bits -> 16, each 4 times;
// lg 6, the backward only: 2 bits -> 16, each 8 times).
__device__ __forceinline__ uint32_t SpreadBits(uint32_t x, int lg) {
  if (lg == 4) {
    x &= 0xffu;
    x = (x | x << 4) & 0x0f0fu;
    x = (x | x << 2) & 0x3333u;
    x = (x | x << 1) & 0x5555u;
    return x | x << 1;
  }
  if (lg == 6) {
    x &= 0x3u;
    return ((x | x << 7) & 0x0101u) * 0xffu;
  }
  x &= 0xfu;
  x = (x | x << 6) & 0x0303u;
  x = (x | x << 3) & 0x1111u;
  return x * 0xfu;
}

// Bit s of the result (s < 128 >> lg): whether row s of w visits block column c (the rows
// of one key column of the entry: the backward's dK/dV kernel, whose thread owns keys of one
// column; SpreadBits of it gives the entry's 8-query groups that visit the column).
__device__ __forceinline__ uint32_t ColumnBits(uint64_t w, int lg, int c) {
  const int f = 128 >> lg;
  uint32_t x = 0;
#pragma unroll
  for (int s = 0; s < 8; ++s)
    if (s < f) x |= uint32_t((w >> (s * f + c)) & 1u) << s;
  return x;
}

// The fine masks' term of the element predicate, applied next to Allowed on a partial
// entry (kept out of Allowed's expression: folded in, the Hopper forward spilled at 168
// registers): the scores of the 8-key groups j whose bit of `groups` (SpreadBits of the
// row's word bits, shifted to the tile's first group) is clear become -inf. s: one
// thread's scores of an m64nN wgmma accumulator, 4 per 8-key group (rows r, r + 8 x keys
// 2t, 2t + 1 of the group), kGroups = N / 8.
template <int kGroups>
__device__ __forceinline__ void Unvisited(float* s, uint32_t groups) {
#pragma unroll
  for (int j = 0; j < kGroups; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (!((groups >> j) & 1u)) s[4 * j + e] = -INFINITY;
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
