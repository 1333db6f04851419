// Hopper (sm_90a) kernel of the DS-mode ops (dds, and dsd run as its transpose; see the DS
// mode in tc_tile.cuh for the mapping) on warpgroup MMAs (wgmma.mma_async), for 16-bit
// types and block sizes 64 / 128, and for float read as tf32 (K-major operands only: wgmma
// takes no transposes of 32-bit operands; the Python lowering passes them so). Instantiated
// in one translation unit per dtype (wgmma_lines_{bf16,f16,f32}.cu); the dispatch table
// (dispatch.cu) names the launchers.
//
// The CTA owns an output tile of BM = 64*NWG rows of the dense dimension x one line (BN =
// bs columns); warpgroup w computes rows [64w, 64w+64) with one m64nBSk16 wgmma per 16 of
// K (k8 for tf32), accumulators (float32) in registers. The K loop walks the line's blocks in
// steps of one 128-byte line of K (64 16-bit elements, 32 floats): per step, the A tile (BM x 64 of op(A), at the
// block's row of A) and the B tile (64 x bs of op(block)) are copied by all threads with
// 16-byte cp.async into a STAGES-deep shared-memory ring, in the swizzled line layout of
// wgmma.cuh; each operand keeps the orientation it has in global memory (K-major or
// M/N-major, chosen by the transpose flags, template parameters here) and the wgmma's
// transpose bits read it as stored.
//
// Pipeline, per step s: wait for this thread's copies of step s, fence them to the async
// proxy, barrier; issue the step's wgmmas (one commit group); then the copies of step
// s + STAGES - 2 into the slot last read by step s - 2 (free: every warpgroup waited for it
// before the barrier); then wait until at most one wgmma group (step s) is in flight. So
// one group of MMAs overlaps the barrier, the copies and the metadata loads; block ids are
// read one step ahead of their use.
//
// The epilogue stages the tile in shared memory in the output's orientation and writes
// every element with coalesced 16-byte stores (zeros for empty lines); no atomics, each
// output element is summed by one thread in a fixed order (deterministic).
//
// SDD mode split over K (JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1, opt-in: on an H100 dW within
// the run's noise at bs 128, 0.94x at bs 64, RESULTS 2026-12-06; issue 20 item 2, the
// weight gradient at >= 90% of the forward): one output block has K = 8192 of work, the
// same for every block, so nnz blocks on the resident CTAs run in ceil(nnz / resident)
// rounds; at bs 128, density 0.1 (410 blocks, 132 resident) the fourth round keeps 14 SMs
// busy: 3.1 / 4 = 78% of the rounds' time, the measured 79% of the forward's rate. The
// launcher (SddSplits) may then launch clusters of S = 2 or 4 CTAs per block, CTA r
// taking K steps [r T / S, (r + 1) T / S); each stores its float32 partial tile in its
// shared memory, and after a cluster barrier CTA r sums rows [r bs / S, (r + 1) bs / S)
// of the S partials in rank order 0..S-1 through distributed shared memory (the same
// additions whichever CTA runs them: deterministic; S depends only on nnz x batch and
// the device) and stores them; a second cluster barrier keeps each partial until read.
#pragma once

#include <cstring>  // memcpy

#include "../switches.h"
#include "../tma.cuh"
#include "wgmma_common.cuh"

