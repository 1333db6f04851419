"""Row softmax over a block-sparse score matrix: the unfused attention building block.

With `sdd` and `dsd` it composes OpenAI BlocksparseTransformer-style attention for one head:
`dsd(softmax(sdd(q, k, layout, trans_b=True), layout, scale=s), v, layout)` equals
`attention(...)` with the same layout, scale and causality.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _partitioning
from ._checks import check_dtype, static_bool, static_float
from .layout import Layout, check_matrix_layout


def softmax(blocks, layout: Layout, *, scale: float = 1.0, causal: bool = False):
    """Softmax of `scale * S` along each row of `S`, over the entries the layout stores.

    Args:
      blocks: `[..., nnz, bs, bs]`, the blocks of `S` over `layout` (2-D, `[R, C]`);
        float32, float16, bfloat16 or float64; any block size.
      layout: a 2-D `Layout`.
      scale: multiplies the scores before the softmax (a Python number, static).
      causal: (a Python bool, static) also mask entries with `j > i + (C - R) * bs`
        (bottom-right aligned, as in `attention`).
    Returns:
      blocks `[..., nnz, bs, bs]` in `blocks`' dtype, computed in float32 (float64 for
      float64). A row with no entry gives zeros.
    Raises:
      ValueError: at trace time, naming the argument: a layout that is not a 2-D `Layout`,
        blocks of another shape or dtype (integers and bools too), a `scale` that is not a
        finite Python number, a `causal` that is not a Python bool.
    """
    check_matrix_layout("softmax", layout)
    scale = static_float("softmax", "scale", scale)
    causal = static_bool("softmax", "causal", causal)
    blocks = jnp.asarray(blocks)
    bs, nnz = layout.block_size, layout.nnz
    if blocks.ndim < 3 or blocks.shape[-3:] != (nnz, bs, bs):
        raise ValueError(f"softmax: blocks must be [..., {nnz}, {bs}, {bs}]; got {blocks.shape}")
    check_dtype("softmax", "blocks", blocks)
    rows, cols = np.nonzero(layout.mask)
    r_count, c_count = layout.mask.shape

    def row_softmax(blocks):  # explicit sharding mode: in auto_mode, sharded as blocks
        compute = jnp.promote_types(blocks.dtype, jnp.float32)  # float64 stays float64
        x = jnp.moveaxis(blocks.astype(compute) * scale, -3, 0)  # [nnz, ..., bs, bs]
        shape = (nnz,) + (1,) * (x.ndim - 3) + (bs, bs)
        if causal:
            i = rows[:, None, None] * bs + np.arange(bs)[:, None]
            j = cols[:, None, None] * bs + np.arange(bs)[None, :]
            allowed = jnp.asarray((j <= i + (c_count - r_count) * bs).reshape(shape))
        else:
            allowed = jnp.ones(shape, bool)
        x = jnp.where(allowed, x, -jnp.inf)
        segments = jnp.asarray(rows)
        row_max = jax.ops.segment_max(x.max(-1), segments, num_segments=r_count)  # [R, ..., bs]
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
        e = jnp.where(allowed, jnp.exp(x - row_max[segments][..., None]), 0.0)
        total = jax.ops.segment_sum(e.sum(-1), segments, num_segments=r_count)
        total = jnp.where(total > 0, total, 1.0)
        out = e / total[segments][..., None]
        return jnp.moveaxis(out, 0, -3).astype(blocks.dtype)
    return _partitioning.auto_mode(row_softmax, blocks)(blocks)
