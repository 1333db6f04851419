"""Conversions between a block-sparse matrix's blocks and its dense form."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .layout import Layout, check_matrix_layout


def to_dense(blocks, layout: Layout):
    """Scatter blocks into a dense matrix (zeros where the layout has no block).

    Args:
      blocks: `[..., nnz, bs, bs]`, the stored blocks in row-major mask order; any dtype.
      layout: a 2-D `Layout` with mask `[R, C]`.
    Returns:
      `[..., R*bs, C*bs]`, same dtype as `blocks`.
    Raises:
      ValueError: at trace time, for a `layout` that is not a 2-D `Layout`, or `blocks`
        of another shape.
    """
    check_matrix_layout("to_dense", layout)
    bs, nnz = layout.block_size, layout.nnz
    blocks = jnp.asarray(blocks)
    if blocks.shape[-3:] != (nnz, bs, bs):
        raise ValueError(
            f"to_dense: blocks must be [..., {nnz}, {bs}, {bs}] for this layout; "
            f"got {blocks.shape}")
    lead = blocks.shape[:-3]
    r, c = layout.mask.shape
    # position of every (block row, block column) in `blocks`, with a zero block appended
    slot = np.full((r, c), nnz, np.int32)
    slot[layout.mask] = np.arange(nnz, dtype=np.int32)
    padded = jnp.concatenate([blocks, jnp.zeros(lead + (1, bs, bs), blocks.dtype)], axis=-3)
    grid = jnp.take(padded, jnp.asarray(slot.reshape(-1)), axis=-3)  # [..., R*C, bs, bs]
    grid = grid.reshape(lead + (r, c, bs, bs))
    grid = jnp.swapaxes(grid, -3, -2)  # [..., R, bs, C, bs]
    return grid.reshape(lead + (r * bs, c * bs))


def from_dense(x, layout: Layout):
    """Gather the blocks of a dense matrix at the layout's nonzero blocks.

    Args:
      x: `[..., R*bs, C*bs]`; any dtype.
      layout: a 2-D `Layout` with mask `[R, C]`.
    Returns:
      `[..., nnz, bs, bs]`, same dtype as `x`.
    Raises:
      ValueError: at trace time, for a `layout` that is not a 2-D `Layout`, or `x` of
        another shape.
    """
    check_matrix_layout("from_dense", layout)
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[-2:] != layout.shape:
        raise ValueError(f"from_dense: x must be [..., {layout.shape[0]}, {layout.shape[1]}] "
                         f"for this layout; got {x.shape}")
    bs = layout.block_size
    lead = x.shape[:-2]
    r, c = layout.mask.shape
    grid = jnp.swapaxes(x.reshape(lead + (r, bs, c, bs)), -3, -2)  # [..., R, C, bs, bs]
    flat = grid.reshape(lead + (r * c, bs, bs))
    ids = np.flatnonzero(layout.mask).astype(np.int32)
    return jnp.take(flat, jnp.asarray(ids), axis=-3)
