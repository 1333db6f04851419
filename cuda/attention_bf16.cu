// Fused attention kernels instantiated for __nv_bfloat16 (one file per dtype: parallel
// builds); the dispatch table (attention.cu) names these launchers.
#include "attention_kernels.cuh"

namespace jax_blocksparse {
namespace attn {

JBS_ATTENTION_LAUNCHERS(template, __nv_bfloat16)

}  // namespace attn
}  // namespace jax_blocksparse
