// The nanobind module: hands the FFI handlers to Python as capsules, by target name.
#include <nanobind/nanobind.h>

#include "ffi_attention.h"
#include "ffi_matmul.h"

namespace nb = nanobind;

namespace {
template <typename Fn>
nb::capsule Capsule(Fn* fn) {
  return nb::capsule(reinterpret_cast<void*>(fn));
}
}  // namespace

NB_MODULE(_jax_blocksparse_cuda, m) {
  m.doc() = "CUDA kernels of jax_blocksparse, as XLA FFI handlers";
  m.def("registrations", []() {
    nb::dict targets;
    targets["jax_blocksparse_sdd"] = Capsule(JaxBlocksparseSdd);
    targets["jax_blocksparse_dsd"] = Capsule(JaxBlocksparseDsd);
    targets["jax_blocksparse_dds"] = Capsule(JaxBlocksparseDds);
    targets["jax_blocksparse_attention_fwd"] = Capsule(JaxBlocksparseAttentionFwd);
    targets["jax_blocksparse_attention_bwd"] = Capsule(JaxBlocksparseAttentionBwd);
    targets["jax_blocksparse_attention_decode"] = Capsule(JaxBlocksparseAttentionDecode);
    return targets;
  });
  m.attr("cuda_architectures") = JBS_CUDA_ARCHITECTURES;
}
