"""The math behind the Flax modules (linen `nn.py` and `nnx.py` share it): initializers,
the dense, conv and attention layer computations on explicit parameters."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_internals as jint
from . import tensor_parallel
from .attention import attention
from .layout import Layout
from .matmul import matmul

# std of a unit normal truncated to [-2, 2] is 0.8796...: divide by it to keep the variance
_TRUNCATED_STD = 0.87962566103423978


def check_layer(where, layout, dtype, param_dtype):
    """The block-sparse layers' arguments.

    Raises:
      ValueError: naming the argument: `layout` not a 2-D `Layout` (one mask `(C, K)`; a
        per-head mask has no meaning for a weight), `dtype` (when given) or `param_dtype`
        not a floating dtype (an integer kernel would initialise to zeros).
    """
    if not isinstance(layout, Layout) or layout.mask.ndim != 2:
        what = (f"a Layout with a {layout.mask.ndim}-D mask" if isinstance(layout, Layout)
                else type(layout).__name__)
        raise ValueError(f"{where}: layout must be a jax_blocksparse.Layout with a 2-D mask "
                         f"(C/bs, K/bs); got {what}")
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value is not None and not jnp.issubdtype(jnp.dtype(value), jnp.floating):
            raise ValueError(f"{where}: {name} must be a floating dtype; got "
                             f"{jnp.dtype(value)}")


def fan_in_init(layout: Layout, scale: float = 1.0, taps: int = 1):
    """Initializer for blocks `[..., nnz, bs, bs]`: truncated normal with variance
    `scale / fan_in`, where fan_in is the true fan-in of the block's column (times the
    number of conv taps), not the dense input size."""
    cols = np.nonzero(layout.mask)[1]
    fan = layout.mask.sum(axis=0)[cols].astype(np.float32) * layout.block_size * taps
    std = np.sqrt(scale / np.maximum(fan, 1)) / _TRUNCATED_STD  # [nnz]

    def init(key, shape, dtype=jnp.float32):
        values = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
        return (values * jnp.asarray(std)[:, None, None]).astype(dtype)
    return init


def dense(x, kernel, bias, layout, dtype, precision):
    """`x @ W (+ bias)` with `x [..., C]`, kernel blocks of W over layout `(C, K)`."""
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    y = matmul(x, kernel, layout, precision=precision)
    return y if bias is None else y + bias.astype(dtype)


@functools.lru_cache(maxsize=None)
def _split(layout: Layout, n: int, by: str):
    return tensor_parallel.split_layout(layout, n, by)


def split_for(layout: Layout, mesh, axis: str, by: str):
    """`layout` split over the `axis` of `mesh` (cached), with the modules' checks."""
    if by not in ("columns", "rows"):
        raise ValueError(f"parallel must be None, 'columns' or 'rows'; got {by!r}")
    if mesh is None or axis not in mesh.shape:
        raise ValueError(f"parallel={by!r} needs a mesh with an axis {axis!r}; got {mesh}")
    return _split(layout, mesh.shape[axis], by)


def slab_init(split, kernel_init=None):
    """Initializer of the tensor-parallel slabs `[n, max_nnz, bs, bs]`: the whole layout's
    blocks, initialized as the unsplit layer's (`kernel_init`, default the fan-in init),
    split by `tensor_parallel.split_blocks` (the padding is zero)."""
    whole = kernel_init or fan_in_init(split.layout)

    def init(key, shape, dtype=jnp.float32):
        blocks = whole(key, (split.layout.nnz,) + tuple(shape[2:]), dtype)
        return tensor_parallel.split_blocks(blocks, split)
    return init


