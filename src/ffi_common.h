// Helpers shared by the FFI handlers: dtype mapping, CUDA error to ffi::Error, and the
// text of a launch for JAX_BLOCKSPARSE_DEBUG (debug.h).
#pragma once

#include <string>

#include "../cuda/matmul.h"  // DType
#include "xla/ffi/api/ffi.h"

namespace jax_blocksparse {

inline xla::ffi::ErrorOr<DType> ToDType(xla::ffi::DataType type, bool allow_f32 = true) {
  switch (type) {
    case xla::ffi::DataType::F32:
      if (allow_f32) return DType::kF32;
      break;
    case xla::ffi::DataType::F16: return DType::kF16;
    case xla::ffi::DataType::BF16: return DType::kBF16;
    default: break;
  }
  return xla::ffi::Unexpected(xla::ffi::Error::InvalidArgument(
      allow_f32 ? "jax_blocksparse: unsupported dtype (float32, float16, bfloat16 only)"
                : "jax_blocksparse: the fused kernels take float16 or bfloat16 only"));
}

inline xla::ffi::Error CheckLaunch(cudaError_t err, const char* op) {
  if (err == cudaSuccess) return xla::ffi::Error::Success();
  return xla::ffi::Error::Internal(std::string("jax_blocksparse ") + op + ": " +
                                   cudaGetErrorString(err));
}

inline const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "float32";
    case DType::kF16: return "float16";
    case DType::kBF16: return "bfloat16";
  }
  return "?";
}

// "[2,128,64]"
inline std::string ShapeText(xla::ffi::Span<const int64_t> dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? "," : "") + std::to_string(dims[i]);
  return text + "]";
}

}  // namespace jax_blocksparse
