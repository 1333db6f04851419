// The decode attention kernels (attention_decode.h): split-KV partial attention over a CTA's
// share of the listed key blocks (mma.sync m16n8k16, 16-key tiles, one cp.async ring per
// warp), then a fixed-order log-sum-exp combine of the splits. Memory bound by design: the
// rows of a CTA (query heads of one kv head) share every K/V tile it reads. Two forms
// (SHARED): 16 rows per CTA whose four warps take the 16-key tiles in turn and combine
// their partial results at the end (few rows: one query, a GQA group of up to 16); or, for
// more rows (speculative queries times the group, opt-in: DecodeSharedTiles), 64 rows per
// CTA, a warp's 16 each, the four warps sharing every 64-key stage (one 16-key tile from
// each warp's ring), so that K and V are read once per 64 rows instead of per 16. An fp8 cache
// (KV an fp8 type) is read as bytes into the rings and each tile converted to T into a
// per-warp staging tile, which the mma fragments load as before.
#include "attention_decode.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <atomic>
#include <climits>
#include <type_traits>

#include "attention_kernels.cuh"  // Ops, fragment loads, Exp2, quad reductions
#include "launch_util.h"
#include "switches.h"

namespace jax_blocksparse {
namespace attn {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32, kRows = 16, kKeys = kDecodeTileKeys;

// Ring stages per warp: about 70 KB of K/V tiles per CTA at every head dim but 256.
template <int D> constexpr int DecodeStages() { return D <= 64 ? 4 : (D <= 128 ? 2 : 2); }
// An fp8 cache's rings: tiles of half the bytes, so more stages keep at least the bytes in
// flight per warp of the 2-byte kernel (within two CTAs per SM; untuned: benchmarks/decode.py).
template <int D> constexpr int DecodeStagesFp8() { return D <= 64 ? 8 : (D <= 128 ? 3 : 2); }

template <int D> struct DecodeSmem {
  static constexpr int kLd = D + 8;                  // padded tile row (conflict-free ldmatrix)
  static constexpr int kTile = kKeys * kLd;          // elements of one K (or V) tile
  static constexpr int kStages = DecodeStages<D>();
  static constexpr int kStagesFp8 = DecodeStagesFp8<D>();
  static constexpr int kLdB = D + 16;                // an fp8 ring's tile row, in bytes
  static constexpr int kTileB = kKeys * kLdB;        // bytes of one fp8 K (or V) tile
  // the rings (and, for an fp8 cache, the warps' staging tiles in T after them)
  template <typename T, typename KV> static constexpr int RingBytes() {
    return std::is_same<T, KV>::value
               ? kWarps * kStages * 2 * kTile * int(sizeof(T))
               : kWarps * kStagesFp8 * 2 * kTileB + kWarps * 2 * kTile * int(sizeof(T));
  }
  // query rows of a CTA: 16, or 16 per warp when the warps share the stages
  template <bool SHARED> static constexpr int kCtaRows = SHARED ? kWarps * kRows : kRows;
  template <typename T, typename KV, bool SHARED> static constexpr int Bytes() {
    return kCtaRows<SHARED> * kLd * int(sizeof(T)) + RingBytes<T, KV>() +
           (kDecodeSplitCapacity + kWarps) * int(sizeof(int));
  }
  // the warps' partial results, written over the rings after the key loop
  static constexpr int kAccLd = D + 4;
  static constexpr int kAccBytes = (kWarps * kRows * kAccLd + 2 * kWarps * kRows) * 4;
};

__device__ __forceinline__ int FloorDiv(int x, int y) {
  return x >= 0 ? x / y : -((-x + y - 1) / y);
}

template <typename KV> struct Fp8Kind;
template <> struct Fp8Kind<__nv_fp8_e4m3> {
  static constexpr __nv_fp8_interpretation_t kValue = __NV_E4M3;
};
template <> struct Fp8Kind<__nv_fp8_e5m2> {
  static constexpr __nv_fp8_interpretation_t kValue = __NV_E5M2;
};

// Two fp8 values (the low byte first) as a packed pair of T (exact: float16 holds every
// e4m3 and e5m2 value, and so does bfloat16).
template <typename T, typename KV>
__device__ __forceinline__ uint32_t Fp8PairTo(uint32_t two) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
      static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), Fp8Kind<KV>::kValue);
  if constexpr (std::is_same<T, __half>::value) {
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  } else {
    const float2 f = __half22float2(__half2(h));
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
    return *reinterpret_cast<const uint32_t*>(&b);
  }
}

