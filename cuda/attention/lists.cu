// Block lists of block-sparse attention (attention_lists.h). Grid (n, 1 + parts): CTA 0 of
// each n sorts its lines into `order`, the others build the lists, a warp per line.
//
// A line's entries are read in chunks of 32 x P (P entries per lane: 2, 4, 8 or 16, the
// fewest that cover a line in one chunk, else 16; one vector load where `other` allows it:
// VEC), each lane turning its P kinds into bit masks of partial (1), full (2) and "other"
// entries (the loads of several chunks, or of several one-chunk lines, are issued before
// any of them is turned into masks, so that they are in flight together). A first pass
// counts them (warp sums), which fixes the line's count and where its full entries start; a
// second pass (the first chunk's bytes again) scans the lanes' mask populations across the
// warp and writes each entry at its position: partial ones from 0, full ones after all
// partial ones, ascending within each group, truncated at the count; the rest of the row
// is -1. numpy's argsort key sorts kinds other
// than 0, 1, 2 with the absent ones but counts the positive ones as listed: the third group
// reproduces that, so the outputs equal block_lists' for any int8 input.
//
// `order` (CTA 0, which runs the first pass of every line) is a stable counting sort of the
// counts in shared memory: a histogram of the count values (atomic increments: the sums do
// not depend on their order), its suffix sums (the first position of each value, longest
// first), then one warp places the lines 32 at a time in line order, equal counts ranked
// among the 32 by __match_any_sync.
//
// Until 2026-12-05 one CTA per n did all of this: Nsight Compute on the H200 found 17.7 us
// for one n of 64 lines of 64 entries (79k instructions issued on one SM, 12 cycles per
// instruction per warp; RESULTS 2026-12-05), with 4 of 32 lanes holding a line's entries.
#include "../attention_lists.h"

#include <atomic>
#include <climits>

#include "../launch_util.h"

