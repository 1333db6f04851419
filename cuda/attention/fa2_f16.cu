// Fused attention kernels instantiated for __half (one file per dtype: parallel
// builds); the dispatch table (dispatch.cu) names these launchers.
#include "fa2.cuh"

namespace jax_blocksparse {
namespace attn {

JBS_ATTENTION_LAUNCHERS(template, __half)

}  // namespace attn
}  // namespace jax_blocksparse
