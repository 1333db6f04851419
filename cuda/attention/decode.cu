// The decode attention kernels (attention_decode.h): split-KV partial attention over a CTA's
// share of the listed key blocks (mma.sync m16n8k16, 16-key tiles, one cp.async ring per
// warp), then a fixed-order log-sum-exp combine of the splits. Memory bound by design: the
// rows of a CTA (query heads of one kv head) share every K/V tile it reads. Two forms
// (SHARED): 16 rows per CTA whose four warps take the 16-key tiles in turn and combine
// their partial results at the end (few rows: one query, a GQA group of up to 16); or, for
// more rows (speculative queries times the group, opt-in: DecodeFormOf), 64 rows per
// CTA, a warp's 16 each, the four warps sharing every 64-key stage (one 16-key tile from
// each warp's ring), so that K and V are read once per 64 rows instead of per 16. An fp8 cache
// (KV an fp8 type) is read as bytes into the rings, and each lane converts the bytes of its
// own mma fragments from there (Fp8 below): the products run in float16 whatever q's dtype.
// A third form, for more than 16 such rows per kv head where the call allows it (the
// default on sm_90a, taking such calls before the 64-row form), runs them in GQA-packed
// 64- or 128-row tiles on the Hopper forward's wgmma pipeline (attention/fwd_sm90.cu,
// PACKED), writing the same split workspaces; the combine below serves every form.
#include "../attention_decode.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <atomic>
#include <climits>
#include <type_traits>

#include "../launch_util.h"
#include "../switches.h"
#include "fwd_sm90.h"
#include "shared.cuh"  // Ops, fragment loads, Exp2, quad reductions

