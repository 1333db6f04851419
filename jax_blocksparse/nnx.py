"""Flax NNX modules: `BlockSparseLinear`, `BlockSparseMultiHeadAttention`,
`BlockSparseConv`, with the semantics of the linen modules in `jax_blocksparse.nn`."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from . import _layers
from .layout import Layout

Initializer = Callable[..., Any]


def _value(variable):
    """A variable's array (`get_value` in new flax, `.value` before it)."""
    if variable is None:
        return None
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def _compute_dtype(dtype, x, param_dtype):
    return dtype if dtype is not None else jnp.promote_types(x.dtype, param_dtype)


class BlockSparseLinear(nnx.Module):
    """`y = x @ W + b`, `W [C, K]` block-sparse over `layout`; params `kernel [nnz, bs, bs]`,
    `bias [K]`. Input `[..., C]` -> `[..., K]`. Tensor parallelism as in linen's
    `BlockSparseDense`: `parallel="columns"` or `"rows"` with `mesh` and `axis` makes
    `kernel` the devices' slabs `[n, max_nnz, bs, bs]`; another `parallel`, or a `mesh`
    without the axis `axis`, raises `ValueError`."""

    def __init__(self, layout: Layout, *, use_bias: bool = True, dtype=None,
                 param_dtype=jnp.float32, precision=None, kernel_init: Initializer | None = None,
                 bias_init: Initializer = nnx.initializers.zeros, parallel: str | None = None,
                 mesh=None, axis: str = "model", rngs: nnx.Rngs):
        _layers.check_layer("BlockSparseLinear", layout, dtype, param_dtype)
        bs, nnz = layout.block_size, layout.nnz
        self.layout, self.dtype = layout, dtype
        self.param_dtype, self.precision = param_dtype, precision
        self.parallel, self.mesh, self.axis = parallel, mesh, axis
        if parallel is None:
            init = kernel_init or _layers.fan_in_init(layout)
            self.kernel = nnx.Param(init(rngs.params(), (nnz, bs, bs), param_dtype))
        else:
            split = self.split
            shape = (len(split.parts), split.max_nnz, bs, bs)
            self.kernel = nnx.Param(_layers.slab_init(split, kernel_init)(
                rngs.params(), shape, param_dtype))
        self.bias = (nnx.Param(bias_init(rngs.params(), (layout.shape[1],), param_dtype))
                     if use_bias else None)

    @property
    def split(self):
        """The `tensor_parallel.SplitLayout` of a parallel layer (cached), else None."""
        if self.parallel is None:
            return None
        return _layers.split_for(self.layout, self.mesh, self.axis, self.parallel)

    def __call__(self, x):
        dtype = _compute_dtype(self.dtype, x, self.param_dtype)
        if self.parallel is not None:
            return _layers.parallel_dense(x, _value(self.kernel), _value(self.bias), self.split,
                                          self.mesh, self.axis, dtype, self.precision)
        return _layers.dense(x, _value(self.kernel), _value(self.bias), self.layout, dtype,
                             self.precision)


class BlockSparseConv(nnx.Module):
    """NHWC convolution with one block-sparse `(Cin, Cout)` layout shared by every tap;
    params `kernel [kh, kw, nnz, bs, bs]`, `bias [Cout]`. Input `[N, H, W, Cin]` ->
    `[N, H', W', Cout]`. `kernel_size` and `strides`: an int `n` (meaning `(n, n)`: the
    module is 2-D only) or two ints; `padding`: `"SAME"`, `"VALID"`, an int or two
    `(low, high)` pairs. An input that is not `[N, H, W, Cin]` raises `ValueError`."""

    def __init__(self, layout: Layout, kernel_size: int | Sequence[int] = (3, 3), *,
                 strides: int | Sequence[int] = (1, 1), padding="SAME", use_bias: bool = True,
                 dtype=None, param_dtype=jnp.float32, precision=None,
                 kernel_init: Initializer | None = None,
                 bias_init: Initializer = nnx.initializers.zeros, rngs: nnx.Rngs):
        (kh, kw), strides, padding = _layers.conv_window(kernel_size, strides, padding)
        _layers.check_layer("BlockSparseConv", layout, dtype, param_dtype)
        bs, nnz = layout.block_size, layout.nnz
        init = kernel_init or _layers.fan_in_init(layout, taps=kh * kw)
        self.layout, self.strides, self.padding = layout, strides, padding
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.kernel = nnx.Param(init(rngs.params(), (kh, kw, nnz, bs, bs), param_dtype))
        self.bias = (nnx.Param(bias_init(rngs.params(), (layout.shape[1],), param_dtype))
                     if use_bias else None)

    def __call__(self, x):
        dtype = _compute_dtype(self.dtype, x, self.param_dtype)
        return _layers.conv(x, _value(self.kernel), _value(self.bias), self.layout, self.strides,
                            self.padding, dtype, self.precision)


