// The building blocks every attention kernel shares (the FA2 kernels, fa2.cuh; the Hopper
// forward and backwards, fwd_sm90.cu, bwd_sm90*.cu; the decode kernel, decode.cu): the
// kernel arguments (Args and its block lists), the score scale, the element types' ops,
// exp2 / tanh, quad reductions, attention sinks and the online softmax step, the mma.sync
// fragment loads, the per-row statistics of the backwards (RowDot, Lse2) and the cursor
// over a key block's query tiles (QueryCursor). Semantics and metadata: attention.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../ptx.cuh"

namespace jax_blocksparse {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Args::rescale_slack (unless JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0): P up to 2^8 = 256
// (bf16 / f16 keep their relative precision there; l and O stay far inside float32)
constexpr float kLazyRescaleSlack = 8.f;

struct Lists {  // one direction of the metadata
  const int32_t *counts, *partial, *lists, *order;
  int lines, max_len;
};

struct Args {
  const void *q, *k, *v, *o, *d_o;
  const float *lse, *d_lse;
  const int32_t* kv_lengths;
  Lists by_query, by_key;
  void *out_o, *dq, *dk, *dv;
  // the backward's workspace: [B, Hq, Tq] delta (the FA2 backward); the Hopper backward
  // keeps [B, Hq, 2, ceil(Tq / bs) * bs] there (bwd_sm90_common.cuh, StatsKernel)
  float *out_lse, *delta;
  int batch, tq, tk, hq, hkv, group, bs, hm;
  float scale, scale_log2;
  // logit soft cap (the FA2 kernels, the Hopper forward and backward): cap * log2(e) and
  // scale / cap, or 0 and 0 (no cap)
  float cap_log2, scale_cap;
  // attention sinks (the forwards, FA2 and Hopper): float32 [Hq], one logit per query head
  // in the units of the scaled scores, or null (none). See SinkStart below.
  const float* sinks;
  // the Hopper forward's lazy rescale (kLazyRescaleSlack; 0 under
  // JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0): a row's running maximum moves only when a
  // tile's maximum exceeds it by more than this (log2 units), so P = 2^(s - m) <= 2^slack
  // and O and l are rescaled only then (0: every new maximum, the exact online softmax)
  float rescale_slack;
  // the Hopper forward under a soft cap, where CapServesAsMax allows it (unless
  // JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=0): the capped scores are below cap_log2 (log2
  // units), so every row's running maximum is cap_log2 from the start: no tile maxima, no
  // rescale (the launcher sets rescale_slack to +inf with it)
  bool cap_is_max;
  bool causal;
  // the FA3-design kernels only (AttentionKernel::documents): lists per batch entry when
  // mb == B (else mb = 1), segment ids [B, Tq] / [B, Tk] (padded to whole tiles) or null
  int mb;
  const int32_t *q_ids, *kv_ids;
  const int32_t* q_pos;  // [qp_batch]: causal position of query row 0 (null: Tk - Tq)
  int qp_batch;          // 1 or B
  // a mask of block size 2^mask_lg (16, 32; 64 in the backward) on bs = 128 tiles: per
  // by_query list entry the bits of its mask blocks (AttentionForwardParams::mask_bits),
  // or null
  const uint64_t* mask_bits;
  // the same words per by_key list entry (the Hopper backward's dK/dV kernel; bits in the
  // same (query row, key column) convention as mask_bits), or null
  const uint64_t* mask_bits_key;
  int mask_lg;
  // the one-pass backward only (AttentionKernel::dq_workspace): float32 dQ sums and int32
  // semaphores (attention/bwd_sm90_onepass.h), else null
  float* dq_accum;
  int32_t* dq_sem;
  int dq_slots;  // 2, 4 or 8 (attention/bwd_sm90_onepass.h)
  // GQA-packed decode (fwd_sm90.cu, PACKED): mask row base per batch entry ([B]), the
  // splits' workspaces [B, Hq, Tq, splits, D] / [B, Hq, Tq, splits] (log2 lse), log2 of
  // the group (rows (t, j): query t, head g * group + j), mask rows R
  const int32_t* q_rows;
  const float *k_scale, *v_scale;  // [Hkv] (null: 1): the decode primitive's cache scales
  float *part_o, *part_lse;
  int splits, group_lg, mask_rows;
  // a paged cache (k, v page pools [P, page_size, Hkv, D]): page_table [B, pages_per_seq]
  // (key j of sequence b: row j % page_size of page page_table[b, j / page_size]), or null
  const int32_t* page_table;
  int page_size, pages_per_seq;
  // the order of a (B x heads, lines) grid's cells: its columns in sections of this many
  // (0: one section of all; CellOf, InSections)
  int section_columns;
  // near-equal sections (JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN): the first section_split
  // columns in sections of section_columns, the rest in sections of section_narrow (one
  // unit narrower; section_split 0: every section section_columns wide, the last one
  // narrower where they do not divide)
  int section_split, section_narrow;
  // sections sized to L2 where JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS is unset (the forward's
  // AttentionForwardParams::l2_sections; false elsewhere: one section of all)
  bool l2_sections;
};

// Whether the cap's bound can serve as every row's maximum (Args::cap_is_max) without
// losing precision: P = 2^(cap_log2 (t - 1)) >= 2^(-2 cap_log2) must stay a normal number
// of P's type (bf16: 2^-126, with margin 2^-120; f16: 2^-14, with margin 2^-12), and no
// sink may exceed it (sinks: never).
inline bool CapServesAsMax(float cap_log2, bool bf16, bool sinks) {
  return cap_log2 > 0.f && !sinks && 2.f * cap_log2 <= (bf16 ? 120.f : 12.f);
}

// The score scale and a logit soft cap (0: none) in the kernels' terms (Args above).
inline void SetScoreScale(Args& a, float scale, float softcap) {
  a.scale = scale;
  a.scale_log2 = scale * kLog2e;
  a.cap_log2 = softcap > 0.f ? softcap * kLog2e : 0.f;
  a.scale_cap = softcap > 0.f ? scale / softcap : 0.f;
}

// ---------------------------------------------------------------- PTX helpers
using ptx::CpAsync16;
using ptx::CpAsyncCommit;
using ptx::CpAsyncWait;
using ptx::Ldsm4;
using ptx::Ldsm4T;
using ptx::SmemAddr;

template <typename T> struct Ops;
template <> struct Ops<__nv_bfloat16> {
  __device__ __forceinline__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t Pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float2 Unpack(uint32_t x) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
  }
};
template <> struct Ops<__half> {
  __device__ __forceinline__ static void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t Pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  __device__ __forceinline__ static float2 Unpack(uint32_t x) {
    return __half22float2(*reinterpret_cast<__half2*>(&x));
  }
};

