// XLA FFI handlers of the fused block-sparse attention: read shapes and attributes, fill the
// launcher's parameters, launch on XLA's stream. No allocation, no host synchronization:
// safe inside CUDA graphs (declared command-buffer compatible).
#include <string>

#include "../cuda/attention.h"
#include "../cuda/attention/bwd_sm90_onepass.h"
#include "../cuda/attention_decode.h"
#include "debug.h"
#include "ffi_common.h"
#include "ffi_attention.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using ffi::AnyBuffer;
using ffi::Buffer;
using ffi::F32;
using ffi::Result;
using ffi::S32;

namespace jax_blocksparse {
namespace {

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jax_blocksparse attention: " + what);
}

std::string Describe(const char* op, DType dtype, const AttentionShape& s, const AnyBuffer& q,
                     const AnyBuffer& k) {
  return std::string(op) + " q" + ShapeText(q.dimensions()) + " k" + ShapeText(k.dimensions()) +
         " " + DTypeName(dtype) + " bs=" + std::to_string(s.block_size) +
         " mask_heads=" + std::to_string(s.mask_heads) +
         (s.mask_batch != 1 ? " mask_batch=" + std::to_string(s.mask_batch) : "") +
         (s.causal ? " causal" : "") +
         (s.softcap > 0.f ? " softcap=" + std::to_string(s.softcap) : "");
}

// Shapes of q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] and the attributes; *kernel: the
// dispatch table's row for (dtype, head dim, block size, phase), validated here, once.
ffi::ErrorOr<AttentionShape> Shape(DType dtype, bool backward, const AnyBuffer& q,
                                   const AnyBuffer& k, const AnyBuffer& v,
                                   const Buffer<S32>& kv_lengths, const Buffer<S32>& q_counts,
                                   int32_t block_size, bool causal, float scale,
                                   float softcap, bool segments, bool positioned,
                                   int32_t mask_block, bool onepass_workspaces,
                                   const AttentionKernel** kernel) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Unexpected(Invalid("q, k, v must be [B, T, H, D]"));
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i]) return ffi::Unexpected(Invalid("k and v shapes differ"));
  if (k.element_type() != q.element_type() || v.element_type() != q.element_type())
    return ffi::Unexpected(Invalid("q, k, v dtypes differ"));
  if (kd[0] != qd[0] || kd[3] != qd[3])
    return ffi::Unexpected(Invalid("q and k differ in batch or head dimension"));
  if (kv_lengths.dimensions().size() != 1 || kv_lengths.dimensions()[0] != qd[0])
    return ffi::Unexpected(Invalid("kv_lengths must be [B], one length per batch entry"));
  AttentionShape s{};
  s.batch = int32_t(qd[0]);
  s.tq = int32_t(qd[1]);
  s.hq = int32_t(qd[2]);
  s.head_dim = int32_t(qd[3]);
  s.tk = int32_t(kd[1]);
  s.hkv = int32_t(kd[2]);
  s.block_size = block_size;
  s.scale = scale;
  s.causal = causal;
  if (!(softcap >= 0.f)) return ffi::Unexpected(Invalid("softcap must be >= 0 (0: none)"));
  s.softcap = softcap;
  // counts [Hm, lines] or [Bm, Hm, lines] with Bm = 1 or B
  auto cd = q_counts.dimensions();
  if (cd.size() != 2 && cd.size() != 3)
    return ffi::Unexpected(Invalid("metadata counts must be [Bm, Hm, lines]"));
  s.mask_batch = cd.size() == 3 ? int32_t(cd[0]) : 1;
  s.mask_heads = int32_t(cd[cd.size() - 2]);
  if (s.mask_batch != 1 && s.mask_batch != s.batch)
    return ffi::Unexpected(Invalid("the lists' batch axis must be 1 or B"));
  // a soft cap: the rows that take one (the FA2 kernels, the FA3-design forward and
  // backward; not the one-pass backward, variant 4); beyond the one-pass backward: a call
  // declared without its workspaces (jax_blocksparse/_cuda.py, onepass_backward, decides),
  // tile bits (a mask block other than the tile) and partial last tiles
  const bool beyond_onepass = !onepass_workspaces || mask_block != block_size ||
                              s.tq % block_size != 0 || s.tk % block_size != 0;
  *kernel = FindAttentionKernel(dtype, s.head_dim, block_size, backward, softcap > 0.f,
                                beyond_onepass);
  if (*kernel == nullptr)
    return ffi::Unexpected(Invalid(std::string("no ") + (backward ? "backward" : "forward") +
                                   " kernel for " + DTypeName(dtype) + " head_dim=" +
                                   std::to_string(s.head_dim) + " block_size=" +
                                   std::to_string(block_size) + " in the dispatch table"));
  if ((s.tq % block_size != 0 || s.tk % block_size != 0) && !(*kernel)->documents)
    return ffi::Unexpected(Invalid(std::string("sequence lengths must be multiples of the block "
                                               "size (the kernel here: ") + (*kernel)->name + ")"));
  if (s.hkv == 0 || s.hq % s.hkv != 0)
    return ffi::Unexpected(Invalid("query heads must be a multiple of kv heads"));
  if (s.mask_heads != 1 && s.mask_heads != s.hq)
    return ffi::Unexpected(Invalid("mask heads must be 1 or the number of query heads"));
  return s;
}

