// XLA FFI handlers of the fused block-sparse attention: read shapes and attributes, fill the
// launcher's parameters, launch on XLA's stream. No allocation, no host synchronization:
// safe inside CUDA graphs (declared command-buffer compatible).
#include <string>

#include "../cuda/attention.h"
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
         " mask_heads=" + std::to_string(s.mask_heads) + (s.causal ? " causal" : "");
}

// Shapes of q [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] and the attributes; *kernel: the
// dispatch table's row for (dtype, head dim, block size, phase), validated here, once.
ffi::ErrorOr<AttentionShape> Shape(DType dtype, bool backward, const AnyBuffer& q,
                                   const AnyBuffer& k, const AnyBuffer& v,
                                   const Buffer<S32>& kv_lengths, const Buffer<S32>& q_counts,
                                   int32_t block_size, bool causal, float scale,
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
  auto cd = q_counts.dimensions();
  if (cd.size() != 2) return ffi::Unexpected(Invalid("metadata counts must be [Hm, lines]"));
  s.mask_heads = int32_t(cd[0]);
  *kernel = FindAttentionKernel(dtype, s.head_dim, block_size, backward);
  if (*kernel == nullptr)
    return ffi::Unexpected(Invalid(std::string("no ") + (backward ? "backward" : "forward") +
                                   " kernel for " + DTypeName(dtype) + " head_dim=" +
                                   std::to_string(s.head_dim) + " block_size=" +
                                   std::to_string(block_size) + " in the dispatch table"));
  if (s.tq % block_size != 0 || s.tk % block_size != 0)
    return ffi::Unexpected(Invalid("sequence lengths must be multiples of the block size"));
  if (s.hkv == 0 || s.hq % s.hkv != 0)
    return ffi::Unexpected(Invalid("query heads must be a multiple of kv heads"));
  if (s.mask_heads != 1 && s.mask_heads != s.hq)
    return ffi::Unexpected(Invalid("mask heads must be 1 or the number of query heads"));
  return s;
}

BlockListsView View(const Buffer<S32>& counts, const Buffer<S32>& partial,
                    const Buffer<S32>& lists, const Buffer<S32>& order) {
  BlockListsView v{};
  v.counts = counts.typed_data();
  v.partial = partial.typed_data();
  v.lists = lists.typed_data();
  v.order = order.typed_data();
  auto cd = counts.dimensions();
  v.lines = int32_t(cd[1]);
  auto ld = lists.dimensions();
  v.max_len = ld.size() == 3 ? int32_t(ld[2]) : 0;
  return v;
}

ffi::Error FwdImpl(cudaStream_t stream, AnyBuffer q, AnyBuffer k, AnyBuffer v,
                   Buffer<S32> kv_lengths, Buffer<S32> q_counts, Buffer<S32> q_partial,
                   Buffer<S32> q_lists, Buffer<S32> q_order, Result<AnyBuffer> o,
                   Result<Buffer<F32>> lse, int32_t block_size, bool causal, float scale) {
  auto dtype = ToDType(q.element_type(), /*allow_f32=*/false);
  if (dtype.has_error()) return dtype.error();
  const AttentionKernel* kernel = nullptr;
  auto shape = Shape(*dtype, /*backward=*/false, q, k, v, kv_lengths, q_counts, block_size,
                     causal, scale, &kernel);
  if (shape.has_error()) return shape.error();
  AttentionForwardParams p{};
  p.shape = *shape;
  p.q = q.untyped_data();
  p.k = k.untyped_data();
  p.v = v.untyped_data();
  p.kv_lengths = kv_lengths.typed_data();
  p.by_query = View(q_counts, q_partial, q_lists, q_order);
  if (p.by_query.lines != p.shape.tq / block_size)
    return Invalid("query metadata must have Tq / block_size lines");
  p.o = o->untyped_data();
  p.lse = lse->typed_data();
  LaunchLog log(stream, DebugLevel() ? Describe("attention_fwd", *dtype, p.shape, q, k) : "");
  const cudaError_t err = LaunchAttentionForward(*kernel, p, stream);
  log.Done(kernel->name);
  return CheckLaunch(err, "attention forward");
}

ffi::Error BwdImpl(cudaStream_t stream, AnyBuffer q, AnyBuffer k, AnyBuffer v, AnyBuffer o,
                   Buffer<F32> lse, AnyBuffer d_o, Buffer<F32> d_lse, Buffer<S32> kv_lengths,
                   Buffer<S32> q_counts, Buffer<S32> q_partial, Buffer<S32> q_lists,
                   Buffer<S32> q_order, Buffer<S32> k_counts, Buffer<S32> k_partial,
                   Buffer<S32> k_lists, Buffer<S32> k_order, Result<AnyBuffer> dq,
                   Result<AnyBuffer> dk, Result<AnyBuffer> dv, Result<Buffer<F32>> delta,
                   int32_t block_size, bool causal, float scale) {
  auto dtype = ToDType(q.element_type(), /*allow_f32=*/false);
  if (dtype.has_error()) return dtype.error();
  const AttentionKernel* kernel = nullptr;
  auto shape = Shape(*dtype, /*backward=*/true, q, k, v, kv_lengths, q_counts, block_size,
                     causal, scale, &kernel);
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
  if (p.by_query.lines != p.shape.tq / block_size || p.by_key.lines != p.shape.tk / block_size)
    return Invalid("metadata must have Tq / block_size and Tk / block_size lines");
  if (k_counts.dimensions()[0] != p.shape.mask_heads)
    return Invalid("by-query and by-key metadata differ in mask heads");
  p.dq = dq->untyped_data();
  p.dk = dk->untyped_data();
  p.dv = dv->untyped_data();
  p.delta = delta->typed_data();
  LaunchLog log(stream, DebugLevel() ? Describe("attention_bwd", *dtype, p.shape, q, k) : "");
  const cudaError_t err = LaunchAttentionBackward(*kernel, p, stream);
  log.Done(kernel->name);
  return CheckLaunch(err, "attention backward");
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
        .Arg<Buffer<S32>>()   // kv_lengths
        .Arg<Buffer<S32>>()   // q_counts
        .Arg<Buffer<S32>>()   // q_partial
        .Arg<Buffer<S32>>()   // q_lists
        .Arg<Buffer<S32>>()   // q_order
        .Ret<AnyBuffer>()     // o
        .Ret<Buffer<F32>>()   // lse
            JBS_ATTENTION_ATTRS,
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
        .Arg<Buffer<S32>>()   // q_counts
        .Arg<Buffer<S32>>()   // q_partial
        .Arg<Buffer<S32>>()   // q_lists
        .Arg<Buffer<S32>>()   // q_order
        .Arg<Buffer<S32>>()   // k_counts
        .Arg<Buffer<S32>>()   // k_partial
        .Arg<Buffer<S32>>()   // k_lists
        .Arg<Buffer<S32>>()   // k_order
        .Ret<AnyBuffer>()     // dq
        .Ret<AnyBuffer>()     // dk
        .Ret<AnyBuffer>()     // dv
        .Ret<Buffer<F32>>()   // delta (workspace)
            JBS_ATTENTION_ATTRS,
    {ffi::Traits::kCmdBufferCompatible});
