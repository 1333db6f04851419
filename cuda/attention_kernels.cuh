// Fused block-sparse attention kernels (FlashAttention-2 style, sm_80+: mma.sync m16n8k16,
// ldmatrix, cp.async). Semantics and metadata: attention.h.
//
// Common structure. Keys are walked in tiles of 64 (a 128 block is two 64 halves), queries
// in tiles of BM rows. Each warp owns 16 rows of its CTA's output tile (query rows in the
// forward and dQ kernels, key rows in the dK/dV kernel) and keeps its accumulators in
// registers (float32). The CTA's list of tiles comes from the metadata; a "cursor" walks
// it, skipping tiles that start at or past kv_lengths[b] or that causality masks entirely.
// Tiles are staged in a STAGES-deep cp.async ring (rows padded by 16 bytes: conflict-free
// ldmatrix). Element masks (causal diagonal, kv_lengths) are applied only in partial tiles.
// Scores are kept in the log2 domain (scale * log2(e) folded in, exp2). With a logit soft
// cap (Args::cap_log2 > 0: the FA2 kernels, the Hopper forward and backward, the decode
// kernel) the log2-domain score is cap * tanh(scale * s / cap) * log2(e), before the masks;
// the backward multiplies dS by 1 - tanh^2 (the FA2 one: recomputed in dQ, recovered from P
// in dK/dV; the Hopper one recomputes it in both, attention/bwd_sm90.cu).
//
// Grid: x = (batch, head), y = position in `order` (x fastest: every (batch, head) CTA of
// the longest lines launches first). Every output element is written by exactly one CTA,
// reductions run in a fixed order: results are bitwise deterministic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "ptx.cuh"

namespace jax_blocksparse {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kKT = 64;  // keys per tile

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
  // keeps [B, Hq, 2, ceil(Tq / bs) * bs] there (bwd_sm90.cu, StatsKernel)
  float *out_lse, *delta;
  int batch, tq, tk, hq, hkv, group, bs, hm;
  float scale, scale_log2;
  // logit soft cap (the FA2 kernels, the Hopper forward and backward): cap * log2(e) and
  // scale / cap, or 0 and 0 (no cap)
  float cap_log2, scale_cap;
  // attention sinks (the forwards, FA2 and Hopper): float32 [Hq], one logit per query head
  // in the units of the scaled scores, or null (none). See SinkStart below.
  const float* sinks;
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
};

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

