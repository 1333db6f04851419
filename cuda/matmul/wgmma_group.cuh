// Hopper (sm_90a) kernel of the DS-mode ops (dds, and dsd run as its transpose) at block
// sizes 16 and 32 with one accumulator tile per line: the design the bound favours after
// wgmma_small.cuh (benchmarks/RESULTS.md 2026-12-02 second session, issue 20). Opt-in
// (JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1): correct on the H200 but 0.45-0.64x the speed of
// wgmma_small.cuh reading host records, 0.76-0.96x at BN = 128 (RESULTS 2026-12-05 second
// session; the first version's profile: one CTA per SM at 245 registers, about 800
// instructions per warp per step, mostly the 64 (bs 16) presence branches and each listed
// block's descriptor and wgmma; 4,600 cycles a step). Instantiated per dtype in
// wgmma_group_{bf16,f16}.cu.
//
// A CTA owns BM = 128 rows x BN = 256 output columns: a group of G = 256/bs lines (16 at
// bs 16, 8 at bs 32); or, at BN = 128 (JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=128), half as
// many lines, 64 accumulators a thread, a 3-step ring and two CTAs per SM. Its K loop
// walks the union of the block rows its lines list, R = 64/bs union rows per step: the A
// tile (128 x 64 of op(A)) gathers the R rows' bs-wide
// slices once for every line that lists them (wgmma_small.cuh's A tile), and the B tile
// (256 x 64) receives each listed (union row, line) block at its place; absent blocks are
// neither copied nor read. Each warpgroup then runs, for every listed block, one m64n{bs}k16
// wgmma per 16 of its k (bs/16 of them) into that line's accumulators (bs/2 registers a
// thread, 128 in all): no product on a zero block, where wgmma_small.cuh's 64-column
// products spend 71% (bs 16) / 47% (bs 32) of their work on zero blocks at density 0.1. A
// step's blocks are picked by uniform branches on its presence mask (ptxas keeps the
// wgmma pipeline: no serialization warning).
//
// The union is merged on the host (jax_blocksparse/layout.py, group_steps): the call's
// metadata holds, for each group, its steps' records (union rows, presence mask, block ids),
// so no thread merges lists; each thread loads its chunks' fields of the next step's record
// while the current step's products run. Bound (random layout, density d = 0.1, bytes into
// the SMs per useful FLOP): (1-(1-d)^G)/(G*d*bs) + 1/BM = 0.0396 at bs 16 and 0.0301 at bs
// 32, against 0.0615 / 0.0375 for wgmma_small.cuh.
//
// Pipeline and epilogue as wgmma_small.cuh (cp.async ring of STAGES steps, one wgmma group
// in flight, the tile staged in shared memory and stored as 16-byte chunks of the group's
// valid columns; each output element summed by one thread in a fixed order: deterministic).
#pragma once

#include "wgmma_common.cuh"

