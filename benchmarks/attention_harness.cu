// The attention kernels run and timed outside JAX, for Nsight Compute: under ncu (and the
// sanitizer) JAX processes have ended in host segfaults in XLA's code (RESULTS 2026-12-05,
// 2026-12-06), which left issue 19's backward profile unmeasured. This program calls the
// launchers of cuda/attention.h directly on random bf16 inputs and a block mask (the causal
// layout, all blocks, or a text file), with the metadata built here the way
// jax_blocksparse/attention_metadata.py builds it (partial blocks first, then full ones,
// each ascending, padded with -1; lines longest first, ties ascending). The kernel
// switches (JAX_BLOCKSPARSE_ATTN_FWD_VARIANT, ..._BWD_VARIANT, ...) are read from the
// environment as in the package.
//
// Build (benchmarks/device.sh attention_harness, after the package's build, whose static
// kernel library it links):
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I cuda \
//     benchmarks/attention_harness.cu build/*/libjax_blocksparse_kernels.a -o harness
// Run: harness [--mask causal|dense|FILE] [--seq 8192] [--batch 2] [--heads 16] [--dim 128]
//              [--block 128] [--reps 10] [--phase fwd|bwd|both] [--softcap 0]
//              [--dump FILE] [--timeline 1] [--l2-sections 0]
// FILE: a first line "Rq Rk", then Rq lines of Rk characters '0' / '1' (a block mask of
// block size --block; causal masking applies when the name is "causal" or the file's
// first line ends in " causal"). Prints the kernels' names, median milliseconds and useful
// TFLOP/s (4 B H D per allowed pair; the backward 2.5x that, as benchmarks/attention.py).
// --dump FILE writes the forward's output (bf16 [B, S, H, D], raw) there, and with the
// backward phases dq to FILE.dq: two runs under different switches compare bit for bit or
// by value (the inputs are seeded).
// --l2-sections 1: the forward's grid cells in L2-sized sections of heads, as a call
// through the package asks for on static layouts without a global query row
// (AttentionForwardParams::l2_sections; JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS, set, decides).
// --timeline 1 (with a backward phase, on the one-pass backward): one more backward launch
// with the kernel's per-CTA timeline (attn::SetOnePassTimeline), summarized: where a CTA's
// time goes beside its steps (prologue, pipeline fill, epilogue, the dQ writers' tail, the
// waits), the line of CTA time against steps (its intercept: the per-CTA cost), and how
// busy the SMs are between the first CTA's start and the last one's end.
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "attention.h"
#include "harness_util.cuh"
#include "attention/bwd_sm90_onepass.h"  // the one-pass backward's workspace sizes
#include "switches.h"  // JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS: the workspaces' slots

using namespace jax_blocksparse;
using namespace harness;

namespace {

// One direction's lists from kinds[line][other] (0 not listed, 1 partial, 2 full).
BlockListsView Lists(const std::vector<std::vector<int>>& kind) {
  const int lines = int(kind.size());
  std::vector<int32_t> counts(lines), partial(lines), order(lines);
  int width = 1;
  for (int r = 0; r < lines; ++r) {
    for (int k : kind[r]) counts[r] += k > 0, partial[r] += k == 1;
    width = std::max(width, counts[r]);
  }
  std::vector<int32_t> lists(size_t(lines) * width, -1);
  for (int r = 0; r < lines; ++r) {
    int e = 0;
    for (int want : {1, 2})
      for (int c = 0; c < int(kind[r].size()); ++c)
        if (kind[r][c] == want) lists[size_t(r) * width + e++] = c;
    order[r] = r;
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return counts[a] > counts[b]; });
  BlockListsView v{};
  v.counts = Upload(counts);
  v.partial = Upload(partial);
  v.lists = Upload(lists);
  v.order = Upload(order);
  v.lines = lines;
  v.max_len = width;
  return v;
}