// Copy `rows` x D elements (global row stride `gstride` elements) into smem rows of LD
// elements; rows >= valid_rows are zero filled.
template <int D, int LD, int ROWS, int NT, typename T>
__device__ __forceinline__ void LoadTile(T* smem, const T* g, int64_t gstride, int valid_rows,
                                         int tid) {
  constexpr int CPR = D / 8;  // 16-byte chunks per row
  constexpr int N = ROWS * CPR;
  static_assert(N % NT == 0, "tile chunks must divide evenly among threads");
#pragma unroll
  for (int u = 0; u < N / NT; ++u) {
    const int i = tid + u * NT;
    const int r = i / CPR, c = i % CPR;
    const bool ok = r < valid_rows;
    CpAsync16(SmemAddr(smem + r * LD + c * 8), g + (ok ? r * gstride + c * 8 : 0), ok ? 16 : 0);
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

// Write a warp's 16 rows x D float accumulators (n8 fragments) times `mul[row]` as T into
// its 16 smem rows, then copy them to global rows (stride gstride) with 16-byte stores.
// Those smem rows must be read by this warp only (its own Q / K / V rows).
template <int D, int LD, typename T>
__device__ __forceinline__ void StoreRows(const float (&acc)[D / 8][4], float mul0, float mul1,
                                          T* s, T* g, int64_t gstride, int lane) {
  using O = Ops<T>;
  const int gr = lane >> 2, tc = (lane & 3) * 2;
  __syncwarp();  // WAR: other lanes' ldmatrix of these rows (forward: Q, when no key tile ran)
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    *reinterpret_cast<uint32_t*>(s + gr * LD + n * 8 + tc) = O::Pack(acc[n][0] * mul0, acc[n][1] * mul0);
    *reinterpret_cast<uint32_t*>(s + (gr + 8) * LD + n * 8 + tc) =
        O::Pack(acc[n][2] * mul1, acc[n][3] * mul1);
  }
  __syncwarp();
  constexpr int CPR = D / 8;
#pragma unroll
  for (int u = 0; u < 16 * CPR / 32; ++u) {
    const int i = lane + u * 32;
    const int r = i / CPR, c = i % CPR;
    *reinterpret_cast<uint4*>(g + r * gstride + c * 8) =
        *reinterpret_cast<const uint4*>(s + r * LD + c * 8);
  }
}

// ------------------------------------------------------------------ query side
// The key tiles of one query tile [q0, q0 + BM): entries of lists[hm][r], 64-key halves.
struct KeyCursor {
  const int32_t* list;
  int n, npart, kh, bs, kvlen, qlast_off;  // qlast_off: last query + (Tk - Tq), causal only
  bool causal;
  int t;  // current tile, n when done
  __device__ __forceinline__ int Start(int tt) const {
    return __ldg(list + tt / kh) * bs + (tt % kh) * kKT;
  }
  __device__ __forceinline__ bool Valid(int tt) const {
    const int s = Start(tt);
    return s < kvlen && (!causal || s <= qlast_off);
  }
  __device__ __forceinline__ void Skip() {
    while (t < n && !Valid(t)) ++t;
  }
  __device__ __forceinline__ void Next() {
    ++t;
    Skip();
  }
  __device__ __forceinline__ bool Done() const { return t >= n; }
  // element mask needed: a partial (causal) entry, or a tile cut by kv_lengths
  __device__ __forceinline__ bool Masked() const {
    return t / kh < npart || Start(t) + kKT > kvlen;
  }
};

// Forward. BM = 16 * warps query rows per CTA.
template <typename T, int D, int BM, int STAGES>
__global__ void __launch_bounds__(BM * 2, 1) FwdKernel(const Args a) {
  using O = Ops<T>;
  constexpr int NW = BM / 16, NT = NW * 32, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sKV = sQ + BM * LD;  // STAGES x (K, V) tiles of kKT x LD
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
  const int qh = a.bs / BM;  // query tiles per block
  const int pos = blockIdx.y / qh, sub = blockIdx.y % qh;
  const Lists& L = a.by_query;
  const int hm = a.hm == 1 ? 0 : h;
  const int line = hm * L.lines + __ldg(L.order + hm * L.lines + pos);
  const int r = line - hm * L.lines;
  const int q0 = r * a.bs + sub * BM;
  const int hk = h / a.group;
  const int off = a.tk - a.tq;
  int kvlen = __ldg(a.kv_lengths + b);
  kvlen = kvlen < 0 ? 0 : (kvlen > a.tk ? a.tk : kvlen);

  const int64_t qstride = int64_t(a.hq) * D, kstride = int64_t(a.hkv) * D;
  const T* gq = static_cast<const T*>(a.q) + (int64_t(b) * a.tq + q0) * qstride + int64_t(h) * D;
  const T* gk = static_cast<const T*>(a.k) + int64_t(b) * a.tk * kstride + int64_t(hk) * D;
  const T* gv = static_cast<const T*>(a.v) + int64_t(b) * a.tk * kstride + int64_t(hk) * D;

  KeyCursor ld;
  ld.list = L.lists + int64_t(line) * L.max_len;
  ld.kh = a.bs / kKT;
  ld.n = __ldg(L.counts + line) * ld.kh;
  ld.npart = __ldg(L.partial + line);
  ld.bs = a.bs;
  ld.kvlen = kvlen;
  ld.qlast_off = q0 + BM - 1 + off;
  ld.causal = a.causal;
  ld.t = 0;
  ld.Skip();
  KeyCursor cc = ld;

  auto load_kv = [&](int stage) {
    const int s0 = ld.Start(ld.t);
    T* sk = sKV + stage * 2 * kKT * LD;
    LoadTile<D, LD, kKT, NT>(sk, gk + s0 * kstride, kstride, kvlen - s0, tid);
    LoadTile<D, LD, kKT, NT>(sk + kKT * LD, gv + s0 * kstride, kstride, kvlen - s0, tid);
  };

  LoadTile<D, LD, BM, NT>(sQ, gq, qstride, BM, tid);
  CpAsyncCommit();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (!ld.Done()) {
      load_kv(s);
      ld.Next();
    }
    CpAsyncCommit();
  }
  CpAsyncWait<STAGES - 1>();
  __syncthreads();

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) LoadA<LD>(qf[kk], sQ, warp * 16, kk * 16, lane);

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  SinkStart(a.sinks, h, (lane & 3) == 0, m0, l0);  // a sink: the rows start from it
  SinkStart(a.sinks, h, (lane & 3) == 0, m1, l1);
  const int row0 = q0 + warp * 16 + (lane >> 2);  // and row0 + 8
  const float sl2 = a.scale_log2;
  const bool capped = a.cap_log2 > 0.f;
  // a soft cap keeps t = tanh(s scale_cap) in s: the log2-domain score is t cap_log2 (taken
  // in the maxima and the exponent's FFMA); without one the scores are scaled in place
  const float sf = capped ? a.cap_log2 : 1.f;

  for (int it = 0; !cc.Done(); ++it) {
    if (!ld.Done()) {
      load_kv((it + STAGES - 1) % STAGES);
      ld.Next();
    }
    CpAsyncCommit();
    CpAsyncWait<STAGES - 1>();
    __syncthreads();
    const T* sk = sKV + (it % STAGES) * 2 * kKT * LD;
    const T* sv = sk + kKT * LD;

    float s[kKT / 8][4];
#pragma unroll
    for (int n = 0; n < kKT / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kKT / 16; ++np) {
        uint32_t bf[4];
        LoadBN<LD>(bf, sk, np * 16, kk * 16, lane);
        O::Mma(s[2 * np], qf[kk], bf[0], bf[1]);
        O::Mma(s[2 * np + 1], qf[kk], bf[2], bf[3]);
      }
    }
    // scores to the log2 domain, then the masks (a -inf score stays -inf for any scale: a
    // negative scale after masking would turn it into +inf)
    if (capped) {
#pragma unroll
      for (int n = 0; n < kKT / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = Tanh(s[n][e] * a.scale_cap);
      }
    } else {
#pragma unroll
      for (int n = 0; n < kKT / 8; ++n) {
        s[n][0] *= sl2; s[n][1] *= sl2; s[n][2] *= sl2; s[n][3] *= sl2;
      }
    }
    if (cc.Masked()) {
      const int k0 = cc.Start(cc.t) + (lane & 3) * 2;
      const bool causal = a.causal && cc.t / cc.kh < cc.npart;
#pragma unroll
      for (int n = 0; n < kKT / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = k0 + n * 8 + (e & 1);
          const int i = row0 + (e >> 1) * 8;
          if (j >= kvlen || (causal && j > i + off)) s[n][e] = -INFINITY;
        }
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int n = 0; n < kKT / 8; ++n) {
      mx0 = fmaxf(mx0, fmaxf(s[n][0], s[n][1]));
      mx1 = fmaxf(mx1, fmaxf(s[n][2], s[n][3]));
    }
    mx0 = fmaxf(m0, mx0 * sf);  // sf > 0: the maximum of the log2-domain scores
    mx1 = fmaxf(m1, mx1 * sf);
    float mu0, mu1;
    OnlineSoftmaxStep<D>(mx0, mx1, m0, m1, l0, l1, acc, mu0, mu1);
    uint32_t pf[kKT / 16][4];