namespace jax_blocksparse {
namespace wgg {

using tc::TcArgs;
using wg::kBK;
using wg::kLine;

constexpr int kBM = 128, kNT = 256;  // two consumer warpgroups of 64 rows

// BN output columns per CTA (256: one CTA per SM; 128: two, a 3-step ring)
template <int BS_, int BN_, int STAGES_, int MINB_>
struct Cfg {
  static constexpr int BS = BS_, BN = BN_, G = BN_ / BS_, R = kBK / BS_;
  static constexpr int STAGES = STAGES_, MINB = MINB_;
  static constexpr int SLOTS = R * G;           // (union row, line) places of a step
  static constexpr int MW = (SLOTS + 31) / 32;  // presence-mask words of a step
  // One step's record (int32): the R union rows (-1 past the group's last), the presence
  // mask (bit r * G + j: line j has a block at union row r), the block id of each place
  // (-1: none). jax_blocksparse/layout.py writes them (group_steps with BN columns).
  static constexpr int REC = R + MW + SLOTS;
  static constexpr int A_BYTES = kBM * kLine, B_BYTES = BN * kLine;
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int RING = STAGES * STAGE_BYTES;
  static constexpr int EPI = 2 * (kBM * (BN + 8) > BN * (kBM + 8) ? kBM * (BN + 8)
                                                                  : BN * (kBM + 8));
  static constexpr int MASKS = RING > EPI ? RING : EPI;  // offset of the steps' masks
  static constexpr int SMEM = MASKS + STAGES * MW * 4 + 1024;  // + 1024-byte alignment
  static_assert(BS == 16 || BS == 32, "block size");
  static_assert(BN == 128 || BN == 256, "columns");
  static_assert(STAGES >= 3, "one wgmma group stays in flight: 3 stages at least");
  static_assert(SMEM * MINB <= 227 * 1024, "shared memory");
};

using Group16 = Cfg<16, 256, 4, 1>;
using Group32 = Cfg<32, 256, 4, 1>;
using Group16x128 = Cfg<16, 128, 3, 2>;
using Group32x128 = Cfg<32, 128, 3, 2>;

template <typename T, class C, bool TA, bool TB>
__device__ __forceinline__ void Tile(const TcArgs& p, int64_t g, int64_t group, int64_t mt,
                                     unsigned char* smem) {
  constexpr int BS = C::BS, BN = C::BN, G = C::G, R = C::R, MW = C::MW, STAGES = C::STAGES;
  using Copies = wg::GroupCopies<T, kBM, BN, kNT, BS, TA, TB>;
  static_assert(Copies::REC == C::REC, "record layout");
  constexpr bool kAMn = Copies::kAMn, kBMn = Copies::kBMn;
  using Fields = typename Copies::Fields;

  const int tid = threadIdx.x;
  const uint32_t ring = tc::SmemAddr(smem);
  int* masks = reinterpret_cast<int*>(smem + C::MASKS);

  const int64_t line0 = group * G;
  const int lines_here = p.lines - line0 < G ? int(p.lines - line0) : G;  // >= 1
  const int64_t row0 = mt * kBM, col0 = line0 * BS;
  const int64_t rows_left = p.M - row0;  // >= 1
  const int rows_valid = rows_left < kBM ? int(rows_left) : kBM;

  // This group's records
  const int64_t groups = (p.lines + G - 1) / G;
  const int first = __ldg(p.steps + group);
  const int steps = __ldg(p.steps + group + 1) - first;
  const int32_t* recs = p.steps + groups + 1 + int64_t(first) * C::REC;
  const Copies cp(p, g, row0, tid);

  // The record fields this thread's copies of step t need (-1 past the last step);
  // threads 0..MW-1 also carry a word of the step's presence mask to its place in `masks`.
  int mask_word = 0;
  auto fetch = [&](int t, Fields& f) {
    const int32_t* rec = recs + int64_t(t) * C::REC;
    cp.Fetch(rec, t < steps, f);
    mask_word = t < steps && tid < MW ? __ldg(rec + R + tid) : 0;
  };
  // The copies of one step into slot `slot`: places without a block are left as they are
  // (no product reads them); A rows of union rows past the group's last are zero filled.
  auto issue = [&](const Fields& f, int slot) {
    const uint32_t st = ring + uint32_t(slot * C::STAGE_BYTES);
    cp.template Issue<false>(st, st + C::A_BYTES, f);
    if (tid < MW) masks[slot * MW + tid] = mask_word;
  };

  // ---- MMA operands: descriptors of stage 0 for this warpgroup; a product's k16 slice q
  // (q = r * BS/16 + kk: union row r, its slice kk) and line j's column offset are added
  constexpr uint32_t kSbo = 1024;
  constexpr uint32_t kALbo = kAMn ? kBK * kLine : 16, kBLbo = kBMn ? kBK * kLine : 16;
  constexpr uint32_t kAkk = kAMn ? 16 * kLine : 32, kBkk = kBMn ? 16 * kLine : 32;
  // warp-uniform as the compiler sees it (a shuffle from lane 0), so that the descriptors
  // live in uniform registers: no vector-to-uniform moves around each product
  const int wgi = __shfl_sync(0xffffffffu, tid / 128, 0);
  const uint64_t da0 = wg::Desc(ring + uint32_t(wgi * 64 * kLine), kALbo, kSbo);
  const uint64_t db0 = wg::Desc(ring + C::A_BYTES, kBLbo, kSbo);
  // Line j's columns in the B tile: K-major, BS lines per line; N-major, at j*BS elements
  // of the 64-wide slabs (bytes inside a 128-byte line: the swizzle is of address bits, as
  // for the K-major k16 slices)
  auto b_col = [](int j) -> uint32_t {
    return kBMn ? uint32_t((j * BS / 64) * kBK * kLine + (j * BS % 64) * 2)
                : uint32_t(j * BS * kLine);
  };

  float acc[BN / 2];  // line j's m64n{BS} accumulators: acc[j * BS/2 .. + BS/2)
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;

  // ---- the pipeline: steps -(STAGES - 2)..-1 only copy (the prologue); each iteration
  // copies step `issued` and then loads the fields of the one after it
  Fields f;
  fetch(0, f);
  int issued = 0;
  for (int s = -(STAGES - 2); s < steps; ++s) {
    if (s >= 0) {
      tc::CpAsyncWait<STAGES - 3>();
      wg::FenceProxyAsync();
      __syncthreads();
      const int slot = s % STAGES;
      const uint64_t so = uint64_t((slot * C::STAGE_BYTES) >> 4);
      uint32_t m[MW];
#pragma unroll
      for (int w = 0; w < MW; ++w) m[w] = uint32_t(masks[slot * MW + w]);
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) wg::FenceOperand(acc[i]);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < G; ++j) {
          constexpr int kBits = 32;
          const int bit = r * G + j;
          if ((m[bit / kBits] >> (bit % kBits)) & 1u) {
            float(&d)[BS / 2] = *reinterpret_cast<float(*)[BS / 2]>(acc + j * (BS / 2));
            wg::Fence();  // per block: ptxas would insert it (a branch precedes each)
#pragma unroll
            for (int kk = 0; kk < BS / 16; ++kk) {
              const int q = r * (BS / 16) + kk;
              wg::Mma<T, BS, kAMn ? 1 : 0, kBMn ? 1 : 0>(
                  d, da0 + so + ((q * kAkk) >> 4), db0 + so + ((b_col(j) + q * kBkk) >> 4));
            }
          }
        }
      wg::Commit();
    }
    if (issued < steps) {
      issue(f, issued % STAGES);
      fetch(++issued, f);
    }
    tc::CpAsyncCommit();
    if (s >= 0) {
      wg::Wait<1>();
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) wg::FenceOperand(acc[i]);
    }
  }
  // ---- epilogue: tile -> smem (in the output's orientation) -> the valid columns in global
  wg::FinishGroupTile<T, kBM, BN, kNT>(p, g, acc, smem, row0, col0, rows_valid,
                                        lines_here * BS, wgi, tid);
}

