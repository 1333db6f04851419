// FFI handler symbols of the matmul family, defined in ffi_matmul.cc.
#pragma once

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxBlocksparseSdd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseDsd(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* JaxBlocksparseDds(XLA_FFI_CallFrame* call_frame);
}