#pragma unroll
    for (int n = 0; n < kKT / 8; ++n) {
      const float p0 = Exp2(fmaf(s[n][0], sf, -mu0)), p1 = Exp2(fmaf(s[n][1], sf, -mu0));
      const float p2 = Exp2(fmaf(s[n][2], sf, -mu1)), p3 = Exp2(fmaf(s[n][3], sf, -mu1));
      l0 += p0 + p1;
      l1 += p2 + p3;
      pf[n / 2][(n & 1) * 2 + 0] = O::Pack(p0, p1);
      pf[n / 2][(n & 1) * 2 + 1] = O::Pack(p2, p3);
    }
#pragma unroll
    for (int j = 0; j < kKT / 16; ++j) {
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        LoadBT<LD>(bf, sv, j * 16, dn * 16, lane);
        O::Mma(acc[2 * dn], pf[j], bf[0], bf[1]);
        O::Mma(acc[2 * dn + 1], pf[j], bf[2], bf[3]);
      }
    }
    __syncthreads();
    cc.Next();
  }
  CpAsyncWait<0>();

  l0 = QuadSum(l0);
  l1 = QuadSum(l1);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* go = static_cast<T*>(a.out_o) + (int64_t(b) * a.tq + q0 + warp * 16) * qstride +
          int64_t(h) * D;
  StoreRows<D, LD>(acc, inv0, inv1, sQ + warp * 16 * LD, go, qstride, lane);
  if ((lane & 3) == 0) {
    float* gl = a.out_lse + (int64_t(b) * a.hq + h) * a.tq;
    gl[row0] = l0 > 0.f ? (m0 + __log2f(l0)) * kLn2 : -INFINITY;
    gl[row0 + 8] = l1 > 0.f ? (m1 + __log2f(l1)) * kLn2 : -INFINITY;
  }
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