template <typename T, class C, bool TA, bool TB>
__global__ void __launch_bounds__(kNT, C::MINB) WggKernel(const TcArgs p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t base = tc::SmemAddr(smem_raw);
  unsigned char* smem = smem_raw + ((1024u - (base & 1023u)) & 1023u);
  // x: the group of lines; y: the row tile (consecutive CTAs share the dense panel in L2).
  const int64_t groups = (p.lines + C::G - 1) / C::G;
  for (int64_t g = blockIdx.z; g < p.batch; g += gridDim.z)
    for (int64_t mt = blockIdx.y; mt < p.m_tiles; mt += gridDim.y)
      for (int64_t l = blockIdx.x; l < groups; l += gridDim.x) {
        Tile<T, C, TA, TB>(p, g, l, mt, smem);
        __syncthreads();
      }
#else
  __trap();  // built without sm_90a code: GroupUsable() never lets this run
#endif
}

template <typename T, class C, bool TA, bool TB>
cudaError_t Run(TcArgs args, cudaStream_t stream) {
  const dim3 grid = wg::GroupGrid<C::G, kBM>(args);
  const int64_t groups = (args.lines + C::G - 1) / C::G;
  if (args.steps == nullptr || !wg::RecordsFit(args.steps_count, groups, C::REC))
    return cudaErrorInvalidValue;  // records of this width that do not fit: a caller's error
  return tc::LaunchTile<WggKernel<T, C, TA, TB>>(grid, kNT, C::SMEM, args, stream);
}

// Whether this kernel at BN columns can run `args` here: DS mode at block size 16 or 32,
// the call carrying group records of BN columns (Run checks that they fit), and
// (Sm90Usable) 16-byte aligned operand rows, an sm_90 device and the kernels built for
// sm_90a.
template <typename T, int BN>
bool GroupUsable(const TcArgs& args, int block_size) {
  if ((block_size != 16 && block_size != 32) || args.sdd || args.group_columns != BN)
    return false;
  return wg::Sm90Usable<WggKernel<T, Group16, false, false>>(args);
}

// The launchers and the checks the dispatch table names (as JBS_WGMMA_LAUNCHERS).
#define JBS_WGG_LAUNCHERS(PREFIX, T)             \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Group16)     \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Group32)     \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Group16x128) \
  JBS_WG_TRANS_LAUNCHERS(PREFIX, T, Group32x128) \
  PREFIX bool GroupUsable<T, 256>(const TcArgs&, int); \
  PREFIX bool GroupUsable<T, 128>(const TcArgs&, int);

}  // namespace wgg
}  // namespace jax_blocksparse
