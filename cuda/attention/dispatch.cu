// Launchers of the fused block-sparse attention (attention.h): the dispatch table, the shape
// checks of the kernels, the kernel arguments.
#include "../attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>  // INFINITY

#include "../launch_util.h"  // LaunchDetail
#include "../switches.h"
#include "bwd_sm90.h"
#include "bwd_sm90_onepass.h"
#include "fa2.cuh"
#include "fwd_sm90.h"

namespace jax_blocksparse {
namespace attn {
JBS_ATTENTION_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_LAUNCHERS(extern template, __half)
JBS_ATTENTION_SM90_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_SM90_LAUNCHERS(extern template, __half)
JBS_ATTENTION_BWD_SM90_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_BWD_SM90_LAUNCHERS(extern template, __half)
JBS_ATTENTION_BWD_SM90_ONEPASS_LAUNCHERS(extern template, __nv_bfloat16)
JBS_ATTENTION_BWD_SM90_ONEPASS_LAUNCHERS(extern template, __half)
}  // namespace attn

namespace {

// Forward tile choice. Default: 64-row CTAs (4 warps, 2 stages, ~87 KB smem at D = 128:
// two CTAs per SM) for both block sizes (a 128 block is two CTAs). Variant 1: 128-row CTAs
// (8 warps, 3 stages, one CTA per SM) for block size 128 -- measured 3% slower on the H100
// benchmark (local causal window 1024, bf16, D = 128: 0.680 vs 0.661 ms), kept as a
// developer override for timing: JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=1.
// The FA2 rows (forward and backward) take a logit soft cap (the last field), as do the
// Hopper forward's and the Hopper backward's (variants 2 and 3; not the one-pass variant 4:
// a capped backward under it runs the default variant's row, FindAttentionKernel).
#define JBS_FWD_ROWS(DT, T, D)                                                               \
  {DT, D, 64, false, 0, "fa2_forward(64-row CTA)", attn::LaunchForwardTile<T, D, 64, 2>,      \
   false, false, false, true},                                                                \
  {DT, D, 64, false, 1, "fa2_forward(64-row CTA)", attn::LaunchForwardTile<T, D, 64, 2>,      \
   false, false, false, true},                                                                \
  {DT, D, 128, false, 0, "fa2_forward(64-row CTA)", attn::LaunchForwardTile<T, D, 64, 2>,     \
   false, false, false, true},                                                                \
  {DT, D, 128, false, 1, "fa2_forward(128-row CTA)", attn::LaunchForwardTile<T, D, 128, 3>,   \
   false, false, false, true}
// Variants 2 and 3: the Hopper forward in the FlashAttention-3 design
// (attention/fwd_sm90.cu: TMA, mbarrier ring, producer warp + consumer warpgroups, wgmma),
// sm_90a only (its launcher refuses any other device), head dims 64, 96, 128, 256 (96 and
// 256 have no FA2 forward, so no variant 0 row: FindAttentionKernel finds nothing for them
// on other devices or with variant 0 / 1 forced, where the Python routing sends them to the
// pure-JAX path; 96 has no backward rows (the Python lowering pads it to 128), 256 its own
// (JBS_BWD_SM90_D256_ROWS; the pure-JAX path under JAX_BLOCKSPARSE_ATTN_BWD_D256=0)).
// Block size 128:
// 2 with the two consumer warpgroups ping-ponged, 3 without (kept to compare and as a
// fallback). Block size 64: one kernel for both (64-row CTAs with one consumer warpgroup,
// two CTAs per SM, one at D = 256: nothing to ping-pong inside a CTA). Variant 2 is the
// default on an sm_90 device running sm_90a code (FindAttentionKernel: 2.1-2.3x the FA2
// forward on the H200 at block 128, benchmarks/RESULTS.md); the combinations it leaves out
// run variant 0, as everything does on other devices. Masks of block size 16 and 32 come
// as lists of 128 x 128 tiles with bits (AttentionForwardParams::mask_bits): the block-128
// rows run them (every head dim), and only those (documents) rows; so do the backward's
// block-128 documents rows (variants 2 and 3, AttentionBackwardParams::q_mask_bits,
// k_mask_bits), which also take block 64 so (TiledMaskBlock).
// Persistent rows (JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1, opt-in until measured): the same
// kernels with one CTA per SM (two at block 64, D < 256) looping over the work items
// (attention/fwd_sm90.cu), for every combination of variants 2 and 3.
// Every row takes a logit soft cap (the last field; issue 21: the consumers' softmax caps
// the scores before the masks, as the FA2 forward does).
#define JBS_FWD_SM90_ROWS(DT, T, D)                                             \
  {DT, D, 128, false, 2, "fa3_forward(wgmma, tma, ws, pingpong)",               \
   attn::LaunchForwardSm90<T, D, 128, true, false>, true, false, false, true},  \
  {DT, D, 128, false, 3, "fa3_forward(wgmma, tma, ws)",                         \
   attn::LaunchForwardSm90<T, D, 128, false, false>, true, false, false, true}, \
  {DT, D, 64, false, 2, "fa3_forward(wgmma, tma, ws, 64-row CTA)",              \
   attn::LaunchForwardSm90<T, D, 64, false, false>, true, false, false, true},  \
  {DT, D, 64, false, 3, "fa3_forward(wgmma, tma, ws, 64-row CTA)",              \
   attn::LaunchForwardSm90<T, D, 64, false, false>, true, false, false, true},  \
  {DT, D, 128, false, 2, "fa3_forward(wgmma, tma, ws, pingpong, persistent)",   \
   attn::LaunchForwardSm90<T, D, 128, true, true>, true, false, true, true},    \
  {DT, D, 128, false, 3, "fa3_forward(wgmma, tma, ws, persistent)",             \
   attn::LaunchForwardSm90<T, D, 128, false, true>, true, false, true, true},   \
  {DT, D, 64, false, 2, "fa3_forward(wgmma, tma, ws, 64-row CTA, persistent)",  \
   attn::LaunchForwardSm90<T, D, 64, false, true>, true, false, true, true},    \
  {DT, D, 64, false, 3, "fa3_forward(wgmma, tma, ws, 64-row CTA, persistent)",  \
   attn::LaunchForwardSm90<T, D, 64, false, true>, true, false, true, true}
#define JBS_BWD_NAME "fa2_backward(delta, dq 64-row, dk/dv per kv head)"
#define JBS_BWD_ROWS(DT, T, D)                                                             \
  {DT, D, 64, true, 0, JBS_BWD_NAME, attn::RunBackward<T, D>, false, false, false, true},  \
  {DT, D, 128, true, 0, JBS_BWD_NAME, attn::RunBackward<T, D>, false, false, false, true}
// Backward variants 2 and 3 (JAX_BLOCKSPARSE_ATTN_BWD_VARIANT; the table's variant column):
// the Hopper backward in the FlashAttention-3 design (attention/bwd_sm90.cu: delta, then a
// dQ kernel over by_query and a dK/dV kernel over by_key, TMA, mbarrier ring, producer warp
// + 2 consumer warpgroups, wgmma), sm_90a only, head dims 64 / 128, block size 128; 2 with
// the products overlapping the elementwise work inside each warpgroup, 3 without (kept to
// compare and as a fallback). Like the Hopper forward they take every mask source
// (documents: lists per batch entry, segment ids, partial last tiles, q_offset) and masks
// of block size 16 / 32 / 64 on 128 x 128 tiles (AttentionBackwardParams::q_mask_bits,
// k_mask_bits). Variant 2 runs the calls the default, variant 4, leaves out
// (kSm90BackwardBeyondOnepass). Both
// take a logit soft cap (the last field; issue 21: P recomputed from the capped scores,
// dS times 1 - tanh^2, as the FA2 backward does).
#define JBS_BWD_SM90_ROWS(DT, T, D)                                                 \
  {DT, D, 128, true, 2, "fa3_backward(wgmma, tma, ws, overlap)",                    \
   attn::RunBackwardSm90<T, D, true>, true, false, false, true},                    \
  {DT, D, 128, true, 3, "fa3_backward(wgmma, tma, ws)",                             \
   attn::RunBackwardSm90<T, D, false>, true, false, false, true}
// The same at head dim 256 (attention/bwd_sm90_d256.cu: 64-row CTAs, the two consumer
// warpgroups on halves of the output columns, P and dS exchanged through shared memory);
// on unless JAX_BLOCKSPARSE_ATTN_BWD_D256=0 (RowEnabled).
#define JBS_BWD_SM90_D256_ROWS(DT, T)                                                  \
  {DT, 256, 128, true, 2, "fa3_backward(wgmma, tma, ws, overlap, d256 64-row CTAs)",  \
   attn::RunBackwardSm90D256<T, true>, true, false, false, true},                      \
  {DT, 256, 128, true, 3, "fa3_backward(wgmma, tma, ws, d256 64-row CTAs)",           \
   attn::RunBackwardSm90D256<T, false>, true, false, false, true}
// Backward variant 4: the one-pass Hopper backward (attention/bwd_sm90_onepass.cu: one
// kernel over by_key computing dK, dV and dS K per block pair, 5 products instead of 7; dQ
// summed in a float32 workspace in a fixed order under per-tile semaphores: deterministic),
// sm_90a only, head dims 64 / 128, block size 128, with segment ids, lists per batch entry
// and q_offset (documents). Needs the dq_accum / dq_semaphores workspaces (dq_workspace).
// The default on an sm_90 device (kSm90BackwardDefault); the calls it leaves out (partial
// last tiles, tile bits, a call declared without the workspaces) run variant 2's rows
// (kSm90BackwardBeyondOnepass, FindAttentionKernel). A logit soft cap (the last field; P
// recomputed from the capped scores, dS times 1 - tanh^2, as variant 2 does).
#define JBS_BWD_SM90_ONEPASS_ROWS(DT, T, D)                                             \
  {DT, D, 128, true, 4, "fa3_backward(one pass, deterministic dq)",                    \
   attn::RunBackwardSm90OnePass<T, D>, true, true, false, true}

// (dtype, head dim, block size, phase, forward variant) -> launcher, name.
const AttentionKernel kAttentionKernels[] = {
    JBS_FWD_ROWS(DType::kBF16, __nv_bfloat16, 64), JBS_FWD_ROWS(DType::kBF16, __nv_bfloat16, 128),
    JBS_FWD_ROWS(DType::kF16, __half, 64),         JBS_FWD_ROWS(DType::kF16, __half, 128),
    JBS_FWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 64), JBS_FWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 128),
    JBS_FWD_SM90_ROWS(DType::kF16, __half, 64),         JBS_FWD_SM90_ROWS(DType::kF16, __half, 128),
    JBS_FWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 96),
    JBS_FWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 256),
    JBS_FWD_SM90_ROWS(DType::kF16, __half, 96), JBS_FWD_SM90_ROWS(DType::kF16, __half, 256),
    JBS_BWD_ROWS(DType::kBF16, __nv_bfloat16, 64), JBS_BWD_ROWS(DType::kBF16, __nv_bfloat16, 128),
    JBS_BWD_ROWS(DType::kF16, __half, 64),         JBS_BWD_ROWS(DType::kF16, __half, 128),
    JBS_BWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 64),
    JBS_BWD_SM90_ROWS(DType::kBF16, __nv_bfloat16, 128),
    JBS_BWD_SM90_ROWS(DType::kF16, __half, 64), JBS_BWD_SM90_ROWS(DType::kF16, __half, 128),
    JBS_BWD_SM90_D256_ROWS(DType::kBF16, __nv_bfloat16),
    JBS_BWD_SM90_D256_ROWS(DType::kF16, __half),
    JBS_BWD_SM90_ONEPASS_ROWS(DType::kBF16, __nv_bfloat16, 64),
    JBS_BWD_SM90_ONEPASS_ROWS(DType::kBF16, __nv_bfloat16, 128),
    JBS_BWD_SM90_ONEPASS_ROWS(DType::kF16, __half, 64),
    JBS_BWD_SM90_ONEPASS_ROWS(DType::kF16, __half, 128),
};
#undef JBS_FWD_ROWS
#undef JBS_FWD_SM90_ROWS
#undef JBS_BWD_ROWS
#undef JBS_BWD_SM90_ROWS
#undef JBS_BWD_SM90_D256_ROWS
#undef JBS_BWD_SM90_ONEPASS_ROWS
#undef JBS_BWD_NAME

