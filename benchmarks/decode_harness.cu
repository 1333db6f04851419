// The decode kernels run and timed outside JAX, for Nsight Compute (issue 22: under ncu
// the whole benchmarks/decode.py ran past 330 s and returned nothing, and JAX processes have
// ended in host segfaults under the CUDA tools, RESULTS 2026-12-05). This program calls the
// decode launcher of cuda/attention_decode.h on random bf16 inputs: one query per sequence at
// the end of a contiguous cache, a block mask that is causal (every block up to the query's)
// or a local window (the --window keys before it), the lists built the way
// jax_blocksparse/attention_decode.py passes them ([1, 1, R, W]: every mask row's blocks,
// ascending) and the split count chosen as jax_blocksparse/_cuda.py decode_splits chooses it
// (one wave of the partial kernel's resident CTAs, at least 8 blocks a split).
//
// Build (benchmarks/device.sh decode_harness, after the package's build, whose static
// kernel library it links):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I cuda \
//     benchmarks/decode_harness.cu build/*/libjax_blocksparse_kernels.a -o harness
// Run: harness [--batch 8] [--hq 64] [--hkv 8] [--dim 128] [--cache 32768] [--block 128]
//              [--window 0] [--reps 20]
// Prints the kernel's name, the split count, median milliseconds, the bytes of K and V the
// call reads (the listed keys up to the query) and their rate, beside a device-to-device
// copy of a buffer the size of the dense cache (read + write bytes, as decode.py counts it).
#include <string>

#include "attention_decode.h"
#include "harness_util.cuh"

using namespace jax_blocksparse;
using namespace harness;