// The one-pass kernel's timeline (kOnePassTimelineSlots int64 per CTA, the slots of
// bwd_sm90_onepass.cu's TimelineSlot), summarized on stdout.
void PrintTimeline(const std::vector<long long>& t, int64_t ctas) {
  enum { kSm, kStartNs, kStart, kKv, kFirst, kStepsEnd, kStored, kEndNs, kWriterEnd,
         kWriterEndNs, kRankWait, kPartialWait, kSteps, kStageWait, kBufferWait };
  auto at = [&](int64_t c, int slot) { return t[size_t(c) * attn::kOnePassTimelineSlots + slot]; };
  // cycles per ns from the CTAs' own two clocks (consumer 0's start to its end)
  std::vector<double> ratio;
  for (int64_t c = 0; c < ctas; ++c)
    if (at(c, kSteps) > 0 && at(c, kEndNs) > at(c, kStartNs) + 1000)
      ratio.push_back(double(at(c, kStored) - at(c, kStart)) /
                      double(at(c, kEndNs) - at(c, kStartNs)));
  if (ratio.empty()) {
    std::printf("timeline: no CTA with steps recorded (not the one-pass kernel?)\n");
    return;
  }
  std::sort(ratio.begin(), ratio.end());
  const double ghz = ratio[ratio.size() / 2];
  auto us = [&](double cycles) { return cycles / ghz / 1e3; };
  double sum[16] = {}, n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0, busy = 0;
  long long first = at(0, kStartNs), last = 0;
  std::map<long long, std::vector<std::pair<long long, long long>>> by_sm;
  for (int64_t c = 0; c < ctas; ++c) {
    const long long end_ns = std::max(at(c, kEndNs), at(c, kWriterEndNs));
    first = std::min(first, at(c, kStartNs));
    last = std::max(last, end_ns);
    by_sm[at(c, kSm)].push_back({at(c, kStartNs), end_ns});
    busy += double(end_ns - at(c, kStartNs));
    if (at(c, kSteps) == 0) continue;
    const double steps = double(at(c, kSteps)), dur = double(end_ns - at(c, kStartNs)) / 1e3;
    sum[0] += us(at(c, kKv) - at(c, kStart));
    sum[1] += us(at(c, kFirst) - at(c, kKv));
    sum[2] += us(at(c, kStepsEnd) - at(c, kFirst));
    sum[3] += us(at(c, kStored) - at(c, kStepsEnd));
    sum[4] += us(std::max(at(c, kWriterEnd) - at(c, kStepsEnd), 0LL));
    sum[5] += us(at(c, kStageWait));
    sum[6] += us(at(c, kBufferWait));
    sum[7] += us(at(c, kRankWait));
    sum[8] += us(at(c, kPartialWait));
    sum[9] += steps;
    sum[10] += dur;
    n += 1, sx += steps, sy += dur, sxx += steps * steps, sxy += steps * dur;
  }
  double gaps = 0, ngaps = 0;
  for (auto& [sm, spans] : by_sm) {
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i)
      gaps += double(spans[i].first - spans[i - 1].second) / 1e3, ngaps += 1;
  }
  const double slope = (n * sxy - sx * sy) / std::max(n * sxx - sx * sx, 1e-9);
  const double intercept = (sy - slope * sx) / n;
  const double span = double(last - first) / 1e3;
  std::printf("timeline: %lld CTAs (%.0f with steps) on %zu SMs, span %.1f us, %.3f cycles/ns; "
              "SMs busy %.1f%%, mean gap between CTAs on an SM %.2f us\n",
              (long long)ctas, n, by_sm.size(), span, ghz,
              100.0 * busy / 1e3 / (double(by_sm.size()) * span), ngaps ? gaps / ngaps : 0.0);
  std::printf("timeline per CTA (us, means): duration %.2f = %.2f + %.3f x steps (fit), steps "
              "%.1f; start->K/V %.2f, K/V->first stage %.2f, steps %.2f (%.3f a step), "
              "steps->dK/dV stored %.2f, steps->writers done %.2f\n",
              sum[10] / n, intercept, slope, sum[9] / n, sum[0] / n, sum[1] / n, sum[2] / n,
              sum[2] / sum[9], sum[3] / n, sum[4] / n);
  std::printf("timeline waits per CTA (us, sums over its steps, means): consumer for a stage "
              "%.2f, for a dQ buffer %.2f; writers for their rank %.2f, for the partial %.2f\n",
              sum[5] / n, sum[6] / n, sum[7] / n, sum[8] / n);
}

}  // namespace

