// FFI handler symbols of the matmul family, defined in ffi_matmul.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xla/ffi/api/c_api.h"

namespace jax_blocksparse {
// The float32 elements of the workspace (the custom call's second result) that an sdd call
// of these operands (their dimensions, as the handler reads them) and attributes takes on
// the current device: SddWorkspaceFloats (cuda/matmul.h) of the parameters the handler
// builds, 0 for none.
int64_t SddWorkspaceFor(const std::string& dtype, const std::vector<int64_t>& a_dims,
                        const std::vector<int64_t>& b_dims, int64_t nnz, int64_t batch,
                        int32_t block_size, bool trans_a, bool trans_b, int32_t precision);
}  // namespace jax_blocksparse

extern "C" {
XLA_FFI_Error* JaxBlocksparseSdd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseDsd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseDds(XLA_FFI_CallFrame* call_frame);
}