namespace jax_blocksparse {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 512;  // at most: a warp per line, up to 16 lines per CTA
// Chunks (or one-chunk lines) whose loads a warp issues together: 4, or 2 for 16 byte loads
// a lane (more spill registers)
template <int P, bool VEC>
constexpr int kBatch = VEC || P < 16 ? 4 : 2;

struct Masks {
  uint32_t partial, full;  // bit k: entry j0 + k
  uint32_t high;           // kinds above 2 (absent in the lists' order, listed in counts)
};

// The lane's entries of kinds other than 1 and 2 (absent, sorted after the full ones).
template <int P>
__device__ __forceinline__ uint32_t Rest(const Masks& m, int other, int j0) {
  const int valid = other - j0;  // entries j0 + k < other
  const uint32_t in = valid >= P ? (1u << P) - 1u : valid <= 0 ? 0u : (1u << valid) - 1u;
  return in & ~(m.partial | m.full);
}

// The bytes of the lane's P entries from j0, little-endian from .x; 0 (absent) at or past
// `other`. VEC: one P-byte load (other % P == 0 and the operand 16-byte aligned, so a lane's
// entries are all in range or all past it); else P byte loads.
template <int P, bool VEC>
__device__ __forceinline__ uint4 LoadKinds(const int8_t* row, int other, int j0) {
  static_assert(P == 2 || P == 4 || P == 8 || P == 16, "P: 2, 4, 8 or 16");
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if constexpr (VEC) {
    if (j0 < other) {
      if constexpr (P == 16) {
        v = __ldg(reinterpret_cast<const uint4*>(row + j0));
      } else if constexpr (P == 8) {
        const uint2 h = __ldg(reinterpret_cast<const uint2*>(row + j0));
        v.x = h.x, v.y = h.y;
      } else if constexpr (P == 4) {
        v.x = __ldg(reinterpret_cast<const unsigned int*>(row + j0));
      } else {
        v.x = __ldg(reinterpret_cast<const unsigned short*>(row + j0));
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const uint32_t x = j0 + k < other ? uint32_t(uint8_t(__ldg(row + j0 + k))) : 0u;
      (k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w) |= x << (8 * (k & 3));
    }
  }
  return v;
}

// The masks of P kinds (bytes from LoadKinds).
template <int P>
__device__ __forceinline__ Masks ToMasks(const uint4& v) {
  Masks m{0u, 0u, 0u};
#pragma unroll
  for (int k = 0; k < P; ++k) {
    const uint32_t word = k < 4 ? v.x : k < 8 ? v.y : k < 12 ? v.z : v.w;
    const int8_t x = int8_t((word >> (8 * (k & 3))) & 0xffu);
    m.partial |= uint32_t(x == 1) << k;
    m.full |= uint32_t(x == 2) << k;
    m.high |= uint32_t(x > 2) << k;
  }
  return m;
}

template <int P, bool VEC>
__device__ __forceinline__ Masks LoadMasks(const int8_t* row, int other, int j0) {
  return ToMasks<P>(LoadKinds<P, VEC>(row, other, j0));
}

// Writes the entries of `mask` (lane's entries from j0) at base, base + 1, ... below `limit`.
__device__ __forceinline__ void Place(int32_t* out, uint32_t mask, int base, int limit, int j0) {
  while (mask != 0u) {
    const int k = __ffs(mask) - 1;
    mask &= mask - 1u;
    if (base < limit) out[base] = j0 + k;
    ++base;
  }
}

// A line's partial, full and (kinds > 2) entries, warp sums. `first`: the bytes of its
// first chunk, used when it has one chunk; longer lines load kBatch chunks at a time.
template <int P, bool VEC>
__device__ __forceinline__ void CountLine(const int8_t* row, int other, int chunks, int lane,
                                          const uint4& first, int& np, int& nf, int& npos) {
  np = nf = npos = 0;
  if (chunks == 1) {
    const Masks m = ToMasks<P>(first);
    np = __popc(m.partial), nf = __popc(m.full), npos = __popc(m.high);
  } else {
    for (int c0 = 0; c0 < chunks; c0 += kBatch<P, VEC>) {
      uint4 v[kBatch<P, VEC>];
#pragma unroll
      for (int j = 0; j < kBatch<P, VEC>; ++j)  // (a chunk past the line: zeros)
        v[j] = LoadKinds<P, VEC>(row, other, (c0 + j) * 32 * P + lane * P);
#pragma unroll
      for (int j = 0; j < kBatch<P, VEC>; ++j) {
        const Masks m = ToMasks<P>(v[j]);
        np += __popc(m.partial);
        nf += __popc(m.full);
        npos += __popc(m.high);
      }
    }
  }
  np = __reduce_add_sync(kFull, np);
  nf = __reduce_add_sync(kFull, nf);
  npos = __reduce_add_sync(kFull, npos);
}

// min(#listed, width): a line's count.
__device__ __forceinline__ int LineCount(int np, int nf, int npos, int width) {
  const int64_t listed = int64_t(np) + nf + npos;
  return listed < width ? int(listed) : width;
}

// One line: its list in out[0, width), its count and partial count stored (lane 0).
template <int P, bool VEC>
__device__ __forceinline__ void BuildLine(const int8_t* row, int32_t* out, int other, int width,
                                          int chunks, int lane, int32_t* count_out,
                                          int32_t* partial_out) {
  const uint4 first = LoadKinds<P, VEC>(row, other, lane * P);
  int np, nf, npos;
  CountLine<P, VEC>(row, other, chunks, lane, first, np, nf, npos);
  const int count = LineCount(np, nf, npos, width);
  // Pass 2: place the entries.
  int pb = 0, fb = np, rb = np + nf;  // next position of each group
  const int p_end = np < count ? np : count;
  const int f_end = np + nf < count ? np + nf : count;
  // (uniform across the warp) until every group's next entry would be past the count
  for (int c = 0; c < chunks && (pb < p_end || fb < f_end || rb < count); ++c) {
    const int j0 = c * 32 * P + lane * P;
    const Masks m = ToMasks<P>(c == 0 ? first : LoadKinds<P, VEC>(row, other, j0));
    const uint32_t rest = Rest<P>(m, other, j0);
    // Inclusive scan of the lanes' populations, packed 10 bits each (at most 512).
    const uint32_t own = uint32_t(__popc(m.partial)) | uint32_t(__popc(m.full)) << 10 |
                         uint32_t(__popc(rest)) << 20;
    uint32_t incl = own;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const uint32_t v = __shfl_up_sync(kFull, incl, d);
      if (lane >= d) incl += v;
    }
    const uint32_t excl = incl - own, total = __shfl_sync(kFull, incl, 31);
    Place(out, m.partial, pb + int(excl & 1023u), count, j0);
    Place(out, m.full, fb + int((excl >> 10) & 1023u), count, j0);
    Place(out, rest, rb + int(excl >> 20), count, j0);
    pb += int(total & 1023u);
    fb += int((total >> 10) & 1023u);
    rb += int(total >> 20);
  }
  for (int e = count + lane; e < width; e += 32) out[e] = -1;
  if (lane == 0) {
    *count_out = count;
    *partial_out = p_end;
  }
}

// `order` of one n: every line's count (the first pass), then the counting sort.
template <int P, bool VEC>
__device__ void SortLines(const int8_t* kind, int32_t* order_row, int lines, int other,
                          int width, int cmax, int chunks) {
  extern __shared__ int32_t smem[];
  int32_t* s_counts = smem;          // [lines]
  int32_t* s_hist = smem + lines;    // [cmax + 1]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int c = threadIdx.x; c <= cmax; c += blockDim.x) s_hist[c] = 0;
  // kBatch lines a warp at a time (l0, l0 + warps, ...): their first chunks' loads first
  constexpr int kLines = kBatch<P, VEC>;
  for (int l0 = warp; l0 < lines; l0 += kLines * warps) {
    uint4 first[kLines];
#pragma unroll
    for (int g = 0; g < kLines; ++g) {
      const int l = l0 + g * warps;  // (past the lines: nothing loaded, zeros)
      first[g] = LoadKinds<P, VEC>(kind + int64_t(l < lines ? l : 0) * other,
                                   l < lines ? other : 0, lane * P);
    }
#pragma unroll
    for (int g = 0; g < kLines; ++g) {
      const int l = l0 + g * warps;
      if (l >= lines) break;  // uniform across the warp
      int np, nf, npos;
      CountLine<P, VEC>(kind + int64_t(l) * other, other, chunks, lane, first[g], np, nf, npos);
      if (lane == 0) s_counts[l] = LineCount(np, nf, npos, width);
    }
  }
  __syncthreads();
  for (int l = threadIdx.x; l < lines; l += blockDim.x) atomicAdd(&s_hist[s_counts[l]], 1);
  __syncthreads();
  if (warp != 0) return;
  int running = 0;  // lines whose count exceeds the values done
  for (int top = cmax; top >= 0; top -= 32) {
    const int c = top - lane;
    const int h = c >= 0 ? s_hist[c] : 0;
    int incl = h;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int v = __shfl_up_sync(kFull, incl, d);
      if (lane >= d) incl += v;
    }
    if (c >= 0) s_hist[c] = running + incl - h;
    running += __shfl_sync(kFull, incl, 31);
  }
  __syncwarp();
  const unsigned below = (1u << lane) - 1u;
  for (int base = 0; base < lines; base += 32) {
    const int l = base + lane;
    const bool active = l < lines;
    const unsigned mask = __ballot_sync(kFull, active);
    int c = 0;
    unsigned peers = 0u;
    if (active) {
      c = s_counts[l];
      peers = __match_any_sync(mask, c);
      order_row[s_hist[c] + __popc(peers & below)] = l;
    }
    __syncwarp();
    if (active && lane == 31 - __clz(peers)) s_hist[c] += __popc(peers);
    __syncwarp();
  }
}