int main(int argc, char** argv) {
  std::string mask = "causal", phase = "both", dump;
  bool timeline = false, l2_sections = false;
  int seq = 8192, batch = 2, heads = 16, dim = 128, bs = 128, reps = 10;
  float softcap = 0.f;  // a logit soft cap (AttentionShape::softcap; 0: none)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--mask") mask = v;
    else if (a == "--seq") seq = std::atoi(v.c_str());
    else if (a == "--batch") batch = std::atoi(v.c_str());
    else if (a == "--heads") heads = std::atoi(v.c_str());
    else if (a == "--dim") dim = std::atoi(v.c_str());
    else if (a == "--block") bs = std::atoi(v.c_str());
    else if (a == "--reps") reps = std::atoi(v.c_str());
    else if (a == "--phase") phase = v;
    else if (a == "--softcap") softcap = float(std::atof(v.c_str()));
    else if (a == "--dump") dump = v;
    else if (a == "--timeline") timeline = v != "0";
    else if (a == "--l2-sections") l2_sections = v != "0";
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  // the block mask and whether causal
  const int rq = (seq + bs - 1) / bs;
  std::vector<std::vector<char>> listed(rq, std::vector<char>(rq, 1));
  bool causal = mask == "causal";
  if (mask != "causal" && mask != "dense") {
    std::ifstream in(mask);
    int r = 0, c = 0;
    std::string tail;
    if (!(in >> r >> c) || r != rq || c != rq) {
      std::fprintf(stderr, "%s: want a first line \"%d %d\"\n", mask.c_str(), rq, rq);
      return 2;
    }
    std::getline(in, tail);
    causal = tail.find("causal") != std::string::npos;
    for (int i = 0; i < rq; ++i) {
      std::string line;
      in >> line;
      if (int(line.size()) != rq) {
        std::fprintf(stderr, "%s: row %d is not %d characters\n", mask.c_str(), i, rq);
        return 2;
      }
      for (int j = 0; j < rq; ++j) listed[i][j] = line[j] == '1';
    }
  }
  // kinds (Tq = Tk, multiples of bs: the causal diagonal is the only partial block)
  std::vector<std::vector<int>> kind(rq, std::vector<int>(rq, 0)), kind_t = kind;
  double pairs = 0;
  for (int i = 0; i < rq; ++i)
    for (int j = 0; j < rq; ++j) {
      int k = !listed[i][j] ? 0 : !causal || j < i ? 2 : j == i ? 1 : 0;
      kind[i][j] = kind_t[j][i] = k;
      pairs += k == 2 ? double(bs) * bs : k == 1 ? double(bs) * (bs + 1) / 2 : 0;
    }

  AttentionShape s{};
  s.batch = batch;
  s.tq = s.tk = seq;
  s.hq = s.hkv = heads;
  s.head_dim = dim;
  s.block_size = bs;
  s.mask_heads = 1;
  s.mask_batch = 1;
  s.scale = 1.f / std::sqrt(float(dim));
  s.causal = causal;
  s.softcap = softcap;
  const int64_t elems = int64_t(batch) * seq * heads * dim;
  __nv_bfloat16 *q = RandomBf16(elems, 1), *k = RandomBf16(elems, 2), *v = RandomBf16(elems, 3);
  __nv_bfloat16 *o = DeviceAlloc<__nv_bfloat16>(elems), *d_o = RandomBf16(elems, 4);
  __nv_bfloat16 *dq = DeviceAlloc<__nv_bfloat16>(elems), *dk = DeviceAlloc<__nv_bfloat16>(elems),
                *dv = DeviceAlloc<__nv_bfloat16>(elems);
  float* lse = DeviceAlloc<float>(int64_t(batch) * heads * seq);
  float* d_lse = DeviceAlloc<float>(int64_t(batch) * heads * seq);
  CHECK(cudaMemset(d_lse, 0, size_t(batch) * heads * seq * sizeof(float)));
  int32_t* kv_lengths = Upload(std::vector<int32_t>(batch, seq));
  const BlockListsView by_query = Lists(kind), by_key = Lists(kind_t);

  AttentionForwardParams f{};
  f.shape = s;
  f.q = q;
  f.k = k;
  f.v = v;
  f.kv_lengths = kv_lengths;
  f.by_query = by_query;
  f.mask_block = bs;
  f.l2_sections = l2_sections;
  f.o = o;
  f.lse = lse;
  const bool capped = softcap > 0.f;
  const AttentionKernel* fwd = FindAttentionKernel(DType::kBF16, dim, bs, false, capped);
  const AttentionKernel* bwd = FindAttentionKernel(DType::kBF16, dim, bs, true, capped);
  if (fwd == nullptr || bwd == nullptr) {
    std::fprintf(stderr, "no kernel for head dim %d, block size %d\n", dim, bs);
    return 1;
  }
  AttentionBackwardParams b{};
  b.shape = s;
  b.q = q;
  b.k = k;
  b.v = v;
  b.o = o;
  b.d_o = d_o;
  b.lse = lse;
  b.d_lse = d_lse;
  b.kv_lengths = kv_lengths;
  b.by_query = by_query;
  b.by_key = by_key;
  b.dq = dq;
  b.dk = dk;
  b.dv = dv;
  b.delta = DeviceAlloc<float>(int64_t(batch) * heads * BackwardWorkspaceRows(seq, bs));
  b.mask_block = bs;
  if (bwd->dq_workspace) {
    b.dq_slots = GetSwitches().attn_bwd_onepass_dq_slots;
    b.dq_accum =
        DeviceAlloc<float>(attn::OnePassDqAccumElements(batch, heads, seq, dim, b.dq_slots));
    b.dq_semaphores =
        DeviceAlloc<int32_t>(attn::OnePassSemaphoreElements(batch, heads, seq, b.dq_slots));
  }

  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  CHECK(LaunchAttentionForward(*fwd, f, stream));  // o and lse for the backward
  CHECK(cudaStreamSynchronize(stream));
  const double fwd_flops = 4.0 * batch * heads * dim * pairs;
  auto time = [&](const char* name, const char* kernel, double flops, auto launch) {
    const float ms = MedianLaunchMs(stream, reps, launch);
    std::printf("harness %-4s %-9s S=%d B=%d H=%d D=%d bs=%d cap=%g pairs=%.4f  %-60s %9.4f ms "
                "%8.1f TFLOP/s\n", name, mask.size() > 24 ? mask.substr(mask.size() - 24).c_str()
                                                         : mask.c_str(),
                seq, batch, heads, dim, bs, softcap, pairs / (double(seq) * seq), kernel, ms,
                flops / (ms * 1e-3) / 1e12);
  };
  if (phase == "fwd" || phase == "both")
    time("fwd", fwd->name, fwd_flops, [&] { return LaunchAttentionForward(*fwd, f, stream); });
  if (phase == "bwd" || phase == "both")
    time("bwd", bwd->name, 2.5 * fwd_flops,
         [&] { return LaunchAttentionBackward(*bwd, b, stream); });
  if (timeline && phase != "fwd") {
    const int64_t ctas = int64_t(batch) * heads * by_key.lines;  // the one-pass grid
    std::vector<long long> host(size_t(ctas) * attn::kOnePassTimelineSlots);
    long long* buffer = DeviceAlloc<long long>(int64_t(host.size()));
    CHECK(cudaMemset(buffer, 0, host.size() * sizeof(long long)));
    CHECK(attn::SetOnePassTimeline(buffer));
    CHECK(LaunchAttentionBackward(*bwd, b, stream));
    CHECK(cudaStreamSynchronize(stream));
    CHECK(attn::SetOnePassTimeline(nullptr));
    CHECK(cudaMemcpy(host.data(), buffer, host.size() * sizeof(long long), cudaMemcpyDeviceToHost));
    PrintTimeline(host, ctas);
  }
  // --dump FILE: the forward's output (after the last forward launch) into FILE and, for
  // the backward phases, dq into FILE.dq (bf16 [B, S, H, D] each: variants compared)
  auto dump_to = [&](const std::string& path, const __nv_bfloat16* x) {
    std::vector<__nv_bfloat16> host(static_cast<size_t>(elems));
    CHECK(cudaMemcpy(host.data(), x, host.size() * sizeof(__nv_bfloat16),
                     cudaMemcpyDeviceToHost));
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(host.data()),
               std::streamsize(host.size() * sizeof(__nv_bfloat16)));
  };
  if (!dump.empty()) {
    dump_to(dump, o);
    if (phase != "fwd") dump_to(dump + ".dq", dq);
  }
  // a finite check of the outputs (the package's tests check values)
  const bool grads = phase != "fwd";
  for (__nv_bfloat16* x : {o, dq, dk, dv})
    if ((x == o || grads) && !AllFinite(x, elems)) {
      std::fprintf(stderr, "harness: a non-finite output or gradient\n");
      return 1;
    }
  return 0;
}
