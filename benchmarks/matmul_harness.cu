// The matmul kernels run and timed outside JAX, for Nsight Compute (attention_harness.cu
// says why): the forward of a block-sparse layer, y = x @ W (dds), and its weight gradient,
// dW = x^T @ dy at W's blocks (sdd), in bf16 on a random layout, through the launchers of
// cuda/matmul.h (the dispatch table picks the kernel as in the package; the switches
// JAX_BLOCKSPARSE_MATMUL_TMA, ..._SDD_TMA, ... are read from the environment).
//
// Build (benchmarks/device.sh matmul_harness, after the package's build):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I cuda \
//     benchmarks/matmul_harness.cu build/*/libjax_blocksparse_kernels.a -o harness
// Run: harness [--size 8192] [--block 64] [--density 0.1] [--seed 0] [--reps 10]
//              [--op fwd|dw|both]
// x is [size, size], W [size, size] with a random block mask (each block listed with
// probability `density`); prints the kernel's name, median milliseconds and useful
// TFLOP/s (2 size nnz bs^2).
#include <random>
#include <string>

#include "harness_util.cuh"
#include "matmul.h"

using namespace jax_blocksparse;
using namespace harness;

int main(int argc, char** argv) {
  int size = 8192, bs = 64, seed = 0, reps = 10;
  double density = 0.1;
  std::string op = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--size") size = std::atoi(v.c_str());
    else if (a == "--block") bs = std::atoi(v.c_str());
    else if (a == "--density") density = std::atof(v.c_str());
    else if (a == "--seed") seed = std::atoi(v.c_str());
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--op") op = v;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const int r = size / bs;  // block rows (K / bs) and block columns (N / bs) of W
  std::mt19937 rng{uint32_t(seed)};
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<std::vector<int>> id(r, std::vector<int>(r, -1));  // block ids, row-major
  std::vector<int32_t> coords;
  int nnz = 0;
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < r; ++j)
      if (uniform(rng) < density) {
        id[i][j] = nnz++;
        coords.push_back(i);
        coords.push_back(j);
      }
  if (nnz == 0) {
    std::fprintf(stderr, "no blocks: raise --density\n");
    return 2;
  }
  // dds's lines: W's block columns, each its blocks by ascending block row; longest first
  std::vector<int32_t> ptr(1, 0), idx, blk, order(r);
  for (int j = 0; j < r; ++j) {
    for (int i = 0; i < r; ++i)
      if (id[i][j] >= 0) idx.push_back(i), blk.push_back(id[i][j]);
    ptr.push_back(int32_t(idx.size()));
    order[j] = j;
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return ptr[a + 1] - ptr[a] > ptr[b + 1] - ptr[b];
  });

  const int64_t dense = int64_t(size) * size, blocks = int64_t(nnz) * bs * bs;
  __nv_bfloat16 *x = RandomBf16(dense, 1), *w = RandomBf16(blocks, 2), *dy = RandomBf16(dense, 3);
  __nv_bfloat16 *y = DeviceAlloc<__nv_bfloat16>(dense), *dw = DeviceAlloc<__nv_bfloat16>(blocks);
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  const double flops = 2.0 * size * double(blocks);
  auto report = [&](const char* name, const char* kernel, float ms) {
    std::printf("harness %-3s size=%d bs=%d density=%.3f nnz=%d  %-40s %9.4f ms %8.1f "
                "TFLOP/s\n", name, size, bs, density, nnz, kernel, ms, flops / (ms * 1e-3) / 1e12);
  };

  if (op == "fwd" || op == "both") {  // y = x @ W
    DdsParams p{};
    p.a = x;
    p.w = w;
    p.out = y;
    p.ptr = Upload(ptr);
    p.idx = Upload(idx);
    p.blk = Upload(blk);
    p.order = Upload(order);
    p.batch = 1;
    p.m = p.n = p.k = size;
    p.nnz = nnz;
    p.block_size = bs;
    const MatmulLaunch run = SelectDds(DType::kBF16, p);
    if (run.kernel == nullptr) {
      std::fprintf(stderr, "no dds kernel for block size %d\n", bs);
      return 1;
    }
    report("fwd", run.kernel->name,
           MedianLaunchMs(stream, reps, [&] { return LaunchDds(run, p, stream); }));
    if (!AllFinite(y, dense)) return std::fprintf(stderr, "harness: non-finite y\n"), 1;
  }
  if (op == "dw" || op == "both") {  // dW = x^T @ dy at W's blocks
    SddParams p{};
    p.a = x;
    p.b = dy;
    p.out = dw;
    p.coords = Upload(coords);
    p.batch = 1;
    p.m = p.n = p.k = size;
    p.nnz = nnz;
    p.block_size = bs;
    p.trans_a = true;  // op(A) = x^T: x stored [K, m]
    const MatmulLaunch run = SelectSdd(DType::kBF16, p);
    if (run.kernel == nullptr) {
      std::fprintf(stderr, "no sdd kernel for block size %d\n", bs);
      return 1;
    }
    report("dW", run.kernel->name,
           MedianLaunchMs(stream, reps, [&] { return LaunchSdd(run, p, stream); }));
    if (!AllFinite(dw, blocks)) return std::fprintf(stderr, "harness: non-finite dW\n"), 1;
  }
  return 0;
}