// The mask sources beyond the lists (AttentionDocuments): segment ids when `segments`
// (padded to whole tiles: [B, ceil(Tq / bs) * bs], [B, ceil(Tk / bs) * bs]), q_positions
// ([1] or [B]) when `positioned`; only for a kernel that takes them (with lists per batch
// entry too).
ffi::ErrorOr<AttentionDocuments> Documents(const AttentionKernel& kernel, const AttentionShape& s,
                                           const Buffer<S32>& q_positions,
                                           const Buffer<S32>& q_segment_ids,
                                           const Buffer<S32>& kv_segment_ids, bool segments,
                                           bool positioned) {
  AttentionDocuments d{};
  if (segments) {
    auto qs = q_segment_ids.dimensions(), ks = kv_segment_ids.dimensions();
    const int64_t bs = s.block_size;
    const int64_t tq_pad = (s.tq + bs - 1) / bs * bs, tk_pad = (s.tk + bs - 1) / bs * bs;
    if (qs.size() != 2 || qs[0] != s.batch || qs[1] != tq_pad || ks.size() != 2 ||
        ks[0] != s.batch || ks[1] != tk_pad)
      return ffi::Unexpected(
          Invalid("segment ids must be [B, ceil(Tq / bs) * bs] and [B, ceil(Tk / bs) * bs]"));
    d.q_segment_ids = q_segment_ids.typed_data();
    d.kv_segment_ids = kv_segment_ids.typed_data();
  }
  if (positioned) {  // q_offset: q_positions [1] or [B]
    auto pd = q_positions.dimensions();
    if (pd.size() != 1 || (pd[0] != 1 && pd[0] != s.batch))
      return ffi::Unexpected(Invalid("q_positions must be [1] or [B]"));
    d.q_positions = q_positions.typed_data();
    d.q_positions_batch = int32_t(pd[0]);
  }
  if ((s.mask_batch != 1 || segments || positioned) && !kernel.documents)
    return ffi::Unexpected(Invalid(std::string("lists per batch entry, segment ids and q_offset "
                                               "need the FA3-design kernels (sm_90a); the "
                                               "kernel here is ") + kernel.name));
  return d;
}