namespace jax_blocksparse {
namespace attn {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32, kRows = kDecodeWarpRows;
constexpr int kKeys = kDecodeTileKeys;

// Ring stages per warp, chosen on the H200 at D 128 (benchmarks/RESULTS.md, 2026-12-04):
// 3 for q's dtype (96 KB of K/V tiles, two CTAs per SM: 84.5% of the copy rate, 82.8% at
// 2 stages), 4 for an fp8 cache (two CTAs per SM: 7% faster than 3 stages at three; 4 and
// 6, one CTA per SM, lost 27% at fp8). An experiment build may set those of head dims 96
// and 128:
// -DJBS_DECODE_STAGES_D128=N (and _FP8_D128 below) in CMAKE_CUDA_FLAGS, as
// `decode_stages` in benchmarks/device.sh does.
#ifndef JBS_DECODE_STAGES_D128
#define JBS_DECODE_STAGES_D128 3
#endif
#ifndef JBS_DECODE_STAGES_FP8_D128
#define JBS_DECODE_STAGES_FP8_D128 4
#endif
template <int D> constexpr int DecodeStages() {
  return D <= 64 ? 4 : (D <= 128 ? JBS_DECODE_STAGES_D128 : 2);
}
// An fp8 cache's rings: tiles of half the bytes, so more stages keep about the bytes in
// flight per warp of the 2-byte kernel.
template <int D> constexpr int DecodeStagesFp8() {
  return D <= 64 ? 8 : (D <= 128 ? JBS_DECODE_STAGES_FP8_D128 : 2);
}

// Block starts a split's tiles can touch: the listed blocks it holds (kDecodeSplitCapacity,
// the host's bound on its share of whole blocks) and one more, since its share of the row's
// 16-key tiles may begin and end inside blocks.
constexpr int kStartsSlots = kDecodeSplitCapacity + 1;

template <int D> struct DecodeSmem {
  static constexpr int kLd = D + 8;                  // padded tile row (conflict-free ldmatrix)
  static constexpr int kTile = kKeys * kLd;          // elements of one K (or V) tile
  static constexpr int kStages = DecodeStages<D>();
  static constexpr int kStagesFp8 = DecodeStagesFp8<D>();
  static constexpr int kLdB = D + 16;                // an fp8 ring's tile row, in bytes
  static constexpr int kTileB = kKeys * kLdB;        // bytes of one fp8 K (or V) tile
  // the rings: tiles of T, or of an fp8 cache's bytes
  template <typename T, typename KV> static constexpr int RingBytes() {
    return std::is_same<T, KV>::value ? kWarps * kStages * 2 * kTile * int(sizeof(T))
                                      : kWarps * kStagesFp8 * 2 * kTileB;
  }
  // query rows of a CTA: 16, or 16 per warp when the warps share the stages
  template <bool SHARED> static constexpr int kCtaRows = SHARED ? kWarps * kRows : kRows;
  template <typename T, typename KV, bool SHARED> static constexpr int Bytes() {
    return kCtaRows<SHARED> * kLd * int(sizeof(T)) + RingBytes<T, KV>() +
           (kStartsSlots + kWarps) * int(sizeof(int));
  }
  // the warps' partial results, written over the rings after the key loop
  static constexpr int kAccLd = D + 4;
  static constexpr int kAccBytes = (kWarps * kRows * kAccLd + 2 * kWarps * kRows) * 4;
};

// The CTA's tile t (its keys: kKeys from sStarts[block] + tile * kKeys) as a position in
// the split's blocks, stepped forward without dividing by the tiles per block.
struct TileCursor {
  int block, tile;
  __device__ __forceinline__ void Advance(int n, int per_block) {
    tile += n;
    while (tile >= per_block) {
      tile -= per_block;
      ++block;
    }
  }
  __device__ __forceinline__ int Key(const int* starts) const {
    return starts[block] + tile * kKeys;
  }
};

template <typename KV> struct Fp8Kind;
template <> struct Fp8Kind<__nv_fp8_e4m3> {
  static constexpr __nv_fp8_interpretation_t kValue = __NV_E4M3;
};
template <> struct Fp8Kind<__nv_fp8_e5m2> {
  static constexpr __nv_fp8_interpretation_t kValue = __NV_E5M2;
};

// Four fp8 values (the bytes of `w`) as two float16 pairs: bytes 0, 1 to `lo`, bytes 2, 3
// to `hi` (exact: float16 holds every e4m3 and e5m2 value). sm_89+: one cvt per pair, the
// high one reading the register's upper half in place (F2FP ... R.H1: no shift); older
// GPUs: cuda_fp8.h's conversion.
template <typename KV>
__device__ __forceinline__ void Fp8QuadToHalf2(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define JBS_FP8_CVT(KIND)                                                                   \
  "{ .reg .b16 l, h; mov.b32 {l, h}, %2; cvt.rn.f16x2." KIND "x2 %0, l; cvt.rn.f16x2." KIND \
  "x2 %1, h; }"
  if constexpr (Fp8Kind<KV>::kValue == __NV_E4M3)
    asm(JBS_FP8_CVT("e4m3") : "=r"(lo), "=r"(hi) : "r"(w));
  else
    asm(JBS_FP8_CVT("e5m2") : "=r"(lo), "=r"(hi) : "r"(w));
#undef JBS_FP8_CVT
#else
  auto pair = [](uint32_t two) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two),
                                                     Fp8Kind<KV>::kValue);
    return uint32_t(h.x) | (uint32_t(h.y) << 16);
  };
  lo = pair(w & 0xffffu);
  hi = pair(w >> 16);
#endif
}

// An fp8 cache's mma fragments (m16n8k16, float16), each lane's from the ring's bytes with
// 32-bit shared loads, no staging copy (rows of D + 16 bytes: both load patterns below are
// free of bank conflicts at D 64, 96, 128 and 256).
//  - QK^T: the reduction over d may take any order, so within each 16-column step kk the
//    lane (g = lane / 4, t = lane % 4) takes the four bytes 16 kk + 4 t .. + 3 of key g as its
//    B fragment (b0: k 2t, 2t + 1; b1: k 2t + 8, 2t + 9), and Q's A fragment is read from
//    the same columns (Fp8QFragments).
//  - PV: keys are P's columns, as in the other forms; the lane reads four bytes of each of its
//    keys 2t, 2t + 1, 2t + 8, 2t + 9 at columns 32 c + 4 g .. + 3 and transposes them (PRMT):
//    byte e of the four words is its B fragment of the output's n8 tile 4 c + e, whose
//    column n is output column 32 c + 4 n + e (OutColumn).
template <typename T, bool FP8> struct DecodeMath {
  using Mma = Ops<typename std::conditional<FP8, __half, T>::type>;
  // output column of the accumulator's n8 tile d8, column n (0 .. 7)
  __device__ __forceinline__ static int OutColumn(int d8, int n) {
    return FP8 ? 32 * (d8 / 4) + 4 * n + d8 % 4 : d8 * 8 + n;
  }
};

