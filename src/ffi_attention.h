// FFI handler symbols of the fused attention, defined in ffi_attention.cc.
#pragma once

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxBlocksparseAttentionFwd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseAttentionBwd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseAttentionDecode(XLA_FFI_CallFrame* call_frame);
}