// floor(x / y) for y > 0 (C++ division truncates toward zero)
__device__ __forceinline__ int FloorDiv(int x, int y) {
  return x >= 0 ? x / y : -((-x + y - 1) / y);
}

__device__ __forceinline__ float Exp2(float x) {  // 2^x, -inf -> 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float Tanh(float x) {  // tanh, |relative error| < 2^-10.9
  float y;
  asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float QuadSum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Attention sinks inside the forwards' online softmax (issue 21). A sink adds exp(sink_h) to
// every row's denominator and nothing to its numerator: o = sum_j e^(s_j) v_j /
// (e^(sink) + sum_j e^(s_j)). In the kernels' log2 domain (s2 = s log2(e)) the sink is one
// more "key" of score sink log2(e) whose value row is 0, seen before every real key: so a
// row starts with the running max m = sink log2(e) (not -inf), the running sum
// l = 2^(sink log2(e) - m) = 1 and the accumulator 0; every later step rescales l by
// 2^(m_old - m_new) as for any key, and the end is as without sinks: o = acc / l,
// lse = (m + log2 l) ln 2 = log(e^(sink) + sum_j e^(s_j)). A row with no allowed key keeps
// m = sink log2(e), l = 1, acc = 0: o = 0, lse = sink (what with_sinks gives). The max is
// then finite from the start, so the "still empty" guards (m == -inf) never fire for such
// a row. Without sinks (null) the start is -inf, 0, 0 as before. l is summed over the
// quad at the end (QuadSum), so the 1 goes to one lane of the quad (`first`).
__device__ __forceinline__ void SinkStart(const float* sinks, int h, bool first, float& m,
                                          float& l) {
  if (sinks != nullptr) {
    m = __ldg(sinks + h) * kLog2e;
    l = first ? 1.f : 0.f;
  }
}

// One online-softmax step of a warp's two rows (lane / 4 and lane / 4 + 8): mx0, mx1 are
// this lane's maxima of the new (log2-domain) scores and the running maxima m0, m1. Folds
// them into m0, m1 over the quad, rescales the running sums l and the accumulators, and
// returns in mu0, mu1 the offsets for P = 2^(s - mu) (0 for a row still empty: never NaN).
// SKIP_UNCHANGED: the rescale is skipped when no row of the warp has a new maximum (its
// factors would all be 1, or 0 on a row still empty whose sums are 0: the same bits), one
// vote against D / 2 multiplies a step; worth it where steps are short (16-key decode tiles).
template <int D, bool SKIP_UNCHANGED = false>
__device__ __forceinline__ void OnlineSoftmaxStep(float mx0, float mx1, float& m0, float& m1,
                                                  float& l0, float& l1, float (&acc)[D / 8][4],
                                                  float& mu0, float& mu1) {
  mx0 = QuadMax(mx0);
  mx1 = QuadMax(mx1);
  mu0 = mx0 == -INFINITY ? 0.f : mx0;
  mu1 = mx1 == -INFINITY ? 0.f : mx1;
  const bool changed = !(mx0 == m0 && mx1 == m1);
  if (SKIP_UNCHANGED && !__any_sync(0xffffffffu, changed)) return;
  const float c0 = Exp2(m0 - mu0), c1 = Exp2(m1 - mu1);
  m0 = mx0;
  m1 = mx1;
  l0 *= c0;
  l1 *= c1;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    acc[n][0] *= c0; acc[n][1] *= c0; acc[n][2] *= c1; acc[n][3] *= c1;
  }
}