namespace jax_blocksparse {
namespace wg {

// BS: block size (= N of the wgmma); NWG: consumer warpgroups (BM = 64 * NWG); STAGES:
// depth of the ring; MINB: CTAs per SM for the register allocation; SDD: SDD mode (one
// bs x bs output block per CTA, BM = BS, the dense K in steps of one 128-byte line, masked tail).
template <int BS_, int NWG_, int STAGES_, int MINB_, bool SDD_ = false>
struct Cfg {
  static constexpr int BS = BS_, NWG = NWG_, BM = 64 * NWG_, NT = 128 * NWG_;
  static constexpr int STAGES = STAGES_, MINB = MINB_;
  static constexpr bool SDD = SDD_;
  static_assert(!SDD || BM == BS, "SDD: the tile is one block");
  static constexpr int A_BYTES = BM * kLine, B_BYTES = BS * kLine;  // one stage
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int RING = STAGES * STAGE_BYTES;
  static constexpr int EPI =  // bytes of the staged tile, elements of up to 4 bytes
      4 * (BM * (BS + 8) > BS * (BM + 8) ? BM * (BS + 8) : BS * (BM + 8));
  static constexpr int SMEM = (RING > EPI ? RING : EPI) + 1024;  // + 1024-byte alignment
  static_assert(BS == 64 || BS == 128, "block size");
  static_assert(STAGES >= 3, "one wgmma group stays in flight: 3 stages at least");
};

// Four floats converted to T at `dst` in one vector store (8 bytes for a 16-bit T, 16 for
// float; `dst` aligned so). Inline PTX: the compiler split a store of a T[4] array.
template <typename T>
__device__ __forceinline__ void StoreFour(T* dst, float4 v) {
  if constexpr (sizeof(T) == 2) {
    const wg::Pair<T> lo{tc::FromF<T>(v.x), tc::FromF<T>(v.y)};
    const wg::Pair<T> hi{tc::FromF<T>(v.z), tc::FromF<T>(v.w)};
    uint32_t a, b;
    memcpy(&a, &lo, 4);
    memcpy(&b, &hi, 4);
    asm volatile("st.global.v2.b32 [%0], {%1, %2};\n" ::"l"(dst), "r"(a), "r"(b) : "memory");
  } else {
    asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(v.x), "f"(v.y),
                 "f"(v.z), "f"(v.w)
                 : "memory");
  }
}

// SDD split over K: this CTA's accumulators (the tile's float32 partial over its K steps)
// into its shared memory, rows of BS + 8 floats; after a cluster barrier, rows [split
// BS / splits, (split + 1) BS / splits) of the cluster's `splits` partials summed in rank
// order, converted and stored into output block `unit` (row stride ldo); a second
// barrier keeps the partials until every CTA has read them.
template <typename T, class C>
__device__ __forceinline__ void SplitEpilogue(const TcArgs& p, int64_t g, int64_t unit,
                                              const float* acc, unsigned char* smem, int wgi,
                                              int tid, int split, int splits) {
  constexpr int BS = C::BS, NT = C::NT, kPitch = BS + 8, kF4 = BS / 4;  // float4s a row
  static_assert(BS * kPitch * 4 <= C::RING, "the partial tile fits the ring");
  float* part = reinterpret_cast<float*>(smem);
  const int lane = tid & 31, w4 = (tid >> 5) & 3;
  const int rb = wgi * 64 + w4 * 16 + (lane >> 2), cb2 = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < BS / 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h)  // 8-byte stores, each half warp on 32 banks
      *reinterpret_cast<float2*>(part + (rb + 8 * h) * kPitch + 8 * j + cb2) =
          make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
  tma::ClusterSync();  // every partial written (release / acquire at cluster scope)
  const uint32_t base = tc::SmemAddr(smem);
  const int rows = BS / splits;
  T* out = static_cast<T*>(p.out) + g * p.o_bstride + unit * int64_t(BS * BS);
  for (int id = tid; id < rows * kF4; id += NT) {
    const int r = split * rows + id / kF4, c = (id % kF4) * 4;
    const uint32_t off = base + uint32_t((r * kPitch + c) * 4);
    float4 v = tma::LoadCluster4(tma::ClusterAddr(off, 0));
    for (int q = 1; q < splits; ++q) {
      const float4 w = tma::LoadCluster4(tma::ClusterAddr(off, uint32_t(q)));
      v.x += w.x;
      v.y += w.y;
      v.z += w.z;
      v.w += w.w;
    }
    T* dst = out + r * p.ldo + c;
    if (p.o_vec) {  // one 8-byte (16-bit T) or 16-byte (float) store
      StoreFour(dst, v);
    } else {
      dst[0] = tc::FromF<T>(v.x);
      dst[1] = tc::FromF<T>(v.y);
      dst[2] = tc::FromF<T>(v.z);
      dst[3] = tc::FromF<T>(v.w);
    }
  }
  tma::ClusterSync();  // the peers have read this CTA's partial
}

