// Block lists of block-sparse attention (attention_lists.h): one CTA per n, a warp per line.
//
// A line's entries are read in chunks of 512 (16 per lane: one 16-byte load where `other`
// allows it), each lane turning its 16 kinds into bit masks of partial (1), full (2) and
// "other" entries. A first pass counts them (warp sums), which fixes the line's count and
// where its full entries start; a second pass (the first's masks again when the line is one
// chunk: a warp then loads the kinds of 4 lines together, to keep loads in flight) scans the lanes' mask populations across the warp and writes each entry at its
// position: partial ones from 0, full ones after all partial ones, ascending within each
// group, truncated at the count; the rest of the row is -1. numpy's argsort key sorts
// kinds other than 0, 1, 2 with the absent ones but counts the positive ones as listed:
// the third group reproduces that, so the outputs equal block_lists' for any int8 input.
//
// `order` is a stable counting sort of the counts in shared memory: a histogram of the count
// values (atomic increments: the sums do not depend on their order), its suffix sums (the
// first position of each value, longest first), then one warp places the lines 32 at a time
// in line order, equal counts ranked among the 32 by __match_any_sync.
#include "../attention_lists.h"

#include <atomic>

#include "../launch_util.h"

namespace jax_blocksparse {
namespace {

constexpr int kPer = 16;           // entries per lane per chunk
constexpr int kChunk = 32 * kPer;  // entries per chunk
constexpr unsigned kFull = 0xffffffffu;
constexpr int kGroup = 4;           // lines a warp loads together (lines of one chunk)

struct Masks {
  uint32_t partial, full;  // bit k: entry j0 + k
  uint32_t high;           // kinds above 2 (absent in the lists' order, listed in counts)
};

// The lane's entries of kinds other than 1 and 2 (absent, sorted after the full ones).
__device__ __forceinline__ uint32_t Rest(const Masks& m, int64_t other, int64_t j0) {
  const int64_t valid = other - j0;  // entries j0 + k < other
  const uint32_t in = valid >= kPer ? 0xffffu : valid <= 0 ? 0u : (1u << valid) - 1u;
  return in & ~(m.partial | m.full);
}

// The kinds of the lane's 16 entries from j0 (those at or past `other` are none).
__device__ __forceinline__ Masks LoadMasks(const int8_t* row, int64_t other, int64_t j0,
                                           bool vec) {
  Masks m{0u, 0u, 0u};
  if (vec && j0 + kPer <= other) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(row + j0));
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int8_t x = int8_t((w[k >> 2] >> (8 * (k & 3))) & 0xffu);
      m.partial |= uint32_t(x == 1) << k;
      m.full |= uint32_t(x == 2) << k;
      m.high |= uint32_t(x > 2) << k;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (j0 + k < other) {
        const int8_t x = __ldg(row + j0 + k);
        m.partial |= uint32_t(x == 1) << k;
        m.full |= uint32_t(x == 2) << k;
        m.high |= uint32_t(x > 2) << k;
      }
    }
  }
  return m;
}

// Writes the entries of `mask` (lane's entries from j0) at base, base + 1, ... below `limit`.
__device__ __forceinline__ void Place(int32_t* out, uint32_t mask, int64_t base, int64_t limit,
                                      int64_t j0) {
  while (mask != 0u) {
    const int k = __ffs(mask) - 1;
    mask &= mask - 1u;
    if (base < limit) out[base] = int32_t(j0 + k);
    ++base;
  }
}

// One line: its list in out[0, width), its count returned and its partial count stored
// (lane 0). `first`: the masks of the line's first chunk, already loaded when it has one.
__device__ __forceinline__ int32_t BuildLine(const int8_t* row, int32_t* out, int64_t other,
                                             int64_t width, int64_t chunks, bool vec,
                                             int lane, const Masks& first,
                                             int32_t* partial_out) {
  // Pass 1: the line's partial, full and (kinds > 2) counts.
  int np = 0, nf = 0, npos = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const Masks m = chunks == 1 ? first : LoadMasks(row, other, c * kChunk + lane * kPer, vec);
    np += __popc(m.partial);
    nf += __popc(m.full);
    npos += __popc(m.high);
  }
  np = __reduce_add_sync(kFull, np);
  nf = __reduce_add_sync(kFull, nf);
  npos = __reduce_add_sync(kFull, npos);
  const int64_t listed = int64_t(np) + nf + npos;
  const int64_t count = listed < width ? listed : width;
  // Pass 2: place the entries.
  int64_t pb = 0, fb = np, rb = int64_t(np) + nf;  // next position of each group
  const int64_t p_end = np < count ? np : count;
  const int64_t f_end = int64_t(np) + nf < count ? int64_t(np) + nf : count;
  // (uniform across the warp) until every group's next entry would be past the count
  for (int64_t c = 0; c < chunks && (pb < p_end || fb < f_end || rb < count); ++c) {
    const int64_t j0 = c * kChunk + lane * kPer;
    const Masks m = chunks == 1 ? first : LoadMasks(row, other, j0, vec);
    const uint32_t rest = Rest(m, other, j0);
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
    Place(out, m.partial, pb + (excl & 1023u), count, j0);
    Place(out, m.full, fb + ((excl >> 10) & 1023u), count, j0);
    Place(out, rest, rb + (excl >> 20), count, j0);
    pb += total & 1023u;
    fb += (total >> 10) & 1023u;
    rb += total >> 20;
  }
  for (int64_t e = count + lane; e < width; e += 32) out[e] = -1;
  if (lane == 0) *partial_out = int32_t(p_end);
  return int32_t(count);
}