// delta[b, h, i] = rowsum(dO * O) - d_lse; one warp per row.
template <typename T, int D>
__global__ void DeltaKernel(const Args a) {
  const int64_t rows = int64_t(a.batch) * a.tq * a.hq;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int h = int(row % a.hq);
  const int64_t bi = row / a.hq;
  const int i = int(bi % a.tq), b = int(bi / a.tq);
  const float sum = RowDot<T, D>(a, row, lane);
  if (lane == 0) {
    const int64_t li = (int64_t(b) * a.hq + h) * a.tq + i;
    a.delta[li] = sum - a.d_lse[li];
  }
}

// log2-domain lse of row i (or +inf for an empty row: P = 0 there).
__device__ __forceinline__ float Lse2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

// dQ: one CTA per (64-row query tile, batch, head); walks the query block's key tiles.
template <typename T, int D, int STAGES>
__global__ void __launch_bounds__(128, 2) DqKernel(const Args a) {
  using O = Ops<T>;
  constexpr int BM = 64, NT = 128, LD = D + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sdO = sQ + BM * LD;
  T* sKV = sdO + BM * LD;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
  const int qh = a.bs / BM;
  const int pos = blockIdx.y / qh, sub = blockIdx.y % qh;
  const Lists& L = a.by_query;
  const int hm = a.hm == 1 ? 0 : h;
  const int line = hm * L.lines + __ldg(L.order + hm * L.lines + pos);
  const int r = line - hm * L.lines;
  const int q0 = r * a.bs + sub * BM;
  const int hk = h / a.group;
  const int off = a.tk - a.tq;
  int kvlen = __ldg(a.kv_lengths + b);
  kvlen = kvlen < 0 ? 0 : (kvlen > a.tk ? a.tk : kvlen);

  const int64_t qstride = int64_t(a.hq) * D, kstride = int64_t(a.hkv) * D;
  const int64_t qoff = (int64_t(b) * a.tq + q0) * qstride + int64_t(h) * D;
  const T* gk = static_cast<const T*>(a.k) + int64_t(b) * a.tk * kstride + int64_t(hk) * D;
  const T* gv = static_cast<const T*>(a.v) + int64_t(b) * a.tk * kstride + int64_t(hk) * D;

  KeyCursor ld;
  ld.list = L.lists + int64_t(line) * L.max_len;
  ld.kh = a.bs / kKT;
  ld.n = __ldg(L.counts + line) * ld.kh;
  ld.npart = __ldg(L.partial + line);
  ld.bs = a.bs;
  ld.kvlen = kvlen;
  ld.qlast_off = q0 + BM - 1 + off;
  ld.causal = a.causal;
  ld.t = 0;
  ld.Skip();
  KeyCursor cc = ld;

  auto load_kv = [&](int stage) {
    const int s0 = ld.Start(ld.t);
    T* sk = sKV + stage * 2 * kKT * LD;
    LoadTile<D, LD, kKT, NT>(sk, gk + s0 * kstride, kstride, kvlen - s0, tid);
    LoadTile<D, LD, kKT, NT>(sk + kKT * LD, gv + s0 * kstride, kstride, kvlen - s0, tid);
  };

  LoadTile<D, LD, BM, NT>(sQ, static_cast<const T*>(a.q) + qoff, qstride, BM, tid);
  LoadTile<D, LD, BM, NT>(sdO, static_cast<const T*>(a.d_o) + qoff, qstride, BM, tid);
  CpAsyncCommit();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (!ld.Done()) {
      load_kv(s);
      ld.Next();
    }
    CpAsyncCommit();
  }

  const int row0 = q0 + warp * 16 + (lane >> 2);
  const int64_t lrow = (int64_t(b) * a.hq + h) * a.tq;
  const float lse0 = Lse2(a.lse[lrow + row0]), lse1 = Lse2(a.lse[lrow + row0 + 8]);
  const float dl0 = a.delta[lrow + row0], dl1 = a.delta[lrow + row0 + 8];
  const float sl2 = a.scale_log2;
  // with a soft cap the scores and dP are transformed first: s keeps t = tanh(s scale_cap),
  // P = 2^(t cap_log2 - lse2) (the forward's FFMA) and dS = P dP' (the factors sm, de*);
  // without: P = 2^(s sl2 - lse2), dS = P (dP - delta)
  const bool capped = a.cap_log2 > 0.f;
  const float sm = capped ? a.cap_log2 : sl2;
  const float de0 = capped ? 0.f : dl0, de1 = capped ? 0.f : dl1;

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  for (int it = 0; !cc.Done(); ++it) {
    if (!ld.Done()) {
      load_kv((it + STAGES - 1) % STAGES);
      ld.Next();
    }
    CpAsyncCommit();
    CpAsyncWait<STAGES - 1>();
    __syncthreads();
    const T* sk = sKV + (it % STAGES) * 2 * kKT * LD;
    const T* sv = sk + kKT * LD;

    float s[kKT / 8][4], dp[kKT / 8][4];
#pragma unroll
    for (int n = 0; n < kKT / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[4], da[4];
      LoadA<LD>(qa, sQ, warp * 16, kk * 16, lane);
      LoadA<LD>(da, sdO, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kKT / 16; ++np) {
        uint32_t bk[4], bv[4];
        LoadBN<LD>(bk, sk, np * 16, kk * 16, lane);
        O::Mma(s[2 * np], qa, bk[0], bk[1]);
        O::Mma(s[2 * np + 1], qa, bk[2], bk[3]);
        LoadBN<LD>(bv, sv, np * 16, kk * 16, lane);
        O::Mma(dp[2 * np], da, bv[0], bv[1]);
        O::Mma(dp[2 * np + 1], da, bv[2], bv[3]);
      }
    }
    const bool masked = cc.Masked();
    const int k0 = cc.Start(cc.t) + (lane & 3) * 2;
    const bool causal = a.causal && cc.t / cc.kh < cc.npart;
    if (capped) {  // s: t; dp: (dP - delta) (1 - t^2)
#pragma unroll
      for (int n = 0; n < kKT / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float t = Tanh(s[n][e] * a.scale_cap);
          s[n][e] = t;
          dp[n][e] = (dp[n][e] - ((e >> 1) ? dl1 : dl0)) * (1.f - t * t);
        }
      }
    }
    uint32_t df[kKT / 16][4];