template <typename T, class C, bool TA, bool TB>
__device__ __forceinline__ void Tile(const TcArgs& p, int64_t g, int64_t unit, int64_t mt,
                                     unsigned char* smem) {
  constexpr int BS = C::BS, BM = C::BM, NT = C::NT, STAGES = C::STAGES;
  constexpr bool kAMn = TA;   // A stored M-major (imm-trans-a = 1)
  constexpr bool kBMn = !TB;  // op(block) stored N-major (imm-trans-b = 1)
  constexpr int kE = 16 / int(sizeof(T));       // elements per 16-byte chunk
  constexpr int kStep = kLine / int(sizeof(T));  // K per step: one 128-byte line
  constexpr int KSUB = BS / kStep;               // K steps per block
  static_assert(sizeof(T) == 2 || (!kAMn && !kBMn), "tf32: K-major operands only");
  using CA = Copies<BM, NT, kAMn>;
  using CB = Copies<BS, NT, kBMn>;

  const int tid = threadIdx.x;
  const T* a = static_cast<const T*>(p.a) + g * p.a_bstride;
  const T* b = static_cast<const T*>(p.b) + g * p.b_bstride;
  const uint32_t ring = tc::SmemAddr(smem);

  int64_t row0, col0;  // first row of the tile in op(A); first column in the output
  int steps, e0 = 0;
  int s_begin = 0, split = 0, splits = 1;  // SDD: this CTA's K steps, its share of the cluster's
  int64_t rows_left;  // rows of the tile inside the output (DS: masked tail)
  if constexpr (C::SDD) {
    row0 = int64_t(p.coords[2 * unit]) * BS;
    col0 = int64_t(p.coords[2 * unit + 1]) * BS;
    split = int(tma::ClusterCtaRank());
    splits = int(tma::ClusterCtas());  // 1 unless SddSplits launched clusters
    const int64_t total = (p.K + kStep - 1) / kStep;
    s_begin = int(split * total / splits);
    steps = int((split + 1) * total / splits) - s_begin;
    rows_left = BM;
  } else {
    const int line = p.order[unit];
    e0 = p.ptr[line];
    steps = (p.ptr[line + 1] - e0) * KSUB;
    row0 = mt * BM;
    col0 = int64_t(line) * BS;
    rows_left = p.M - row0;  // >= 1
  }
  const int rows_valid = rows_left < BM ? int(rows_left) : BM;

  // ---- copies
  const CA ca(tid);
  const CB cb(tid);
  const int64_t lda = p.lda;
  // A: chunk i at a_base + i*RSTEP*lda + (step offset: k, or k*lda when M-major)
  const T* a_base =
      kAMn ? a + ca.r0 * lda + row0 + ca.cc * kE : a + (row0 + ca.r0) * lda + ca.cc * kE;
  const int64_t a_istride = int64_t(CA::RSTEP) * lda;
  // valid bytes: M-major, the chunk's 8 rows of M (same for all i); K-major, per i
  int a_bytes_mn = 16;
  int a_rows = 0;  // K-major: chunk i valid iff i*RSTEP < a_rows
  if (kAMn) {
    const int64_t left = rows_left - ca.cc * kE;
    a_bytes_mn = left <= 0 ? 0 : (left < kE ? int(left * sizeof(T)) : 16);
  } else {
    const int64_t left = rows_left - ca.r0;
    a_rows = left <= 0 ? 0 : (left > BM ? BM : int(left));
  }
  // B: DS, chunk i at b + blk*BS*BS + r0*BS + cc*kE + i*RSTEP*BS + (kin, or kin*BS when
  // N-major); SDD, at b_base + i*RSTEP*ldb + (k, or k*ldb when N-major)
  const int b_off0 = cb.r0 * BS + cb.cc * kE;
  const int64_t ldb = p.ldb;
  const T* b_base =
      kBMn ? b + cb.r0 * ldb + col0 + cb.cc * kE : b + (col0 + cb.r0) * ldb + cb.cc * kE;
  const int64_t b_istride = int64_t(CB::RSTEP) * ldb;

  // SDD: copies of K step s, the tail masked (zero filled): along K-major rows by bytes,
  // MN-major rows (k) whole.
  auto issue_sdd = [&](int s) {
    const int64_t k0 = int64_t(s_begin + s) * kStep, kl = p.K - k0;  // kl >= 1
    const uint32_t st = ring + uint32_t((s % STAGES) * C::STAGE_BYTES);
    auto kbytes = [](int64_t left) {
      return left <= 0 ? 0 : (left < kE ? int(left * sizeof(T)) : 16);
    };
    const T* as = a_base + (kAMn ? k0 * lda : k0);
    const int nka = kbytes(kl - ca.cc * kE);
#pragma unroll
    for (int i = 0; i < CA::CH; ++i) {
      const int n = kAMn ? (ca.r0 + i * CA::RSTEP < kl ? 16 : 0) : nka;
      tc::CpAsync16(st + ca.dst0 + i * CA::RSTEP * kLine, n > 0 ? as + i * a_istride : a, n);
    }
    const T* bs_ = b_base + (kBMn ? k0 * ldb : k0);
    const int nkb = kbytes(kl - cb.cc * kE);
#pragma unroll
    for (int i = 0; i < CB::CH; ++i) {
      const int n = kBMn ? (cb.r0 + i * CB::RSTEP < kl ? 16 : 0) : nkb;
      tc::CpAsync16(st + C::A_BYTES + cb.dst0 + i * CB::RSTEP * kLine,
                    n > 0 ? bs_ + i * b_istride : b, n);
    }
  };

  auto issue = [&](int s, int idx, int blk) {
    if constexpr (C::SDD) {
      issue_sdd(s);
    } else {
      const int kin = (s % KSUB) * kStep;
      const int64_t ka = int64_t(idx) * BS + kin;
      const uint32_t st = ring + uint32_t((s % STAGES) * C::STAGE_BYTES);
      const T* as = a_base + (kAMn ? ka * lda : ka);
#pragma unroll
      for (int i = 0; i < CA::CH; ++i) {
        const int n = kAMn ? a_bytes_mn : (i * CA::RSTEP < a_rows ? 16 : 0);
        tc::CpAsync16(st + ca.dst0 + i * CA::RSTEP * kLine, n > 0 ? as + i * a_istride : a, n);
      }
      const T* bsrc = b + int64_t(blk) * (BS * BS) + b_off0 + (kBMn ? kin * BS : kin);
#pragma unroll
      for (int i = 0; i < CB::CH; ++i)
        tc::CpAsync16(st + C::A_BYTES + cb.dst0 + i * CB::RSTEP * kLine,
                      bsrc + i * CB::RSTEP * BS, 16);
    }
  };
  auto meta = [&](int s, int& idx, int& blk) {
    if (!C::SDD && s < steps) {
      const int e = e0 + s / KSUB;
      idx = __ldg(p.idx + e);
      blk = __ldg(p.blk + e);
    }
  };

  // ---- MMA operands: descriptors of stage 0, K slice 0 (32 bytes) of this warpgroup
  const int wgi = tid / 128;
  constexpr uint32_t kSbo = 1024;
  constexpr uint32_t kALbo = kAMn ? kBK * kLine : 16, kBLbo = kBMn ? kBK * kLine : 16;
  constexpr uint32_t kAkk = kAMn ? 16 * kLine : 32, kBkk = kBMn ? 16 * kLine : 32;
  const uint64_t da0 = Desc(ring + uint32_t(wgi * 64 * kLine), kALbo, kSbo);
  const uint64_t db0 = Desc(ring + C::A_BYTES, kBLbo, kSbo);

  float acc[BS / 2];
#pragma unroll
  for (int i = 0; i < BS / 2; ++i) acc[i] = 0.f;

  // ---- the pipeline
  int m_idx = 0, m_blk = 0;
#pragma unroll
  for (int s = 0; s < STAGES - 2; ++s) {
    if (s < steps) {
      meta(s, m_idx, m_blk);
      issue(s, m_idx, m_blk);
    }
    tc::CpAsyncCommit();
  }
  meta(STAGES - 2, m_idx, m_blk);
  for (int s = 0; s < steps; ++s) {
    tc::CpAsyncWait<STAGES - 3>();
    FenceProxyAsync();
    __syncthreads();
    {
      const uint64_t so = uint64_t(((s % STAGES) * C::STAGE_BYTES) >> 4);
#pragma unroll
      for (int i = 0; i < BS / 2; ++i) FenceOperand(acc[i]);
      Fence();
#pragma unroll
      for (int kk = 0; kk < kLine / 32; ++kk)
        Mma<T, BS, kAMn ? 1 : 0, kBMn ? 1 : 0>(acc, da0 + so + ((kk * kAkk) >> 4),
                                                db0 + so + ((kk * kBkk) >> 4));
      Commit();
    }
    const int nx = s + STAGES - 2;
    if (nx < steps) {
      issue(nx, m_idx, m_blk);
      meta(nx + 1, m_idx, m_blk);
    }
    tc::CpAsyncCommit();
    Wait<1>();
#pragma unroll
    for (int i = 0; i < BS / 2; ++i) FenceOperand(acc[i]);
  }
  Wait<0>();
#pragma unroll
  for (int i = 0; i < BS / 2; ++i) FenceOperand(acc[i]);
  tc::CpAsyncWait<0>();
  __syncthreads();  // the ring is reused below

  if constexpr (C::SDD) {
    if (splits > 1) {
      SplitEpilogue<T, C>(p, g, unit, acc, smem, wgi, tid, split, splits);
      return;
    }
  }
  // ---- epilogue: tile -> smem (in the output's orientation) -> global
  T* os = reinterpret_cast<T*>(smem);
  const int o_pitch = p.o_trans ? BM + 8 : BS + 8;
  JBS_WG_STAGE_ACCUMULATORS(T, BS, p, acc, os, o_pitch, wgi, tid)
  tc::StoreTile<T, BM, BS, NT>(p, os, o_pitch, C::SDD, g, unit, row0, col0, rows_valid, tid);
}