__global__ void __launch_bounds__(1024) BlockListsKernel(
    const int8_t* __restrict__ kind, int32_t* __restrict__ counts,
    int32_t* __restrict__ partial, int32_t* __restrict__ lists, int32_t* __restrict__ order,
    int64_t lines, int64_t other, int64_t width, int cmax, bool vec) {
  extern __shared__ int32_t smem[];
  int32_t* s_counts = smem;          // [lines]
  int32_t* s_hist = smem + lines;    // [cmax + 1]
  const int64_t n = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int c = threadIdx.x; c <= cmax; c += blockDim.x) s_hist[c] = 0;

  const int64_t chunks = (other + kChunk - 1) / kChunk;
  // A warp takes kGroup lines at a time (warp, warp + warps, ...); lines of one chunk load
  // their kinds first, together, so that the loads of the group are in flight at once.
  for (int64_t l0 = warp; l0 < lines; l0 += int64_t(warps) * kGroup) {
    Masks pre[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t l = l0 + int64_t(g) * warps;
      pre[g] = Masks{0u, 0u, 0u};
      if (chunks == 1 && l < lines)
        pre[g] = LoadMasks(kind + (n * lines + l) * other, other, lane * kPer, vec);
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const int64_t l = l0 + int64_t(g) * warps;
      if (l >= lines) break;  // uniform across the warp
      const int32_t count = BuildLine(kind + (n * lines + l) * other,
                                      lists + (n * lines + l) * width, other, width, chunks,
                                      vec, lane, pre[g], partial + n * lines + l);
      if (lane == 0) {
        counts[n * lines + l] = count;
        s_counts[l] = count;
      }
    }
  }
  __syncthreads();

  // order: a stable counting sort of the counts, longest first.
  for (int64_t l = threadIdx.x; l < lines; l += blockDim.x) atomicAdd(&s_hist[s_counts[l]], 1);
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
  int32_t* order_row = order + n * lines;
  const unsigned below = (1u << lane) - 1u;
  for (int64_t base = 0; base < lines; base += 32) {
    const int64_t l = base + lane;
    const bool active = l < lines;
    const unsigned mask = __ballot_sync(kFull, active);
    int c = 0;
    unsigned peers = 0u;
    if (active) {
      c = s_counts[l];
      peers = __match_any_sync(mask, c);
      order_row[s_hist[c] + __popc(peers & below)] = int32_t(l);
    }
    __syncwarp();
    if (active && lane == 31 - __clz(peers)) s_hist[c] += __popc(peers);
    __syncwarp();
  }
}

std::atomic<uint64_t> g_smem_configured{0};

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
  if (n > 0x7fffffff || other < 0 || width < 0) return cudaErrorInvalidValue;
  const size_t bytes = BlockListsSharedBytes(lines, other, width);
  const size_t limit = BlockListsSharedLimit();
  if (bytes > limit) return cudaErrorInvalidValue;
  if (bytes > 48 * 1024) {
    cudaError_t err = AllowDynamicSmem(g_smem_configured,
                                       reinterpret_cast<const void*>(BlockListsKernel),
                                       int(limit));
    if (err != cudaSuccess) return err;
  }
  const int64_t cmax = other < width ? other : width;
  const bool vec = other % kPer == 0 && reinterpret_cast<uintptr_t>(kind) % 16 == 0;
  const unsigned threads = 32u * Clamp(lines, 32);
  BlockListsKernel<<<unsigned(n), threads, bytes, stream>>>(kind, counts, partial, lists,
                                                            order, lines, other, width,
                                                            int(cmax), vec);
  return cudaGetLastError();
}

}  // namespace jax_blocksparse