// A-operand fragments (16 x 16 at rows r0, cols k0) of a row-major smem tile.
template <int LD, typename T>
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const T* s, int r0, int k0, int lane) {
  Ldsm4(a, SmemAddr(s + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + k0 + (lane >> 4) * 8));
}
// B-operand fragments of two n8 tiles (n0, n0+8) x k16 at k0, from a smem tile stored
// [n][k] (non-transposed: e.g. K for Q K^T). b[0], b[1]: tile n0; b[2], b[3]: tile n0+8.
template <int LD, typename T>
__device__ __forceinline__ void LoadBN(uint32_t (&b)[4], const T* s, int n0, int k0, int lane) {
  Ldsm4(b, SmemAddr(s + (n0 + (lane & 7) + (lane >> 4) * 8) * LD + k0 + ((lane >> 3) & 1) * 8));
}
// The same from a smem tile stored [k][n] (e.g. V for P V): ldmatrix.trans.
template <int LD, typename T>
__device__ __forceinline__ void LoadBT(uint32_t (&b)[4], const T* s, int k0, int n0, int lane) {
  Ldsm4T(b, SmemAddr(s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8));
}

// rowsum(dO * O) of row `row` of [B, Tq, Hq] over one warp (every lane gets the sum).
template <typename T, int D>
__device__ __forceinline__ float RowDot(const Args& a, int64_t row, int lane) {
  using O = Ops<T>;
  const uint32_t* po = reinterpret_cast<const uint32_t*>(static_cast<const T*>(a.o) + row * D);
  const uint32_t* pd = reinterpret_cast<const uint32_t*>(static_cast<const T*>(a.d_o) + row * D);
  float sum = 0.f;
#pragma unroll
  for (int c = lane; c < D / 2; c += 32) {
    const float2 x = O::Unpack(po[c]), y = O::Unpack(pd[c]);
    sum += x.x * y.x + x.y * y.y;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  return sum;
}

// log2-domain lse of row i (or +inf for an empty row: P = 0 there).
__device__ __forceinline__ float Lse2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// The query tiles (BQ rows) of one key tile [k0, k0 + 64), over the query heads of a kv
// head's group (gi = 0..group-1), each with its own by-key lists when hm = Hq. REV: each
// head's list walked from its end (the one-pass backward's order, bwd_sm90_onepass.cu).
template <int BQ, bool REV = false>
struct QueryCursor {
  const int32_t *counts, *partial, *lists;
  int lines, max_len, rk, hm_base, hm_step;  // mask head of group member gi: base + gi*step
  int qh, bs, group, first_key_minus_off;    // causal: a tile is useful iff qlast >= this
  // Tq: tiles starting at or past it (a partial last block's) are skipped. Every user sets
  // every field above and this one (an unset q_end is undefined: the compiler may fold the
  // test in Skip to false, and the cursor then walks nothing).
  int q_end;
  bool causal;
  int gi, t, n, npart;
  const int32_t* list;
  __device__ __forceinline__ void Enter() {
    const int64_t line = int64_t(hm_base + gi * hm_step) * lines + rk;
    n = __ldg(counts + line) * qh;
    npart = __ldg(partial + line);
    list = lists + line * max_len;
  }
  __device__ __forceinline__ int Start(int tt) const {
    if constexpr (REV) tt = n - 1 - tt;
    return __ldg(list + tt / qh) * bs + (tt % qh) * BQ;
  }
  __device__ __forceinline__ void Skip() {
    for (;;) {
      if (t >= n) {
        if (++gi >= group) return;
        t = 0;
        Enter();
        continue;
      }
      const int s = Start(t);
      if (s < q_end && (!causal || s + BQ - 1 >= first_key_minus_off)) return;
      ++t;
    }
  }
  __device__ __forceinline__ void Begin() {
    gi = 0;
    t = 0;
    Enter();
    Skip();
  }
  __device__ __forceinline__ void Next() {
    ++t;
    Skip();
  }
  __device__ __forceinline__ bool Done() const { return gi >= group; }
  __device__ __forceinline__ bool Partial() const { return (REV ? n - 1 - t : t) / qh < npart; }
  // Every field, then the first step (the Hopper backwards' key-block CTAs): the key block
  // rk of the lists L (the mask heads hm_base + gi * hm_step), its block size bs_ in tiles
  // of BQ queries; k0 the CTA's first key, off the causal position of query row 0, kvlen
  // the valid keys (a CTA whose keys all lie past it walks no query head: no gradient
  // reaches them), q_end_ as above.
  __device__ __forceinline__ void Init(const Lists& L, int rk_, int hm_base_, int hm_step_,
                                       int bs_, int group_, int k0, int off, int kvlen,
                                       int q_end_, bool causal_) {
    counts = L.counts;
    partial = L.partial;
    lists = L.lists;
    lines = L.lines;
    max_len = L.max_len;
    rk = rk_;
    hm_base = hm_base_;
    hm_step = hm_step_;
    qh = bs_ / BQ;
    bs = bs_;
    group = k0 < kvlen ? group_ : 0;
    first_key_minus_off = k0 - off;
    q_end = q_end_;
    causal = causal_;
    if (group > 0) {
      Begin();
    } else {
      gi = 0;
    }
  }
};

}  // namespace attn
}  // namespace jax_blocksparse