// Shapes the kernels take, beyond the table's head dim and block size (`tails`: Tq and Tk
// need not be multiples of the block size, the FA3-design kernels).
bool Supported(const AttentionShape& s, bool tails) {
  return (tails || (s.tq % s.block_size == 0 && s.tk % s.block_size == 0)) && s.hkv > 0 &&
         s.hq % s.hkv == 0 && (s.mask_heads == 1 || s.mask_heads == s.hq) &&
         (s.mask_batch == 1 || s.mask_batch == s.batch);
}

// The row is the one for this shape, and the shape one the kernels take.
bool Matches(const AttentionKernel& k, const AttentionShape& s) {
  return k.head_dim == s.head_dim && k.block_size == s.block_size &&
         Supported(s, k.documents);
}

attn::Lists ToLists(const BlockListsView& v) {
  return attn::Lists{v.counts, v.partial, v.lists, v.order, v.lines, v.max_len};
}

attn::Args Common(const AttentionShape& s) {
  attn::Args a{};
  a.batch = s.batch;
  a.tq = s.tq;
  a.tk = s.tk;
  a.hq = s.hq;
  a.hkv = s.hkv;
  a.group = s.hq / s.hkv;
  a.bs = s.block_size;
  a.hm = s.mask_heads;
  attn::SetScoreScale(a, s.scale, s.softcap);
  a.causal = s.causal;
  a.mb = s.mask_batch;
  return a;
}