template <typename KV>
__device__ __forceinline__ void Fp8KFragment(uint32_t& b0, uint32_t& b1, const unsigned char* sk,
                                             int ldb, int n0, int kk, int lane) {
  const uint32_t w = *reinterpret_cast<const uint32_t*>(
      sk + (n0 + (lane >> 2)) * ldb + kk * 16 + (lane & 3) * 4);
  Fp8QuadToHalf2<KV>(w, b0, b1);
}

// b[e][0..1]: the B fragments of the output's n8 tiles 4 c + e (e = 0 .. 3)
template <typename KV>
__device__ __forceinline__ void Fp8VFragments(uint32_t (&b)[4][2], const unsigned char* sv,
                                              int ldb, int c, int lane) {
  const unsigned char* at = sv + 2 * (lane & 3) * ldb + 32 * c + 4 * (lane >> 2);
  const uint32_t r0 = *reinterpret_cast<const uint32_t*>(at);             // key 2t
  const uint32_t r1 = *reinterpret_cast<const uint32_t*>(at + ldb);       // key 2t + 1
  const uint32_t r2 = *reinterpret_cast<const uint32_t*>(at + 8 * ldb);   // key 2t + 8
  const uint32_t r3 = *reinterpret_cast<const uint32_t*>(at + 9 * ldb);   // key 2t + 9
  const uint32_t lo01 = __byte_perm(r0, r1, 0x5140), hi01 = __byte_perm(r0, r1, 0x7362);
  const uint32_t lo23 = __byte_perm(r2, r3, 0x5140), hi23 = __byte_perm(r2, r3, 0x7362);
  Fp8QuadToHalf2<KV>(lo01, b[0][0], b[1][0]);
  Fp8QuadToHalf2<KV>(lo23, b[0][1], b[1][1]);
  Fp8QuadToHalf2<KV>(hi01, b[2][0], b[3][0]);
  Fp8QuadToHalf2<KV>(hi23, b[2][1], b[3][1]);
}

// A power of two that brings a row of maximum magnitude `amax` below 2^15 (float16 holds
// it), and its inverse: 2^(141 - E) for amax's biased exponent E, at most 2^126.
__device__ __forceinline__ void HalfRowScale(float amax, float& scale, float& inv) {
  const int e = (__float_as_uint(amax) >> 23) & 0xff;
  const int f = min(268 - e, 253);  // the scale's biased exponent
  scale = __uint_as_float(uint32_t(f) << 23);
  inv = __uint_as_float(uint32_t(254 - f) << 23);
}

// The lane's Q fragments for an fp8 cache (columns as Fp8KFragment reads K), in float16:
// q's rows r and r + 8 (r = row0 + lane / 4) times powers of two (HalfRowScale; 1 when T is
// float16), whose inverses come back in inv0, inv1 for the scores.
template <typename T, int D, int LD>
__device__ __forceinline__ void Fp8QFragments(uint32_t (&qf)[D / 16][4], const T* sQ, int row0,
                                              int lane, float& inv0, float& inv1) {
  const T* q0 = sQ + (row0 + (lane >> 2)) * LD + (lane & 3) * 4;
  const T* q1 = q0 + 8 * LD;
  float scale0 = 1.f, scale1 = 1.f;
  inv0 = inv1 = 1.f;
  if constexpr (!std::is_same<T, __half>::value) {
    float a0 = 0.f, a1 = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        a0 = fmaxf(a0, fabsf(float(q0[kk * 16 + e])));
        a1 = fmaxf(a1, fabsf(float(q1[kk * 16 + e])));
      }
    }
    HalfRowScale(QuadMax(a0), scale0, inv0);
    HalfRowScale(QuadMax(a1), scale1, inv1);
  }
  auto pair = [](const T* x, float scale) {
    __half2 h = __floats2half2_rn(float(x[0]) * scale, float(x[1]) * scale);
    return *reinterpret_cast<uint32_t*>(&h);
  };
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qf[kk][0] = pair(q0 + kk * 16, scale0);
    qf[kk][1] = pair(q1 + kk * 16, scale1);
    qf[kk][2] = pair(q0 + kk * 16 + 2, scale0);
    qf[kk][3] = pair(q1 + kk * 16 + 2, scale1);
  }
}