// 16 fp8 values (16 bytes of shared memory) to 16 T at dst (32 bytes of shared memory).
template <typename T, typename KV>
__device__ __forceinline__ void Fp8x16To(T* dst, const unsigned char* src) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const uint4 lo = {Fp8PairTo<T, KV>(raw.x), Fp8PairTo<T, KV>(raw.x >> 16),
                    Fp8PairTo<T, KV>(raw.y), Fp8PairTo<T, KV>(raw.y >> 16)};
  const uint4 hi = {Fp8PairTo<T, KV>(raw.z), Fp8PairTo<T, KV>(raw.z >> 16),
                    Fp8PairTo<T, KV>(raw.w), Fp8PairTo<T, KV>(raw.w >> 16)};
  reinterpret_cast<uint4*>(dst)[0] = lo;
  reinterpret_cast<uint4*>(dst)[1] = hi;
}

template <typename T, int D, typename KV, bool SHARED>
__global__ void __launch_bounds__(kThreads) DecodePartialKernel(const AttentionDecodeParams p) {
  using O = Ops<T>;
  using S = DecodeSmem<D>;
  constexpr bool kFp8 = !std::is_same<T, KV>::value;
  constexpr int kCtaRows = S::template kCtaRows<SHARED>;
  constexpr int LD = S::kLd, STAGES = kFp8 ? S::kStagesFp8 : S::kStages, CPR = D / 8;
  constexpr int LDB = S::kLdB, CPRB = D / 16;  // fp8: a row's 16-byte chunks
  constexpr int kRingBytes = S::template RingBytes<T, KV>();
  static_assert(S::kAccBytes <= kRingBytes, "the partial results must fit over the rings");
  static_assert(!kFp8 || (kKeys * CPRB) % 32 == 0, "a warp converts whole tiles");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  unsigned char* sRings = smem_raw + kCtaRows * LD * int(sizeof(T));
  T* sKV = reinterpret_cast<T*>(sRings);
  int* sStarts = reinterpret_cast<int*>(sRings + kRingBytes);
  int* sCount = sStarts + kDecodeSplitCapacity;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // blockIdx.x: (batch entry, kv head, head group); blockIdx.y: (split, row chunk, part)
  const int group = p.hq / p.hkv;
  const int per_cta = p.mask_heads == 1 ? group : 1;  // query heads in this CTA's rows
  const int head_groups = group / per_cta;
  const int hg = blockIdx.x % head_groups;
  const int hk = (blockIdx.x / head_groups) % p.hkv;
  const int b = blockIdx.x / (head_groups * p.hkv);
  const int chunks = (per_cta * p.tq + kCtaRows - 1) / kCtaRows;
  const int split = blockIdx.y % p.splits;
  const int chunk = (blockIdx.y / p.splits) % chunks;
  const int part = blockIdx.y / (p.splits * chunks);

  // queries [i0, i1) use mask row r; rows of the CTA: (query, head) pairs t0 .. t0 +
  // kCtaRows - 1 (SHARED: the warp's, tw .. tw + 15)
  const int row_pos = __ldg(p.q_rows + b);
  const int r = FloorDiv(row_pos, p.block_size) + part;
  const int i0 = max(part == 0 ? 0 : r * p.block_size - row_pos, 0);
  const int i1 = min((r + 1) * p.block_size - row_pos, p.tq);
  const int nrows = max(i1 - i0, 0) * per_cta;
  const int t0 = chunk * kCtaRows;
  if (t0 >= nrows) return;  // uniform: this (part, chunk) has no rows
  const int tw = t0 + (SHARED ? warp * kRows : 0);  // the warp's first row
  const int h0 = hk * group + hg * per_cta;  // first query head of the CTA

  const int pos0 = __ldg(p.q_positions + b);  // causal position of query 0
  const int kvlen = min(max(__ldg(p.kv_lengths + b), 0), p.tk);
  // keys at or past `limit` are masked for every row of the CTA
  const int last_query = i0 + (min(t0 + kCtaRows, nrows) - 1) / per_cta;
  const int limit = max(p.causal ? min(kvlen, pos0 + last_query + 1) : kvlen, 0);

  int n = 0;
  const int32_t* list = p.lists;
  if (r >= 0 && r < p.rows) {
    const int hm = p.mask_heads == 1 ? 0 : h0;
    const int64_t line = (int64_t(p.mask_batch == 1 ? 0 : b) * p.mask_heads + hm) * p.rows + r;
    n = __ldg(p.counts + line);
    list += line * p.width;
  }

  // This split's share of the row's valid blocks (those starting before `limit`): ranks
  // [lo, hi) of them in list order, their key positions compacted into sStarts.
  int valid = 0;
  for (int e0 = 0; e0 < n; e0 += kThreads) {
    const int e = e0 + tid;
    valid += __syncthreads_count(e < n && __ldg(list + e) * p.block_size < limit);
  }
  const int lo = int(int64_t(valid) * split / p.splits);
  const int hi = int(int64_t(valid) * (split + 1) / p.splits);
  for (int e0 = 0, base = 0; e0 < n && base < hi; e0 += kThreads) {
    const int e = e0 + tid;
    const int start = e < n ? __ldg(list + e) * p.block_size : INT_MAX;
    const bool ok = e < n && start < limit;
    const unsigned ballot = __ballot_sync(0xffffffffu, ok);
    if (lane == 0) sCount[warp] = __popc(ballot);
    __syncthreads();
    int rank = base + __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < kWarps; ++w) {
      rank += w < warp ? sCount[w] : 0;
      total += sCount[w];
    }
    if (ok && rank >= lo && rank < hi) sStarts[rank - lo] = start;
    __syncthreads();  // sCount is rewritten by the next chunk
    base += total;
  }
  __syncthreads();

  // Q rows of the CTA (zero rows past nrows)
  const T* gq = static_cast<const T*>(p.q);
  for (int c = tid; c < kCtaRows * CPR; c += kThreads) {
    const int lr = c / CPR, t = t0 + lr;
    const bool ok = t < nrows;
    const int qi = i0 + t / per_cta, h = h0 + t % per_cta;
    const T* src = gq + ((int64_t(b) * p.tq + qi) * p.hq + h) * D + (c % CPR) * 8;
    ptx::CpAsync16(ptx::SmemAddr(sQ + lr * LD + (c % CPR) * 8), ok ? src : gq, ok ? 16 : 0);
  }
  ptx::CpAsyncCommit();

  // The warp's tiles: w, w + 4, ... of the (hi - lo) * bs / 16 tiles of the CTA's blocks
  // (SHARED: the warp loads them, every warp computes on all four of a stage).
  const int tiles_per_block = p.block_size / kKeys;
  const int tiles = (hi - lo) * tiles_per_block;
  const int mine = tiles > warp ? (tiles - warp + kWarps - 1) / kWarps : 0;
  const int steps = SHARED ? (tiles + kWarps - 1) / kWarps : mine;  // loop iterations
  const int64_t kstride = int64_t(p.hkv) * D;  // elements (bytes, for fp8) per key
  const T* gk = static_cast<const T*>(p.k) + int64_t(hk) * D;
  const T* gv = static_cast<const T*>(p.v) + int64_t(hk) * D;
  const unsigned char* gkb = static_cast<const unsigned char*>(p.k) + int64_t(hk) * D;
  const unsigned char* gvb = static_cast<const unsigned char*>(p.v) + int64_t(hk) * D;
  T* ring = sKV + warp * STAGES * 2 * S::kTile;
  unsigned char* ringb = sRings + warp * STAGES * 2 * S::kTileB;  // fp8
  // fp8: warp w's tiles converted to T
  auto staging = [&](int w) {
    return reinterpret_cast<T*>(sRings + kWarps * STAGES * 2 * S::kTileB) + w * 2 * S::kTile;
  };
  T* stage = staging(warp);
  auto start_of = [&](int t) {  // first key of the CTA's tile t
    return sStarts[t / tiles_per_block] + (t % tiles_per_block) * kKeys;
  };
  auto tile_start = [&](int i) { return start_of(warp + i * kWarps); };  // the warp's i-th
  auto load_tile = [&](int i) {
    const int s0 = tile_start(i);
    const int rows_ok = limit - s0;  // keys at or past `limit`: zero filled, never read
    int64_t row = 0;                 // the cache row of key s0 (a tile stays in one page)
    if (rows_ok > 0) {
      row = p.page_table == nullptr
                ? int64_t(b) * p.tk + s0
                : int64_t(__ldg(p.page_table + int64_t(b) * p.pages_per_seq +
                                s0 / p.page_size)) * p.page_size + s0 % p.page_size;
    }
    if constexpr (kFp8) {
      unsigned char* sk = ringb + (i % STAGES) * 2 * S::kTileB;
      unsigned char* sv = sk + S::kTileB;
#pragma unroll
      for (int u = 0; u < kKeys * CPRB / 32; ++u) {
        const int c = lane + u * 32, kr = c / CPRB, col = (c % CPRB) * 16;
        const bool ok = kr < rows_ok;
        const int64_t at = ok ? (row + kr) * kstride + col : 0;
        ptx::CpAsync16(ptx::SmemAddr(sk + kr * LDB + col), gkb + at, ok ? 16 : 0);
        ptx::CpAsync16(ptx::SmemAddr(sv + kr * LDB + col), gvb + at, ok ? 16 : 0);
      }
    } else {
      T* sk = ring + (i % STAGES) * 2 * S::kTile;
      T* sv = sk + S::kTile;
#pragma unroll
      for (int u = 0; u < kKeys * CPR / 32; ++u) {
        const int c = lane + u * 32, kr = c / CPR, col = (c % CPR) * 8;
        const bool ok = kr < rows_ok;
        const int64_t at = ok ? (row + kr) * kstride + col : 0;
        ptx::CpAsync16(ptx::SmemAddr(sk + kr * LD + col), gk + at, ok ? 16 : 0);
        ptx::CpAsync16(ptx::SmemAddr(sv + kr * LD + col), gv + at, ok ? 16 : 0);
      }
    }
  };
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < mine) load_tile(s);
    ptx::CpAsyncCommit();
  }
  ptx::CpAsyncWait<STAGES - 1>();  // the Q group (the oldest)
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) LoadA<LD>(qf[kk], sQ, tw - t0, kk * 16, lane);
  const bool has_rows = tw < nrows;  // SHARED: a warp past the last row only loads

  // causal position of this lane's two rows (lane / 4 and lane / 4 + 8)
  const int gr = lane >> 2, tc = (lane & 3) * 2;
  const int cpos0 = pos0 + i0 + (tw + gr) / per_cta;
  const int cpos1 = pos0 + i0 + (tw + gr + 8) / per_cta;
  // an fp8 cache's scales: k_scale in the score scale, v_scale on the split's output
  const float k_scale = p.k_scale == nullptr ? 1.f : __ldg(p.k_scale + hk);
  const float v_scale = p.v_scale == nullptr ? 1.f : __ldg(p.v_scale + hk);
  const float qk_scale = p.scale * k_scale;
  const float sl2 = qk_scale * kLog2e;
  // a logit soft cap (p.softcap > 0): log2-domain scores cap * tanh(scale * s / cap) * log2(e)
  const bool capped = p.softcap > 0.f;
  const float cap_log2 = p.softcap * kLog2e, scale_cap = capped ? qk_scale / p.softcap : 0.f;
  float acc[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  // SHARED: CTA barriers where the other form has warp ones (a stage is read by every warp)
  auto sync = [&]() {
    if constexpr (SHARED) __syncthreads(); else __syncwarp();
  };
  for (int i = 0; i < steps; ++i) {
    if constexpr (SHARED) __syncthreads();  // every warp is done with the stage refilled now
    if (i + STAGES - 1 < mine) load_tile(i + STAGES - 1);
    ptx::CpAsyncCommit();
    ptx::CpAsyncWait<STAGES - 1>();
    sync();  // the other lanes' (SHARED: threads') copies of stage i are visible
    if constexpr (kFp8) {  // the warp's tile i: bytes to T in its staging tiles
      if (i < mine) {
        const unsigned char* bk = ringb + (i % STAGES) * 2 * S::kTileB;
#pragma unroll
        for (int u = 0; u < kKeys * CPRB / 32; ++u) {
          const int c = lane + u * 32, kr = c / CPRB, col = (c % CPRB) * 16;
          Fp8x16To<T, KV>(stage + kr * LD + col, bk + kr * LDB + col);
          Fp8x16To<T, KV>(stage + S::kTile + kr * LD + col, bk + S::kTileB + kr * LDB + col);
        }
      }
      sync();  // the staging tiles are complete
    }
    // the tiles this warp computes at step i: its own, or (SHARED) the stage's four
#pragma unroll 1
    for (int u = 0; u < (SHARED ? kWarps : 1); ++u) {
      const int t = SHARED ? u + i * kWarps : warp + i * kWarps;  // the CTA's tile
      if (SHARED && (t >= tiles || !has_rows)) break;  // (uniform in the warp)
      const int w = SHARED ? u : warp;  // the warp whose ring (staging) holds it
      const T* sk = kFp8 ? staging(w) : sKV + (w * STAGES + i % STAGES) * 2 * S::kTile;
      const T* sv = sk + S::kTile;

      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t bf[4];
        LoadBN<LD>(bf, sk, 0, kk * 16, lane);
        O::Mma(s[0], qf[kk], bf[0], bf[1]);
        O::Mma(s[1], qf[kk], bf[2], bf[3]);
      }
      const int k0 = start_of(t) + tc;
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = k0 + nn * 8 + (e & 1);
          const bool masked = j >= limit || (p.causal && j > ((e >> 1) ? cpos1 : cpos0));
          const float x = capped ? cap_log2 * Tanh(s[nn][e] * scale_cap) : s[nn][e] * sl2;
          s[nn][e] = masked ? -INFINITY : x;
        }
      }
      float mu0, mu1;
      OnlineSoftmaxStep<D>(fmaxf(m0, fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]))),
                           fmaxf(m1, fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3]))),
                           m0, m1, l0, l1, acc, mu0, mu1);
      uint32_t pf[4];
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
        const float p0 = Exp2(s[nn][0] - mu0), p1 = Exp2(s[nn][1] - mu0);
        const float p2 = Exp2(s[nn][2] - mu1), p3 = Exp2(s[nn][3] - mu1);
        l0 += p0 + p1;
        l1 += p2 + p3;
        pf[nn * 2 + 0] = O::Pack(p0, p1);
        pf[nn * 2 + 1] = O::Pack(p2, p3);
      }
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bf[4];
        LoadBT<LD>(bf, sv, 0, dn * 16, lane);
        O::Mma(acc[2 * dn], pf, bf[0], bf[1]);
        O::Mma(acc[2 * dn + 1], pf, bf[2], bf[3]);
      }
    }  // the tiles of step i
    if constexpr (!SHARED) __syncwarp();  // every lane is done with this stage (refilled next)
  }
  ptx::CpAsyncWait<0>();
  l0 = QuadSum(l0);
  l1 = QuadSum(l1);
  if constexpr (SHARED) {  // the warp's rows are complete: this split's output, no combine
    if (!has_rows) return;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = tw + gr + 8 * half;
      if (t >= nrows) continue;
      const float l = half ? l1 : l0, mx = half ? m1 : m0;
      const float inv = l > 0.f ? v_scale / l : 0.f;
      const int qi = i0 + t / per_cta, h = h0 + t % per_cta;
      const int64_t prow = ((int64_t(b) * p.hq + h) * p.tq + qi) * p.splits + split;
      float* out = p.part_o + prow * D + tc;
#pragma unroll
      for (int d = 0; d < D / 8; ++d)
        *reinterpret_cast<float2*>(out + d * 8) =
            make_float2(acc[d][2 * half] * inv, acc[d][2 * half + 1] * inv);
      if ((lane & 3) == 0) p.part_lse[prow] = l > 0.f ? mx + __log2f(l) : -INFINITY;
    }
    return;
  }
  __syncthreads();  // all rings idle: the partial results go over them

  float* sAcc = reinterpret_cast<float*>(sKV);  // [warps][16][D + 4]
  float* sM = sAcc + kWarps * kRows * S::kAccLd;  // [warps][16]
  float* sL = sM + kWarps * kRows;
  float* mine_acc = sAcc + warp * kRows * S::kAccLd;
