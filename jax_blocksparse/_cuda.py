"""The CUDA path: load the compiled extension, register its FFI targets, and lower the
primitives to them on the "cuda" platform.

The layout's metadata (block lists, coordinates) become int32 constant operands of the
custom call; the kernels never depend on the layout itself. Set
`JAX_BLOCKSPARSE_DISABLE_CUDA=1` before importing to force the pure-JAX path (A/B checks).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_internals as jint
from . import attention as att
from . import matmul_primitives as mp
from .attention_metadata import attention_metadata

try:
    from . import _jax_blocksparse_cuda as _ext
except ImportError:  # built without nvcc, or a source checkout
    _ext = None

_DISABLED = os.environ.get("JAX_BLOCKSPARSE_DISABLE_CUDA", "0") not in ("", "0")


def cuda_available() -> bool:
    """Whether the compiled CUDA kernels are registered (they run on CUDA devices)."""
    return _ext is not None and not _DISABLED


def _precision_attr(precision) -> np.int32:
    """0: default (TF32 tensor cores for float32 inputs), 1: full float32 (`HIGHEST`)."""
    return np.int32(precision == jax.lax.Precision.HIGHEST)


def _out_type(shape_rule, x, y, params):
    shape = shape_rule(x.shape, y.shape, **mp._shape_params(params))
    return jax.ShapeDtypeStruct(shape, x.dtype)


def _operands(lists):
    """A metadata NamedTuple of int32 numpy arrays as custom-call operands, in field order."""
    return [jnp.asarray(x) for x in lists]


def _sdd_cuda(a, b, *, layout, trans_a, trans_b, precision):
    out = _out_type(mp.sdd_shape, a, b, dict(layout=layout, trans_a=trans_a, trans_b=trans_b))
    call = jint.ffi_call("jax_blocksparse_sdd", out)
    return call(a, b, jnp.asarray(layout.coords), block_size=np.int32(layout.block_size),
                trans_a=trans_a, trans_b=trans_b, precision=_precision_attr(precision))


def _dsd_cuda(s, b, *, layout, trans_s, trans_b, precision):
    out = _out_type(mp.dsd_shape, s, b, dict(layout=layout, trans_s=trans_s, trans_b=trans_b))
    # rows of op(S): rows of S, or its columns when transposed
    lists = layout.lists("col" if trans_s else "row")
    call = jint.ffi_call("jax_blocksparse_dsd", out)
    return call(s, b, *_operands(lists), block_size=np.int32(layout.block_size),
                trans_s=trans_s, trans_b=trans_b, precision=_precision_attr(precision))


def _dds_cuda(a, w, *, layout, trans_a, trans_w, precision):
    out = _out_type(mp.dds_shape, a, w, dict(layout=layout, trans_a=trans_a, trans_w=trans_w))
    # columns of op(W): columns of W, or its rows when transposed
    lists = layout.lists("row" if trans_w else "col")
    call = jint.ffi_call("jax_blocksparse_dds", out)
    return call(a, w, *_operands(lists), block_size=np.int32(layout.block_size),
                trans_a=trans_a, trans_w=trans_w, precision=_precision_attr(precision))


# The fused attention kernels take bfloat16 and float16; float32 attention runs the
# pure-JAX implementation on the GPU too (documented in the README).
FUSED_ATTENTION_DTYPES = (jnp.bfloat16, jnp.float16)


def _attention_attrs(layout, causal, scale):
    return dict(block_size=np.int32(layout.block_size), causal=causal, scale=np.float32(scale))


def _fused(dtype):
    return any(dtype == d for d in FUSED_ATTENTION_DTYPES)


def _attention_forward_cuda(q, k, v, kv_lengths, *, layout, causal, scale):
    if not _fused(q.dtype):
        return att.attention_reference(q, k, v, kv_lengths, layout=layout, causal=causal,
                                       scale=scale)
    b, tq, hq, _ = q.shape
    meta = attention_metadata(layout, causal, tq, k.shape[1])
    out = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, tq), jnp.float32))
    call = jint.ffi_call("jax_blocksparse_attention_fwd", out)
    o, lse = call(q, k, v, kv_lengths, *_operands(meta.by_query),
                  **_attention_attrs(layout, causal, scale))
    return o, lse


def _attention_backward_cuda(q, k, v, o, lse, d_o, d_lse, kv_lengths, *, layout, causal, scale):
    if not _fused(q.dtype):
        return att.backward_reference(q, k, v, o, lse, d_o, d_lse, kv_lengths, layout=layout,
                                      causal=causal, scale=scale)
    b, tq, hq, _ = q.shape
    meta = attention_metadata(layout, causal, tq, k.shape[1])
    out = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)) + (
        jax.ShapeDtypeStruct((b, hq, tq), jnp.float32),)  # delta: workspace
    call = jint.ffi_call("jax_blocksparse_attention_bwd", out)
    dq, dk, dv, _ = call(q, k, v, o, lse, d_o, d_lse, kv_lengths,
                         *_operands(meta.by_query), *_operands(meta.by_key),
                         **_attention_attrs(layout, causal, scale))
    return dq, dk, dv


def _register():
    targets = _ext.registrations()
    for name, capsule in targets.items():
        jint.register_ffi_target(name, capsule, platform="CUDA")
    for prim, impl in ((mp.sdd_p, _sdd_cuda), (mp.dsd_p, _dsd_cuda), (mp.dds_p, _dds_cuda)):
        jint.register_platform_lowering(prim, impl, "cuda")
    if "jax_blocksparse_attention_fwd" in targets:
        jint.register_platform_lowering(att.attention_p, _attention_forward_cuda, "cuda",
                                        multiple_results=True)
        jint.register_platform_lowering(att.attention_bwd_p, _attention_backward_cuda, "cuda",
                                        multiple_results=True)


if cuda_available():
    _register()