template <typename T, int D, typename KV, bool SHARED>
__global__ void __launch_bounds__(kThreads) DecodePartialKernel(const AttentionDecodeParams p) {
  using S = DecodeSmem<D>;
  constexpr bool kFp8 = !std::is_same<T, KV>::value;
  using M = DecodeMath<T, kFp8>;
  using O = typename M::Mma;  // the products' type: T, or float16 for an fp8 cache
  constexpr int kCtaRows = S::template kCtaRows<SHARED>;
  constexpr int LD = S::kLd, STAGES = kFp8 ? S::kStagesFp8 : S::kStages, CPR = D / 8;
  constexpr int LDB = S::kLdB;  // fp8: a ring row's bytes
  constexpr int kRingBytes = S::template RingBytes<T, KV>();
  static_assert(S::kAccBytes <= kRingBytes, "the partial results must fit over the rings");
  static_assert(!kFp8 || D % 32 == 0, "Fp8VFragments: 32 output columns at a time");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  ptx::LaunchDependents();  // the combine's CTAs may get resident now (they wait for this grid)
  T* sQ = reinterpret_cast<T*>(smem_raw);
  unsigned char* sRings = smem_raw + kCtaRows * LD * int(sizeof(T));
  int* sStarts = reinterpret_cast<int*>(sRings + kRingBytes);
  int* sCount = sStarts + kStartsSlots;
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

  // This split's share of the row's valid blocks (those starting before `limit`), in
  // 16-key tiles: tiles [lo_t, hi_t) of them in list order (equal shares to one tile, so
  // no split outlasts the others by a block), in the blocks of ranks [lo, hi), whose key
  // positions are compacted into sStarts; the first tile is tile `first` of block lo.
  int valid = 0;
  for (int e0 = 0; e0 < n; e0 += kThreads) {
    const int e = e0 + tid;
    valid += __syncthreads_count(e < n && __ldg(list + e) * p.block_size < limit);
  }
  const int tiles_per_block = p.block_size / kKeys;
  const int64_t row_tiles = int64_t(valid) * tiles_per_block;
  const int lo_t = int(row_tiles * split / p.splits);
  const int hi_t = int(row_tiles * (split + 1) / p.splits);
  const int lo = lo_t / tiles_per_block, hi = (hi_t + tiles_per_block - 1) / tiles_per_block;
  const int first = lo_t - lo * tiles_per_block;
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

  // The warp's tiles: w, w + 4, ... of the CTA's hi_t - lo_t tiles (SHARED: the warp loads
  // them, every warp computes on all four of a stage).
  const int tiles = hi_t - lo_t;
  const int mine = tiles > warp ? (tiles - warp + kWarps - 1) / kWarps : 0;
  const int steps = SHARED ? (tiles + kWarps - 1) / kWarps : mine;  // loop iterations
  // K and V as bytes: a key's D elements of KV (its row), the kv heads' rows side by side;
  // the rings' tiles hold kKeys rows of kRingRow bytes (the row and its padding)
  constexpr int kRowBytes = D * int(sizeof(KV)), kRowChunks = kRowBytes / 16;
  constexpr int kRingRow = kFp8 ? LDB : LD * int(sizeof(T)), kRingTile = kKeys * kRingRow;
  static_assert(kKeys * kRowChunks % 32 == 0, "a lane copies whole chunks of every tile");
  const int key_bytes = p.hkv * kRowBytes;
  const char* gk = static_cast<const char*>(p.k) + int64_t(hk) * kRowBytes;
  const char* gv = static_cast<const char*>(p.v) + int64_t(hk) * kRowBytes;
  unsigned char* ring = sRings + warp * STAGES * 2 * kRingTile;
  // the warp's next tile to load (its i-th: the CTA's tile warp + i * kWarps)
  TileCursor next_load{0, first};
  next_load.Advance(warp, tiles_per_block);
  auto load_tile = [&](int i) {  // the warp's i-th tile into ring stage i % STAGES
    const int s0 = next_load.Key(sStarts);
    next_load.Advance(kWarps, tiles_per_block);
    const int rows_ok = limit - s0;  // keys at or past `limit`: zero filled, never read
    int64_t row = 0;                 // the cache row of key s0 (a tile stays in one page)
    if (rows_ok > 0) {
      row = p.page_table == nullptr
                ? int64_t(b) * p.tk + s0
                : int64_t(__ldg(p.page_table + int64_t(b) * p.pages_per_seq +
                                s0 / p.page_size)) * p.page_size + s0 % p.page_size;
    }
    const int64_t base = row * key_bytes;
    unsigned char* sk = ring + (i % STAGES) * 2 * kRingTile;
#pragma unroll
    for (int u = 0; u < kKeys * kRowChunks / 32; ++u) {
      const int c = lane + u * 32, kr = c / kRowChunks, col = (c % kRowChunks) * 16;
      const bool ok = kr < rows_ok;
      const int64_t at = base + (ok ? kr * key_bytes + col : 0);
      ptx::CpAsync16(ptx::SmemAddr(sk + kr * kRingRow + col), gk + at, ok ? 16 : 0);
      ptx::CpAsync16(ptx::SmemAddr(sk + kRingTile + kr * kRingRow + col), gv + at, ok ? 16 : 0);
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
  float q_inv0 = 1.f, q_inv1 = 1.f;  // fp8: the inverse row scales of Q's float16 fragments
  if constexpr (kFp8) {
    Fp8QFragments<T, D, LD>(qf, sQ, tw - t0, lane, q_inv0, q_inv1);
  } else {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) LoadA<LD>(qf[kk], sQ, tw - t0, kk * 16, lane);
  }
  const bool has_rows = tw < nrows;  // SHARED: a warp past the last row only loads

  // causal position of this lane's two rows (lane / 4 and lane / 4 + 8)
  const int gr = lane >> 2, tc = (lane & 3) * 2;
  const int cpos0 = pos0 + i0 + (tw + gr) / per_cta;
  const int cpos1 = pos0 + i0 + (tw + gr + 8) / per_cta;
  // an fp8 cache's scales: k_scale in the score scale, v_scale on the split's output
  const float k_scale = p.k_scale == nullptr ? 1.f : __ldg(p.k_scale + hk);
  const float v_scale = p.v_scale == nullptr ? 1.f : __ldg(p.v_scale + hk);
  const float qk_scale = p.scale * k_scale;
  // the score scales of the lane's two rows (fp8: with Q's inverse row scales)
  const float sl2_0 = qk_scale * kLog2e * q_inv0, sl2_1 = qk_scale * kLog2e * q_inv1;
  // a logit soft cap (p.softcap > 0): log2-domain scores cap * tanh(scale * s / cap) * log2(e)
  const bool capped = p.softcap > 0.f;
  const float cap_log2 = p.softcap * kLog2e, scale_cap = capped ? qk_scale / p.softcap : 0.f;
  const float scale_cap0 = scale_cap * q_inv0, scale_cap1 = scale_cap * q_inv1;
  float acc[D / 8][4];
#pragma unroll
  for (int d = 0; d < D / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  // SHARED: CTA barriers where the other form has warp ones (a stage is read by every warp)
  auto sync = [&]() {
    if constexpr (SHARED) __syncthreads(); else __syncwarp();
  };
  // the CTA's tile of step i: warp + i * kWarps (SHARED: i * kWarps), after `first`
  TileCursor step_tile{0, first};
  if (!SHARED) step_tile.Advance(warp, tiles_per_block);
  for (int i = 0; i < steps; ++i) {
    if constexpr (SHARED) __syncthreads();  // every warp is done with the stage refilled now
    if (i + STAGES - 1 < mine) load_tile(i + STAGES - 1);
    ptx::CpAsyncCommit();
    ptx::CpAsyncWait<STAGES - 1>();
    sync();  // the other lanes' (SHARED: threads') copies of stage i are visible
    // the tiles this warp computes at step i: its own, or (SHARED) the stage's four
    TileCursor here = step_tile;
    step_tile.Advance(kWarps, tiles_per_block);
#pragma unroll 1
    for (int u = 0; u < (SHARED ? kWarps : 1); ++u) {
      const int t = SHARED ? u + i * kWarps : warp + i * kWarps;  // the CTA's tile
      if (SHARED && (t >= tiles || !has_rows)) break;  // (uniform in the warp)
      const int w = SHARED ? u : warp;  // the warp whose ring holds it
      // its ring stage: K then V, kRingTile bytes each (tiles of T, or an fp8 cache's bytes)
      const unsigned char* skb = sRings + (w * STAGES + i % STAGES) * 2 * kRingTile;
      const unsigned char* svb = skb + kRingTile;
      const T* sk = reinterpret_cast<const T*>(skb);
      const T* sv = reinterpret_cast<const T*>(svb);

      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t bf[4];
        if constexpr (kFp8) {
          Fp8KFragment<KV>(bf[0], bf[1], skb, LDB, 0, kk, lane);
          Fp8KFragment<KV>(bf[2], bf[3], skb, LDB, 8, kk, lane);
        } else {
          LoadBN<LD>(bf, sk, 0, kk * 16, lane);
        }
        O::Mma(s[0], qf[kk], bf[0], bf[1]);
        O::Mma(s[1], qf[kk], bf[2], bf[3]);
      }
      const int key0 = here.Key(sStarts);  // the tile's first key
      if (SHARED) here.Advance(1, tiles_per_block);
#pragma unroll
      for (int nn = 0; nn < 2; ++nn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nn][e] = capped ? cap_log2 * Tanh(s[nn][e] * ((e >> 1) ? scale_cap1 : scale_cap0))
                            : s[nn][e] * ((e >> 1) ? sl2_1 : sl2_0);
        }
      }
      // the element predicate, only on a tile that reaches `limit` or a row's causal edge
      if (key0 + kKeys > limit || (p.causal && key0 + kKeys - 1 > min(cpos0, cpos1))) {
#pragma unroll
        for (int nn = 0; nn < 2; ++nn) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = key0 + tc + nn * 8 + (e & 1);
            if (j >= limit || (p.causal && j > ((e >> 1) ? cpos1 : cpos0))) s[nn][e] = -INFINITY;
          }
        }
      }
      float mu0, mu1;
      OnlineSoftmaxStep<D, true>(fmaxf(m0, fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]))),
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
      if constexpr (kFp8) {
#pragma unroll
        for (int c = 0; c < D / 32; ++c) {
          uint32_t bf[4][2];
          Fp8VFragments<KV>(bf, svb, LDB, c, lane);
#pragma unroll
          for (int e = 0; e < 4; ++e) O::Mma(acc[4 * c + e], pf, bf[e][0], bf[e][1]);
        }
      } else {
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t bf[4];
          LoadBT<LD>(bf, sv, 0, dn * 16, lane);
          O::Mma(acc[2 * dn], pf, bf[0], bf[1]);
          O::Mma(acc[2 * dn + 1], pf, bf[2], bf[3]);
        }
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
      float* out = p.part_o + prow * D;
      if constexpr (kFp8) {  // columns 32 c + 4 tc + e and + 4 + e of tiles 4 c + e
#pragma unroll
        for (int c = 0; c < D / 32; ++c) {
          *reinterpret_cast<float4*>(out + 32 * c + 4 * tc) =
              make_float4(acc[4 * c][2 * half] * inv, acc[4 * c + 1][2 * half] * inv,
                          acc[4 * c + 2][2 * half] * inv, acc[4 * c + 3][2 * half] * inv);
          *reinterpret_cast<float4*>(out + 32 * c + 4 * tc + 4) =
              make_float4(acc[4 * c][2 * half + 1] * inv, acc[4 * c + 1][2 * half + 1] * inv,
                          acc[4 * c + 2][2 * half + 1] * inv, acc[4 * c + 3][2 * half + 1] * inv);
        }
      } else {
#pragma unroll
        for (int d = 0; d < D / 8; ++d)
          *reinterpret_cast<float2*>(out + d * 8 + tc) =
              make_float2(acc[d][2 * half] * inv, acc[d][2 * half + 1] * inv);
      }
      if ((lane & 3) == 0) p.part_lse[prow] = l > 0.f ? mx + __log2f(l) : -INFINITY;
    }
    return;
  }
  __syncthreads();  // all rings idle: the partial results go over them

  float* sAcc = reinterpret_cast<float*>(sRings);  // [warps][16][D + 4]
  float* sM = sAcc + kWarps * kRows * S::kAccLd;  // [warps][16]
  float* sL = sM + kWarps * kRows;
  float* mine_acc = sAcc + warp * kRows * S::kAccLd;
