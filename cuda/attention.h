// Launchers of fused block-sparse attention (forward, backward). Host-callable, plain C++.
//
// Semantics (jax_blocksparse/attention_primitives.py): q [B, Tq, Hq, D], k and v [B, Tk, Hkv, D],
// row-major (head dim contiguous, then heads, then tokens). Query head h reads kv head
// h / (Hq / Hkv). Query i of head h attends to key j iff: block (i / bs, j / bs) is listed
// for h's mask head; when causal, j <= i + (Tk - Tq); and j < kv_lengths[b]. Scores are
// scale * q.k, softmax over the allowed keys, o = P v; lse = log(sum exp(scores)) in
// float32 ([B, Hq, Tq]); a row with no allowed key has o = 0 and lse = -inf, and passes zero
// gradients (never NaN).
//
// Metadata (jax_blocksparse/attention_metadata.py), int32, Hm = 1 (shared) or Hq mask heads:
//  - by query block: counts [Hm, Rq], partial [Hm, Rq], lists [Hm, Rq, max_k], order [Hm, Rq].
//    lists[hm, r, 0:counts] are the key blocks of query block r; the first `partial` of
//    them need element masking (causal diagonal), the rest are full. Blocks fully masked by
//    causality are not listed. `order[hm]` lists query blocks longest first, equal counts
//    by ascending block (the one-pass backward's dQ order relies on exactly this). The
//    FA3-design kernels (forward and backward: AttentionKernel::documents) also take lists
//    per batch entry ([Bm, Hm, ...] with Bm = 1 or B, the same Bm for both directions).
//    kv_lengths is dynamic: a kernel skips blocks starting at or past kv_lengths[b] and
//    masks the block that contains it element-wise.
//  - by key block (for dK/dV): the same four arrays over [Hm, Rk, max_q], listing for each
//    key block its query blocks (partial first), consistent with the by-query lists (the
//    same partial entries).
// Lines: ceil(Tq / bs) by query, ceil(Tk / bs) by key (partial last tiles:
// AttentionKernel::documents only; the other kernels take multiples of the block size).
// Masks of block size 16 or 32 (the forward's AttentionKernel::documents rows, block size
// 128, every head dim; the backward's also block size 64: TiledMaskBlock): the lists are
// those of 128 x 128 tiles
// (jax_blocksparse/attention_metadata.py, tile_lists), shape.block_size is 128, and each
// list entry has a 64-bit word of the mask blocks (mask_block x mask_block) of its tile
// that are visited: bit s * f + t for the block in row s, column t of the tile
// (f = 128 / mask_block). A tile is listed when one of its blocks is visited, full when
// all are full; on partial entries query i attends key j only if the bit of block
// ((i % 128) / mask_block, (j % 128) / mask_block) is set (with the other element terms).
// Keys of a partial tile whose block column no row visits are kept out of P V (their V
// rows are zeroed in shared memory, as past kv_lengths). The backward's documents rows
// (the FA3-design backward, variants 2 and 3) take such masks too: words for the by-query
// and the by-key tile lists (AttentionBackwardParams::q_mask_bits, k_mask_bits), in the
// same (query row s, key column t) convention, the by-key lists the transposed tiles with
// the same partial entries; the dQ kernel also zeroes the K rows of block columns that no
// row visits (dS is 0 there, but 0 * NaN is NaN).
// Segment ids (AttentionKernel::documents): q_segment_ids [B, Tq], kv_segment_ids [B, Tk]
// int32; on the partial entries query i attends key j only if their ids are equal (the
// lists skip block pairs of different documents and mark mixed ones partial:
// attention_metadata.document_kinds; full entries are of one same document).
// q_offset (AttentionKernel::documents): the causal position of query row 0 per batch entry
// replaces Tk - Tq.
// Deterministic: no float atomics whose order depends on timing; dK/dV of a kv head sum over
// its query-head group inside one CTA in a fixed order. (The one-pass backward, variant 4,
// adds dQ partial sums of several CTAs into a float32 workspace in a fixed order under
// semaphores: attention/bwd_sm90_onepass.cu.)
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "matmul.h"  // DType

