// XLA FFI handlers of the matmul family: read shapes and attributes, fill the launcher's
// parameters, launch on XLA's stream. No allocation, no host synchronization, no device
// queries: safe inside CUDA graphs (declared command-buffer compatible).
#include <string>

#include "../cuda/matmul.h"
#include "debug.h"
#include "ffi_common.h"
#include "ffi_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using ffi::AnyBuffer;
using ffi::Buffer;
using ffi::Result;
using ffi::S32;

namespace jax_blocksparse {
namespace {

// A dense operand [G?, rows, cols]: its batch stride (0 when it has no batch axis).
int64_t DenseBatchStride(const AnyBuffer& x) {
  auto d = x.dimensions();
  return d.size() == 3 ? d[1] * d[2] : 0;
}

// A block operand [G?, nnz, bs, bs].
int64_t BlocksBatchStride(const AnyBuffer& x) {
  auto d = x.dimensions();
  return d.size() == 4 ? d[1] * d[2] * d[3] : 0;
}

// Rows and columns of op(X) for a dense operand.
void OpDims(const AnyBuffer& x, bool trans, int64_t* rows, int64_t* cols) {
  auto d = x.dimensions();
  const int64_t r = d[d.size() - 2], c = d[d.size() - 1];
  *rows = trans ? c : r;
  *cols = trans ? r : c;
}

int64_t OutBatch(const AnyBuffer& out, size_t unbatched_rank) {
  auto d = out.dimensions();
  return d.size() > unbatched_rank ? d[0] : 1;
}

// Selects the op's kernel from the dispatch table (an explicit error for a combination it
// does not list), then runs it under the debug launch log (JAX_BLOCKSPARSE_DEBUG).
template <typename Params>
ffi::Error Run(cudaStream_t stream, const char* op, DType dtype, const Params& p,
               const AnyBuffer& x, const AnyBuffer& y, const AnyBuffer& out, bool t1, bool t2,
               const MatmulKernel* (*select)(DType, const Params&),
               cudaError_t (*launch)(const MatmulKernel&, const Params&, cudaStream_t)) {
  const MatmulKernel* kernel = select(dtype, p);
  if (kernel == nullptr)
    return ffi::Error::InvalidArgument(std::string("jax_blocksparse ") + op + ": no kernel for " +
                                       DTypeName(dtype) + " block_size=" +
                                       std::to_string(p.block_size) + " in the dispatch table");
  std::string what;
  if (DebugLevel()) {
    what = std::string(op) + " " + ShapeText(x.dimensions()) + (t1 ? "^T" : "") + " @ " +
           ShapeText(y.dimensions()) + (t2 ? "^T" : "") + " -> " +
           ShapeText(out.dimensions()) + " " + DTypeName(dtype) +
           " bs=" + std::to_string(p.block_size) + " nnz=" + std::to_string(p.nnz);
  }
  LaunchLog log(stream, what);
  const cudaError_t err = launch(*kernel, p, stream);
  log.Done(kernel->name);
  return CheckLaunch(err, op);
}

ffi::Error SddImpl(cudaStream_t stream, AnyBuffer a, AnyBuffer b, Buffer<S32> coords,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_a, bool trans_b,
                   int32_t precision) {
  auto dtype = ToDType(a.element_type());
  if (dtype.has_error()) return dtype.error();
  SddParams p{};
  p.a = a.untyped_data();
  p.b = b.untyped_data();
  p.out = out->untyped_data();
  p.coords = coords.typed_data();
  p.batch = OutBatch(*out, 3);
  p.a_batch_stride = DenseBatchStride(a);
  p.b_batch_stride = DenseBatchStride(b);
  int64_t k_b;
  OpDims(a, trans_a, &p.m, &p.k);
  OpDims(b, trans_b, &k_b, &p.n);
  auto od = out->dimensions();
  p.nnz = int32_t(od[od.size() - 3]);
  p.block_size = block_size;
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  p.full_fp32 = precision == 1;
  return Run(stream, "sdd", *dtype, p, a, b, *out, trans_a, trans_b, SelectSdd, LaunchSdd);
}

ffi::Error DsdImpl(cudaStream_t stream, AnyBuffer s, AnyBuffer b, Buffer<S32> ptr,
                   Buffer<S32> idx, Buffer<S32> blk, Buffer<S32> order,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_s, bool trans_b,
                   int32_t precision) {
  auto dtype = ToDType(s.element_type());
  if (dtype.has_error()) return dtype.error();
  DsdParams p{};
  p.s = s.untyped_data();
  p.b = b.untyped_data();
  p.out = out->untyped_data();
  p.ptr = ptr.typed_data();
  p.idx = idx.typed_data();
  p.blk = blk.typed_data();
  p.order = order.typed_data();
  p.batch = OutBatch(*out, 2);
  p.s_batch_stride = BlocksBatchStride(s);
  p.b_batch_stride = DenseBatchStride(b);
  OpDims(b, trans_b, &p.k, &p.n);
  auto od = out->dimensions();
  p.m = od[od.size() - 2];
  auto sd = s.dimensions();
  p.nnz = int32_t(sd[sd.size() - 3]);
  p.block_size = block_size;
  p.trans_s = trans_s;
  p.trans_b = trans_b;
  p.full_fp32 = precision == 1;
  return Run(stream, "dsd", *dtype, p, s, b, *out, trans_s, trans_b, SelectDsd, LaunchDsd);
}

ffi::Error DdsImpl(cudaStream_t stream, AnyBuffer a, AnyBuffer w, Buffer<S32> ptr,
                   Buffer<S32> idx, Buffer<S32> blk, Buffer<S32> order,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_a, bool trans_w,
                   int32_t precision) {
  auto dtype = ToDType(a.element_type());
  if (dtype.has_error()) return dtype.error();
  DdsParams p{};
  p.a = a.untyped_data();
  p.w = w.untyped_data();
  p.out = out->untyped_data();
  p.ptr = ptr.typed_data();
  p.idx = idx.typed_data();
  p.blk = blk.typed_data();
  p.order = order.typed_data();
  p.batch = OutBatch(*out, 2);
  p.a_batch_stride = DenseBatchStride(a);
  p.w_batch_stride = BlocksBatchStride(w);
  OpDims(a, trans_a, &p.m, &p.k);
  auto od = out->dimensions();
  p.n = od[od.size() - 1];
  auto wd = w.dimensions();
  p.nnz = int32_t(wd[wd.size() - 3]);
  p.block_size = block_size;
  p.trans_a = trans_a;
  p.trans_w = trans_w;
  p.full_fp32 = precision == 1;
  return Run(stream, "dds", *dtype, p, a, w, *out, trans_a, trans_w, SelectDds, LaunchDds);
}

}  // namespace
}  // namespace jax_blocksparse

#define JBS_COMMON_ATTRS(first, second)          \
  .Attr<int32_t>("block_size")                   \
      .Attr<bool>(first)                         \
      .Attr<bool>(second)                        \
      .Attr<int32_t>("precision")

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseSdd, jax_blocksparse::SddImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()
        .Arg<AnyBuffer>()
        .Arg<Buffer<S32>>()
        .Ret<AnyBuffer>() JBS_COMMON_ATTRS("trans_a", "trans_b"),
    {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseDsd, jax_blocksparse::DsdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()
        .Arg<AnyBuffer>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Ret<AnyBuffer>() JBS_COMMON_ATTRS("trans_s", "trans_b"),
    {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseDds, jax_blocksparse::DdsImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<AnyBuffer>()
        .Arg<AnyBuffer>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Arg<Buffer<S32>>()
        .Ret<AnyBuffer>() JBS_COMMON_ATTRS("trans_a", "trans_w"),
    {ffi::Traits::kCmdBufferCompatible});