#pragma unroll
    for (int n = 0; n < kKT / 8; ++n) {
      float ds[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int hi = e >> 1;
        float p = Exp2(fmaf(s[n][e], sm, -(hi ? lse1 : lse0)));
        if (masked) {
          const int j = k0 + n * 8 + (e & 1);
          const int i = row0 + hi * 8;
          if (j >= kvlen || (causal && j > i + off)) p = 0.f;
        }
        ds[e] = p * (dp[n][e] - (hi ? de1 : de0));
      }
      df[n / 2][(n & 1) * 2 + 0] = O::Pack(ds[0], ds[1]);
      df[n / 2][(n & 1) * 2 + 1] = O::Pack(ds[2], ds[3]);
    }
#pragma unroll
    for (int j = 0; j < kKT / 16; ++j) {
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        LoadBT<LD>(bf, sk, j * 16, dn * 16, lane);
        O::Mma(acc[2 * dn], df[j], bf[0], bf[1]);
        O::Mma(acc[2 * dn + 1], df[j], bf[2], bf[3]);
      }
    }
    __syncthreads();
    cc.Next();
  }
  CpAsyncWait<0>();
  __syncthreads();  // sQ rows are read by their own warp only, but the Q load may be pending
  StoreRows<D, LD>(acc, a.scale, a.scale, sQ + warp * 16 * LD,
                   static_cast<T*>(a.dq) + qoff + int64_t(warp) * 16 * qstride, qstride, lane);
}

