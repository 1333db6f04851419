"""Tensor parallelism for block-sparse weights: a weight `W [C, K]` over a layout is split
across the devices of a mesh axis by block columns (*column-parallel*: device i holds and
computes output features `[i K/n, (i+1) K/n)`) or by block rows (*row-parallel*: device i
holds input features `[i C/n, (i+1) C/n)`, multiplies its slice of `x` and the partial
outputs are summed with `psum`), as Megatron splits dense layers.

    split = split_layout(layout, n, by="columns")
    parts = split_blocks(blocks, split)            # [n, max_nnz, bs, bs], zero padded
    y = jax.shard_map(lambda x, p: parallel_matmul(x, p, split, "model"), mesh=mesh,
                      in_specs=(P(), P("model")), out_specs=P(None, "model"))(x, parts)

Each device's blocks form a layout of their own (`SplitLayout.parts`, local coordinates),
stored in a slab padded to the largest part's block count (`max_nnz`), so that the
blocks shard evenly along their leading axis; inside `shard_map` each device runs the
matmul of its own part only (`lax.switch` on its axis index), never the padding.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_internals as jint
from ._checks import check_int
from .layout import Layout, _ids
from .matmul import matmul


class SplitLayout(NamedTuple):
    """A layout split over `n` devices.

    layout: the whole layout `[R, C]` blocks. by: "columns" or "rows".
    parts: device i's layout (its block columns or rows, in local coordinates).
    block_index: int32 `[n, max_nnz]`: the whole layout's index of each of device i's
      blocks (in its part's storage order), -1 in the padding."""
    layout: Layout
    by: str
    parts: tuple
    block_index: np.ndarray

    @property
    def max_nnz(self) -> int:
        return self.block_index.shape[1]


def split_layout(layout: Layout, n: int, by: str = "columns") -> SplitLayout:
    """Split a 2-D `layout` into `n` equal ranges of block columns (`by="columns"`) or
    block rows (`by="rows"`); `n` must divide their number."""
    if by not in ("columns", "rows"):
        raise ValueError(f"split_layout: by must be 'columns' or 'rows'; got {by!r}")
    n = check_int("split_layout", "n", n)
    if not isinstance(layout, Layout):
        raise ValueError(f"split_layout: layout must be a jax_blocksparse.Layout; got "
                         f"{type(layout).__name__}")
    mask = layout.mask
    if mask.ndim != 2:
        raise ValueError(f"split_layout: needs a 2-D layout; got mask {mask.shape}")
    axis = 1 if by == "columns" else 0
    if mask.shape[axis] % n:
        raise ValueError(f"split_layout: {mask.shape[axis]} block {by} do not split into {n} "
                         f"equal parts")
    ids = _ids(mask)  # each block's index in the layout's storage order
    width = mask.shape[axis] // n
    parts, index = [], []
    for i in range(n):
        band = slice(i * width, (i + 1) * width)
        cut = (slice(None), band) if by == "columns" else (band, slice(None))
        parts.append(Layout(mask[cut], layout.block_size))
        index.append(ids[cut][mask[cut]])  # row-major: the part's storage order
    max_nnz = max(max(len(x) for x in index), 1)
    block_index = np.full((n, max_nnz), -1, np.int32)
    for i, x in enumerate(index):
        block_index[i, :len(x)] = x
    return SplitLayout(layout, by, tuple(parts), block_index)


def split_blocks(blocks, split: SplitLayout):
    """The whole layout's blocks `[nnz, bs, bs]` as the devices' slabs
    `[n, max_nnz, bs, bs]` (zero padded): shard the leading axis over the mesh axis.

    Raises:
      ValueError: `blocks` not `[nnz, bs, bs]` of the split's layout.
    """
    bs, nnz = split.layout.block_size, split.layout.nnz
    if tuple(jnp.shape(blocks)) != (nnz, bs, bs):
        raise ValueError(f"split_blocks: blocks must be [nnz={nnz}, {bs}, {bs}] (the split "
                         f"layout's blocks); got shape {tuple(jnp.shape(blocks))}")
    index = jnp.asarray(split.block_index)
    slabs = jnp.take(blocks, jnp.maximum(index, 0), axis=0)
    return jnp.where((index >= 0)[..., None, None], slabs, 0).astype(blocks.dtype)


def merge_blocks(slabs, split: SplitLayout):
    """The inverse of `split_blocks`: `[n, max_nnz, bs, bs]` -> `[nnz, bs, bs]`.

    Raises:
      ValueError: `slabs` not `[n, max_nnz, bs, bs]` of this split.
    """
    bs = split.layout.block_size
    want = split.block_index.shape + (bs, bs)
    if tuple(jnp.shape(slabs)) != want:
        raise ValueError(f"merge_blocks: slabs must be [n, max_nnz, bs, bs] = {list(want)} "
                         f"(this split's); got shape {tuple(jnp.shape(slabs))}")
    index = split.block_index.reshape(-1)
    keep = np.flatnonzero(index >= 0)
    order = np.argsort(index[keep])
    flat = slabs.reshape((-1,) + slabs.shape[2:])
    return flat[keep[order]]


def parallel_matmul(x, slab, split: SplitLayout, axis_name: str, precision=None):
    """This device's share of `x @ W`, inside `shard_map` over `axis_name` (size n).

    Column-parallel: `x [..., C]` (the whole input) -> `[..., K / n]`, this device's output
    features. Row-parallel: `x [..., C / n]` (this device's input features) ->
    `[..., K]`, summed over the axis. `slab`: this device's `[1, max_nnz, bs, bs]` (or
    `[max_nnz, bs, bs]`) from `split_blocks`. Best in a `shard_map` manual over every mesh
    axis (as `_layers.parallel_dense` does); in one manual over only some axes the matmul
    runs whole over the automatic ones."""
    slab = slab.reshape(slab.shape[-3:])
    out_features = split.parts[0].mask.shape[1] * split.layout.block_size

    def part_matmul(part: Layout, x, slab):
        if part.nnz == 0:  # zeros that vary over the mesh axes as x and the slab do
            zero = jnp.where(False, x[..., :1] * slab[0, 0, 0], 0).astype(x.dtype)
            return jnp.broadcast_to(zero, x.shape[:-1] + (out_features,))
        return matmul(x, slab[:part.nnz], part, precision=precision)

    branches = [functools.partial(part_matmul, part) for part in split.parts]
    if split.by == "columns":  # x, the same on every device, made varying before the switch:
        # its gradient's psum then lies outside the switch (inside, jax 0.10 gave garbage
        # gradients where a device's band of columns is empty)
        x = jint.varying_over(x, axis_name)
    y = jax.lax.switch(jax.lax.axis_index(axis_name), branches, x, slab)
    return jax.lax.psum(y, axis_name) if split.by == "rows" else y
