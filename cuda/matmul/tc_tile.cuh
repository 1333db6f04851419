// Tensor-core tile machinery shared by the three ops (sm_80+: cp.async, ldmatrix, mma.sync).
//
// One kernel template serves the whole family, in two modes:
//
//  * DS mode ("dense x sparse lines", dds and dsd). The CTA owns an output tile of
//    BM rows of the dense dimension x BN (= block size) columns of one *line* (a column
//    of op(W)). Its K loop walks the line's nonzero blocks: the line's virtual K axis is
//    the concatenation of its blocks (cnt * bs long), cut into steps of BK; for every
//    row kk of a step, entry e = (s*BK + kk) / bs gives the block (blk[e]) for operand B and
//    the block row of A (idx[e]). So BK > bs stages several blocks per step (small blocks)
//    and BK < bs walks one block in several steps (bs = 128).
//    dsd is run as the transpose: Y^T = op(B)^T @ op(S)^T is a dds whose "A" is op(B)^T
//    and whose "W" blocks are op(S)^T; only the epilogue stores the tile transposed.
//  * SDD mode. The CTA owns BN / bs output blocks of one block row (BM = bs rows): a run of
//    consecutive entries of the sorted coords that share their block row (Runs below), and
//    walks the dense K axis in steps of BK, masking the tail. The A panel (bs rows) is then
//    loaded once for the run's blocks, whose columns of op(B) the B tile gathers (zeros past
//    the run). BN = bs: one block per CTA.
//
// Operand tiles go to shared memory in the orientation they have in global memory (16-byte
// cp.async chunks along the contiguous axis; rows padded by 16 bytes so ldmatrix is
// conflict free). Transposes are runtime flags: they pick the smem orientation, the
// per-lane ldmatrix address and ldmatrix vs ldmatrix.trans. A multi-stage cp.async ring
// (STAGES deep) keeps several K steps in flight. Warps split the tile WM x WN; a warp owns
// (BM/WM) x (BN/WN) accumulators in m16n8 fragments (float32).
//
// Operands whose rows are not 16-byte aligned (odd leading dimensions) take a scalar copy
// into the same smem tiles (correct, not fast). float32 inputs run on TF32 tensor cores
// (m16n8k8, fragments read from smem with scalar loads, rounded with cvt.rna.tf32).
//
// The epilogue converts to the output dtype, stages the tile in smem in the orientation
// of the output (so that global stores are coalesced 16-byte rows) and writes every
// element of the tile, zeros included. Each output element is reduced by one thread in a
// fixed order: results are deterministic.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include <atomic>

#include "../launch_util.h"
#include "../matmul.h"
#include "../ptx.cuh"

namespace jax_blocksparse {
namespace tc {

// TcArgs, one launch of the tile kernel: matmul.h.

// ----------------------------------------------------------------- element traits
template <typename T> struct Elem;
template <> struct Elem<__half> {
  static constexpr int kVec = 8;   // elements per 16-byte chunk
  static constexpr int kPad = 8;   // smem row padding (16 bytes)
  static constexpr int kMmaK = 16; // K of one mma
};
template <> struct Elem<__nv_bfloat16> {
  static constexpr int kVec = 8, kPad = 8, kMmaK = 16;
};
template <> struct Elem<float> {  // TF32 tensor cores
  static constexpr int kVec = 4, kPad = 4, kMmaK = 8;
};


// ------------------------------------------------------------------ PTX wrappers
using ptx::CpAsync16;
using ptx::CpAsyncCommit;
using ptx::CpAsyncWait;
using ptx::FromF;
using ptx::Ldsm4;
using ptx::Ldsm4T;
using ptx::SmemAddr;
using ptx::ToF;

template <typename T> __device__ __forceinline__ T Zero() { return FromF<T>(0.f); }

// ldmatrix.x4, transposing when `trans` (a warp-uniform runtime flag: both forms are
// issued under complementary predicates, no branch).
__device__ __forceinline__ void Ldsm4Sel(uint32_t (&r)[4], uint32_t addr, bool trans) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
      " @p ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
      " @!p ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n}\n"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "r"(addr), "r"(int(trans)));
}