// ------------------------------------------------------------------- key side
// The query tiles (BQ rows) of one key tile [k0, k0 + 64), over the query heads of a kv
// head's group (gi = 0..group-1), each with its own by-key lists when hm = Hq.
template <int BQ>
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
  __device__ __forceinline__ bool Partial() const { return t / qh < npart; }
};

// dK, dV: one CTA per (64-key tile, batch, kv head); BQ query rows per step.
template <typename T, int D, int BQ, int STAGES>
__global__ void __launch_bounds__(128, 1) DkvKernel(const Args a) {
  using O = Ops<T>;
  constexpr int NT = 128, LD = D + 8;
  constexpr int STAGE = 2 * BQ * LD;  // Q, dO (elements); then lse2, delta (floats)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kKT * LD;
  T* sQO = sV + kKT * LD;  // STAGES x (Q, dO)
  float* sLD = reinterpret_cast<float*>(sQO + STAGES * STAGE);  // STAGES x (lse2, delta)
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  const int bh = blockIdx.x, b = bh / a.hkv, hk = bh % a.hkv;
  const int kh = a.bs / kKT;
  const int pos = blockIdx.y / kh, sub = blockIdx.y % kh;
  const Lists& L = a.by_key;
  const int h_first = hk * a.group;
  const int hm0 = a.hm == 1 ? 0 : h_first;
  const int rk = __ldg(L.order + hm0 * L.lines + pos);
  const int k0 = rk * a.bs + sub * kKT;
  const int off = a.tk - a.tq;
  int kvlen = __ldg(a.kv_lengths + b);
  kvlen = kvlen < 0 ? 0 : (kvlen > a.tk ? a.tk : kvlen);

  const int64_t qstride = int64_t(a.hq) * D, kstride = int64_t(a.hkv) * D;
  const int64_t koff = (int64_t(b) * a.tk + k0) * kstride + int64_t(hk) * D;

  QueryCursor<BQ> ld;
  ld.counts = L.counts;
  ld.partial = L.partial;
  ld.lists = L.lists;
  ld.lines = L.lines;
  ld.max_len = L.max_len;
  ld.rk = rk;
  ld.hm_base = hm0;
  ld.hm_step = a.hm == 1 ? 0 : 1;
  ld.qh = a.bs / BQ;
  ld.bs = a.bs;
  ld.group = k0 < kvlen ? a.group : 0;  // a tile past kv_lengths gets no gradient
  ld.first_key_minus_off = k0 - off;
  ld.q_end = a.tq;
  ld.causal = a.causal;
  if (ld.group > 0) {
    ld.Begin();
  } else {
    ld.gi = 0;
  }
  QueryCursor<BQ> cc = ld;

  auto load_q = [&](int stage) {
    const int h = h_first + ld.gi;
    const int s0 = ld.Start(ld.t);
    const int64_t qo = (int64_t(b) * a.tq + s0) * qstride + int64_t(h) * D;
    T* sq = sQO + stage * STAGE;
    LoadTile<D, LD, BQ, NT>(sq, static_cast<const T*>(a.q) + qo, qstride, BQ, tid);
    LoadTile<D, LD, BQ, NT>(sq + BQ * LD, static_cast<const T*>(a.d_o) + qo, qstride, BQ, tid);
    if (tid < BQ) {
      const int64_t li = (int64_t(b) * a.hq + h) * a.tq + s0 + tid;
      float* sl = sLD + stage * 2 * BQ;
      sl[tid] = Lse2(a.lse[li]);
      sl[BQ + tid] = a.delta[li];
    }
  };

  LoadTile<D, LD, kKT, NT>(sK, static_cast<const T*>(a.k) + koff, kstride, kvlen - k0, tid);
  LoadTile<D, LD, kKT, NT>(sV, static_cast<const T*>(a.v) + koff, kstride, kvlen - k0, tid);
  CpAsyncCommit();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (!ld.Done()) {
      load_q(s);
      ld.Next();
    }
    CpAsyncCommit();
  }

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.f;
    dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;
  }
  const int key0 = k0 + warp * 16 + (lane >> 2);  // and key0 + 8
  const float sl2 = a.scale_log2;
  const bool capped = a.cap_log2 > 0.f;
  const float sm = capped ? a.cap_log2 : sl2, inv_cap = capped ? 1.f / a.cap_log2 : 0.f;

  for (int it = 0; !cc.Done(); ++it) {
    if (!ld.Done()) {
      load_q((it + STAGES - 1) % STAGES);
      ld.Next();
    }
    CpAsyncCommit();
    CpAsyncWait<STAGES - 1>();
    __syncthreads();
    const T* sq = sQO + (it % STAGES) * STAGE;
    const T* sdo = sq + BQ * LD;
    const float* sl = sLD + (it % STAGES) * 2 * BQ;

    // S^T = K Q^T  [16 keys x BQ queries per warp]
    float s[BQ / 8][4];
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t ka[4];
      LoadA<LD>(ka, sK, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < BQ / 16; ++np) {
        uint32_t bq[4];
        LoadBN<LD>(bq, sq, np * 16, kk * 16, lane);
        O::Mma(s[2 * np], ka, bq[0], bq[1]);
        O::Mma(s[2 * np + 1], ka, bq[2], bq[3]);
      }
    }
    // P^T (a soft cap: t = tanh(s scale_cap) first, then sm = cap_log2)
    if (capped) {
#pragma unroll
      for (int n = 0; n < BQ / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = Tanh(s[n][e] * a.scale_cap);
      }
    }
    const bool masked = cc.Partial() || k0 + kKT > kvlen;
    const bool causal = a.causal && cc.Partial();
    const int i0 = cc.Start(cc.t) + (lane & 3) * 2;
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n) {
      const float2 lq = *reinterpret_cast<const float2*>(sl + n * 8 + (lane & 3) * 2);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float p = Exp2(fmaf(s[n][e], sm, -((e & 1) ? lq.y : lq.x)));
        if (masked) {
          const int i = i0 + n * 8 + (e & 1);
          const int j = key0 + (e >> 1) * 8;
          if (j >= kvlen || (causal && j > i + off)) p = 0.f;
        }
        s[n][e] = p;
      }
    }
    // dV += P^T dO
