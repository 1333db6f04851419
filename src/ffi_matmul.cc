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

// The launch log's note of the group records a dsd/dds call carries (" records=N": groups
// of N columns; a bs-16/32 wgmma kernel of that width reads them); sdd has none.
std::string RecordsText(const SddParams&) { return ""; }
template <typename Params>
std::string RecordsText(const Params& p) {
  return p.group_columns ? " records=" + std::to_string(p.group_columns) : "";
}

// Selects the op's kernel and builds its arguments once from the dispatch table (an
// explicit error for a combination it does not list), then runs it under the debug launch
// log (JAX_BLOCKSPARSE_DEBUG).
template <typename Params>
ffi::Error Run(cudaStream_t stream, const char* op, DType dtype, const Params& p,
               const AnyBuffer& x, const AnyBuffer& y, const AnyBuffer& out, bool t1, bool t2,
               MatmulLaunch (*select)(DType, const Params&),
               cudaError_t (*launch)(const MatmulLaunch&, const Params&, cudaStream_t)) {
  const MatmulLaunch run = select(dtype, p);
  if (run.kernel == nullptr)
    return ffi::Error::InvalidArgument(std::string("jax_blocksparse ") + op + ": no kernel for " +
                                       DTypeName(dtype) + " block_size=" +
                                       std::to_string(p.block_size) + " in the dispatch table");
  std::string what;
  if (DebugLevel()) {
    what = std::string(op) + " " + ShapeText(x.dimensions()) + (t1 ? "^T" : "") + " @ " +
           ShapeText(y.dimensions()) + (t2 ? "^T" : "") + " -> " +
           ShapeText(out.dimensions()) + " " + DTypeName(dtype) +
           " bs=" + std::to_string(p.block_size) + " nnz=" + std::to_string(p.nnz) +
           RecordsText(p);
  }
  LaunchLog log(stream, what);
  const cudaError_t err = launch(run, p, stream);
  log.Done(run.kernel->name);
  return CheckLaunch(err, op);
}

// The size of dimension `from_end` counted from the last (1: the last).
int64_t DimFromEnd(const AnyBuffer& x, size_t from_end) {
  auto d = x.dimensions();
  return d[d.size() - from_end];
}

// What the three ops' parameters share: the output and its batch, the block size and the
// precision (1: exact float32).
template <typename Params>
void SetOutput(Params& p, AnyBuffer& out, size_t unbatched_rank, int32_t block_size,
               int32_t precision) {
  p.out = out.untyped_data();
  p.batch = OutBatch(out, unbatched_rank);
  p.block_size = block_size;
  p.full_fp32 = precision == 1;
}

ffi::Error SddImpl(cudaStream_t stream, AnyBuffer a, AnyBuffer b, Buffer<S32> coords,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_a, bool trans_b,
                   int32_t precision) {
  auto dtype = ToDType(a.element_type());
  if (dtype.has_error()) return dtype.error();
  SddParams p{};
  SetOutput(p, *out, 3, block_size, precision);
  p.a = a.untyped_data();
  p.b = b.untyped_data();
  p.coords = coords.typed_data();
  p.a_batch_stride = DenseBatchStride(a);
  p.b_batch_stride = DenseBatchStride(b);
  int64_t k_b;
  OpDims(a, trans_a, &p.m, &p.k);
  OpDims(b, trans_b, &k_b, &p.n);
  p.nnz = int32_t(DimFromEnd(*out, 3));
  p.trans_a = trans_a;
  p.trans_b = trans_b;
  return Run(stream, "sdd", *dtype, p, a, b, *out, trans_a, trans_b, SelectSdd, LaunchSdd);
}