class BlockSparseMultiHeadAttention(nnx.Module):
    """Multi-head (grouped-query) attention over a block-sparse `layout`, following
    `nnx.MultiHeadAttention` (projections `query`, `key`, `value`, `out`); `q_layout`,
    `kv_layout`, `out_layout` make those projections block-sparse (without `qkv_features` /
    `out_features` their widths set them; a contradiction raises ValueError naming the
    layout). `layout` may be None
    when every call gives a `block_mask`. `__call__` takes `kv_lengths`, `segment_ids`
    (`[B, T]`, packed documents), `kv_segment_ids` and `block_mask` (a `BlockMask` that
    replaces `layout` for that call), as the linen module does. `use_sinks`: a learned
    attention sink per head (`self.sinks`, an `nnx.Param [num_heads]`, zeros at init);
    `logits_soft_cap`: a Python float > 0 (attention's `sinks` and `logits_soft_cap`).
    `kernel_init`: every projection's kernel initializer, called with its shape (dense:
    `LinearGeneral`'s; block-sparse: the blocks `[nnz, bs, bs]`); None: lecun normal for the
    dense projections, `BlockSparseLinear`'s fan-in init for the block-sparse ones."""

    def __init__(self, num_heads: int, in_features: int, layout: Layout, *,
                 causal: bool = False, num_kv_heads: int | None = None,
                 qkv_features: int | None = None, out_features: int | None = None,
                 q_layout: Layout | None = None, kv_layout: Layout | None = None,
                 out_layout: Layout | None = None, dtype=None, param_dtype=jnp.float32,
                 precision=None, kernel_init: Initializer | None = None,
                 bias_init: Initializer = nnx.initializers.zeros, use_bias: bool = True,
                 use_sinks: bool = False, logits_soft_cap: float | None = None,
                 rngs: nnx.Rngs):
        kv_heads = num_kv_heads or num_heads
        qkv_features, out_features = _layers.projection_features(
            "BlockSparseMultiHeadAttention", in_features, in_features, num_heads, kv_heads,
            qkv_features, out_features, q_layout, kv_layout, out_layout)
        head_dim = qkv_features // num_heads
        self.num_heads, self.kv_heads = num_heads, kv_heads
        self.layout, self.causal = layout, causal
        self.dtype, self.param_dtype = dtype, param_dtype
        common = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      precision=precision, bias_init=bias_init, rngs=rngs)
        dense_init = kernel_init or nnx.initializers.lecun_normal()

        def projection(heads, block_layout):
            if block_layout is not None:
                return BlockSparseLinear(block_layout, kernel_init=kernel_init, **common)
            return nnx.LinearGeneral(in_features, (heads, head_dim), axis=-1,
                                     kernel_init=dense_init, **common)

        self.query = projection(num_heads, q_layout)
        self.key = projection(kv_heads, kv_layout)
        self.value = projection(kv_heads, kv_layout)
        self.out = (BlockSparseLinear(out_layout, kernel_init=kernel_init, **common)
                    if out_layout is not None else
                    nnx.LinearGeneral((num_heads, head_dim), out_features, axis=(-2, -1),
                                      kernel_init=dense_init, **common))
        self.flat_out = out_layout is not None
        self.sinks = nnx.Param(jnp.zeros((num_heads,), param_dtype)) if use_sinks else None
        self.logits_soft_cap = logits_soft_cap

    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, kv_lengths=None,
                 segment_ids=None, kv_segment_ids=None, block_mask=None):
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        heads = lambda x, n: x if x.ndim == 4 else _layers.split_heads(x, n)
        q = heads(self.query(inputs_q), self.num_heads)
        k = heads(self.key(inputs_k), self.kv_heads)
        v = heads(self.value(inputs_v), self.kv_heads)
        dtype = _compute_dtype(self.dtype, inputs_q, self.param_dtype)
        x = _layers.attend(q, k, v, self.layout, block_mask, self.causal, dtype,
                           kv_lengths=kv_lengths, q_segment_ids=segment_ids,
                           kv_segment_ids=kv_segment_ids, sinks=_value(self.sinks),
                           logits_soft_cap=self.logits_soft_cap)
        return self.out(x.reshape(x.shape[:-2] + (-1,)) if self.flat_out else x)