BlockListsView View(const Buffer<S32>& counts, const Buffer<S32>& partial,
                    const Buffer<S32>& lists, const Buffer<S32>& order) {
  BlockListsView v{};
  v.counts = counts.typed_data();
  v.partial = partial.typed_data();
  v.lists = lists.typed_data();
  v.order = order.typed_data();
  auto cd = counts.dimensions();
  v.lines = int32_t(cd[cd.size() - 1]);
  auto ld = lists.dimensions();
  v.max_len = ld.size() == cd.size() + 1 ? int32_t(ld[ld.size() - 1]) : 0;
  return v;
}

ffi::Error FwdImpl(cudaStream_t stream, AnyBuffer q, AnyBuffer k, AnyBuffer v,
                   AnyBuffer sinks, Buffer<S32> kv_lengths, Buffer<S32> q_positions,
                   Buffer<S32> q_counts, Buffer<S32> q_partial,
                   Buffer<S32> q_lists, Buffer<S32> q_order, Buffer<S32> q_segment_ids,
                   Buffer<S32> kv_segment_ids, Buffer<S32> tile_bits, Result<AnyBuffer> o,
                   Result<Buffer<F32>> lse, int32_t block_size, bool causal, float scale,
                   bool segments, bool positioned, int32_t mask_block, float softcap,
                   bool head_sections) {
  auto dtype = ToDType(q.element_type(), /*allow_f32=*/false);
  if (dtype.has_error()) return dtype.error();
  const AttentionKernel* kernel = nullptr;
  auto shape = Shape(*dtype, /*backward=*/false, q, k, v, kv_lengths, q_counts, block_size,
                     causal, scale, softcap, segments, positioned, mask_block,
                     /*onepass_workspaces=*/false, &kernel);
  if (shape.has_error()) return shape.error();
  AttentionForwardParams p{};
  p.shape = *shape;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.kv_lengths = kv_lengths.typed_data();
  p.by_query = View(q_counts, q_partial, q_lists, q_order);
  if (p.by_query.lines != (p.shape.tq + block_size - 1) / block_size)
    return Invalid("query metadata must have ceil(Tq / block_size) lines");
  auto documents = Documents(*kernel, p.shape, q_positions, q_segment_ids, kv_segment_ids,
                             segments, positioned);
  if (documents.has_error()) return documents.error();
  p.documents = *documents;
  const bool tiled = mask_block != block_size;  // a mask of block size 16 / 32 on 128 tiles
  if (tiled) {
    if (block_size != 128 || !TiledMaskBlock(mask_block, /*backward=*/false))
      return Invalid("mask_block must be 16 or 32 on tiles of 128 (block_size)");
    // [(Bm,) Hm, lines, 2 * width]: the lists' shape, two int32 per entry
    auto bd = tile_bits.dimensions(), ld = q_lists.dimensions();
    bool fits = bd.size() == ld.size() && bd.size() >= 3 && bd.back() == 2 * ld.back();
    for (size_t i = 0; fits && i + 1 < bd.size(); ++i) fits = bd[i] == ld[i];
    if (!fits) return Invalid("tile bits must be [Bm, Hm, lines, 2 * width] beside the lists");
    if (!kernel->documents)
      return Invalid(std::string("block sizes 16 / 32 need the FA3-design forward (sm_90a); "
                                 "the forward here is ") +
                     kernel->name);
    // int32 pairs, low word first: one little-endian 64-bit word per list entry
    p.mask_bits = reinterpret_cast<const uint64_t*>(tile_bits.typed_data());
    p.mask_block = mask_block;
  }
  // attention sinks: float32 [Hq] (the kernels start each row's softmax from its head's
  // sink), or the placeholder [0]: none
  auto sd = sinks.dimensions();
  if (sinks.element_type() != ffi::DataType::F32 || sd.size() != 1 ||
      (sd[0] != 0 && sd[0] != p.shape.hq))
    return Invalid("sinks must be float32 [Hq=" + std::to_string(p.shape.hq) +
                   "] (one logit per query head) or [0] (no sinks)");
  p.sinks = sd[0] != 0 ? static_cast<const float*>(sinks.untyped_data()) : nullptr;
  p.l2_sections = head_sections;  // (JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS, where set, decides)
  p.o = o->untyped_data();
  p.lse = lse->typed_data();
  LaunchLog log(stream, DebugLevel() ? Describe("attention_fwd", *dtype, p.shape, q, k) +
                                           (segments ? " segments" : "") +
                                           (p.sinks != nullptr ? " sinks" : "") +
                                           (head_sections ? " head-sections" : "") +
                                           (tiled ? " mask_bs=" + std::to_string(mask_block)
                                                  : "")
                                     : "");
  const cudaError_t err = LaunchAttentionForward(*kernel, p, stream);
  log.Done(kernel->name);
  return CheckLaunch(err, "attention forward");
}

