// Launchers of the fused block-sparse attention (attention.h): check the shapes the kernels
// support, fill the kernel arguments, dispatch on dtype and head dimension.
#include "attention.h"

#include <cstdlib>

#include "attention_kernels.cuh"

namespace jax_blocksparse {
namespace attn {
int ForwardVariant() {
  static const int variant = [] {
    const char* v = std::getenv("JAX_BLOCKSPARSE_ATTN_FWD_VARIANT");
    return v != nullptr && v[0] == '1' ? 1 : 0;
  }();
  return variant;
}
cudaError_t ForwardBf16(const Args& a, int head_dim, cudaStream_t stream);
cudaError_t ForwardF16(const Args& a, int head_dim, cudaStream_t stream);
cudaError_t BackwardBf16(const Args& a, int head_dim, cudaStream_t stream);
cudaError_t BackwardF16(const Args& a, int head_dim, cudaStream_t stream);
}  // namespace attn

namespace {

bool Supported(const AttentionShape& s) {
  return (s.head_dim == 64 || s.head_dim == 128) && (s.block_size == 64 || s.block_size == 128) &&
         s.tq % s.block_size == 0 && s.tk % s.block_size == 0 && s.hkv > 0 &&
         s.hq % s.hkv == 0 && (s.mask_heads == 1 || s.mask_heads == s.hq);
}

attn::Lists ToLists(const BlockListsView& v) {
  return attn::Lists{v.counts, v.partial, v.lists, v.order, v.lines, v.max_len};
}

attn::Args Common(const AttentionShape& s) {
  attn::Args a{};
  a.batch = s.batch;
  a.tq = s.tq;
  a.tk = s.tk;
  a.hq = s.hq;
  a.hkv = s.hkv;
  a.group = s.hq / s.hkv;
  a.bs = s.block_size;
  a.hm = s.mask_heads;
  a.scale = s.scale;
  a.scale_log2 = s.scale * attn::kLog2e;
  a.causal = s.causal;
  return a;
}

bool Empty(const AttentionShape& s) { return s.batch == 0 || s.hq == 0; }

}  // namespace

const char* AttentionKernelName(bool backward) {
  if (backward) return "fa2_backward(delta, dq 64-row, dk/dv per kv head)";
  return attn::ForwardVariant() == 1 ? "fa2_forward(128-row CTA)" : "fa2_forward(64-row CTA)";
}

cudaError_t LaunchAttentionForward(DType dtype, const AttentionForwardParams& p,
                                   cudaStream_t stream) {
  if (!Supported(p.shape)) return cudaErrorInvalidValue;
  if (Empty(p.shape) || p.shape.tq == 0) return cudaSuccess;
  attn::Args a = Common(p.shape);
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.kv_lengths = p.kv_lengths;
  a.by_query = ToLists(p.by_query);
  a.out_o = p.o;
  a.out_lse = p.lse;
  if (a.by_query.lines != p.shape.tq / p.shape.block_size) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kBF16: return attn::ForwardBf16(a, p.shape.head_dim, stream);
    case DType::kF16: return attn::ForwardF16(a, p.shape.head_dim, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchAttentionBackward(DType dtype, const AttentionBackwardParams& p,
                                    cudaStream_t stream) {
  if (!Supported(p.shape)) return cudaErrorInvalidValue;
  if (Empty(p.shape)) return cudaSuccess;
  attn::Args a = Common(p.shape);
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.o = p.o;
  a.d_o = p.d_o;
  a.lse = p.lse;
  a.d_lse = p.d_lse;
  a.kv_lengths = p.kv_lengths;
  a.by_query = ToLists(p.by_query);
  a.by_key = ToLists(p.by_key);
  a.dq = p.dq;
  a.dk = p.dk;
  a.dv = p.dv;
  a.delta = p.delta;
  if (a.by_query.lines != p.shape.tq / p.shape.block_size ||
      a.by_key.lines != p.shape.tk / p.shape.block_size)
    return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kBF16: return attn::BackwardBf16(a, p.shape.head_dim, stream);
    case DType::kF16: return attn::BackwardF16(a, p.shape.head_dim, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace jax_blocksparse