bool Empty(const AttentionShape& s) { return s.batch == 0 || s.hq == 0; }

// The mask sources beyond the shared lists (lists per batch entry, segment ids, q_offset):
// cudaErrorNotSupported for a kernel that does not take them (the FA2 ones would ignore
// them; the Python routing sends such calls elsewhere when they do not run),
// cudaErrorInvalidValue for inconsistent ones.
cudaError_t CheckDocuments(const AttentionKernel& kernel, const AttentionShape& s,
                         const AttentionDocuments& d) {
  if ((s.mask_batch != 1 || d.q_segment_ids != nullptr || d.q_positions != nullptr) &&
      !kernel.documents)
    return cudaErrorNotSupported;
  if ((d.q_segment_ids == nullptr) != (d.kv_segment_ids == nullptr)) return cudaErrorInvalidValue;
  if (d.q_positions != nullptr && d.q_positions_batch != 1 && d.q_positions_batch != s.batch)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

// The mask sources into the kernel arguments.
void CopyDocuments(const AttentionDocuments& d, attn::Args& a) {
  a.q_ids = d.q_segment_ids;
  a.kv_ids = d.kv_segment_ids;
  a.q_pos = d.q_positions;
  a.qp_batch = d.q_positions_batch;
}

}  // namespace

// The backward variant on an sm_90 device when JAX_BLOCKSPARSE_ATTN_BWD_VARIANT is unset
// (jax_blocksparse/_cuda.py: SM90_BACKWARD_DEFAULT, the same value): 4, the one-pass
// Hopper backward (H100, 2026-12-07, benchmarks/RESULTS.md: in groups of 4 pairs the
// backward 1.22-1.29x variant 2's on causal, local and strided layouts), where the Python side
// declares its workspaces (_cuda.py onepass_backward; their dQ slots: onepass_dq_slots),
// else variant 2, the FA3-design backward (H200, 2026-12-03:
// forward + backward 1.7-1.9x the FA2 backward's). Block size 64 runs the FA2 backward's
// rows, or with mask sources variant 2's rows on 128 x 128 tiles (TiledMaskBlock); head
// dim 96 runs zero-padded to 128 (the Python lowering), 256 variant 2's rows
// (JBS_BWD_SM90_D256_ROWS; the pure-JAX path under JAX_BLOCKSPARSE_ATTN_BWD_D256=0).
constexpr int kSm90BackwardDefault = 4;
// The Hopper backward variant that runs what the one-pass kernel (variant 4) leaves out:
// partial last tiles, tile bits, head dims without a variant-4 row
// (jax_blocksparse/_cuda.py: SM90_BACKWARD_BEYOND_ONEPASS, the same value).
constexpr int kSm90BackwardBeyondOnepass = 2;

