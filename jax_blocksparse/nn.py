"""Flax linen modules: `BlockSparseDense`, `BlockSparseMultiHeadAttention`, `BlockSparseConv`.

They follow the conventions of `flax.linen.Dense`, `MultiHeadDotProductAttention` and
`Conv` (parameter names, shapes of the dense parts, `dtype`/`param_dtype`/`precision`);
the block-sparse parameters are stored as their blocks `[nnz, bs, bs]`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from . import _layers
from .layout import Layout

Initializer = Callable[..., Any]


def _compute_dtype(dtype, x, param_dtype):
    return dtype if dtype is not None else jnp.promote_types(x.dtype, param_dtype)


def _block_params(module, taps_shape=()):
    """`kernel [*taps_shape, nnz, bs, bs]` and `bias [K]` (or None) of a block-sparse layer,
    the default init scaled by the true fan-in."""
    layout = module.layout
    _layers.check_layer(type(module).__name__, layout, module.dtype, module.param_dtype)
    bs, taps = layout.block_size, int(np.prod(taps_shape))
    init = module.kernel_init or _layers.fan_in_init(layout, taps=taps)
    kernel = module.param("kernel", init, (*taps_shape, layout.nnz, bs, bs), module.param_dtype)
    bias = (module.param("bias", module.bias_init, (layout.shape[1],), module.param_dtype)
            if module.use_bias else None)
    return kernel, bias


class BlockSparseDense(nn.Module):
    """`y = x @ W + b` with a block-sparse `W [C, K]` over `layout`.

    Params: `kernel [nnz, bs, bs]` (W's blocks), `bias [K]`. The default `kernel_init` is a
    truncated normal scaled by each output column's true fan-in (the inputs that feed it).
    Input `[..., C]` -> output `[..., K]`.

    Tensor parallelism (`jax_blocksparse.tensor_parallel`): with `parallel="columns"` or
    `"rows"`, `mesh` and its axis `axis` (n devices), W is split by block columns or rows;
    `kernel` is then the devices' slabs `[n, max_nnz, bs, bs]` (shard its leading axis over
    `axis`) and each device multiplies its own part (rows: the partial outputs are summed).
    The input and output stay `[..., C]` and `[..., K]`. Another `parallel`, or a `mesh`
    without the axis `axis`, raises `ValueError`.
    """

    layout: Layout
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros
    parallel: str | None = None  # None, "columns" or "rows"
    mesh: Any = None  # a jax.sharding.Mesh, with `parallel`
    axis: str = "model"

    @nn.compact
    def __call__(self, x):
        dtype = _compute_dtype(self.dtype, x, self.param_dtype)
        if self.parallel is None:
            kernel, bias = _block_params(self)
            return _layers.dense(x, kernel, bias, self.layout, dtype, self.precision)
        split = _layers.split_for(self.layout, self.mesh, self.axis, self.parallel)
        bs = self.layout.block_size
        kernel = self.param("kernel", _layers.slab_init(split, self.kernel_init),
                            (len(split.parts), split.max_nnz, bs, bs), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.layout.shape[1],), self.param_dtype)
                if self.use_bias else None)
        return _layers.parallel_dense(x, kernel, bias, split, self.mesh, self.axis, dtype,
                                      self.precision)


class BlockSparseConv(nn.Module):
    """2-D convolution (NHWC) whose `(Cin, Cout)` connectivity is one block-sparse layout
    shared by every tap, as in OpenAI blocksparse's conv.

    Params: `kernel [kh, kw, nnz, bs, bs]`, `bias [Cout]`. All taps run as one
    block-sparse matmul (one kernel launch). Input `[N, H, W, Cin]` -> `[N, H', W', Cout]`.
    `kernel_size` and `strides`: an int `n` (meaning `(n, n)`: the module is 2-D only) or
    two ints; `padding`: `"SAME"`, `"VALID"`, an int or two `(low, high)` pairs. An input
    that is not `[N, H, W, Cin]` raises `ValueError` naming `x`.
    """

    layout: Layout
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: str | int | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kernel_size, strides, padding = _layers.conv_window(self.kernel_size, self.strides,
                                                            self.padding)
        kernel, bias = _block_params(self, kernel_size)
        dtype = _compute_dtype(self.dtype, x, self.param_dtype)
        return _layers.conv(x, kernel, bias, self.layout, strides, padding, dtype,
                            self.precision)


class BlockSparseMultiHeadAttention(nn.Module):
    """Multi-head (grouped-query) attention over a block-sparse layout.

    Follows `flax.linen.MultiHeadDotProductAttention`: projections `query`, `key`, `value`
    (`DenseGeneral` kernels `[features, heads, head_dim]`) and `out` (`[heads, head_dim,
    out_features]`). Give `q_layout` / `kv_layout` (over `(features, heads * head_dim)`)
    or `out_layout` (over `(qkv_features, out_features)`) to make those projections
    block-sparse too (`BlockSparseDense` submodules under the same names); without
    `qkv_features` / `out_features` their widths set them, and a layout that contradicts
    the features raises ValueError naming it.
    `layout`: the attention layout, mask `[1 or num_heads, T/bs, S/bs]` (None: every call
    gives a `block_mask`).
    `__call__(inputs_q [B, T, F], inputs_k=None, inputs_v=None, *, kv_lengths=None,
    segment_ids=None, kv_segment_ids=None, block_mask=None)`: `segment_ids` int `[B, T]`
    (packed documents; `kv_segment_ids [B, S]` default to them), `block_mask` a
    `jax_blocksparse.BlockMask` that replaces `layout` for this call. No attention dropout.
    `use_sinks`: a learned attention sink per head (param `sinks [num_heads]`, zeros at
    init; `jax_blocksparse.attention`'s `sinks`); `logits_soft_cap`: a Python float > 0,
    the scores become `cap * tanh(s / cap)` (attention's `logits_soft_cap`).
    `kernel_init`: every projection's kernel initializer, called with its shape (dense:
    `DenseGeneral`'s; block-sparse: the blocks `[nnz, bs, bs]`); None: lecun normal for the
    dense projections, `BlockSparseDense`'s fan-in init for the block-sparse ones.
    """

    num_heads: int
    layout: Layout | None
    causal: bool = False
    num_kv_heads: int | None = None
    qkv_features: int | None = None
    out_features: int | None = None
    q_layout: Layout | None = None
    kv_layout: Layout | None = None
    out_layout: Layout | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Initializer | None = None
    bias_init: Initializer = nn.initializers.zeros
    use_bias: bool = True
    use_sinks: bool = False
    logits_soft_cap: float | None = None

    def _project(self, x, heads, head_dim, block_layout, name):
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, bias_init=self.bias_init, name=name)
        if block_layout is not None:
            return _layers.split_heads(
                BlockSparseDense(block_layout, kernel_init=self.kernel_init, **common)(x), heads)
        return nn.DenseGeneral((heads, head_dim), axis=-1, kernel_init=self._dense_init(),
                               **common)(x)

    def _dense_init(self):
        return self.kernel_init or nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, inputs_q, inputs_k=None, inputs_v=None, *, kv_lengths=None,
                 segment_ids=None, kv_segment_ids=None, block_mask=None):
        inputs_k = inputs_q if inputs_k is None else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        features = inputs_q.shape[-1]
        kv_heads = self.num_kv_heads or self.num_heads
        qkv_features, out_features = _layers.projection_features(
            "BlockSparseMultiHeadAttention", features, inputs_k.shape[-1], self.num_heads,
            kv_heads, self.qkv_features, self.out_features, self.q_layout, self.kv_layout,
            self.out_layout)
        head_dim = qkv_features // self.num_heads
        q = self._project(inputs_q, self.num_heads, head_dim, self.q_layout, "query")
        k = self._project(inputs_k, kv_heads, head_dim, self.kv_layout, "key")
        v = self._project(inputs_v, kv_heads, head_dim, self.kv_layout, "value")
        dtype = _compute_dtype(self.dtype, inputs_q, self.param_dtype)
        sinks = (self.param("sinks", nn.initializers.zeros, (self.num_heads,),
                            self.param_dtype) if self.use_sinks else None)
        x = _layers.attend(q, k, v, self.layout, block_mask, self.causal, dtype,
                           kv_lengths=kv_lengths, q_segment_ids=segment_ids,
                           kv_segment_ids=kv_segment_ids, sinks=sinks,
                           logits_soft_cap=self.logits_soft_cap)
        common = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                      precision=self.precision, bias_init=self.bias_init, name="out")
        if self.out_layout is not None:
            return BlockSparseDense(self.out_layout, kernel_init=self.kernel_init,
                                    **common)(x.reshape(x.shape[:-2] + (-1,)))
        return nn.DenseGeneral(out_features, axis=(-2, -1), kernel_init=self._dense_init(),
                               **common)(x)