namespace jax_blocksparse {

struct BlockListsView {  // one direction of the attention metadata
  const int32_t *counts, *partial, *lists, *order;
  int32_t lines;  // Rq (by query block) or Rk (by key block)
  int32_t max_len;  // last dimension of `lists`
};

struct AttentionShape {
  int32_t batch, tq, tk, hq, hkv, head_dim, block_size, mask_heads;
  int32_t mask_batch;  // leading axis of the lists: 1 (shared by the batch) or B
  float scale;
  bool causal;
  // logit soft cap: the scores are cap * tanh(scale * q.k / cap) before the masks and the
  // softmax (and dS takes the factor 1 - tanh^2); 0: none. Rows with AttentionKernel::softcap
  // only (the FA2 and FA3-design kernels, not backward variant 4); FindAttentionKernel picks
  // those when asked.
  float softcap = 0.f;
};

// The mask sources beyond the lists shared by the batch (AttentionKernel::documents).
struct AttentionDocuments {
  // [B, ceil(Tq / bs) * bs], [B, ceil(Tk / bs) * bs] (padded to whole tiles), or both null
  const int32_t *q_segment_ids, *kv_segment_ids;
  // q_offset: causal position of query row 0 per batch entry ([q_positions_batch] = [1]
  // or [B]); null: Tk - Tq (bottom-right aligned)
  const int32_t* q_positions;
  int32_t q_positions_batch;
};

struct AttentionForwardParams {
  AttentionShape shape;
  const void *q, *k, *v;
  const int32_t* kv_lengths;  // [B]
  BlockListsView by_query;    // lines of [mask_batch, Hm] (lines: Rq per (b, hm))
  AttentionDocuments documents;
  // a mask of block size mask_block (16 or 32) on 128 x 128 tiles (shape.block_size 128):
  // [mask_batch, Hm, lines, max_len] words, bit (i % 128 / mask_block) * (128 / mask_block)
  // + j % 128 / mask_block of entry (line, e) (see above); null otherwise
  const uint64_t* mask_bits;
  int32_t mask_block;
  // attention sinks: float32 [Hq], one logit per query head (scaled-score units), or null.
  // Each row's softmax denominator gets exp(sinks[h]) (the kernels start the row's online
  // softmax from it): o = sum_j e^(s_j) v_j / (e^(sinks[h]) + sum_j e^(s_j)), lse the log
  // of that denominator; a row with no allowed key has o = 0 and lse = sinks[h]. Every
  // forward row takes them (the FA2 and the FA3-design forward).
  const float* sinks;
  // the FA3-design forward's grid cells in sections of heads sized to L2 (attn::InSections,
  // "l2"): the call's choice (jax_blocksparse/_cuda.py forward_head_sections), unless
  // JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS is set, which decides instead
  bool l2_sections;
  void* o;     // [B, Tq, Hq, D], q's dtype
  float* lse;  // [B, Hq, Tq]
};

struct AttentionBackwardParams {
  AttentionShape shape;
  const void *q, *k, *v, *o, *d_o;
  const float* lse;    // [B, Hq, Tq]
  const float* d_lse;  // [B, Hq, Tq]: cotangent of lse (zeros when unused)
  const int32_t* kv_lengths;
  BlockListsView by_query, by_key;  // lines of [mask_batch, Hm] each
  AttentionDocuments documents;
  void *dq, *dk, *dv;  // q's, k's, v's shapes and dtype
  // workspace of BackwardWorkspaceRows(Tq, bs) floats per (b, h): the FA2 backward's
  // delta [B, Hq, Tq] = rowsum(dO * O) - d_lse, the Hopper backward's lse (log2 domain)
  // and delta rows padded to whole tiles [B, Hq, 2, ceil(Tq / bs) * bs]
  float* delta;
  // workspaces of the rows with AttentionKernel::dq_workspace (backward variant 4), else
  // null: float32 [2, B, Hq, Tq, D] and int32 [2 B Hq Tq / 64 + 1] (two dQ slots, then the
  // persistent grid's item counter: attention/bwd_sm90_onepass.h, OnePassSemaphoreElements;
  // the launcher zeroes them)
  float* dq_accum;
  int32_t* dq_semaphores;
  // dQ slots of those workspaces (attention/bwd_sm90_onepass.h, OnePassDqSlotsValid: 2, or
  // 4 as jax_blocksparse/_cuda.py onepass_dq_slots chooses, or 8); the FFI handler reads it from
  // dq_accum's size
  int32_t dq_slots = 2;
  // a mask of block size mask_block (16, 32 or 64: TiledMaskBlock) on 128 x 128 tiles (as
  // the forward's mask_bits): the words of the by_query entries and of the by_key entries
  // ([mask_batch, Hm, lines, max_len] each, bits in the same (query row, key column)
  // convention), or both null (the documents rows take them: the FA3-design backward)
  const uint64_t *q_mask_bits, *k_mask_bits;
  int32_t mask_block;
};

// Mask block sizes that run on 128 x 128 tiles with a 64-bit word per list entry (the
// FA3-design kernels; attention_metadata.tile_lists): 16 and 32 in both phases, and 64 in
// the backward, for calls with a mask source that the FA2 backward at block 64 lacks
// (segment ids, q_offset, lists per batch entry, partial last tiles; the Hopper forward
// has block-64 rows of its own).
constexpr bool TiledMaskBlock(int mask_block, bool backward) {
  return mask_block == 16 || mask_block == 32 || (backward && mask_block == 64);
}

// Floats of the backward's workspace per (batch entry, query head).
constexpr int64_t BackwardWorkspaceRows(int64_t tq, int64_t block_size) {
  return 2 * ((tq + block_size - 1) / block_size * block_size);
}

namespace attn {
struct Args;  // the kernels' arguments (attention/shared.cuh)
}

// One row of the attention dispatch table (attention/dispatch.cu): the kernels of one phase for
// (dtype, head dim, block size) and, forward only, the value of the switch
// JAX_BLOCKSPARSE_ATTN_FWD_VARIANT; the launcher and the name JAX_BLOCKSPARSE_DEBUG prints.
struct AttentionKernel {
  DType dtype;
  int32_t head_dim, block_size;
  bool backward;
  int32_t fwd_variant;  // the switch's value the row serves (backward rows: ..._BWD_VARIANT)
  const char* name;
  cudaError_t (*launch)(const attn::Args& args, cudaStream_t stream);
  // takes lists per batch entry, segment ids, Tq, Tk that are not multiples of the block
  // size (partial last tiles; the lists then have ceil(T / bs) lines) and query positions
  // (q_offset): the FA3-design forward and backward; forward rows of block size 128 also
  // masks of block size 16 / 32 (AttentionForwardParams::mask_bits; the backward's rows,
  // and block size 64: AttentionBackwardParams::q_mask_bits, k_mask_bits)
  bool documents = false;
  // backward: the launcher needs the dq_accum and dq_semaphores workspaces
  // (AttentionBackwardParams): the one-pass backward (variant 4), `documents` but for
  // partial last tiles and tile bits
  bool dq_workspace = false;
  // forward: the persistent form of its kernel (JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1:
  // FindAttentionKernel prefers these rows, else the plain ones of the variant)
  bool persistent = false;
  // takes a logit soft cap (AttentionShape::softcap): the FA2 forward and backward, the
  // FA3-design forward and backward (variants 2, 3 and the one-pass variant 4)
  bool softcap = false;
};

// The table's row for this call, or nullptr when the table has none: the FFI handler
// reports the combination. Forward: the row of JAX_BLOCKSPARSE_ATTN_FWD_VARIANT (read once
// per process) when set, else of the default by architecture (variant 2, the FA3-design
// forward, on an sm_90 device running sm_90a code, queried once per device; variant 0, the
// FA2 forward, elsewhere); a variant whose rows leave this combination out gets variant 0's.
// With JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1 a forward variant's persistent row where it has
// one, else its plain row.
// Head dims: 64 and 128 in every phase and variant; 96 and 256 in forward variants 2 and 3
// (the FA3-design forward), 256 also in backward variants 2 and 3 under
// JAX_BLOCKSPARSE_ATTN_BWD_D256=1 (nullptr elsewhere).
// With `softcap` only rows that take a soft cap (AttentionKernel::softcap): the variant's
// when it has one, else variant 0's (the FA2 kernels). `beyond_onepass`: the call has
// partial last tiles or tile bits, which backward variant 4 (AttentionKernel::
// dq_workspace) does not take, nor a soft cap: such calls get the default variant's row,
// as do combinations it leaves out that the default variant has (head dim 256).
const AttentionKernel* FindAttentionKernel(DType dtype, int head_dim, int block_size,
                                           bool backward, bool softcap = false,
                                           bool beyond_onepass = false);

// The dispatch table's rows enabled in this process (attention/dispatch.cu, RowEnabled), in order
// (AttentionKernelAt(i) for i < AttentionKernelCount()):
// the nanobind module reports them (attention_kernels()) and jax_blocksparse/_cuda.py
// derives from them which calls the fused kernels take.
int AttentionKernelCount();
const AttentionKernel& AttentionKernelAt(int i);

// Run `kernel` (FindAttentionKernel's row for p's dtype and shape); cudaErrorInvalidValue
// for shapes the kernels do not take.
cudaError_t LaunchAttentionForward(const AttentionKernel& kernel, const AttentionForwardParams& p,
                                   cudaStream_t stream);
cudaError_t LaunchAttentionBackward(const AttentionKernel& kernel,
                                    const AttentionBackwardParams& p, cudaStream_t stream);

}  // namespace jax_blocksparse