// blockIdx.x: n; blockIdx.y 0: SortLines, y >= 1: lines (y - 1) * warps + warp.
template <int P, bool VEC>
__global__ void __launch_bounds__(kThreads, 1) BlockListsKernel(
    const int8_t* __restrict__ kind, int32_t* __restrict__ counts,
    int32_t* __restrict__ partial, int32_t* __restrict__ lists, int32_t* __restrict__ order,
    int lines, int other, int width, int cmax) {
  const int64_t n = blockIdx.x;
  const int chunks = (other + 32 * P - 1) / (32 * P);
  const int8_t* kind_n = kind + n * lines * other;
  if (blockIdx.y == 0) {
    SortLines<P, VEC>(kind_n, order + n * lines, lines, other, width, cmax, chunks);
    return;
  }
  const int warps = blockDim.x >> 5;
  const int l = int(blockIdx.y - 1) * warps + (threadIdx.x >> 5);
  if (l >= lines) return;  // (whole warps)
  const int64_t line = n * lines + l;
  BuildLine<P, VEC>(kind_n + int64_t(l) * other, lists + line * width, other, width, chunks,
                    threadIdx.x & 31, counts + line, partial + line);
}

// Launches BlockListsKernel<P, VEC> (its dynamic shared-memory limit raised once per device).
template <int P, bool VEC>
cudaError_t LaunchWith(dim3 grid, unsigned threads, size_t bytes, size_t limit,
                       cudaStream_t stream, const int8_t* kind, int32_t* counts,
                       int32_t* partial, int32_t* lists, int32_t* order, int lines, int other,
                       int width, int cmax) {
  static std::atomic<uint64_t> configured{0};
  if (bytes > 48 * 1024) {
    const cudaError_t err = AllowDynamicSmem(
        configured, reinterpret_cast<const void*>(BlockListsKernel<P, VEC>), int(limit));
    if (err != cudaSuccess) return err;
  }
  BlockListsKernel<P, VEC><<<grid, threads, bytes, stream>>>(kind, counts, partial, lists,
                                                             order, lines, other, width, cmax);
  return cudaGetLastError();
}