// dsd and dds: operands x and y (one holds the blocks), the block lists
// (jax_blocksparse.layout.BlockLists), the group records of the bs-16/32 kernels
// (jax_blocksparse.layout.group_steps of `group_columns` columns, or a placeholder with
// group_columns 0) and an output [G?, m, n];
// `operands` sets what
// differs between the two (which operand holds the blocks, the sizes read from it).
template <typename Params, typename Operands>
ffi::Error LinesImpl(cudaStream_t stream, const char* op, const AnyBuffer& x,
                     const AnyBuffer& y, const Buffer<S32>& ptr, const Buffer<S32>& idx,
                     const Buffer<S32>& blk, const Buffer<S32>& order,
                     const Buffer<S32>& steps, AnyBuffer& out,
                     int32_t block_size, bool t1, bool t2, int32_t precision,
                     int32_t group_columns,
                     MatmulLaunch (*select)(DType, const Params&),
                     cudaError_t (*launch)(const MatmulLaunch&, const Params&, cudaStream_t),
                     Operands operands) {
  auto dtype = ToDType(x.element_type());
  if (dtype.has_error()) return dtype.error();
  Params p{};
  SetOutput(p, out, 2, block_size, precision);
  p.ptr = ptr.typed_data();
  p.idx = idx.typed_data();
  p.blk = blk.typed_data();
  p.order = order.typed_data();
  p.steps = steps.typed_data();
  p.steps_count = int64_t(steps.element_count());
  p.group_columns = group_columns;
  operands(p);
  return Run(stream, op, *dtype, p, x, y, out, t1, t2, select, launch);
}

// dsd: the blocks come first, the dense operand second.
ffi::Error DsdImpl(cudaStream_t stream, AnyBuffer s, AnyBuffer b, Buffer<S32> ptr,
                   Buffer<S32> idx, Buffer<S32> blk, Buffer<S32> order, Buffer<S32> steps,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_s, bool trans_b,
                   int32_t precision, int32_t group_columns) {
  return LinesImpl(stream, "dsd", s, b, ptr, idx, blk, order, steps, *out, block_size, trans_s,
                   trans_b, precision, group_columns, SelectDsd, LaunchDsd,
                   [&](DsdParams& p) {
                     p.s = s.untyped_data();
                     p.s_batch_stride = BlocksBatchStride(s);
                     p.trans_s = trans_s;
                     p.nnz = int32_t(DimFromEnd(s, 3));
                     p.b = b.untyped_data();
                     p.b_batch_stride = DenseBatchStride(b);
                     p.trans_b = trans_b;
                     OpDims(b, trans_b, &p.k, &p.n);
                     p.m = DimFromEnd(*out, 2);
                   });
}

// dds: the dense operand comes first, the blocks second.
ffi::Error DdsImpl(cudaStream_t stream, AnyBuffer a, AnyBuffer w, Buffer<S32> ptr,
                   Buffer<S32> idx, Buffer<S32> blk, Buffer<S32> order, Buffer<S32> steps,
                   Result<AnyBuffer> out, int32_t block_size, bool trans_a, bool trans_w,
                   int32_t precision, int32_t group_columns) {
  return LinesImpl(stream, "dds", a, w, ptr, idx, blk, order, steps, *out, block_size, trans_a,
                   trans_w, precision, group_columns, SelectDds, LaunchDds,
                   [&](DdsParams& p) {
                     p.a = a.untyped_data();
                     p.a_batch_stride = DenseBatchStride(a);
                     p.trans_a = trans_a;
                     OpDims(a, trans_a, &p.m, &p.k);
                     p.w = w.untyped_data();
                     p.w_batch_stride = BlocksBatchStride(w);
                     p.trans_w = trans_w;
                     p.nnz = int32_t(DimFromEnd(w, 3));
                     p.n = DimFromEnd(*out, 1);
                   });
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

// dsd and dds: two operands, the four block lists, the group records, one result; the
// records' group width as an attribute (0: none).
#define JBS_LINES_HANDLER(NAME, IMPL, FIRST, SECOND)                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                        \
      NAME, IMPL,                                                                       \
      ffi::Ffi::Bind()                                                                  \
          .Ctx<ffi::PlatformStream<cudaStream_t>>()                                     \
          .Arg<AnyBuffer>()                                                             \
          .Arg<AnyBuffer>()                                                             \
          .Arg<Buffer<S32>>()                                                           \
          .Arg<Buffer<S32>>()                                                           \
          .Arg<Buffer<S32>>()                                                           \
          .Arg<Buffer<S32>>()                                                           \
          .Arg<Buffer<S32>>()                                                           \
          .Ret<AnyBuffer>() JBS_COMMON_ATTRS(FIRST, SECOND)                             \
          .Attr<int32_t>("group_columns"),                                              \
      {ffi::Traits::kCmdBufferCompatible});

JBS_LINES_HANDLER(JaxBlocksparseDsd, jax_blocksparse::DsdImpl, "trans_s", "trans_b")
JBS_LINES_HANDLER(JaxBlocksparseDds, jax_blocksparse::DdsImpl, "trans_a", "trans_w")