template <typename T, class C, bool TA, bool TB>
__global__ void __launch_bounds__(C::NT, C::MINB) WgKernel(const TcArgs p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  // the swizzle atoms need 1024-byte alignment of the shared-space address
  const uint32_t base = tc::SmemAddr(smem_raw);
  unsigned char* smem = smem_raw + ((1024u - (base & 1023u)) & 1023u);
  // x: the line (in `order`, longest first); y: the row tile (consecutive CTAs share it,
  // so the dense operand's panel is read from DRAM about once).
  if constexpr (C::SDD) {
    // one block per cluster (one CTA unless SddSplits launched clusters along x)
    const uint32_t splits = tma::ClusterCtas();
    for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
      for (int64_t e = blockIdx.x / splits; e < p.nnz; e += gridDim.x / splits) {
        Tile<T, C, TA, TB>(p, g, e, 0, smem);
        __syncthreads();
      }
  } else {
    for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
      for (int64_t mt = blockIdx.y; mt < p.m_tiles; mt += gridDim.y)
        for (int64_t l = blockIdx.x; l < p.lines; l += gridDim.x) {
          Tile<T, C, TA, TB>(p, g, l, mt, smem);
          __syncthreads();
        }
  }
#else
  __trap();  // built without sm_90a code: WgmmaUsable() never lets this run
#endif
}