ffi::Error BwdImpl(cudaStream_t stream, AnyBuffer q, AnyBuffer k, AnyBuffer v, AnyBuffer o,
                   Buffer<F32> lse, AnyBuffer d_o, Buffer<F32> d_lse, Buffer<S32> kv_lengths,
                   Buffer<S32> q_positions, Buffer<S32> q_counts, Buffer<S32> q_partial,
                   Buffer<S32> q_lists, Buffer<S32> q_order, Buffer<S32> k_counts,
                   Buffer<S32> k_partial, Buffer<S32> k_lists, Buffer<S32> k_order,
                   Buffer<S32> q_segment_ids, Buffer<S32> kv_segment_ids,
                   Buffer<S32> q_tile_bits, Buffer<S32> k_tile_bits,
                   Result<AnyBuffer> dq, Result<AnyBuffer> dk, Result<AnyBuffer> dv,
                   Result<Buffer<F32>> delta, Result<Buffer<F32>> dq_accum,
                   Result<Buffer<S32>> dq_semaphores, int32_t block_size, bool causal, float scale,
                   bool segments, bool positioned, int32_t mask_block, float softcap) {
  auto dtype = ToDType(q.element_type(), /*allow_f32=*/false);
  if (dtype.has_error()) return dtype.error();
  const AttentionKernel* kernel = nullptr;
  auto shape = Shape(*dtype, /*backward=*/true, q, k, v, kv_lengths, q_counts, block_size,
                     causal, scale, softcap, segments, positioned, mask_block,
                     dq_accum->element_count() != 0, &kernel);
  if (shape.has_error()) return shape.error();
  if (o.element_type() != q.element_type() || d_o.element_type() != q.element_type())
    return Invalid("o and d_o must have q's dtype");
  AttentionBackwardParams p{};
  p.shape = *shape;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.o = o.untyped_data();
  p.d_o = d_o.untyped_data();
  p.lse = lse.typed_data();
  p.d_lse = d_lse.typed_data();
  p.kv_lengths = kv_lengths.typed_data();
  p.by_query = View(q_counts, q_partial, q_lists, q_order);
  p.by_key = View(k_counts, k_partial, k_lists, k_order);
  if (p.by_query.lines != (p.shape.tq + block_size - 1) / block_size ||
      p.by_key.lines != (p.shape.tk + block_size - 1) / block_size)
    return Invalid("metadata must have ceil(Tq / block_size) and ceil(Tk / block_size) lines");
  auto qd = q_counts.dimensions(), kd = k_counts.dimensions();
  if (kd.size() != qd.size() || kd[kd.size() - 2] != p.shape.mask_heads ||
      (kd.size() == 3 && kd[0] != qd[0]))
    return Invalid("by-query and by-key metadata differ in batch entries or mask heads");
  auto documents = Documents(*kernel, p.shape, q_positions, q_segment_ids, kv_segment_ids,
                             segments, positioned);
  if (documents.has_error()) return documents.error();
  p.documents = *documents;
  const bool tiled = mask_block != block_size;  // a mask of block 16 / 32 / 64 on 128 tiles
  if (tiled) {
    if (block_size != 128 || !TiledMaskBlock(mask_block, /*backward=*/true))
      return Invalid("mask_block must be 16, 32 or 64 on tiles of 128 (block_size)");
    // [(Bm,) Hm, lines, 2 * width] beside each direction's lists, two int32 per entry
    auto fits = [](const Buffer<S32>& bits, const Buffer<S32>& lists) {
      auto bd = bits.dimensions(), ld = lists.dimensions();
      bool ok = bd.size() == ld.size() && bd.size() >= 3 && bd.back() == 2 * ld.back();
      for (size_t i = 0; ok && i + 1 < bd.size(); ++i) ok = bd[i] == ld[i];
      return ok;
    };
    if (!fits(q_tile_bits, q_lists) || !fits(k_tile_bits, k_lists))
      return Invalid("tile bits must be [Bm, Hm, lines, 2 * width] beside each direction's lists");
    if (!kernel->documents)
      return Invalid(std::string("tiled block sizes 16 / 32 / 64 need the FA3-design backward "
                                 "(sm_90a, variant 2 or 3); the backward here is ") +
                     kernel->name);
    // int32 pairs, low word first: one little-endian 64-bit word per list entry
    p.q_mask_bits = reinterpret_cast<const uint64_t*>(q_tile_bits.typed_data());
    p.k_mask_bits = reinterpret_cast<const uint64_t*>(k_tile_bits.typed_data());
    p.mask_block = mask_block;
  }
  if (int64_t(delta->element_count()) !=
      int64_t(p.shape.batch) * p.shape.hq * BackwardWorkspaceRows(p.shape.tq, block_size))
    return Invalid("the workspace must be [B, Hq, 2, ceil(Tq / block_size) * block_size]");
  p.dq = dq->untyped_data();
  p.dk = dk->untyped_data();
  p.dv = dv->untyped_data();
  p.delta = delta->typed_data();
  // the one-pass backward's workspaces (jax_blocksparse/_cuda.py declares them [0] for the
  // other kernels): float32 [S, B, Hq, Tq, D], int32 [S B Hq Tq / 64 + 1], S dQ slots (2,
  // 4 or 8: _cuda.py onepass_dq_slots)
  if (kernel->dq_workspace) {
    const AttentionShape& s = p.shape;
    const int64_t slot = attn::OnePassDqAccumElements(s.batch, s.hq, s.tq, s.head_dim, 1);
    const int64_t slots =  // (no element: Tq = 0, the FA2 backward runs)
        slot > 0 ? int64_t(dq_accum->element_count()) / slot : attn::kOnePassDqSlots;
    if (!attn::OnePassDqSlotsValid(slots) ||
        int64_t(dq_accum->element_count()) !=
            attn::OnePassDqAccumElements(s.batch, s.hq, s.tq, s.head_dim, slots) ||
        int64_t(dq_semaphores->element_count()) !=
            attn::OnePassSemaphoreElements(s.batch, s.hq, s.tq, slots))
      return Invalid(std::string("the backward here (") + kernel->name +
                     ") needs the dq_accum [S, B, Hq, Tq, D] and dq_semaphores "
                     "[S B Hq Tq / 64 + 1] workspaces, S = 2, 4 or 8 "
                     "(JAX_BLOCKSPARSE_ATTN_BWD_VARIANT read differently by the Python "
                     "side?)");
    p.dq_accum = dq_accum->typed_data();
    p.dq_semaphores = dq_semaphores->typed_data();
    p.dq_slots = int32_t(slots);
  }
  LaunchLog log(stream, DebugLevel() ? Describe("attention_bwd", *dtype, p.shape, q, k) +
                                           (segments ? " segments" : "") +
                                           (tiled ? " mask_bs=" + std::to_string(mask_block)
                                                  : "")
                                     : "");
  const cudaError_t err = LaunchAttentionBackward(*kernel, p, stream);
  log.Done(kernel->name);
  return CheckLaunch(err, "attention backward");
}