#pragma unroll
  for (int d = 0; d < D / 8; ++d) {
    const int c0 = M::OutColumn(d, tc), c1 = M::OutColumn(d, tc + 1);
    mine_acc[gr * S::kAccLd + c0] = acc[d][0];
    mine_acc[gr * S::kAccLd + c1] = acc[d][1];
    mine_acc[(gr + 8) * S::kAccLd + c0] = acc[d][2];
    mine_acc[(gr + 8) * S::kAccLd + c1] = acc[d][3];
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
// o in q's dtype ([B, Tq, Hq, D]). A query whose mask row (q_rows[b] + i) / bs lies outside
// [0, rows) gets NaN in o and lse: never a silently wrong row (no select kernel after it).
constexpr int kCombineWarps = 4;
template <typename T, int D>
__global__ void __launch_bounds__(kCombineWarps * 32) DecodeCombineKernel(
    const AttentionDecodeParams p) {
  static_assert(D % 32 == 0, "a lane combines D / 32 dims");
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kCombineWarps + (threadIdx.x >> 5);
  ptx::WaitPriorGrids();  // the partial kernel's part_o and part_lse (DependentLaunch)
  if (row >= int64_t(p.batch) * p.hq * p.tq) return;
  const int qi = int(row % p.tq), h = int((row / p.tq) % p.hq);
  const int b = int(row / (int64_t(p.tq) * p.hq));
  T* out = static_cast<T*>(p.o) + ((int64_t(b) * p.tq + qi) * p.hq + h) * D + lane;
  const int mask_row = FloorDiv(__ldg(p.q_rows + b) + qi, p.block_size);
  if (mask_row < 0 || mask_row >= p.rows) {
#pragma unroll
    for (int j = 0; j < D / 32; ++j) out[32 * j] = ptx::FromF<T>(NAN);
    if (lane == 0) p.lse[row] = NAN;
    return;
  }
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
  const float inv = mx == -INFINITY ? 0.f : 1.f / l;
#pragma unroll
  for (int j = 0; j < D / 32; ++j) out[32 * j] = ptx::FromF<T>(o[j] * inv);
  if (lane == 0) p.lse[row] = mx == -INFINITY ? -INFINITY : (mu + __log2f(l)) * kLn2;
}

// The partial kernel's shared-memory bytes, its limit and carveout set once per device.
template <typename T, int D, typename KV, bool SHARED>
cudaError_t ConfigurePartial(int* smem) {
  static std::atomic<uint64_t> configured{0}, carveout{0};
  *smem = DecodeSmem<D>::template Bytes<T, KV, SHARED>();
  const void* kernel = (const void*)DecodePartialKernel<T, D, KV, SHARED>;
  cudaError_t err = AllowDynamicSmem(configured, kernel, *smem);
  if (err == cudaSuccess) err = PreferSharedMemory(carveout, kernel);  // 3 CTAs/SM at D 128
  return err;
}

// The partial kernel's CTAs resident at once on the current device (one wave); 0 when
// unknown.
template <typename T, int D, typename KV, bool SHARED>
int ResidentPartialCtas() {
  int smem = 0;
  if (ConfigurePartial<T, D, KV, SHARED>(&smem) != cudaSuccess) return 0;
  return CtasPerWave((const void*)DecodePartialKernel<T, D, KV, SHARED>, kThreads, smem);
}

// Whether the GQA-packed form has a kernel for (T, D, KV): k and v of q's dtype, head dim
// 64 or 128 (attention/fwd_sm90.cu).
template <typename T, int D, typename KV>
constexpr bool kPackable = std::is_same<T, KV>::value && (D == 64 || D == 128);

template <typename T, int D, typename KV = T>
int ResidentCtas(DecodeForm form) {
  switch (form) {
    case DecodeForm::kWarpTiles: return ResidentPartialCtas<T, D, KV, false>();
    case DecodeForm::kSharedTiles: return ResidentPartialCtas<T, D, KV, true>();
    case DecodeForm::kPacked:
      if constexpr (kPackable<T, D, KV>) return DecodePackedSm90ResidentCtas<T, D, 128>();
      return 0;
    case DecodeForm::kPacked64:
      if constexpr (kPackable<T, D, KV>) return DecodePackedSm90ResidentCtas<T, D, 64>();
      return 0;
  }
  return 0;
}

template <typename T, int D, typename KV, bool SHARED>
cudaError_t LaunchPartial(const AttentionDecodeParams& p, cudaStream_t stream) {
  int smem = 0;
  cudaError_t err = ConfigurePartial<T, D, KV, SHARED>(&smem);
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
  cudaError_t err = cudaErrorInvalidValue;
  switch (DecodeFormOf(p, std::is_same<T, KV>::value)) {
    case DecodeForm::kWarpTiles: err = LaunchPartial<T, D, KV, false>(p, stream); break;
    case DecodeForm::kSharedTiles: err = LaunchPartial<T, D, KV, true>(p, stream); break;
    case DecodeForm::kPacked:  // GQA-packed rows on the Hopper forward's pipeline
      if constexpr (kPackable<T, D, KV>) err = LaunchDecodePartialSm90<T, D, 128>(p, stream);
      break;
    case DecodeForm::kPacked64:
      if constexpr (kPackable<T, D, KV>) err = LaunchDecodePartialSm90<T, D, 64>(p, stream);
      break;
  }
  if (err != cudaSuccess) return err;
  // the combine's CTAs resident while the partial kernel ends (programmatic dependent
  // launch where the combine was compiled for sm_90+: one launch gap less; they wait for
  // its writes)
  static std::atomic<int> combine_waits[64];
  const int64_t rows = int64_t(p.batch) * p.hq * p.tq;
  DependentLaunch launch(dim3(unsigned((rows + kCombineWarps - 1) / kCombineWarps)),
                         kCombineWarps * 32,
                         GetSwitches().decode_pdl &&
                             CompiledForSm90((const void*)DecodeCombineKernel<T, D>, combine_waits),
                         stream);
  return cudaLaunchKernelEx(&launch.cfg, DecodeCombineKernel<T, D>, p);
}

}  // namespace
}  // namespace attn