namespace {
// Whether a row serves calls in this process: the head-dim-256 Hopper backward rows unless
// JAX_BLOCKSPARSE_ATTN_BWD_D256=0; the
// nanobind module reports the enabled rows only (AttentionKernelAt), so the Python side
// routes by the same rows.
bool RowEnabled(const AttentionKernel& k) {
  return !(k.backward && k.head_dim == 256) || GetSwitches().attn_bwd_d256;
}

// The row of `variant` (its persistent one where asked for and present), else (a variant
// that leaves this combination out) variant 0's.
const AttentionKernel* FindRow(int variant, DType dtype, int head_dim, int block_size,
                               bool backward, bool softcap, bool persistent) {
  for (const int v : {variant, 0})
    for (const bool p : {persistent, false})
      for (const AttentionKernel& k : kAttentionKernels)
        if (k.dtype == dtype && k.head_dim == head_dim && k.block_size == block_size &&
            k.backward == backward && k.fwd_variant == v && k.persistent == p && RowEnabled(k) &&
            (k.softcap || !softcap))
          return &k;
  return nullptr;
}
}  // namespace

int AttentionKernelCount() {
  int n = 0;
  for (const AttentionKernel& k : kAttentionKernels) n += RowEnabled(k);
  return n;
}

const AttentionKernel& AttentionKernelAt(int i) {
  for (const AttentionKernel& k : kAttentionKernels)
    if (RowEnabled(k) && i-- == 0) return k;
  return kAttentionKernels[0];  // (i out of range: a caller's error)
}

