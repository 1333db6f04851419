// A standalone check of cuda/attention/lists.cu against a host reference of
// attention_metadata.block_lists (numpy's semantics), with timings: for a GPU machine
// without the package built.
//   nvcc -std=c++17 -O3 -arch=sm_90a -I cuda tests/cuda_block_lists_check.cu \
//        cuda/attention/lists.cu -o /tmp/block_lists_check && /tmp/block_lists_check
// Prints one line per case (match, bitwise equal on two runs, microseconds per call);
// exits 1 on a mismatch.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "attention_lists.h"

using jax_blocksparse::LaunchBlockLists;

struct Out {
  std::vector<int32_t> counts, partial, lists, order;
  bool operator==(const Out& o) const {
    return counts == o.counts && partial == o.partial && lists == o.lists && order == o.order;
  }
};

// numpy's block_lists: keys (group * other + j), stable argsort, truncation, order by
// -count * lines + line.
Out Reference(const std::vector<int8_t>& kind, int64_t n, int64_t lines, int64_t other,
              int64_t width) {
  Out o;
  o.counts.resize(n * lines);
  o.partial.resize(n * lines);
  o.lists.assign(n * lines * width, -1);
  o.order.resize(n * lines);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t l = 0; l < lines; ++l) {
      const int8_t* row = kind.data() + (b * lines + l) * other;
      std::vector<int64_t> idx;
      int64_t listed = 0, np = 0;
      for (int g = 0; g < 3; ++g)
        for (int64_t j = 0; j < other; ++j) {
          const int grp = row[j] == 1 ? 0 : row[j] == 2 ? 1 : 2;
          if (grp == g) idx.push_back(j);
        }
      for (int64_t j = 0; j < other; ++j) listed += row[j] > 0, np += row[j] == 1;
      const int64_t count = std::min(listed, width);
      o.counts[b * lines + l] = int32_t(count);
      o.partial[b * lines + l] = int32_t(std::min(np, count));
      for (int64_t e = 0; e < count; ++e) o.lists[(b * lines + l) * width + e] = int32_t(idx[e]);
    }
    int32_t* ord = o.order.data() + b * lines;
    std::iota(ord, ord + lines, 0);
    const int32_t* c = o.counts.data() + b * lines;
    std::stable_sort(ord, ord + lines, [&](int32_t x, int32_t y) { return c[x] > c[y]; });
  }
  return o;
}

bool Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return true;
  std::printf("CUDA error in %s: %s\n", what, cudaGetErrorString(err));
  return false;
}

int main() {
  struct Case { int64_t n, lines, other, width; double p_absent, p_partial; int offset; };
  const Case cases[] = {
      {1, 1, 1, 1, 0.5, 0.25, 0},      {3, 1, 9, 4, 0.5, 0.25, 0},
      {2, 7, 1, 1, 0.5, 0.25, 0},      {4, 9, 40, 5, 0.5, 0.25, 0},
      {2, 33, 600, 700, 0.5, 0.25, 0}, {2, 33, 600, 11, 0.5, 0.25, 0},
      {2, 6, 13, 4, 1.0, 0.0, 0},      {2, 6, 13, 5, 0.0, 0.0, 0},
      {2, 6, 13, 13, 0.0, 1.0, 0},     {2, 40, 35, 0, 0.5, 0.25, 0},
      {2, 4, 0, 3, 0.5, 0.25, 0},      {3, 100, 1000, 1000, 0.5, 0.25, 0},
      {2, 4096, 512, 7, 0.5, 0.25, 0}, {1, 4096, 512, 512, 0.9, 0.05, 0},
      {1, 8192, 8192, 8192, 0.98, 0.01, 0}, {5, 64, 64, 64, 0.5, 0.25, 3},  // offset: kinds 3, -1
      // typical attention shapes: Rq = Rk = 256 (32k tokens at block 128), N = B * Hm
      {1, 256, 256, 256, 0.7, 0.1, 0}, {8, 256, 256, 64, 0.7, 0.1, 0},
      {16, 512, 512, 512, 0.7, 0.1, 0}, {1, 64, 64, 64, 0.5, 0.2, 0},
  };
  std::mt19937_64 rng(1803);
  bool ok = true;
  for (const Case& cs : cases) {
    const int64_t size = cs.n * cs.lines * cs.other;
    std::vector<int8_t> kind(size);
    std::uniform_real_distribution<double> u(0, 1);
    for (auto& k : kind) {
      const double x = u(rng);
      k = x < cs.p_absent ? 0 : x < cs.p_absent + cs.p_partial ? 1 : 2;
      if (cs.offset && u(rng) < 0.05) k = u(rng) < 0.5 ? 3 : -1;
    }
    const Out want = Reference(kind, cs.n, cs.lines, cs.other, cs.width);
    int8_t* d_kind;
    int32_t* d_out;
    const int64_t nl = cs.n * cs.lines, nlw = nl * cs.width;
    if (!Check(cudaMalloc(&d_kind, std::max<int64_t>(size, 1)), "malloc") ||
        !Check(cudaMalloc(&d_out, 4 * (3 * nl + nlw + 1)), "malloc"))
      return 1;
    cudaMemcpy(d_kind, kind.data(), size, cudaMemcpyHostToDevice);
    Out got[2];
    float us = 0.f;
    for (int run = 0; run < 2; ++run) {
      cudaMemset(d_out, 0x5a, 4 * (3 * nl + nlw + 1));
      if (!Check(LaunchBlockLists(d_kind, d_out, d_out + nl, d_out + 2 * nl, d_out + 2 * nl + nlw,
                                  cs.n, cs.lines, cs.other, cs.width, 0), "launch") ||
          !Check(cudaDeviceSynchronize(), "run"))
        return 1;
      Out& g = got[run];
      g.counts.resize(nl), g.partial.resize(nl), g.lists.resize(nlw), g.order.resize(nl);
      cudaMemcpy(g.counts.data(), d_out, 4 * nl, cudaMemcpyDeviceToHost);
      cudaMemcpy(g.partial.data(), d_out + nl, 4 * nl, cudaMemcpyDeviceToHost);
      cudaMemcpy(g.lists.data(), d_out + 2 * nl, 4 * nlw, cudaMemcpyDeviceToHost);
      cudaMemcpy(g.order.data(), d_out + 2 * nl + nlw, 4 * nl, cudaMemcpyDeviceToHost);
    }
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    const int reps = 50;
    cudaEventRecord(a);
    for (int r = 0; r < reps; ++r)
      LaunchBlockLists(d_kind, d_out, d_out + nl, d_out + 2 * nl, d_out + 2 * nl + nlw, cs.n,
                       cs.lines, cs.other, cs.width, 0);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    cudaEventElapsedTime(&us, a, b);
    const bool match = got[0] == want, same = got[0] == got[1];
    ok &= match && same;
    std::printf("n=%lld lines=%lld other=%lld width=%lld: %s, %s, %.1f us/call\n",
                (long long)cs.n, (long long)cs.lines, (long long)cs.other, (long long)cs.width,
                match ? "match" : "MISMATCH", same ? "deterministic" : "RUNS DIFFER",
                1000.f * us / reps);
    cudaFree(d_kind), cudaFree(d_out);
  }
  std::printf(ok ? "all match\n" : "FAILED\n");
  return ok ? 0 : 1;
}
