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

#include "../switches.h"
#include "shared.cuh"

namespace jax_blocksparse {
namespace attn {

constexpr int kKT = 64;  // keys per tile

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

// The same delta, a CTA per kDeltaRows consecutive query rows of one (b, h) (blocks in
// (b, h, row tile) order): 8 threads a row, each summing D / 64 16-byte pieces of O and of
// dO (all its loads in flight at once), the 8 partial sums joined by shuffles, the CTA's 32
// results written into one 128-byte line (4 floats a warp). DeltaKernel (a warp per row in
// memory order, 4-byte loads, one float written per row) read its 128 MB at 2.1 TB/s, 61 us
// at S 8192, B 2, H 16, D 128 on the H100 (RESULTS 2026-12-07 seventh session): 5-7% of
// the sparse layouts' one-pass backward. Needs o and d_o 16-byte aligned (LaunchDelta).
constexpr int kDeltaRows = 32;
template <typename T, int D>
__global__ void __launch_bounds__(8 * kDeltaRows) DeltaTileKernel(const Args a) {
  static_assert(D % 64 == 0, "8 threads a row, whole 16-byte pieces each");
  constexpr int kPieces = D / 64;  // 16-byte pieces of a row per thread
  const int64_t tiles = (a.tq + kDeltaRows - 1) / kDeltaRows;
  const int64_t bh = blockIdx.x / tiles;  // b * hq + h
  const int i = int(blockIdx.x % tiles) * kDeltaRows + int(threadIdx.x >> 3);
  const int part = threadIdx.x & 7, h = int(bh % a.hq);
  const int64_t b = bh / a.hq;
  float sum = 0.f;
  if (i < a.tq) {
    const int64_t row = (b * a.tq + i) * a.hq + h;
    const uint4* po = reinterpret_cast<const uint4*>(static_cast<const T*>(a.o) + row * D);
    const uint4* pd = reinterpret_cast<const uint4*>(static_cast<const T*>(a.d_o) + row * D);
    uint4 x[kPieces], y[kPieces];
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      x[k] = __ldg(po + part + 8 * k);
      y[k] = __ldg(pd + part + 8 * k);
    }
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      const uint32_t xw[4] = {x[k].x, x[k].y, x[k].z, x[k].w};
      const uint32_t yw[4] = {y[k].x, y[k].y, y[k].z, y[k].w};
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float2 xf = Ops<T>::Unpack(xw[w]), yf = Ops<T>::Unpack(yw[w]);
        sum += xf.x * yf.x + xf.y * yf.y;
      }
    }
  }
#pragma unroll
  for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (part == 0 && i < a.tq) {
    const int64_t li = bh * a.tq + i;
    a.delta[li] = sum - a.d_lse[li];
  }
}

// delta = rowsum(dO * O) - d_lse for the backwards (the FA2 one, the one-pass Hopper one):
// DeltaTileKernel (the default; JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0 opts out) where o and
// d_o are 16-byte aligned, else DeltaKernel.
template <typename T, int D>
cudaError_t LaunchDelta(const Args& a, cudaStream_t stream) {
  const int64_t rows = int64_t(a.batch) * a.tq * a.hq;
  if (rows == 0) return cudaSuccess;
  const int64_t ctas = int64_t(a.batch) * a.hq * ((a.tq + kDeltaRows - 1) / kDeltaRows);
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (GetSwitches().attn_delta_tiles && ctas <= 0x7fffffff && aligned(a.o) && aligned(a.d_o))
    DeltaTileKernel<T, D><<<unsigned(ctas), 8 * kDeltaRows, 0, stream>>>(a);
  else
    DeltaKernel<T, D><<<unsigned((rows + 7) / 8), 256, 0, stream>>>(a);
  return cudaGetLastError();
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
    cudaError_t err = LaunchDelta<T, D>(a, stream);
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

// The launchers the dispatch table (dispatch.cu) names: declared `extern template` there,
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