#pragma unroll
  for (int d = 0; d < D / 8; ++d) {
    mine_acc[gr * S::kAccLd + d * 8 + tc] = acc[d][0];
    mine_acc[gr * S::kAccLd + d * 8 + tc + 1] = acc[d][1];
    mine_acc[(gr + 8) * S::kAccLd + d * 8 + tc] = acc[d][2];
    mine_acc[(gr + 8) * S::kAccLd + d * 8 + tc + 1] = acc[d][3];
  }
  if ((lane & 3) == 0) {
    sM[warp * kRows + gr] = m0;
    sM[warp * kRows + gr + 8] = m1;
    sL[warp * kRows + gr] = l0;
    sL[warp * kRows + gr + 8] = l1;
  }
  __syncthreads();

  // Combine the warps (fixed order) into this split's normalized output and log2-lse.
  for (int c = tid; c < kRows * D; c += kThreads) {
    const int lr = c / D, d = c % D, t = t0 + lr;
    if (t >= nrows) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sM[w * kRows + lr]);
    const float mu = mx == -INFINITY ? 0.f : mx;
    float l = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = Exp2(sM[w * kRows + lr] - mu);
      l += sL[w * kRows + lr] * f;
      o += sAcc[(w * kRows + lr) * S::kAccLd + d] * f;
    }
    const int qi = i0 + t / per_cta, h = h0 + t % per_cta;
    const int64_t prow = ((int64_t(b) * p.hq + h) * p.tq + qi) * p.splits + split;
    p.part_o[prow * D + d] = l > 0.f ? o / l * v_scale : 0.f;
    if (d == 0) p.part_lse[prow] = l > 0.f ? mu + __log2f(l) : -INFINITY;
  }
}

