// The nanobind module: hands the FFI handlers to Python as capsules, by target name.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

#include "../cuda/attention.h"
#include "../cuda/attention_decode.h"
#include "ffi_attention.h"
#include "ffi_common.h"  // DTypeName
#include "ffi_lists.h"
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
    targets["jax_blocksparse_block_lists"] = Capsule(JaxBlocksparseBlockLists);
    return targets;
  });
  // The attention dispatch table's rows (cuda/attention/dispatch.cu, AttentionKernel) less
  // their launchers: jax_blocksparse/_cuda.py routes attention calls by them.
  m.def("attention_kernels", []() {
    using jax_blocksparse::AttentionKernelAt;
    nb::list rows;
    for (int i = 0; i < jax_blocksparse::AttentionKernelCount(); ++i) {
      const jax_blocksparse::AttentionKernel& k = AttentionKernelAt(i);
      nb::dict row;
      row["dtype"] = jax_blocksparse::DTypeName(k.dtype);
      row["head_dim"] = k.head_dim;
      row["block_size"] = k.block_size;
      row["backward"] = k.backward;
      row["variant"] = k.fwd_variant;
      row["name"] = k.name;
      row["documents"] = k.documents;
      row["dq_workspace"] = k.dq_workspace;
      row["persistent"] = k.persistent;
      row["softcap"] = k.softcap;
      rows.append(row);
    }
    return rows;
  });
  // The decode dispatch table's rows (cuda/attention/decode.cu, AttentionDecodeKernel) less
  // their launchers, k and v's dtype by jax's name (q's for DecodeKv::kSame), and the
  // kernel's limits: jax_blocksparse/_cuda.py routes decode calls by them.
  m.def("decode_kernels", []() {
    using namespace jax_blocksparse;
    nb::list rows;
    for (int i = 0; i < AttentionDecodeKernelCount(); ++i) {
      const AttentionDecodeKernel& k = AttentionDecodeKernelAt(i);
      nb::dict row;
      row["dtype"] = DTypeName(k.dtype);
      row["kv_dtype"] = k.kv == DecodeKv::kE4M3   ? "float8_e4m3fn"
                        : k.kv == DecodeKv::kE5M2 ? "float8_e5m2"
                                                  : DTypeName(k.dtype);
      row["head_dim"] = k.head_dim;
      row["name"] = k.name;
      rows.append(row);
    }
    return rows;
  });
  {
    nb::dict limits;
    limits["max_queries"] = jax_blocksparse::kDecodeMaxQueries;
    limits["tile_keys"] = jax_blocksparse::kDecodeTileKeys;
    limits["split_capacity"] = jax_blocksparse::kDecodeSplitCapacity;
    m.attr("decode_limits") = limits;
  }
  // CTAs of the decode kernel in a form (kDecodeFormKeys) resident at once on the current
  // device (0: no such kernel, or unknown): jax_blocksparse/_cuda.py (decode_splits) sizes
  // the split count by it.
  m.def("decode_resident_ctas", [](const std::string& dtype, const std::string& kv_dtype,
                                   int head_dim, const std::string& form) {
    using namespace jax_blocksparse;
    const DecodeKv kv = kv_dtype == "float8_e4m3fn" ? DecodeKv::kE4M3
                        : kv_dtype == "float8_e5m2" ? DecodeKv::kE5M2
                                                    : DecodeKv::kSame;
    for (DType dt : {DType::kBF16, DType::kF16})
      if (dtype == DTypeName(dt))
        if (const AttentionDecodeKernel* k = FindAttentionDecodeKernel(dt, kv, head_dim))
          for (int f = 0; f < kDecodeForms; ++f)
            if (form == kDecodeFormKeys[f]) return k->resident_ctas(DecodeForm(f));
    return 0;
  });
  // The partial kernel's form (kDecodeFormKeys) of a decode call of this shape on the
  // current device (DecodeFormOf): jax_blocksparse/_cuda.py routes and sizes by it.
  m.def("decode_form", [](int batch, int tq, int tk, int hq, int hkv, int head_dim,
                          int block_size, int mask_heads, int width, int page_size,
                          bool same_kv, int splits) {
    using namespace jax_blocksparse;
    AttentionDecodeParams p{};
    p.batch = batch;
    p.tq = tq;
    p.tk = tk;
    p.hq = hq;
    p.hkv = hkv;
    p.head_dim = head_dim;
    p.block_size = block_size;
    p.mask_heads = mask_heads;
    p.width = width;
    p.splits = splits;
    static const int32_t kPageTable = 0;  // only its presence matters
    p.page_table = page_size > 0 ? &kPageTable : nullptr;  // 0: a contiguous cache
    p.page_size = page_size > 0 ? page_size : tk;
    return std::string(kDecodeFormKeys[int(DecodeFormOf(p, same_kv))]);
  });
  m.attr("cuda_architectures") = JBS_CUDA_ARCHITECTURES;
}