const AttentionKernel* FindAttentionKernel(DType dtype, int head_dim, int block_size,
                                           bool backward, bool softcap, bool beyond_onepass) {
  // the default (switch unset), by the device's architecture (cached per device): forward
  // variant 2, backward kSm90BackwardDefault on an sm_90 device running sm_90a code, else 0
  const int default_variant =
      !attn::Sm90ForwardAvailable() ? 0 : backward ? kSm90BackwardDefault : 2;
  const int variant = backward ? GetSwitches().attn_bwd_variant : GetSwitches().attn_fwd_variant;
  const bool persistent = !backward && GetSwitches().attn_fwd_persistent;
  const int asked = variant < 0 ? default_variant : variant;
  // backward variant 4 (AttentionKernel::dq_workspace) takes neither tile bits nor partial
  // last tiles: the default Hopper backward runs those calls (jax_blocksparse/_cuda.py,
  // onepass_backward, then declares no workspaces)
  const AttentionKernel* plain =
      FindRow(asked, dtype, head_dim, block_size, backward, false, persistent);
  if (plain != nullptr && plain->dq_workspace && beyond_onepass)
    return FindRow(kSm90BackwardBeyondOnepass, dtype, head_dim, block_size, backward, softcap,
                   false);
  const AttentionKernel* row =
      FindRow(asked, dtype, head_dim, block_size, backward, softcap, persistent);
  // backward variant 4 without a row of its own where kSm90BackwardBeyondOnepass has one
  // (head dim 256): that one's, as onepass_backward and fused_attention_unsupported route it
  if (backward && asked == 4 && (row == nullptr || row->fwd_variant != asked)) {
    const AttentionKernel* fallback = FindRow(kSm90BackwardBeyondOnepass, dtype, head_dim,
                                              block_size, backward, softcap, false);
    if (fallback != nullptr && fallback->fwd_variant == kSm90BackwardBeyondOnepass)
      return fallback;
  }
  return row;
}

cudaError_t LaunchAttentionForward(const AttentionKernel& kernel, const AttentionForwardParams& p,
                                   cudaStream_t stream) {
  if (kernel.backward || !Matches(kernel, p.shape)) return cudaErrorInvalidValue;
  if (p.shape.softcap < 0.f) return cudaErrorInvalidValue;
  if (p.shape.softcap > 0.f && !kernel.softcap) return cudaErrorNotSupported;
  const cudaError_t err = CheckDocuments(kernel, p.shape, p.documents);
  if (err != cudaSuccess) return err;
  // a fine mask (block size 16 / 32 on 128 x 128 tiles): the FA3-design forward only (the
  // FA2 one would ignore the bits), at block size 128
  if (p.mask_bits != nullptr && !kernel.documents) return cudaErrorNotSupported;
  if (p.mask_bits != nullptr &&
      (p.shape.block_size != 128 || !TiledMaskBlock(p.mask_block, /*backward=*/false)))
    return cudaErrorInvalidValue;
  if (Empty(p.shape) || p.shape.tq == 0) return cudaSuccess;
  attn::Args a = Common(p.shape);
  CopyDocuments(p.documents, a);
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.kv_lengths = p.kv_lengths;
  a.by_query = ToLists(p.by_query);
  a.out_o = p.o;
  a.out_lse = p.lse;
  a.sinks = p.sinks;
  a.l2_sections = p.l2_sections;
  // (read by the FA3-design forward, `documents` rows: the lazy rescale unless
  // JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0, which the launch line names)
  const bool lazy = GetSwitches().attn_fwd_lazy_rescale;
  a.rescale_slack = kernel.documents && lazy ? attn::kLazyRescaleSlack : 0.f;
  if (kernel.documents && !lazy && GetSwitches().debug) LaunchDetail() = " eager-rescale";
  // (the same rows: the cap's bound as the rows' maximum where it keeps P normal, unless =0)
  a.cap_is_max = kernel.documents && GetSwitches().attn_fwd_cap_max &&
                 attn::CapServesAsMax(a.cap_log2, kernel.dtype == DType::kBF16, a.sinks != nullptr);
  if (a.cap_is_max) {
    a.rescale_slack = INFINITY;  // the maximum never moves: the O rescale vote never fires
    if (GetSwitches().debug) LaunchDetail() += " cap-max";
  }
  const int bs = p.shape.block_size;
  a.mask_bits = p.mask_bits;
  const int mask_block = p.mask_bits != nullptr ? p.mask_block : bs;
  a.mask_lg = 0;
  while ((2 << a.mask_lg) <= mask_block) ++a.mask_lg;  // log2 (a power of two here)
  if (a.by_query.lines != (p.shape.tq + bs - 1) / bs) return cudaErrorInvalidValue;
  return kernel.launch(a, stream);
}

