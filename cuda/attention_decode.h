// Launcher of the decode attention kernel: a few queries per sequence (Tq <= 64) against a
// long KV cache, contiguous or paged. Host-callable, plain C++.
//
// Semantics (jax_blocksparse/attention_decode.py, `attention_decode_p`): q [B, Tq, Hq, D]; k and v
// [B, Tk, Hkv, D] (contiguous), or page pools [P, page_size, Hkv, D] with page_table
// [B, pages_per_seq] (key j of sequence b is row j % page_size of page page_table[b, j /
// page_size]; Tk = pages_per_seq * page_size). Query i of batch entry b uses the mask row
// floor((q_rows[b] + i) / bs) (outside [0, R): o and lse NaN) and attends key j iff
// j's block is listed in that row (lists [Bm, Hm, R, W], counts [Bm, Hm, R], Bm 1 or B,
// Hm 1 or Hq), j < kv_lengths[b] and, when causal, j <= q_positions[b] + i.
// k and v are q's dtype, or an fp8 KV cache (float8_e4m3fn or float8_e5m2, both alike): key
// j of kv head h is k[.., h, :] * k_scale[h], values likewise (float32 [Hkv] scales). The
// kernel reads the fp8 bytes (16 per cp.async) and converts each lane's mma fragments from
// them in registers to float16 (exact: every e4m3 and e5m2 value is a float16; q enters
// float16 scaled by a power of two per row); the scales are folded into the score scale
// (k) and the split's output (v).
//
// Work split (FlashDecoding): one CTA per (batch entry, kv head, head group, mask-row part,
// row chunk, split). Its rows are the queries of one mask row times the query heads that
// share the kv head (all of them when the mask is shared by the heads: K and V are read
// once per group), at most 16; it walks one `splits`-th of the row's listed blocks (in
// 16-key tiles: a share may begin and end inside a block), four
// warps taking 16-key tiles in turn, each from its own cp.async ring. With more rows per kv
// head and JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1 (DecodeSharedTiles), a CTA has 64 rows, 16
// per warp, and every warp computes on the four tiles of each stage (K and V read once per
// 64 rows). A second kernel
// combines the splits' partial results through their log-sum-exp in a fixed order: the
// output is bitwise deterministic (no atomics).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "matmul.h"  // DType

namespace jax_blocksparse {

constexpr int kDecodeMaxQueries = 64;    // Tq bound of the decode kernel (speculative chunks)
constexpr int kDecodeTileKeys = 16;      // block sizes and page sizes: multiples of this
constexpr int kDecodeSplitCapacity = 1024;  // listed blocks one split can hold
constexpr int kDecodeWarpRows = 16;  // (query, head) rows of a CTA of the warp-tiles form

// The element type of k and v: q's, or an fp8 cache.
enum class DecodeKv { kSame, kE4M3, kE5M2 };

// The partial kernel a decode call runs (DecodeFormOf): 16-row CTAs whose warps take
// 16-key tiles in turn; 64-row CTAs sharing each 64-key stage
// (JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1); GQA-packed 128- or 64-row tiles on the Hopper
// forward's wgmma pipeline (attention/fwd_sm90.cu; JAX_BLOCKSPARSE_DECODE_PACKED=1) for
// more rows per kv head than one 16-row CTA holds, where the call allows it. Rows per CTA
// 16, 64, 128, 64; the names JAX_BLOCKSPARSE_DEBUG prints: DecodeKernelName.
enum class DecodeForm { kWarpTiles, kSharedTiles, kPacked, kPacked64 };
constexpr int kDecodeForms = 4;
constexpr const char* kDecodeFormKeys[kDecodeForms] = {"warp_tiles", "shared_tiles", "packed",
                                                       "packed64"};

struct AttentionDecodeParams {
  const void *q, *k, *v;
  const float *k_scale, *v_scale;                    // [Hkv]; nullptr: 1
  const int32_t *kv_lengths, *q_rows, *q_positions;  // [B]
  const int32_t *counts, *lists;                     // [Bm, Hm, R], [Bm, Hm, R, W]
  const int32_t* page_table;                         // [B, pages_per_seq]; nullptr: contiguous
  void* o;                                           // [B, Tq, Hq, D], q's dtype
  float* lse;                                        // [B, Hq, Tq]
  float *part_o, *part_lse;  // workspace [B, Hq, Tq, splits, D], [B, Hq, Tq, splits]
  int32_t batch, tq, tk, hq, hkv, head_dim, block_size;
  int32_t mask_batch, mask_heads, rows, width;  // Bm, Hm, R, W
  int32_t page_size, pages_per_seq;             // contiguous: Tk, 1
  int32_t pool_pages;                           // P (contiguous: B)
  int32_t splits;
  float scale;
  bool causal;
  float softcap;  // logit soft cap: scores cap * tanh(scale * q.k / cap); 0: none
};

// One row of the decode dispatch table: (dtype, k/v type, head dim) -> launcher and debug
// name.
struct AttentionDecodeKernel {
  DType dtype;
  DecodeKv kv;
  int32_t head_dim;
  const char* name;
  cudaError_t (*launch)(const AttentionDecodeParams& p, cudaStream_t stream);
  // CTAs of its partial kernel in `form` resident at once on the current device (0:
  // unknown, or no such form): jax_blocksparse/_cuda.py sizes the split count to one wave
  int (*resident_ctas)(DecodeForm form);
};

// The form a call runs, k and v in q's dtype (`same_kv`) or not: packed where the switch,
// the device and the call allow it (DecodePackedSm90Rows: more than 16 rows per kv head;
// kPacked64 for 64-row tiles),
// else shared tiles for more than 16 rows per kv head under its switch, else warp tiles.
DecodeForm DecodeFormOf(const AttentionDecodeParams& p, bool same_kv);
// The debug name of a call of `kernel` in `form` (the row's name for warp tiles).
const char* DecodeKernelName(const AttentionDecodeKernel& kernel, DecodeForm form);

// The table's row, or nullptr when there is none (the FFI handler reports it).
const AttentionDecodeKernel* FindAttentionDecodeKernel(DType dtype, DecodeKv kv, int head_dim);

// The table's rows, in order (AttentionDecodeKernelAt(i) for i < AttentionDecodeKernelCount()):
// the nanobind module reports them (decode_kernels()) and jax_blocksparse/_cuda.py routes
// decode calls by them.
int AttentionDecodeKernelCount();
const AttentionDecodeKernel& AttentionDecodeKernelAt(int i);

// Why the decode kernel cannot take p (nullptr when it can).
const char* AttentionDecodeUnsupported(const AttentionDecodeParams& p);

}  // namespace jax_blocksparse