#pragma unroll
    for (int j = 0; j < BQ / 16; ++j) {
      uint32_t pa[4];
      pa[0] = O::Pack(s[2 * j][0], s[2 * j][1]);
      pa[1] = O::Pack(s[2 * j][2], s[2 * j][3]);
      pa[2] = O::Pack(s[2 * j + 1][0], s[2 * j + 1][1]);
      pa[3] = O::Pack(s[2 * j + 1][2], s[2 * j + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        LoadBT<LD>(bf, sdo, j * 16, dn * 16, lane);
        O::Mma(dv[2 * dn], pa, bf[0], bf[1]);
        O::Mma(dv[2 * dn + 1], pa, bf[2], bf[3]);
      }
    }
    // dP^T = V dO^T
    float dp[BQ / 8][4];
#pragma unroll
    for (int n = 0; n < BQ / 8; ++n) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t va[4];
      LoadA<LD>(va, sV, warp * 16, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < BQ / 16; ++np) {
        uint32_t bo[4];
        LoadBN<LD>(bo, sdo, np * 16, kk * 16, lane);
        O::Mma(dp[2 * np], va, bo[0], bo[1]);
        O::Mma(dp[2 * np + 1], va, bo[2], bo[3]);
      }
    }
    // dS^T = P^T (dP^T - delta); dK += dS^T Q