cudaError_t LaunchAttentionBackward(const AttentionKernel& kernel,
                                    const AttentionBackwardParams& p, cudaStream_t stream) {
  if (!kernel.backward || !Matches(kernel, p.shape)) return cudaErrorInvalidValue;
  if (p.shape.softcap < 0.f) return cudaErrorInvalidValue;
  if (p.shape.softcap > 0.f && !kernel.softcap) return cudaErrorNotSupported;
  const cudaError_t err = CheckDocuments(kernel, p.shape, p.documents);
  if (err != cudaSuccess) return err;
  // the one-pass backward (variant 4) takes no partial tiles and no tile bits: refused,
  // never ignored; the Python routing sends them elsewhere
  if (kernel.dq_workspace &&
      (p.shape.tq % p.shape.block_size != 0 || p.shape.tk % p.shape.block_size != 0 ||
       p.q_mask_bits != nullptr || p.k_mask_bits != nullptr))
    return cudaErrorNotSupported;
  if (kernel.dq_workspace && !Empty(p.shape) &&
      (p.dq_accum == nullptr || p.dq_semaphores == nullptr))
    return cudaErrorInvalidValue;
  // a fine mask (block size 16 / 32 / 64 on 128 x 128 tiles): the FA3-design backward only
  // (the others would ignore the bits), words for both directions
  const bool fine = p.q_mask_bits != nullptr || p.k_mask_bits != nullptr;
  if (fine && !kernel.documents) return cudaErrorNotSupported;
  if (fine && (p.q_mask_bits == nullptr || p.k_mask_bits == nullptr ||
               p.shape.block_size != 128 || !TiledMaskBlock(p.mask_block, /*backward=*/true)))
    return cudaErrorInvalidValue;
  if (Empty(p.shape)) return cudaSuccess;
  attn::Args a = Common(p.shape);
  CopyDocuments(p.documents, a);
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.o = p.o;
  a.d_o = p.d_o;
  a.lse = p.lse;
  a.d_lse = p.d_lse;
  a.kv_lengths = p.kv_lengths;
  a.by_query = ToLists(p.by_query);
  a.by_key = ToLists(p.by_key);
  a.dq = p.dq;
  a.dk = p.dk;
  a.dv = p.dv;
  a.delta = p.delta;
  a.dq_accum = p.dq_accum;
  a.dq_sem = p.dq_semaphores;
  a.dq_slots = p.dq_slots;
  const int bs = p.shape.block_size;
  a.mask_bits = p.q_mask_bits;
  a.mask_bits_key = p.k_mask_bits;
  const int mask_block = fine ? p.mask_block : bs;
  a.mask_lg = 0;
  while ((2 << a.mask_lg) <= mask_block) ++a.mask_lg;  // log2 (a power of two here)
  if (a.by_query.lines != (p.shape.tq + bs - 1) / bs ||
      a.by_key.lines != (p.shape.tk + bs - 1) / bs)
    return cudaErrorInvalidValue;
  return kernel.launch(a, stream);
}

}  // namespace jax_blocksparse