// Decode: q [B, Tq, Hq, D]; k, v [B, Tk, Hkv, D], or page pools [P, page_size, Hkv, D] with
// page_table [B, pages_per_seq] when `paged` (else a [1, 1] placeholder); q_rows,
// q_positions, kv_lengths [B]; counts [Bm, Hm, R], lists [Bm, Hm, R, W]. Results o, lse
// and the split workspace part_o [B, Hq, Tq, S, D], part_lse [B, Hq, Tq, S] (S: splits).
// k and v are q's dtype, or an fp8 cache (F8E4M3FN or F8E5M2, both alike) dequantized by
// k_scale, v_scale float32 [Hkv] (for a cache in q's dtype: ones, or [0]: none, read as 1).
ffi::Error DecodeImpl(cudaStream_t stream, AnyBuffer q, AnyBuffer k, AnyBuffer v,
                      Buffer<S32> kv_lengths, Buffer<S32> q_rows, Buffer<S32> q_positions,
                      Buffer<S32> counts, Buffer<S32> lists, Buffer<S32> page_table,
                      Buffer<F32> k_scale, Buffer<F32> v_scale, Result<AnyBuffer> o, Result<Buffer<F32>> lse,
                      Result<Buffer<F32>> part_o, Result<Buffer<F32>> part_lse,
                      int32_t block_size, bool causal, float scale, bool paged,
                      float softcap) {
  auto dtype = ToDType(q.element_type(), /*allow_f32=*/false);
  if (dtype.has_error()) return dtype.error();
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return Invalid("decode: q, k, v must have 4 dimensions");
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i]) return Invalid("decode: k and v shapes differ");
  if (v.element_type() != k.element_type()) return Invalid("decode: k and v dtypes differ");
  DecodeKv kv = DecodeKv::kSame;
  if (k.element_type() == ffi::DataType::F8E4M3FN) {
    kv = DecodeKv::kE4M3;
  } else if (k.element_type() == ffi::DataType::F8E5M2) {
    kv = DecodeKv::kE5M2;
  } else if (k.element_type() != q.element_type()) {
    return Invalid("decode: k and v must be q's dtype or fp8 (e4m3fn, e5m2)");
  }
  AttentionDecodeParams p{};
  p.batch = int32_t(qd[0]);
  p.tq = int32_t(qd[1]);
  p.hq = int32_t(qd[2]);
  p.head_dim = int32_t(qd[3]);
  p.hkv = int32_t(kd[2]);
  if (kd[3] != qd[3]) return Invalid("decode: q and k differ in head dimension");
  for (const Buffer<F32>* x : {&k_scale, &v_scale})
    if (x->dimensions().size() != 1 || (x->dimensions()[0] != kd[2] && x->dimensions()[0] != 0))
      return Invalid("decode: k_scale and v_scale must be [Hkv] (or [0]: none, scale 1)");
  auto pt = page_table.dimensions();
  if (paged) {
    if (pt.size() != 2 || pt[0] != qd[0])
      return Invalid("decode: page_table must be [B, pages_per_seq]");
    p.page_size = int32_t(kd[1]);
    p.pages_per_seq = int32_t(pt[1]);
    p.pool_pages = int32_t(kd[0]);
    p.tk = p.page_size * p.pages_per_seq;
  } else {
    if (kd[0] != qd[0]) return Invalid("decode: q and k differ in batch");
    p.tk = p.page_size = int32_t(kd[1]);
    p.pages_per_seq = 1;
    p.pool_pages = int32_t(kd[0]);
  }
  for (const Buffer<S32>* x : {&kv_lengths, &q_rows, &q_positions})
    if (x->dimensions().size() != 1 || x->dimensions()[0] != qd[0])
      return Invalid("decode: kv_lengths, q_rows and q_positions must be [B]");
  auto cd = counts.dimensions(), ld = lists.dimensions();
  if (cd.size() != 3 || ld.size() != 4 || ld[0] != cd[0] || ld[1] != cd[1] || ld[2] != cd[2])
    return Invalid("decode: counts must be [Bm, Hm, R] and lists [Bm, Hm, R, W]");
  p.mask_batch = int32_t(cd[0]);
  p.mask_heads = int32_t(cd[1]);
  p.rows = int32_t(cd[2]);
  p.width = int32_t(ld[3]);
  auto wd = part_lse->dimensions();
  if (wd.size() != 4) return Invalid("decode: part_lse must be [B, Hq, Tq, splits]");
  p.splits = int32_t(wd[3]);
  p.block_size = block_size;
  p.scale = scale;
  p.causal = causal;
  p.softcap = softcap;
  if (paged) p.page_table = page_table.typed_data();
  if (const char* why = AttentionDecodeUnsupported(p)) return Invalid(std::string("decode: ") + why);
  const AttentionDecodeKernel* kernel = FindAttentionDecodeKernel(*dtype, kv, p.head_dim);
  const char* kv_name = kv == DecodeKv::kE4M3 ? " fp8 e4m3 cache" :
                        kv == DecodeKv::kE5M2 ? " fp8 e5m2 cache" : "";
  if (kernel == nullptr)
    return Invalid(std::string("decode: no kernel for ") + DTypeName(*dtype) + kv_name +
                   " head_dim=" + std::to_string(p.head_dim) + " in the dispatch table");
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.k_scale = k_scale.element_count() == 0 ? nullptr : k_scale.typed_data();  // none: 1
  p.v_scale = v_scale.element_count() == 0 ? nullptr : v_scale.typed_data();
  p.kv_lengths = kv_lengths.typed_data();
  p.q_rows = q_rows.typed_data();
  p.q_positions = q_positions.typed_data();
  p.counts = counts.typed_data();
  p.lists = lists.typed_data();
  p.o = o->untyped_data();
  p.lse = lse->typed_data();
  p.part_o = part_o->typed_data();
  p.part_lse = part_lse->typed_data();
  if (p.batch == 0 || p.hq == 0) return ffi::Error::Success();
  LaunchLog log(stream, DebugLevel() ? "attention_decode q" + ShapeText(qd) + " k" +
                                           ShapeText(kd) + " " + DTypeName(*dtype) +
                                           kv_name + " bs=" + std::to_string(block_size) +
                                           (paged ? " paged" : "") + (causal ? " causal" : "") +
                                           (softcap > 0.f ? " softcap" : "") +
                                           " splits=" + std::to_string(p.splits)
                                     : "");
  const cudaError_t err = kernel->launch(p, stream);
  // the form again, for the debug line only (the launcher decides it: attention/decode.cu)
  log.Done(DebugLevel() ? DecodeKernelName(*kernel, DecodeFormOf(p, kv == DecodeKv::kSame))
                        : kernel->name);
  return CheckLaunch(err, "attention decode");
}

}  // namespace
}  // namespace jax_blocksparse

