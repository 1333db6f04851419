"""`BlockMask`: a block mask that is data (a jax array, possibly traced), not a static
`Layout`.

Data-dependent sparse attention (MoBA, NSA, top-k block selection) chooses the key blocks of
each query block inside the training step; a `BlockMask` carries that choice into
`attention`. It is a pytree: its mask array is a leaf, while the block size and the list
capacity are static, so a jitted function that takes one as an argument compiles once per
shape and reuses the program for every new mask of that shape. `attention` derives the
block lists from it on the device (`attention_metadata.device_metadata`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_int
from .layout import zero_one_mask


@jax.tree_util.register_pytree_node_class
class BlockMask:
    """A block mask `[Bm, Hm, Rq, Rk]` (`Bm` 1 or the batch, `Hm` 1 or the query heads).

    Build one with `BlockMask.from_mask`. Attributes: `mask` (bool jax array, a pytree
    leaf), `block_size` and `max_blocks` (static).
    """

    def __init__(self, mask, block_size: int, max_blocks: int):
        self.mask = mask
        self.block_size = block_size
        self.max_blocks = max_blocks

    @classmethod
    def from_mask(cls, mask, block_size: int, *, max_blocks: int | None = None) -> "BlockMask":
        """A `BlockMask` from a boolean block mask.

        Args:
          mask: `[Rq, Rk]`, `[H or 1, Rq, Rk]` or `[B or 1, H or 1, Rq, Rk]`: block
            `(r, c)` is attended when true. bool (may be traced), or, as for `Layout`,
            integers / real floats that are all 0 or 1 (concrete: a traced mask must be
            bool, e.g. `mask != 0`).
          block_size: edge of the blocks in elements (a positive Python int).
          max_blocks: how many key blocks a query block may list (static; default `Rk`).
            Attention's cost on the pure-JAX path grows with it. A query block whose mask
            row lists more gets NaN outputs, never a silently truncated row; below `Rk`
            that costs one more pass over the output (a read and a write of it: 12-17%
            of a block-128 forward at S 8192 on an H100, `benchmarks/RESULTS.md`,
            2026-12-05 third session), which the default `Rk` does without.
        Returns:
          a `BlockMask` whose `mask` is bool `[Bm, Hm, Rq, Rk]`.
        Raises:
          ValueError: naming the argument, for a `block_size` or `max_blocks` that is not
            a positive int, a mask of another rank, with an empty axis, of another dtype,
            with a value other than 0 and 1, or traced and not bool.
        """
        block_size = check_int("BlockMask.from_mask", "block_size", block_size)
        if not hasattr(mask, "dtype"):  # a list: converted once, by numpy
            try:
                mask = np.asarray(mask)
            except (TypeError, ValueError) as e:  # ragged nested lists
                raise ValueError(f"BlockMask.from_mask: mask must be an array of 0/1 or "
                                 f"bool; got {e}") from None
        if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.integer)
                or jnp.issubdtype(mask.dtype, jnp.floating)):  # before jnp: strings, objects
            raise ValueError(f"BlockMask.from_mask: mask must be boolean or 0/1 numbers; got "
                             f"dtype {mask.dtype}")
        mask = jnp.asarray(mask)
        if mask.ndim not in (2, 3, 4):
            raise ValueError(f"BlockMask.from_mask: mask must be [Rq, Rk], [H, Rq, Rk] or "
                             f"[B, H, Rq, Rk]; got shape {mask.shape}")
        if 0 in mask.shape:
            raise ValueError(f"BlockMask.from_mask: mask has an empty axis: {mask.shape}")
        if mask.dtype != jnp.bool_:
            try:
                values = np.asarray(mask)
            except jax.errors.TracerArrayConversionError:
                raise ValueError(f"BlockMask.from_mask: a traced mask must be bool (0/1 numbers "
                                 f"are checked on the host); got {mask.dtype} (pass "
                                 f"`mask != 0`)") from None
            mask = jnp.asarray(zero_one_mask("BlockMask.from_mask", values))
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        rk = mask.shape[-1]
        if max_blocks is not None:
            max_blocks = check_int("BlockMask.from_mask", "max_blocks", max_blocks)
        return cls(mask, block_size, rk if max_blocks is None else min(max_blocks, rk))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """`(Bm, Hm, Rq, Rk)`."""
        return tuple(self.mask.shape)

    def __repr__(self):
        return (f"BlockMask(shape={self.shape}, block_size={self.block_size}, "
                f"max_blocks={self.max_blocks})")

    def tree_flatten(self):
        return (self.mask,), (self.block_size, self.max_blocks)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux)