template <typename T> struct Mma;
template <> struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void Run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <> struct Mma<__half> {
  __device__ __forceinline__ static void Run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
template <> struct Mma<float> {  // tf32, m16n8k8
  __device__ __forceinline__ static void Run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
__device__ __forceinline__ uint32_t ToTf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// ------------------------------------------------------------------ configuration
// BS: block size; BM x BN: output tile; BK: K step; WM x WN: warps; STAGES: smem ring depth
// (16-bit types; float32 uses one stage less, its tiles being twice as large).
template <int BS_, int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_>
struct Config {
  static constexpr int BS = BS_, BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
  static constexpr int kThreads = WM * WN * 32;
  // CTAs per SM the register allocation must allow. 2 for the 256-thread tiles (cap of
  // 128 registers) spilled 400-1300 bytes per thread with nvcc 13.0: left at 1.
  static constexpr int kMinBlocks = 1;
  static constexpr int WTM = BM / WM, WTN = BN / WN;  // warp tile
  static constexpr int MI = WTM / 16, NI = WTN / 8;   // m16n8 fragments per warp
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile must be a multiple of 16x16");
  static_assert(BK % 16 == 0, "BK must be a multiple of 16");

  template <typename T> static constexpr int Stages() {
    return sizeof(T) == 4 ? (STAGES_ > 2 ? STAGES_ - 1 : 2) : STAGES_;
  }
  template <typename T> static constexpr int Max(int x, int y) { return x > y ? x : y; }
  // smem elements of one stage of A / B (room for either orientation)
  template <typename T> static constexpr int AStage() {
    return Max<T>(BM * (BK + Elem<T>::kPad), BK * (BM + Elem<T>::kPad));
  }
  template <typename T> static constexpr int BStage() {
    return Max<T>(BK * (BN + Elem<T>::kPad), BN * (BK + Elem<T>::kPad));
  }
  template <typename T> static constexpr int SmemBytes() {
    return int(sizeof(T)) *
           Max<T>(Stages<T>() * (AStage<T>() + BStage<T>()),
                  Max<T>(BM * (BN + Elem<T>::kPad), BN * (BM + Elem<T>::kPad)));
  }
};

// --------------------------------------------------------------------- epilogue
// Second half of the epilogue (shared with the wgmma kernel): the BM x BN tile that all
// warps staged in smem `os` (rows of o_pitch elements, in the output's orientation: BN rows
// of BM when p.o_trans) goes to its place in the output with coalesced 16-byte stores
// (element stores at the masked tail or for unaligned rows). sdd: SDD mode (the tile is
// output block `unit`); else the tile's first row / column are row0 / col0 and rows_valid
// (1..BM) of its rows lie inside the output.
// (SDD: the tile's columns are output blocks unit, unit + 1, ... of BM x BM elements, the
// first sdd_blocks of them present.) SYNC: the CTA's barrier first (the tile was staged by
// every warp); without it, the caller has synchronised its NT threads (warp-specialized
// kernels, whose producer warps take no part).
template <typename T, int BM, int BN, int NT, bool SYNC = true>
__device__ __forceinline__ void StoreTile(const TcArgs& p, const T* os, int o_pitch, bool sdd,
                                          int64_t g, int64_t unit, int64_t row0, int64_t col0,
                                          int rows_valid, int tid, int sdd_blocks = 1) {
  if constexpr (SYNC) __syncthreads();  // RAW: the tile was staged by every warp
  T* out = static_cast<T*>(p.out) + g * p.o_bstride;
  if (sdd) out += unit * int64_t(BM * BM);
  else out += p.o_trans ? col0 * p.ldo + row0 : row0 * p.ldo + col0;
  constexpr int VEC = 16 / int(sizeof(T)), OCH = BM * BN / VEC;  // output chunks
  for (int id = tid; id < OCH; id += NT) {
    int i, j, n;
    if (p.o_trans) {  // smem rows are output rows (tile columns), chunks along tile rows
      i = id / (BM / VEC);
      j = (id % (BM / VEC)) * VEC;
      const int left = rows_valid - j;
      n = left <= 0 ? 0 : (left < VEC ? left : VEC);
    } else {
      i = id / (BN / VEC);
      j = (id % (BN / VEC)) * VEC;
      n = i < rows_valid && (!sdd || j / BM < sdd_blocks) ? VEC : 0;
    }
    const T* src = os + i * o_pitch + j;
    // SDD: column j is in block j / BM of the run (BM x BM, row-major, ldo = BM)
    T* dst = sdd ? out + (j / BM) * int64_t(BM * BM) + i * p.ldo + j % BM : out + i * p.ldo + j;
    if (n == VEC && p.o_vec) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int v = 0; v < n; ++v) dst[v] = src[v];
    }
  }
}

