// FFI handler symbol of the block lists (attention metadata), defined in ffi_lists.cc.
#pragma once

#include "xla/ffi/api/c_api.h"

extern "C" {
XLA_FFI_Error* JaxBlocksparseBlockLists(XLA_FFI_CallFrame* call_frame);
}
