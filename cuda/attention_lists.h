// Block lists of block-sparse attention on the GPU: the kernel behind the
// "jax_blocksparse_block_lists" FFI target (jax_blocksparse/lists_primitive.py). It computes
// exactly what attention_metadata.block_lists computes with jax.numpy, bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace jax_blocksparse {

// The dynamic shared memory of a CTA (the sorting CTA of an n needs it): the lines' counts
// and a histogram of the count values 0..min(other, width).
size_t BlockListsSharedBytes(int64_t lines, int64_t other, int64_t width);

// The largest dynamic shared memory a CTA of the kernel may take on the current device
// (the opt-in limit; asked once per device). 0 when the query fails.
size_t BlockListsSharedLimit();

// kind int8 [n, lines, other] (0 absent, 1 partial, 2 full) ->
//   counts  int32 [n, lines]         min(#listed, width)
//   partial int32 [n, lines]         min(#partial, counts)
//   lists   int32 [n, lines, width]  partial entries ascending, then full ones ascending,
//                                    truncated to width, padded with -1
//   order   int32 [n, lines]         lines by count descending, ties by line ascending
// Per n one CTA sorts the lines (a first pass over all of them) while the others build
// the lists, a warp per line. Launches nothing when n or lines is 0. The caller checks
// BlockListsSharedBytes against BlockListsSharedLimit first (cudaErrorInvalidValue
// otherwise). Deterministic: no atomics whose order shows in the outputs.
cudaError_t LaunchBlockLists(const int8_t* kind, int32_t* counts, int32_t* partial,
                             int32_t* lists, int32_t* order, int64_t n, int64_t lines,
                             int64_t other, int64_t width, cudaStream_t stream);

}  // namespace jax_blocksparse