#define JBS_ATTENTION_ATTRS \
  .Attr<int32_t>("block_size").Attr<bool>("causal").Attr<float>("scale")

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseAttentionFwd, jax_blocksparse::FwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()     // q
        .Arg<AnyBuffer>()     // k
        .Arg<AnyBuffer>()     // v
        .Arg<AnyBuffer>()     // sinks float32 [Hq], or [0]: none (checked: FwdImpl)
        .Arg<Buffer<S32>>()   // kv_lengths
        .Arg<Buffer<S32>>()   // q_positions [1] or [B] (read with `positioned` only)
        .Arg<Buffer<S32>>()   // q_counts
        .Arg<Buffer<S32>>()   // q_partial
        .Arg<Buffer<S32>>()   // q_lists
        .Arg<Buffer<S32>>()   // q_order
        .Arg<Buffer<S32>>()   // q_segment_ids [B, Tq] ([1, 1] unused without segments)
        .Arg<Buffer<S32>>()   // kv_segment_ids [B, Tk] (the same)
        .Arg<Buffer<S32>>()   // tile_bits [Bm, Hm, lines, 2 width] (read when mask_block !=
                              // block_size; else a placeholder)
        .Ret<AnyBuffer>()     // o
        .Ret<Buffer<F32>>()   // lse
            JBS_ATTENTION_ATTRS.Attr<bool>("segments").Attr<bool>("positioned")
                .Attr<int32_t>("mask_block").Attr<float>("softcap")
                .Attr<bool>("head_sections"),  // grid cells in L2-sized sections of heads
    {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseAttentionBwd, jax_blocksparse::BwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()     // q
        .Arg<AnyBuffer>()     // k
        .Arg<AnyBuffer>()     // v
        .Arg<AnyBuffer>()     // o
        .Arg<Buffer<F32>>()   // lse
        .Arg<AnyBuffer>()     // d_o
        .Arg<Buffer<F32>>()   // d_lse
        .Arg<Buffer<S32>>()   // kv_lengths
        .Arg<Buffer<S32>>()   // q_positions [1] or [B] (read with `positioned` only)
        .Arg<Buffer<S32>>()   // q_counts [Bm, Hm, Rq]
        .Arg<Buffer<S32>>()   // q_partial
        .Arg<Buffer<S32>>()   // q_lists
        .Arg<Buffer<S32>>()   // q_order
        .Arg<Buffer<S32>>()   // k_counts [Bm, Hm, Rk]
        .Arg<Buffer<S32>>()   // k_partial
        .Arg<Buffer<S32>>()   // k_lists
        .Arg<Buffer<S32>>()   // k_order
        .Arg<Buffer<S32>>()   // q_segment_ids (as the forward's)
        .Arg<Buffer<S32>>()   // kv_segment_ids
        .Arg<Buffer<S32>>()   // q_tile_bits [Bm, Hm, Rq, 2 width_q] (read when mask_block !=
                              // block_size: the by-query lists' words; else a placeholder)
        .Arg<Buffer<S32>>()   // k_tile_bits [Bm, Hm, Rk, 2 width_k] (the by-key lists')
        .Ret<AnyBuffer>()     // dq
        .Ret<AnyBuffer>()     // dk
        .Ret<AnyBuffer>()     // dv
        .Ret<Buffer<F32>>()   // workspace [B, Hq, 2, ceil(Tq / bs) * bs] (attention.h)
        .Ret<Buffer<F32>>()   // dq_accum (workspace of backward variant 4, else [0])
        .Ret<Buffer<S32>>()   // dq_semaphores (the same)
            JBS_ATTENTION_ATTRS.Attr<bool>("segments").Attr<bool>("positioned")
                .Attr<int32_t>("mask_block").Attr<float>("softcap"),
    {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseAttentionDecode, jax_blocksparse::DecodeImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()     // q
        .Arg<AnyBuffer>()     // k (or k pages)
        .Arg<AnyBuffer>()     // v (or v pages)
        .Arg<Buffer<S32>>()   // kv_lengths
        .Arg<Buffer<S32>>()   // q_rows
        .Arg<Buffer<S32>>()   // q_positions
        .Arg<Buffer<S32>>()   // counts
        .Arg<Buffer<S32>>()   // lists
        .Arg<Buffer<S32>>()   // page_table
        .Arg<Buffer<F32>>()   // k_scale [Hkv]
        .Arg<Buffer<F32>>()   // v_scale [Hkv]
        .Ret<AnyBuffer>()     // o
        .Ret<Buffer<F32>>()   // lse
        .Ret<Buffer<F32>>()   // part_o (workspace)
        .Ret<Buffer<F32>>()   // part_lse (workspace)
            JBS_ATTENTION_ATTRS.Attr<bool>("paged").Attr<float>("softcap"),
    {ffi::Traits::kCmdBufferCompatible});