// (entries per lane, vector loads) -> launcher
using Launcher = cudaError_t (*)(dim3, unsigned, size_t, size_t, cudaStream_t, const int8_t*,
                                 int32_t*, int32_t*, int32_t*, int32_t*, int, int, int, int);
template <bool VEC>
Launcher LauncherFor(int per) {
  return per == 2 ? LaunchWith<2, VEC> : per == 4 ? LaunchWith<4, VEC>
         : per == 8 ? LaunchWith<8, VEC> : LaunchWith<16, VEC>;
}

}  // namespace

size_t BlockListsSharedBytes(int64_t lines, int64_t other, int64_t width) {
  const int64_t cmax = other < width ? other : width;
  return size_t(lines + cmax + 1) * sizeof(int32_t);
}

size_t BlockListsSharedLimit() {
  static std::atomic<int> limits[64];  // bytes + 1 per device; 0: not asked yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  int v = limits[dev & 63].load(std::memory_order_acquire);
  if (v == 0) {
    int bytes = 0;
    if (cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    v = bytes + 1;
    limits[dev & 63].store(v, std::memory_order_release);
  }
  return size_t(v - 1);
}

cudaError_t LaunchBlockLists(const int8_t* kind, int32_t* counts, int32_t* partial,
                             int32_t* lists, int32_t* order, int64_t n, int64_t lines,
                             int64_t other, int64_t width, cudaStream_t stream) {
  if (n <= 0 || lines <= 0) return cudaSuccess;  // nothing to write
  if (n > 0x7fffffff || other < 0 || width < 0 || lines > INT_MAX || other > INT_MAX ||
      width > INT_MAX)
    return cudaErrorInvalidValue;
  const size_t bytes = BlockListsSharedBytes(lines, other, width);
  const size_t limit = BlockListsSharedLimit();
  if (bytes > limit) return cudaErrorInvalidValue;
  const int64_t cmax = other < width ? other : width;
  const unsigned threads = 32u * Clamp(lines, kThreads / 32);
  const int64_t parts = (lines + threads / 32 - 1) / (threads / 32);  // lines per CTA: warps
  if (parts + 1 > 65535) return cudaErrorInvalidValue;
  const dim3 grid(unsigned(n), unsigned(parts + 1));
  // entries per lane: the fewest that cover a line in one chunk of 32 lanes, else 16
  const int per = other <= 64 ? 2 : other <= 128 ? 4 : other <= 256 ? 8 : 16;
  const bool vec = other % per == 0 && reinterpret_cast<uintptr_t>(kind) % 16 == 0;
  const Launcher launch = vec ? LauncherFor<true>(per) : LauncherFor<false>(per);
  return launch(grid, threads, bytes, limit, stream, kind, counts, partial, lists, order,
                int(lines), int(other), int(width), int(cmax));
}

}  // namespace jax_blocksparse