// Configurations per block size.
using Wg64 = Cfg<64, 4, 5, 1>;
using Wg128 = Cfg<128, 4, 4, 1>;
// SDD mode: one bs x bs output block per CTA (BM = bs), the dense K in steps of one line.
using Sdd64 = Cfg<64, 1, 4, 3, true>;
using Sdd128 = Cfg<128, 2, 4, 1, true>;

// SDD split over K (the header's last paragraph): the CTAs per output block, 1, 2 or 4,
// whose launch is modelled to end first: rounds(S) = ceil(blocks / resident clusters of S
// CTAs) times a CTA's time, T / S steps of K plus 2 steps' worth for the partials'
// exchange when S > 1 (64 KB written and read at bs 128, about 2 of T = 128 steps of 64
// at K 8192: an estimate until measured). The resident clusters are asked once per device.
template <void (*Kernel)(TcArgs)>
int SddSplits(int64_t blocks, int64_t k, int k_step, int threads, int smem) {
  static std::atomic<int> resident[3][64];  // clusters of 1, 2, 4 CTAs, per device
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 1;
  const int64_t steps = (k + k_step - 1) / k_step;  // the kernel's K steps (one 128-byte line)
  int best = 1;
  double best_time = 0;
  for (int i = 0; i < 3; ++i) {
    const int S = 1 << i;
    int n = resident[i][dev & 63].load(std::memory_order_acquire);
    if (n == 0 && S == 1) {  // no cluster: the resident CTAs
      n = CtasPerWave(reinterpret_cast<const void*>(Kernel), threads, smem);
      if (n <= 0) return 1;
      resident[i][dev & 63].store(n, std::memory_order_release);
    } else if (n == 0) {
      const ClusterLaunch one(dim3(unsigned(S)), threads, smem, unsigned(S), nullptr);
      if (cudaOccupancyMaxActiveClusters(&n, Kernel, &one.cfg) != cudaSuccess || n <= 0) {
        (void)cudaGetLastError();
        continue;  // not chosen this call (asked again next call: the error may be another's)
      }
      resident[i][dev & 63].store(n, std::memory_order_release);
    }
    const double rounds = double((blocks + n - 1) / n);
    const double time = rounds * (double(steps) / S + (S > 1 ? 2.0 : 0.0));
    if (i == 0 || time < best_time) {
      best = S;
      best_time = time;
    }
  }
  return best;
}

