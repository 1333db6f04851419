// Fused attention kernels instantiated for __nv_bfloat16 (one file per dtype: parallel
// builds); the dispatch table (dispatch.cu) names these launchers.
#include "fa2.cuh"

namespace jax_blocksparse {
namespace attn {

JBS_ATTENTION_LAUNCHERS(template, __nv_bfloat16)

}  // namespace attn
}  // namespace jax_blocksparse