#pragma unroll
    for (int j = 0; j < BQ / 16; ++j) {
      uint32_t da[4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int n = 2 * j + half;
        const float2 dq = *reinterpret_cast<const float2*>(sl + BQ + n * 8 + (lane & 3) * 2);
        if (capped) {  // dS^T *= 1 - t^2, t = (log2 P + lse2) / cap_log2 (0 where P = 0)
          const float2 lq = *reinterpret_cast<const float2*>(sl + n * 8 + (lane & 3) * 2);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float pe = s[n][e];
            const float t = pe > 0.f ? (__log2f(pe) + ((e & 1) ? lq.y : lq.x)) * inv_cap : 0.f;
            dp[n][e] = (dp[n][e] - ((e & 1) ? dq.y : dq.x)) * (1.f - t * t);
          }
          da[half * 2 + 0] = O::Pack(s[n][0] * dp[n][0], s[n][1] * dp[n][1]);
          da[half * 2 + 1] = O::Pack(s[n][2] * dp[n][2], s[n][3] * dp[n][3]);
        } else {
          da[half * 2 + 0] = O::Pack(s[n][0] * (dp[n][0] - dq.x), s[n][1] * (dp[n][1] - dq.y));
          da[half * 2 + 1] = O::Pack(s[n][2] * (dp[n][2] - dq.x), s[n][3] * (dp[n][3] - dq.y));
        }
      }
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        LoadBT<LD>(bf, sq, j * 16, dn * 16, lane);
        O::Mma(dk[2 * dn], da, bf[0], bf[1]);
        O::Mma(dk[2 * dn + 1], da, bf[2], bf[3]);
      }
    }
    __syncthreads();
    cc.Next();
  }
  CpAsyncWait<0>();
  __syncthreads();
  T* gdk = static_cast<T*>(a.dk) + koff + int64_t(warp) * 16 * kstride;
  T* gdv = static_cast<T*>(a.dv) + koff + int64_t(warp) * 16 * kstride;
  StoreRows<D, LD>(dk, a.scale, a.scale, sK + warp * 16 * LD, gdk, kstride, lane);
  StoreRows<D, LD>(dv, 1.f, 1.f, sV + warp * 16 * LD, gdv, kstride, lane);
}

// ------------------------------------------------------------------- launchers
template <typename K>
inline cudaError_t SetSmem(K kernel, int bytes) {
  // cudaFuncSetAttribute is a host-side setting (no stream work): cheap and capture safe.
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <typename T, int D, int BM, int STAGES>
cudaError_t LaunchForwardTile(const Args& a, cudaStream_t stream) {
  constexpr int smem = (BM + STAGES * 2 * kKT) * (D + 8) * int(sizeof(T));
  auto kern = FwdKernel<T, D, BM, STAGES>;
  cudaError_t err = SetSmem(kern, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(unsigned(a.batch * a.hq), unsigned(a.by_query.lines * (a.bs / BM)));
  kern<<<grid, BM * 2, smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t RunBackward(const Args& a, cudaStream_t stream) {
  const int64_t rows = int64_t(a.batch) * a.tq * a.hq;
  if (rows > 0) {
    DeltaKernel<T, D><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(a);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (rows > 0) {
    constexpr int STAGES = 2;
    constexpr int smem = (2 * 64 + STAGES * 2 * kKT) * (D + 8) * int(sizeof(T));
    auto kern = DqKernel<T, D, STAGES>;
    cudaError_t err = SetSmem(kern, smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned(a.batch * a.hq), unsigned(a.by_query.lines * (a.bs / 64)));
    kern<<<grid, 128, smem, stream>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (int64_t(a.batch) * a.hkv * a.by_key.lines > 0) {  // Tq = 0 still zeroes dK, dV
    constexpr int STAGES = 2, BQ = D == 128 ? 32 : 64;
    constexpr int smem = (2 * kKT + STAGES * 2 * BQ) * (D + 8) * int(sizeof(T)) +
                         STAGES * 2 * BQ * int(sizeof(float));
    auto kern = DkvKernel<T, D, BQ, STAGES>;
    cudaError_t err = SetSmem(kern, smem);
    if (err != cudaSuccess) return err;
    const dim3 grid(unsigned(a.batch * a.hkv), unsigned(a.by_key.lines * (a.bs / kKT)));
    kern<<<grid, 128, smem, stream>>>(a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// The launchers the dispatch table (attention.cu) names: declared `extern template` there,
// instantiated in attention_<dtype>.cu (one translation unit per dtype: parallel builds).
// Forward tiles <T, D, BM, STAGES>: 64 rows, 2 stages; 128 rows, 3 stages.
#define JBS_ATTENTION_LAUNCHERS(PREFIX, T)                                        \
  PREFIX cudaError_t LaunchForwardTile<T, 64, 64, 2>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardTile<T, 64, 128, 3>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardTile<T, 128, 64, 2>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardTile<T, 128, 128, 3>(const Args&, cudaStream_t); \
  PREFIX cudaError_t RunBackward<T, 64>(const Args&, cudaStream_t);               \
  PREFIX cudaError_t RunBackward<T, 128>(const Args&, cudaStream_t);

}  // namespace attn
}  // namespace jax_blocksparse