def parallel_dense(x, slabs, bias, split, mesh, axis, dtype, precision):
    """`x @ W (+ bias)` with W split over `axis`: `tensor_parallel.parallel_matmul` in a
    `shard_map` manual over every axis of `mesh`, so that the primitives inside run on
    each device's shards directly (a `shard_map` manual over `axis` only would nest their
    `custom_partitioning` in a partially manual region, which XLA's partitioners reject).
    The other axes split `x`'s leading (batch) dimension, data parallel, when their size
    divides it; otherwise each of their devices computes the whole batch."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    x, slabs = x.astype(dtype), slabs.astype(dtype)
    others = tuple(a for a in mesh.axis_names if a != axis)
    batch = None
    if x.ndim > 1 and others and x.shape[0] % math.prod(mesh.shape[a] for a in others) == 0:
        batch = others if len(others) > 1 else others[0]
    lead = (batch,) + (None,) * (x.ndim - 2) if x.ndim > 1 else ()
    whole, split_features = P(*lead, None), P(*lead, axis)
    x_spec, out_spec = ((whole, split_features) if split.by == "columns" else
                        (split_features, whole))
    if jint.explicit_axes(mesh):  # explicit sharding mode: shard_map takes them as placed
        x, slabs = (jax.sharding.reshard(a, NamedSharding(mesh, spec))
                    for a, spec in ((x, x_spec), (slabs, P(axis))))
    f = jax.shard_map(
        lambda x, s: tensor_parallel.parallel_matmul(x, s, split, axis, precision),
        mesh=mesh, in_specs=(x_spec, P(axis)), out_specs=out_spec)
    y = f(x, slabs)
    return y if bias is None else y + bias.astype(dtype)


def conv_layout(layout: Layout, taps: int) -> Layout:
    """The layout of the im2col weight `[taps * Cin, Cout]`: `layout` repeated per tap, so
    that block `t * nnz + e` is block `e` of tap `t` (the kernel's storage order)."""
    return Layout(np.tile(layout.mask, (taps, 1)), layout.block_size)


def _is_int(value):
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _pair(name, value):
    """An int `n` as `(n, n)`; a sequence of two positive ints as a tuple; else ValueError."""
    if _is_int(value):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise ValueError(f"BlockSparseConv: {name} must be a positive int or two of them "
                         f"(a 2-D convolution); got {value!r}")
    return tuple(int(v) for v in value)


def conv_window(kernel_size, strides, padding):
    """The conv arguments in the form `conv` takes, as `(kernel_size, strides, padding)`.

    `kernel_size` and `strides`: an int `n` (meaning `(n, n)`) or two ints. `padding`:
    `"SAME"`, `"SAME_LOWER"` or `"VALID"`, an int `p` (meaning `((p, p), (p, p))`), or two
    `(low, high)` int pairs.

    Raises:
      ValueError: naming the argument, for any other form.
    """
    bad = ValueError(f"BlockSparseConv: padding must be 'SAME', 'SAME_LOWER', 'VALID', an "
                     f"int or two (low, high) pairs of ints; got {padding!r}")
    if _is_int(padding):
        padding = ((int(padding),) * 2,) * 2
    elif isinstance(padding, str):
        if padding.upper() not in ("SAME", "SAME_LOWER", "VALID"):
            raise bad
    else:
        try:
            pairs = tuple(tuple(pair) for pair in padding)
        except TypeError:
            raise bad from None
        if len(pairs) != 2 or not all(len(pair) == 2 and all(map(_is_int, pair))
                                      for pair in pairs):
            raise bad
        padding = tuple(tuple(int(p) for p in pair) for pair in pairs)
    return _pair("kernel_size", kernel_size), _pair("strides", strides), padding


def conv(x, kernel, bias, layout, strides, padding, dtype, precision):
    """Channel-block-sparse 2-D convolution, NHWC.

    x `[N, H, W, Cin]`, kernel `[kh, kw, nnz, bs, bs]` (one layout over `(Cin, Cout)`
    shared by every tap). The taps become one block-sparse matmul over `kh*kw*Cin` inputs:
    one kernel launch, the taps summed inside it.
    """
    kh, kw = kernel.shape[:2]
    cin = layout.shape[0]
    if x.ndim != 4 or x.shape[-1] != cin:
        raise ValueError(f"BlockSparseConv: x must be [N, H, W, {cin}] (NHWC, the layout's "
                         f"Cin = {cin}); got shape {x.shape}")
    x = x.astype(dtype)
    patches = jax.lax.conv_general_dilated_patches(
        x, (kh, kw), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, ho, wo, _ = patches.shape
    # patches' features are ordered (Cin, kh, kw); the weight's rows are (kh, kw, Cin)
    patches = patches.reshape(n, ho, wo, cin, kh * kw).swapaxes(-1, -2)
    patches = patches.reshape(n, ho, wo, kh * kw * cin)
    weight = kernel.reshape((-1,) + kernel.shape[-2:]).astype(dtype)
    y = matmul(patches, weight, conv_layout(layout, kh * kw), precision=precision)
    return y if bias is None else y + bias.astype(dtype)


def split_heads(x, heads):
    """`[..., heads * D]` -> `[..., heads, D]`."""
    return x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))


def check_attention_features(num_heads, num_kv_heads, qkv_features):
    if qkv_features % num_heads:
        raise ValueError(f"qkv_features ({qkv_features}) must be divisible by num_heads "
                         f"({num_heads})")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")


def projection_features(where, features, kv_features, num_heads, num_kv_heads, qkv_features,
                        out_features, q_layout, kv_layout, out_layout):
    """The attention modules' `(qkv_features, out_features)`: as given, else the block-sparse
    projection's width (`q_layout`'s columns, `out_layout`'s), else `features`; each given
    projection layout checked against the matrix it stands for.

    Raises:
      ValueError: naming the argument, when a layout's shape (in elements) is not
        `(features, qkv_features)` (q_layout), `(kv features, num_kv_heads * head_dim)`
        (kv_layout) or `(qkv_features, out_features)` (out_layout), or the head counts do
        not divide (`check_attention_features`).
    """
    qkv = qkv_features or (q_layout.shape[1] if q_layout is not None else features)
    check_attention_features(num_heads, num_kv_heads, qkv)
    head_dim = qkv // num_heads
    out = out_features or (out_layout.shape[1] if out_layout is not None else features)
    wanted = (("q_layout", q_layout, (features, qkv), "features x qkv_features"),
              ("kv_layout", kv_layout, (kv_features, num_kv_heads * head_dim),
               "key/value features x num_kv_heads * head_dim"),
              ("out_layout", out_layout, (qkv, out), "qkv_features x out_features"))
    for name, layout, shape, meaning in wanted:
        if layout is not None and tuple(layout.shape) != shape:
            raise ValueError(f"{where}: {name} covers a {layout.shape[0]} x {layout.shape[1]} "
                             f"matrix; its projection is {shape[0]} x {shape[1]} ({meaning}, "
                             f"qkv_features={qkv}, out_features={out}, "
                             f"head_dim={head_dim})")
    return qkv, out


def attend(q, k, v, layout, block_mask, causal, dtype, **masking):
    """q `[B, T, H, D]`, k/v `[B, S, Hkv, D]` -> `[B, T, H, D]` through `attention`, over
    the call's `block_mask` if given, else the module's `layout`. `masking`: attention's
    `kv_lengths`, `q_segment_ids`, `kv_segment_ids`, `sinks`, `logits_soft_cap`."""
    mask = layout if block_mask is None else block_mask
    if mask is None:
        raise ValueError("block-sparse attention module: give it a layout, or a block_mask "
                         "when calling it")
    return attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask, causal=causal,
                     **masking)