namespace {

// _cuda.py DECODE and decode_splits (one query per sequence, a mask shared by the heads).
constexpr int kMinBlocksPerSplit = 8, kMaxSplits = 128, kUnknownDeviceCtas = 4 * 132;
constexpr int kFormRows[kDecodeForms] = {16, 64, 128, 64};

int DecodeSplits(int batch, int hq, int hkv, int width, int resident, DecodeForm form) {
  const int group = hq / hkv, per_cta = group;  // one mask head: a kv head's group per CTA
  const int chunks = (per_cta + kFormRows[int(form)] - 1) / kFormRows[int(form)];
  const int ctas = std::max(batch * hkv * chunks, 1);
  const int target = resident > 0 ? resident : kUnknownDeviceCtas;
  const int splits =
      std::min({target / ctas, width / kMinBlocksPerSplit, kMaxSplits});
  return std::max({splits, (width + kDecodeSplitCapacity - 1) / kDecodeSplitCapacity, 1});
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 8, hq = 64, hkv = 8, dim = 128, cache = 32768, bs = 128, window = 0, reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    int* field = a == "--batch"    ? &batch
                 : a == "--hq"     ? &hq
                 : a == "--hkv"    ? &hkv
                 : a == "--dim"    ? &dim
                 : a == "--cache"  ? &cache
                 : a == "--block"  ? &bs
                 : a == "--window" ? &window
                 : a == "--reps"   ? &reps
                                   : nullptr;
    if (field == nullptr) {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
    *field = std::atoi(v.c_str());
  }
  if (cache % bs != 0 || hq % hkv != 0) {
    std::fprintf(stderr, "want --cache a multiple of --block and --hq of --hkv\n");
    return 2;
  }
  // mask row r lists blocks [first(r), r]: every one up to the row's (causal), or those
  // jax_blocksparse.layouts.local keeps (a pair of the blocks with 0 <= i - j < window)
  const int rows = cache / bs;
  auto first = [&](int r) { return window > 0 ? std::max(0, r - 1 - (window - 2) / bs) : 0; };
  int width = 1;
  for (int r = 0; r < rows; ++r) width = std::max(width, r - first(r) + 1);
  std::vector<int32_t> counts(rows), lists(size_t(rows) * width, -1);
  for (int r = 0; r < rows; ++r) {
    counts[r] = r - first(r) + 1;
    for (int e = 0; e < counts[r]; ++e) lists[size_t(r) * width + e] = first(r) + e;
  }
  const int tq = 1, query = cache - 1;  // the query at the cache's last position
  const int64_t kv_elems = int64_t(batch) * cache * hkv * dim;
  AttentionDecodeParams p{};
  p.q = RandomBf16(int64_t(batch) * tq * hq * dim, 1);
  p.k = RandomBf16(kv_elems, 2);
  p.v = RandomBf16(kv_elems, 3);
  p.kv_lengths = Upload(std::vector<int32_t>(batch, cache));
  p.q_rows = Upload(std::vector<int32_t>(batch, query));
  p.q_positions = Upload(std::vector<int32_t>(batch, query));
  p.counts = Upload(counts);
  p.lists = Upload(lists);
  p.o = DeviceAlloc<__nv_bfloat16>(int64_t(batch) * tq * hq * dim);
  p.lse = DeviceAlloc<float>(int64_t(batch) * hq * tq);
  p.batch = batch;
  p.tq = tq;
  p.tk = cache;
  p.hq = hq;
  p.hkv = hkv;
  p.head_dim = dim;
  p.block_size = bs;
  p.mask_batch = p.mask_heads = 1;
  p.rows = rows;
  p.width = width;
  p.page_size = cache;
  p.pages_per_seq = 1;
  p.pool_pages = batch;
  p.scale = 1.f / std::sqrt(float(dim));
  p.causal = true;
  const AttentionDecodeKernel* kernel = FindAttentionDecodeKernel(DType::kBF16, DecodeKv::kSame, dim);
  if (kernel == nullptr) {
    std::fprintf(stderr, "no decode kernel for head dim %d\n", dim);
    return 1;
  }
  const DecodeForm form = DecodeFormOf(p, true);
  const int row_blocks = counts[query / bs];
  p.splits = DecodeSplits(batch, hq, hkv, row_blocks, kernel->resident_ctas(form), form);
  p.part_o = DeviceAlloc<float>(int64_t(batch) * hq * tq * p.splits * dim);
  p.part_lse = DeviceAlloc<float>(int64_t(batch) * hq * tq * p.splits);
  if (const char* why = AttentionDecodeUnsupported(p)) {
    std::fprintf(stderr, "the decode kernel does not take this call: %s\n", why);
    return 1;
  }
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  const float ms = MedianLaunchMs(stream, reps, [&] { return kernel->launch(p, stream); });
  if (!AllFinite(static_cast<const __nv_bfloat16*>(p.o), int64_t(batch) * hq * dim))
    return std::fprintf(stderr, "harness: non-finite o\n"), 1;
  // the copy: a buffer the size of the dense cache (K and V), read and written
  const int64_t dense_bytes = 2 * kv_elems * 2;
  void *src = DeviceAlloc<char>(dense_bytes), *dst = DeviceAlloc<char>(dense_bytes);
  const float copy_ms = MedianLaunchMs(stream, reps, [&] {
    return cudaMemcpyAsync(dst, src, size_t(dense_bytes), cudaMemcpyDeviceToDevice, stream);
  });
  const double copy_tbs = 2.0 * dense_bytes / copy_ms / 1e9;
  const int64_t read_keys = int64_t(std::min(row_blocks * bs, query + 1));
  const double bytes = 2.0 * batch * read_keys * hkv * dim * 2;  // K and V, bf16
  const double tbs = bytes / ms / 1e9;
  std::printf("harness decode B=%d Hq=%d Hkv=%d D=%d cache=%d bs=%d window=%d splits=%d  %-40s "
              "%9.4f ms  %7.1f MB  %6.3f TB/s  %5.1f%% of copy (%.3f TB/s)\n",
              batch, hq, hkv, dim, cache, bs, window, p.splits,
              DecodeKernelName(*kernel, form), ms, bytes / 1e6, tbs, 100.0 * tbs / copy_tbs,
              copy_tbs);
  return 0;
}