// One warp per query row (b, h, i): o = sum_s w_s o_s / sum_s w_s, w_s = 2^(lse_s - max),
// summed in split order by every lane (lane: D / 32 dims); lse in natural log ([B, Hq, Tq]);
// o in q's dtype ([B, Tq, Hq, D]).
constexpr int kCombineWarps = 4;
template <typename T, int D>
__global__ void __launch_bounds__(kCombineWarps * 32) DecodeCombineKernel(
    const AttentionDecodeParams p) {
  static_assert(D % 32 == 0, "a lane combines D / 32 dims");
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kCombineWarps + (threadIdx.x >> 5);
  if (row >= int64_t(p.batch) * p.hq * p.tq) return;
  const float* lse = p.part_lse + row * p.splits;
  const float* part = p.part_o + row * p.splits * D + lane;
  float mx = -INFINITY;
  for (int s = lane; s < p.splits; s += 32) mx = fmaxf(mx, lse[s]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  const float mu = mx == -INFINITY ? 0.f : mx;
  float l = 0.f, o[D / 32];
#pragma unroll
  for (int j = 0; j < D / 32; ++j) o[j] = 0.f;
#pragma unroll 4
  for (int s = 0; s < p.splits; ++s) {
    const float w = Exp2(lse[s] - mu);
    l += w;
#pragma unroll
    for (int j = 0; j < D / 32; ++j) o[j] += w * part[s * D + 32 * j];
  }
  const int qi = int(row % p.tq), h = int((row / p.tq) % p.hq);
  const int b = int(row / (int64_t(p.tq) * p.hq));
  T* out = static_cast<T*>(p.o) + ((int64_t(b) * p.tq + qi) * p.hq + h) * D + lane;
  const float inv = mx == -INFINITY ? 0.f : 1.f / l;
#pragma unroll
  for (int j = 0; j < D / 32; ++j) out[32 * j] = ptx::FromF<T>(o[j] * inv);
  if (lane == 0) p.lse[row] = mx == -INFINITY ? -INFINITY : (mu + __log2f(l)) * kLn2;
}

template <typename T, int D, typename KV, bool SHARED>
cudaError_t LaunchPartial(const AttentionDecodeParams& p, cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0}, carveout{0};
  const int smem = DecodeSmem<D>::template Bytes<T, KV, SHARED>();
  const void* kernel = (const void*)DecodePartialKernel<T, D, KV, SHARED>;
  cudaError_t err = AllowDynamicSmem(configured, kernel, smem);
  if (err == cudaSuccess) err = PreferSharedMemory(carveout, kernel);  // 3 CTAs/SM at D 128
  if (err != cudaSuccess) return err;
  const int group = p.hq / p.hkv;
  const int per_cta = p.mask_heads == 1 ? group : 1;
  const int rows = DecodeSmem<D>::template kCtaRows<SHARED>;
  const int chunks = (per_cta * p.tq + rows - 1) / rows;
  // the mask rows Tq consecutive positions can touch: ceil((Tq - 1) / bs) + 1 at most
  const int parts = p.tq > 1 ? (p.tq - 2) / p.block_size + 2 : 1;
  const dim3 grid(unsigned(int64_t(p.batch) * p.hkv * (group / per_cta)),
                  unsigned(p.splits * chunks * parts));
  DecodePartialKernel<T, D, KV, SHARED><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int D, typename KV = T>
cudaError_t LaunchDecode(const AttentionDecodeParams& p, cudaStream_t stream) {
  cudaError_t err = DecodeSharedTiles(p) ? LaunchPartial<T, D, KV, true>(p, stream)
                                         : LaunchPartial<T, D, KV, false>(p, stream);
  if (err != cudaSuccess) return err;
  const int64_t rows = int64_t(p.batch) * p.hq * p.tq;
  DecodeCombineKernel<T, D><<<unsigned((rows + kCombineWarps - 1) / kCombineWarps),
                              kCombineWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace
}  // namespace attn

namespace {
#define JBS_DECODE_ROWS(DT, T, KVE, KV, NAME)                                               \
  {DT, KVE, 64, NAME, attn::LaunchDecode<T, 64, KV>},                                       \
  {DT, KVE, 96, NAME, attn::LaunchDecode<T, 96, KV>},                                       \
  {DT, KVE, 128, NAME, attn::LaunchDecode<T, 128, KV>},                                     \
  {DT, KVE, 256, NAME, attn::LaunchDecode<T, 256, KV>}
#define JBS_DECODE_DTYPE(DT, T)                                                             \
  JBS_DECODE_ROWS(DT, T, DecodeKv::kSame, T, "decode(split-kv, 16-key warp tiles)"),       \
  JBS_DECODE_ROWS(DT, T, DecodeKv::kE4M3, __nv_fp8_e4m3,                                    \
                  "decode(split-kv, 16-key warp tiles, fp8 e4m3 cache)"),                   \
  JBS_DECODE_ROWS(DT, T, DecodeKv::kE5M2, __nv_fp8_e5m2,                                    \
                  "decode(split-kv, 16-key warp tiles, fp8 e5m2 cache)")
// (dtype, k/v type, head dim) -> launcher, name
const AttentionDecodeKernel kAttentionDecodeKernels[] = {
    JBS_DECODE_DTYPE(DType::kBF16, __nv_bfloat16),
    JBS_DECODE_DTYPE(DType::kF16, __half),
};
#undef JBS_DECODE_DTYPE
#undef JBS_DECODE_ROWS
}  // namespace

bool DecodeSharedTiles(const AttentionDecodeParams& p) {
  const int per_cta = p.mask_heads == 1 && p.hkv > 0 ? p.hq / p.hkv : 1;
  return GetSwitches().decode_shared_tiles && int64_t(per_cta) * p.tq > attn::kRows;
}

const AttentionDecodeKernel* FindAttentionDecodeKernel(DType dtype, DecodeKv kv, int head_dim) {
  for (const AttentionDecodeKernel& k : kAttentionDecodeKernels)
    if (k.dtype == dtype && k.kv == kv && k.head_dim == head_dim) return &k;
  return nullptr;
}

const char* AttentionDecodeUnsupported(const AttentionDecodeParams& p) {
  if (p.tq < 1 || p.tq > kDecodeMaxQueries) return "Tq must be 1 to 64";
  if (p.block_size <= 0 || p.block_size % kDecodeTileKeys != 0)
    return "the block size must be a multiple of 16";
  if (p.page_table != nullptr && (p.page_size <= 0 || p.page_size % kDecodeTileKeys != 0))
    return "the page size must be a multiple of 16";
  if (p.hkv <= 0 || p.hq % p.hkv != 0) return "query heads must be a multiple of kv heads";
  if (p.mask_heads != 1 && p.mask_heads != p.hq) return "mask heads must be 1 or Hq";
  if (p.mask_batch != 1 && p.mask_batch != p.batch) return "mask batch must be 1 or B";
  if (p.splits < 1 || int64_t(p.width) > int64_t(p.splits) * kDecodeSplitCapacity)
    return "splits must be at least ceil(W / 1024)";
  if (int64_t(p.batch) * p.hq > INT_MAX / 2) return "too many (batch, head) pairs";
  if (!(p.softcap >= 0.f)) return "the soft cap must be >= 0 (0: none)";
  return nullptr;
}

}  // namespace jax_blocksparse