// --------------------------------------------------------------------- the tile
// DS mode: `unit` is the line's position in `order`, `mt` the row tile. SDD mode: `unit` is
// the run's first entry of the coords, `mt` its number of entries (1 .. BN / bs).
template <typename T, class C>
__device__ __forceinline__ void Tile(const TcArgs& p, int64_t g, int64_t unit, int64_t mt,
                                     T* smem) {
  constexpr int BS = C::BS, BM = C::BM, BN = C::BN, BK = C::BK, NT = C::kThreads;
  constexpr int MI = C::MI, NI = C::NI, WN = C::WN;
  constexpr int STAGES = C::template Stages<T>();
  constexpr int VEC = Elem<T>::kVec, PAD = Elem<T>::kPad, MK = Elem<T>::kMmaK;
  constexpr int A_STAGE = C::template AStage<T>(), B_STAGE = C::template BStage<T>();
  constexpr int CA = BM * BK / VEC / NT, CB = BK * BN / VEC / NT;  // chunks per thread
  static_assert(CA * VEC * NT == BM * BK && CB * VEC * NT == BK * BN, "chunks");

  const int tid = threadIdx.x;
  const T* a = static_cast<const T*>(p.a) + g * p.a_bstride;
  const T* b = static_cast<const T*>(p.b) + g * p.b_bstride;
  T* As = smem;
  T* Bs = smem + STAGES * A_STAGE;

  // ---- what this tile is
  int64_t row0, col0;  // first row of the tile in op(A); first column in the output
  int e0 = 0, cnt = 0, steps;
  int64_t rows_valid;  // rows of the tile inside the output
  if (p.sdd) {
    row0 = int64_t(p.coords[2 * unit]) * BS;
    col0 = 0;  // the B tile gathers the run's block columns (b_col below)
    cnt = int(mt);
    steps = int((p.K + BK - 1) / BK);
    rows_valid = BM;
  } else {
    const int line = p.order[unit];
    e0 = p.ptr[line];
    cnt = p.ptr[line + 1] - e0;
    row0 = mt * BM;
    col0 = int64_t(line) * BS;
    steps = (cnt * BS + BK - 1) / BK;
    rows_valid = p.M - row0 < BM ? p.M - row0 : BM;
  }

  // ---- loader. The tile is copied in 16-byte chunks along the operand's contiguous axis;
  // chunk i of this thread sits at smem row r0 + i * rstep, column c0 (NT is a multiple of
  // the chunks per row), so all per-chunk geometry is set up here, once: along the smem
  // rows runs m or k (A), k or n (B), depending on the transpose. prepare() computes the
  // sources of a step (reading the block lists), issue() copies them; the MMAs of the
  // current stage run in between and hide the metadata loads.
  const int a_pitch = p.ta ? BM + PAD : BK + PAD;
  const int b_pitch = p.tb ? BK + PAD : BN + PAD;
  int a_dst0, a_dstep, a_k0, a_kstep;  // smem offset of chunk 0 / step; k of chunk 0 / step
  const T* a_m0;                       // &op(A)[m of chunk 0, k = 0]
  int64_t a_mstep_g, a_ks_g;           // global offset between chunks (m), per unit of k
  int64_t a_mrow0, a_mstepi;           // m of chunk 0 (in op(A)), m step between chunks
  {
    const int cpr = p.ta ? BM / VEC : BK / VEC;
    const int r0 = tid / cpr, c0 = (tid % cpr) * VEC, rstep = NT / cpr;
    a_dst0 = r0 * a_pitch + c0;
    a_dstep = rstep * a_pitch;
    const int m0 = p.ta ? c0 : r0, mstep = p.ta ? 0 : rstep;
    a_k0 = p.ta ? r0 : c0;
    a_kstep = p.ta ? rstep : 0;
    const int64_t ms_g = p.ta ? 1 : p.lda;
    a_ks_g = p.ta ? p.lda : 1;
    a_m0 = a + (row0 + m0) * ms_g;
    a_mstep_g = mstep * ms_g;
    a_mrow0 = row0 + m0;
    a_mstepi = mstep;
  }
  const int64_t m_lim = p.sdd ? row0 + BM : p.M;
  int b_dst0, b_dstep, b_k0, b_kstep, b_n0, b_nstep;
  int b_ks_blk, b_ns_blk;      // DS: strides of op(block) (k, n) inside a block
  int64_t b_ks_g, b_ns_g;      // SDD: strides of op(B) (k, n) in global memory
  {
    const int cpr = p.tb ? BK / VEC : BN / VEC;
    const int r0 = tid / cpr, c0 = (tid % cpr) * VEC, rstep = NT / cpr;
    b_dst0 = r0 * b_pitch + c0;
    b_dstep = rstep * b_pitch;
    b_k0 = p.tb ? c0 : r0;
    b_kstep = p.tb ? 0 : rstep;
    b_n0 = p.tb ? r0 : c0;
    b_nstep = p.tb ? rstep : 0;
    b_ks_blk = p.tb ? 1 : BS;
    b_ns_blk = p.tb ? BS : 1;
    b_ks_g = p.tb ? 1 : p.ldb;
    b_ns_g = p.tb ? p.ldb : 1;
  }

  const T* a_src[CA];
  int a_n[CA];  // valid elements of the chunk (0..VEC)
  const T* b_src[CB];
  int b_n[CB];
  // SDD: the column of op(B) of each B chunk (its n in the run's block n / BS), -1 past the
  // run; fixed for the whole K loop
  int b_col[CB];
  if (p.sdd) {
#pragma unroll
    for (int i = 0; i < CB; ++i) {
      const int nn = b_n0 + i * b_nstep, e = nn / BS;
      b_col[i] = e < cnt ? __ldg(p.coords + 2 * (unit + e) + 1) * BS + nn % BS : -1;
    }
  }

  // k of a chunk -> (global k offset or block id, valid elements along k)
  auto prepare = [&](int s) {
#pragma unroll
    for (int i = 0; i < CA; ++i) {
      const int k = a_k0 + i * a_kstep;
      int64_t kg;
      int nk;
      if (p.sdd) {
        kg = int64_t(s) * BK + k;
        const int64_t left = p.K - kg;  // partial chunks only when k is contiguous
        nk = left <= 0 ? 0 : (!p.ta && left < VEC ? int(left) : VEC);
      } else {
        const int vk = s * BK + k, ent = vk / BS;
        const bool valid = ent < cnt;
        kg = valid ? int64_t(__ldg(p.idx + e0 + ent)) * BS + vk % BS : 0;
        nk = valid ? VEC : 0;
      }
      const int64_t mg = a_mrow0 + i * a_mstepi;
      const int64_t mleft = m_lim - mg;  // partial chunks only when m is contiguous
      const int nm = mleft <= 0 ? 0 : (p.ta && mleft < VEC ? int(mleft) : VEC);
      const int n = nk < nm ? nk : nm;
      a_n[i] = n;
      a_src[i] = n > 0 ? a_m0 + i * a_mstep_g + kg * a_ks_g : a;
    }
#pragma unroll
    for (int i = 0; i < CB; ++i) {
      const int k = b_k0 + i * b_kstep, nn = b_n0 + i * b_nstep;
      int n;
      const T* src;
      if (p.sdd) {
        const int64_t kg = int64_t(s) * BK + k, left = p.K - kg;
        n = left <= 0 || b_col[i] < 0 ? 0 : (p.tb && left < VEC ? int(left) : VEC);
        src = b + int64_t(b_col[i]) * b_ns_g + kg * b_ks_g;
      } else {
        const int vk = s * BK + k, ent = vk / BS;
        const bool valid = ent < cnt;
        const int64_t block = valid ? int64_t(__ldg(p.blk + e0 + ent)) : 0;
        n = valid ? VEC : 0;
        src = b + block * (BS * BS) + nn * b_ns_blk + (vk % BS) * b_ks_blk;
      }
      b_n[i] = n;
      b_src[i] = n > 0 ? src : b;
    }
  };

  auto issue = [&](int buf) {
    T* as = As + buf * A_STAGE + a_dst0;
    T* bs = Bs + buf * B_STAGE + b_dst0;
#pragma unroll
    for (int i = 0; i < CA; ++i) {
      T* dst = as + i * a_dstep;
      if (p.a_vec) {
        CpAsync16(SmemAddr(dst), a_src[i], a_n[i] * int(sizeof(T)));
      } else {
#pragma unroll 1  // scalar fallback (unaligned rows): keep it small
        for (int v = 0; v < VEC; ++v) dst[v] = v < a_n[i] ? a_src[i][v] : Zero<T>();
      }
    }
#pragma unroll
    for (int i = 0; i < CB; ++i) {
      T* dst = bs + i * b_dstep;
      if (p.b_vec) {
        CpAsync16(SmemAddr(dst), b_src[i], b_n[i] * int(sizeof(T)));
      } else {
#pragma unroll 1  // scalar fallback (unaligned rows): keep it small
        for (int v = 0; v < VEC; ++v) dst[v] = v < b_n[i] ? b_src[i][v] : Zero<T>();
      }
    }
  };

  // ---- per-warp fragment addressing. Element (m, k) of the A stage is at
  // m*a_ms + k*a_ks; element (k, n) of the B stage at k*b_ks + n*b_ns.
  const int warp = tid >> 5, lane = tid & 31;
  const int wm0 = (warp / WN) * C::WTM, wn0 = (warp % WN) * C::WTN;
  const int a_ms = p.ta ? 1 : a_pitch, a_ks = p.ta ? a_pitch : 1;
  const int b_ns = p.tb ? b_pitch : 1, b_ks = p.tb ? 1 : b_pitch;
  int a_lane, b_lane;  // this lane's offset within a fragment's sub-tile
  if constexpr (sizeof(T) == 2) {
    // ldmatrix.x4: lane l addresses row (l % 8) of 8x8 matrix j = l / 8.
    // A matrices j: (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
    // B matrices j: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
    const int l8 = lane & 7, j = lane >> 3;
    const int am = p.ta ? 8 * (j & 1) : l8 + 8 * (j & 1);
    const int ak = p.ta ? l8 + 8 * (j >> 1) : 8 * (j >> 1);
    const int bn = p.tb ? l8 + 8 * (j >> 1) : 8 * (j >> 1);
    const int bk = p.tb ? 8 * (j & 1) : l8 + 8 * (j & 1);
    a_lane = (wm0 + am) * a_ms + ak * a_ks;
    b_lane = (wn0 + bn) * b_ns + bk * b_ks;
  } else {
    // tf32 fragments: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (k t, n g),
    // b1 (k t+4, n g), with g = lane / 4, t = lane % 4.
    const int gq = lane >> 2, t = lane & 3;
    a_lane = (wm0 + gq) * a_ms + t * a_ks;
    b_lane = (wn0 + gq) * b_ns + t * b_ks;
  }

  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // shared-space byte addresses for ldmatrix
  const uint32_t a_sm = SmemAddr(As + a_lane), b_sm = SmemAddr(Bs + b_lane);
  const uint32_t a_ms_b = a_ms * sizeof(T), a_ks_b = a_ks * sizeof(T);
  const uint32_t b_ns_b = b_ns * sizeof(T), b_ks_b = b_ks * sizeof(T);
  auto compute = [&](int buf) {
    const T* as = As + buf * A_STAGE + a_lane;
    const T* bs = Bs + buf * B_STAGE + b_lane;
    const uint32_t as_b = a_sm + buf * (A_STAGE * sizeof(T));
    const uint32_t bs_b = b_sm + buf * (B_STAGE * sizeof(T));
#pragma unroll
    for (int kk = 0; kk < BK; kk += MK) {
      uint32_t af[MI][4], bf[NI][2];
      if constexpr (sizeof(T) == 2) {
#pragma unroll
        for (int i = 0; i < MI; ++i)
          Ldsm4Sel(af[i], as_b + i * 16 * a_ms_b + kk * a_ks_b, p.ta);
#pragma unroll
        for (int j = 0; j < NI; j += 2) {
          uint32_t r[4];
          Ldsm4Sel(r, bs_b + j * 8 * b_ns_b + kk * b_ks_b, !p.tb);
          bf[j][0] = r[0];
          bf[j][1] = r[1];
          bf[j + 1][0] = r[2];
          bf[j + 1][1] = r[3];
        }
      } else {
#pragma unroll
        for (int i = 0; i < MI; ++i) {
          const float* x = reinterpret_cast<const float*>(as) + i * 16 * a_ms + kk * a_ks;
          af[i][0] = ToTf32(x[0]);
          af[i][1] = ToTf32(x[8 * a_ms]);
          af[i][2] = ToTf32(x[4 * a_ks]);
          af[i][3] = ToTf32(x[8 * a_ms + 4 * a_ks]);
        }
#pragma unroll
        for (int j = 0; j < NI; ++j) {
          const float* x = reinterpret_cast<const float*>(bs) + j * 8 * b_ns + kk * b_ks;
          bf[j][0] = ToTf32(x[0]);
          bf[j][1] = ToTf32(x[4 * b_ks]);
        }
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) Mma<T>::Run(acc[i][j], af[i], bf[j]);
    }
  };

  // ---- the pipeline
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < steps) {
      prepare(s);
      issue(s);
    }
    CpAsyncCommit();
  }
  for (int s = 0; s < steps; ++s) {
    CpAsyncWait<STAGES - 2>();
    __syncthreads();  // stage s landed for all; everyone is done with stage s - 1
    const int next = s + STAGES - 1;
    if (next < steps) prepare(next);
    compute(s % STAGES);
    if (next < steps) issue(next % STAGES);
    CpAsyncCommit();
  }
  CpAsyncWait<0>();
  __syncthreads();  // smem is reused below

  // ---- epilogue: tile -> smem (in the output's orientation) -> global
  T* os = smem;
  const int o_pitch = p.o_trans ? BM + PAD : BN + PAD;
  {
    const int gq = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm0 + i * 16 + gq + 8 * h, c = wn0 + j * 8 + 2 * t;
          const T v0 = FromF<T>(acc[i][j][2 * h]), v1 = FromF<T>(acc[i][j][2 * h + 1]);
          if (p.o_trans) {
            os[c * o_pitch + r] = v0;
            os[(c + 1) * o_pitch + r] = v1;
          } else {
            os[r * o_pitch + c] = v0;
            os[r * o_pitch + c + 1] = v1;
          }
        }
  }
  StoreTile<T, BM, BN, NT>(p, os, o_pitch, p.sdd, g, unit, row0, col0, int(rows_valid), tid,
                           cnt);
}