template <typename T, class C, bool TA, bool TB>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  dim3 grid;
  if constexpr (C::SDD) {
    if (GetSwitches().sdd_split && args.nnz > 0) {
      const auto kernel = WgKernel<T, C, TA, TB>;
      static std::atomic<uint64_t> configured{0};
      cudaError_t err =
          AllowDynamicSmem(configured, reinterpret_cast<const void*>(kernel), C::SMEM);
      if (err != cudaSuccess) return err;
      const int64_t blocks = args.nnz * (args.batch < 65535 ? args.batch : 65535);
      const int S = SddSplits<WgKernel<T, C, TA, TB>>(blocks, args.K, kLine / int(sizeof(T)),
                                                      C::NT, C::SMEM);
      if (GetSwitches().debug) LaunchDetail() = " sdd-split=" + std::to_string(S);
      if (S > 1) {
        const ClusterLaunch launch(
            dim3(unsigned(S) * Clamp(args.nnz, 0x7fffffff / S), 1, Clamp(args.batch, 65535)),
            C::NT, C::SMEM, unsigned(S), stream);
        const cudaError_t launched = cudaLaunchKernelEx(&launch.cfg, kernel, args);
        const cudaError_t last = cudaGetLastError();  // as LaunchTile: nothing left pending
        return launched != cudaSuccess ? launched : last;
      }
    }
    grid = dim3(Clamp(args.nnz, 0x7fffffff), 1, Clamp(args.batch, 65535));
  } else {
    args.m_tiles = (args.M + C::BM - 1) / C::BM;
    grid = dim3(Clamp(args.lines, 0x7fffffff), Clamp(args.m_tiles, 65535),
                Clamp(args.batch, 65535));
  }
  return tc::LaunchTile<WgKernel<T, C, TA, TB>>(grid, C::NT, C::SMEM, args, stream);
}

// Whether the wgmma kernels can run `args` on the current device: block size 64 or 128,
// and (Sm90Usable) 16-byte aligned operand rows, an sm_90 device and kernels built for
// sm_90a (asked of one instantiation: of float, the only one, K-major A and B).
template <typename T>
bool WgmmaUsable(const TcArgs& args, int block_size) {
  constexpr bool kTf32 = std::is_same<T, float>::value;
  return (block_size == 64 || block_size == 128) &&
         Sm90Usable<WgKernel<T, Wg64, false, kTf32>>(args);
}

// The launchers (one per configuration and transposition: `Run<T, C, TA, TB>`) and the
// checks the dispatch table (dispatch.cu) names: declared `extern template` there,
// instantiated in wgmma_lines_<dtype>.cu.
#define JBS_WGMMA_LAUNCHERS(PREFIX, T)      \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Wg64)   \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Wg128)  \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Sdd64)  \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Sdd128) \
  PREFIX bool WgmmaUsable<T>(const TcArgs&, int);
// float (tf32): K-major A and B only (TA = false, TB = true).
#define JBS_WGMMA_TF32_LAUNCHERS(PREFIX)                             \
  PREFIX cudaError_t Run<float, Wg64, false, true>(TcArgs, cudaStream_t);   \
  PREFIX cudaError_t Run<float, Wg128, false, true>(TcArgs, cudaStream_t);  \
  PREFIX cudaError_t Run<float, Sdd64, false, true>(TcArgs, cudaStream_t);  \
  PREFIX cudaError_t Run<float, Sdd128, false, true>(TcArgs, cudaStream_t); \
  PREFIX bool WgmmaUsable<float>(const TcArgs&, int);

}  // namespace wg
}  // namespace jax_blocksparse