namespace {
#define JBS_DECODE_ROW(DT, T, KVE, KV, D, NAME)                                             \
  {DT, KVE, D, NAME, attn::LaunchDecode<T, D, KV>, attn::ResidentCtas<T, D, KV>}
#define JBS_DECODE_ROWS(DT, T, KVE, KV, NAME)                                               \
  JBS_DECODE_ROW(DT, T, KVE, KV, 64, NAME), JBS_DECODE_ROW(DT, T, KVE, KV, 96, NAME),       \
  JBS_DECODE_ROW(DT, T, KVE, KV, 128, NAME), JBS_DECODE_ROW(DT, T, KVE, KV, 256, NAME)
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
#undef JBS_DECODE_ROW
}  // namespace

DecodeForm DecodeFormOf(const AttentionDecodeParams& p, bool same_kv) {
  if (same_kv) {
    if (const int rows = attn::DecodePackedSm90Rows(p))
      return rows == 64 ? DecodeForm::kPacked64 : DecodeForm::kPacked;
  }
  const int per_cta = p.mask_heads == 1 && p.hkv > 0 ? p.hq / p.hkv : 1;
  if (GetSwitches().decode_shared_tiles && int64_t(per_cta) * p.tq > attn::kRows)
    return DecodeForm::kSharedTiles;
  return DecodeForm::kWarpTiles;
}

const char* DecodeKernelName(const AttentionDecodeKernel& kernel, DecodeForm form) {
  switch (form) {
    case DecodeForm::kWarpTiles: return kernel.name;
    case DecodeForm::kSharedTiles: return "decode(split-kv, 64-row CTAs, shared 64-key stages)";
    case DecodeForm::kPacked: return "decode(split-kv, GQA-packed 128-row wgmma tiles)";
    case DecodeForm::kPacked64: return "decode(split-kv, GQA-packed 64-row wgmma tiles)";
  }
  return kernel.name;
}

const AttentionDecodeKernel* FindAttentionDecodeKernel(DType dtype, DecodeKv kv, int head_dim) {
  for (const AttentionDecodeKernel& k : kAttentionDecodeKernels)
    if (k.dtype == dtype && k.kv == kv && k.head_dim == head_dim) return &k;
  return nullptr;
}

int AttentionDecodeKernelCount() {
  return static_cast<int>(sizeof(kAttentionDecodeKernels) / sizeof(kAttentionDecodeKernels[0]));
}

const AttentionDecodeKernel& AttentionDecodeKernelAt(int i) { return kAttentionDecodeKernels[i]; }

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