// SDD mode: the entries [u * NB, min((u + 1) * NB, nnz)) of the sorted coords, NB = BN / bs,
// cut into runs that share a block row (one run unless the chunk crosses a row's end); f(first
// entry, entries) for each run, in order.
template <int NB, typename F>
__device__ __forceinline__ void Runs(const TcArgs& p, int64_t u, F&& f) {
  const int64_t end = (u + 1) * NB < p.nnz ? (u + 1) * NB : p.nnz;
  for (int64_t e0 = u * NB; e0 < end;) {
    const int row = __ldg(p.coords + 2 * e0);
    int64_t e1 = e0 + 1;
    while (e1 < end && __ldg(p.coords + 2 * e1) == row) ++e1;
    f(e0, e1 - e0);
    e0 = e1;
  }
}

template <typename T, class C>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) TcKernel(const TcArgs p) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  if (p.sdd) {
    constexpr int NB = C::BN / C::BS;  // blocks per CTA (a run of one block row)
    const int64_t chunks = (p.nnz + NB - 1) / NB;
    for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
      for (int64_t u = blockIdx.x; u < chunks; u += gridDim.x)
        Runs<NB>(p, u, [&](int64_t first, int64_t entries) {
          Tile<T, C>(p, g, first, entries, smem);
          __syncthreads();
        });
  } else {
    // x: the line (in `order`, longest first); y: the row tile. Consecutive CTAs share a
    // row tile, so the dense operand's panel is read from DRAM about once (L2 reuse).
    for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
      for (int64_t mt = blockIdx.y; mt < p.m_tiles; mt += gridDim.y)
        for (int64_t l = blockIdx.x; l < p.lines; l += gridDim.x) {
          Tile<T, C>(p, g, l, mt, smem);
          __syncthreads();
        }
  }
}

// Launches a tile kernel (mma.sync or wgmma) with `smem` bytes of dynamic shared memory,
// raising the kernel's limit first (once per device); returns the launch's error.
template <void (*Kernel)(TcArgs)>
cudaError_t LaunchTile(dim3 grid, int threads, int smem, const TcArgs& args,
                       cudaStream_t stream) {
  static std::atomic<uint64_t> configured{0};  // dynamic smem limit raised, per device
  cudaError_t err = AllowDynamicSmem(configured, reinterpret_cast<const void*>(Kernel), smem);
  if (err != cudaSuccess) return err;
  Kernel<<<grid, threads, smem, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace tc
}  // namespace jax_blocksparse
