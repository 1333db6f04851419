// XLA FFI handler of the block lists (jax_blocksparse/lists_primitive.py): validate the
// shapes, launch cuda/attention/lists.cu on XLA's stream. No allocation, no host
// synchronization (the shared-memory limit is asked once per device): safe inside CUDA
// graphs (declared command-buffer compatible).
#include <string>

#include "../cuda/attention_lists.h"
#include "debug.h"
#include "ffi_common.h"
#include "ffi_lists.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using ffi::Buffer;
using ffi::Result;
using ffi::S32;
using ffi::S8;

namespace jax_blocksparse {
namespace {

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("jax_blocksparse block_lists: " + what);
}

bool Dims(const Buffer<S32>& x, std::initializer_list<int64_t> want) {
  auto d = x.dimensions();
  if (d.size() != want.size()) return false;
  size_t i = 0;
  for (int64_t w : want)
    if (d[i++] != w) return false;
  return true;
}

// kind int8 [N, lines, other] -> counts, partial [N, lines], lists [N, lines, width],
// order [N, lines], all int32 (cuda/attention_lists.h).
ffi::Error BlockListsImpl(cudaStream_t stream, Buffer<S8> kind, int64_t width,
                          Result<Buffer<S32>> counts, Result<Buffer<S32>> partial,
                          Result<Buffer<S32>> lists, Result<Buffer<S32>> order) {
  auto kd = kind.dimensions();
  if (kd.size() != 3) return Invalid("kind must be int8 [N, lines, other], got " + ShapeText(kd));
  if (width < 0) return Invalid("width must be >= 0, got " + std::to_string(width));
  const int64_t n = kd[0], lines = kd[1], other = kd[2];
  if (!Dims(*counts, {n, lines}) || !Dims(*partial, {n, lines}) || !Dims(*order, {n, lines}))
    return Invalid("counts, partial and order must be int32 [N, lines] = [" +
                   std::to_string(n) + "," + std::to_string(lines) + "]");
  if (!Dims(*lists, {n, lines, width}))
    return Invalid("lists must be int32 [N, lines, width] = [" + std::to_string(n) + "," +
                   std::to_string(lines) + "," + std::to_string(width) + "], got " +
                   ShapeText(lists->dimensions()));
  if (n > 0x7fffffff) return Invalid("N (the leading axes' size) must be below 2^31");
  if (n == 0 || lines == 0) return ffi::Error::Success();  // empty outputs: no launch
  const size_t bytes = BlockListsSharedBytes(lines, other, width);
  const size_t limit = BlockListsSharedLimit();
  if (bytes > limit)
    return Invalid("lines = " + std::to_string(lines) + " and min(other, width) = " +
                   std::to_string(other < width ? other : width) + " need " +
                   std::to_string(bytes) + " bytes of shared memory per CTA, over this "
                   "device's limit of " + std::to_string(limit) +
                   " bytes (cudaDevAttrMaxSharedMemoryPerBlockOptin)");
  LaunchLog log(stream, DebugLevel() ? "block_lists kind" + ShapeText(kd) +
                                           " width=" + std::to_string(width)
                                     : std::string());
  cudaError_t err = LaunchBlockLists(kind.typed_data(), counts->typed_data(),
                                     partial->typed_data(), lists->typed_data(),
                                     order->typed_data(), n, lines, other, width, stream);
  if (err == cudaSuccess) log.Done("block_lists");
  return CheckLaunch(err, "block_lists");
}

}  // namespace
}  // namespace jax_blocksparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    JaxBlocksparseBlockLists, jax_blocksparse::BlockListsImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::PlatformStream<cudaStream_t>>()
        .Arg<Buffer<S8>>()   // kind [N, lines, other]
        .Attr<int64_t>("width")
        .Ret<Buffer<S32>>()  // counts [N, lines]
        .Ret<Buffer<S32>>()  // partial [N, lines]
        .Ret<Buffer<S32>>()  // lists [N, lines, width]
        .Ret<Buffer<S32>>(),  // order [N, lines]
    {ffi::Traits::kCmdBufferCompatible});
