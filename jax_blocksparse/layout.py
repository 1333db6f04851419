"""`Layout`: which blocks of a block-sparse matrix exist, and the metadata kernels need.

A block-sparse matrix with layout `L` (a boolean mask `[R, C]` of block rows x block
columns, block size `bs`) is stored as its nonzero blocks, an array `[nnz, bs, bs]`, in
row-major order of the mask's nonzeros (the order of `np.argwhere(mask)`); a block's *id*
is its position in that order. A mask `[H, R, C]` holds one mask per attention head.

Everything the kernels need is derived here once, on the host, as int32 numpy arrays and
cached on the (immutable) layout. The ops pass them to the kernels as device operands of
the custom call, so a different layout of the same shape never needs another kernel.
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

import jax
import numpy as np

from ._checks import check_int


class BlockLists(NamedTuple):
    """Compressed lists of a layout's blocks along one axis (CSR by rows, CSC by columns).

    For output line `i` (a block row, or a block column), its blocks are the entries
    `ptr[i] <= e < ptr[i + 1]`: `idx[e]` is the block's index on the other axis and
    `blk[e]` its id in storage. `order` lists the lines longest first, the order in
    which a kernel should schedule them so that long lines do not finish last.
    """

    ptr: np.ndarray  # int32 [lines + 1]
    idx: np.ndarray  # int32 [max(nnz, 1)]
    blk: np.ndarray  # int32 [max(nnz, 1)]
    order: np.ndarray  # int32 [lines]


class Layout:
    """An immutable, hashable block-sparsity pattern.

    Args:
      mask: array `[R, C]` (block rows x block columns) or `[H, R, C]` (one mask per
        attention head), every dimension at least 1: bool, or integers / real floats that
        are all 0 or 1 (1 marks a kept block). Anything else raises `ValueError`.
      block_size: edge of the square blocks, in elements: a positive int (not a bool).

    Layouts compare and hash by content, so they can be static arguments of `jax.jit`;
    `copy.copy`, `copy.deepcopy` and `pickle` give an equal layout with the same hash.
    A `Layout` is also a pytree with no leaves (all of it is static tree metadata), so it
    may be passed to a jitted function as an ordinary argument too.
    """

    __slots__ = ("_mask", "_block_size", "_key", "_hash", "__dict__")

    def __init__(self, mask, block_size: int):
        check_int("Layout", "block_size", block_size)
        mask = _boolean_mask(mask)
        mask.setflags(write=False)
        object.__setattr__(self, "_mask", mask)
        object.__setattr__(self, "_block_size", int(block_size))
        key = (mask.shape, int(block_size), hashlib.sha1(np.packbits(mask)).hexdigest())
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __setattr__(self, name, value):
        raise AttributeError("Layout is immutable")

    def __reduce__(self):  # copy, deepcopy and pickle rebuild it from its mask
        return Layout, (self._mask, self._block_size)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, Layout) and self._key == other._key
                and np.array_equal(self._mask, other._mask))

    def __repr__(self):
        heads = f"heads={self.num_heads}, " if self._mask.ndim == 3 else ""
        return (f"Layout({heads}blocks={self._mask.shape[-2:]}, block_size={self._block_size}, "
                f"nnz={self.nnz}, density={self.density:.3f})")

    # ----------------------------------------------------------------- properties
    @property
    def mask(self) -> np.ndarray:
        """The boolean mask, `[R, C]` or `[H, R, C]` (read-only)."""
        return self._mask

    @property
    def block_size(self) -> int:
        """Edge of the square blocks, in elements."""
        return self._block_size

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape in elements, `(R * bs, C * bs)`."""
        r, c = self._mask.shape[-2:]
        return (r * self._block_size, c * self._block_size)

    @property
    def num_heads(self) -> int:
        """Number of per-head masks (1 for a 2-D mask)."""
        return self._mask.shape[0] if self._mask.ndim == 3 else 1

    @property
    def nnz(self) -> int:
        """Number of stored blocks (over all heads for a 3-D mask)."""
        return int(np.count_nonzero(self._mask))

    @property
    def density(self) -> float:
        """Fraction of the mask's blocks that are kept (over all heads), in [0, 1]."""
        return self.nnz / max(self._mask.size, 1)

    @property
    def T(self) -> "Layout":
        """The transposed layout (block rows and columns swapped)."""
        return Layout(np.swapaxes(self._mask, -1, -2), self._block_size)

    # ------------------------------------------------------------------- metadata
    def _require_2d(self, what):
        if self._mask.ndim != 2:
            raise ValueError(f"{what} needs a 2-D layout; this one has {self.num_heads} heads")

    @functools.cached_property
    def coords(self) -> np.ndarray:
        """int32 `[max(nnz, 1), 2]`: (block row, block column) of each stored block."""
        self._require_2d("Layout.coords")
        out = np.argwhere(self._mask).astype(np.int32)
        return out if len(out) else np.zeros((1, 2), np.int32)

    @functools.cached_property
    def rows(self) -> BlockLists:
        """Blocks listed by block row (CSR); `blk` is simply `0..nnz-1`."""
        self._require_2d("Layout.rows")
        return _block_lists(self._mask)

    @functools.cached_property
    def cols(self) -> BlockLists:
        """Blocks listed by block column (CSC), with each block's id in row-major storage.

        This is how `W.T` is read without a copy: the same value buffer, another order.
        """
        self._require_2d("Layout.cols")
        return _block_lists(self._mask.T, ids=_ids(self._mask).T)

    def lists(self, by: str) -> BlockLists:
        """`self.rows` for `by="row"`, `self.cols` for `by="col"`."""
        return {"row": self.rows, "col": self.cols}[by]

    def group_steps(self, by: str, columns: int = 256) -> np.ndarray:
        """The records of the bs-16/32 matmul kernels for the lines of `self.lists(by)`
        ("row": block rows, "col": block columns) in groups of `columns` output columns
        (`GROUP_COLUMNS` or 128: the per-line-accumulator kernel; `SMALL_COLUMNS`: the
        64-column one), cached: int32 `[groups + 1 + steps * REC]` as the module function
        `group_steps` describes.

        Raises:
          ValueError: a 3-D layout, a block size other than 16 or 32, or `columns` other
            than 64, 128 or 256.
        """
        cache = self.__dict__.setdefault("_group_steps", {})
        if (by, columns) not in cache:
            self._require_2d("Layout.group_steps")
            mask = self._mask if by == "row" else self._mask.T
            ids = _ids(self._mask) if by == "row" else _ids(self._mask).T
            cache[by, columns] = group_steps(mask, ids, self._block_size, columns)
        return cache[by, columns]

    # ---------------------------------------------------------------------- output
    def plot(self, path) -> None:
        """Write a grayscale PNG picture of the mask to `path`: kept blocks black, others
        white, the heads of a 3-D mask side by side with a 1-pixel gray column between them.

        The picture is at most 1024 pixels a side: each axis of a big mask is downsampled
        by OR-pooling (a pixel is black when any block it covers is kept, so no kept block
        disappears); small masks are scaled up to about 512 pixels, and a very thin mask
        (e.g. 4 x 4096) is stretched along its short axis to at least 64 pixels.
        """
        from ._png import write_png

        write_png(path, mask_picture(self._mask))


PLOT_MAX, PLOT_TARGET, PLOT_MIN = 1024, 512, 64  # pixels a side: cap, scale target, minimum
PLOT_SEPARATOR = 128  # the gray of the column between heads


def _or_pool(mask: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """`mask` with groups of `factor` lines along `axis` merged by OR (the last may be short)."""
    if factor == 1:
        return mask
    n = mask.shape[axis]
    pad = [(0, 0)] * mask.ndim
    pad[axis] = (0, -n % factor)
    mask = np.pad(mask, pad)
    shape = mask.shape[:axis] + (mask.shape[axis] // factor, factor) + mask.shape[axis + 1:]
    return mask.reshape(shape).any(axis=axis + 1)


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """uint8 pixels `[height, width]` of a boolean mask `[R, C]` or `[H, R, C]` (0 black:
    kept; 255 white; `PLOT_SEPARATOR` gray: the 1-pixel column between heads); the
    sizes as `Layout.plot` describes them."""
    masks = mask if mask.ndim == 3 else mask[None]
    heads = masks.shape[0]
    col_budget = max(1, (PLOT_MAX - (heads - 1)) // heads)  # pixels per head
    need = (-(-masks.shape[1] // PLOT_MAX), -(-masks.shape[2] // col_budget))
    for axis, factor in zip((1, 2), need):  # the same factor on both axes where it fits
        factor = max(factor, min(max(need), masks.shape[axis] // PLOT_MIN))
        masks = _or_pool(masks, axis, factor)
    rows, cols = masks.shape[1], heads * masks.shape[2]
    scale = max(1, PLOT_TARGET // max(rows, cols))
    row_scale = max(scale, -(-PLOT_MIN // rows))
    col_scale = max(scale, -(-PLOT_MIN // cols))
    block = np.ones((row_scale, col_scale), np.uint8)
    separator = np.full((rows * row_scale, 1), PLOT_SEPARATOR, np.uint8)
    tiles = []
    for m in masks:
        tiles += [np.kron(np.where(m, 0, 255).astype(np.uint8), block), separator]
    return np.concatenate(tiles[:-1], axis=1)


def _boolean_mask(mask) -> np.ndarray:
    """`mask` as a new boolean numpy array, `[R, C]` or `[H, R, C]`, no dimension 0.

    Accepts bool, and integer or real floating arrays whose entries are all 0 or 1;
    raises `ValueError` for other dtypes (strings, objects, complex), other values
    (2, 0.5, NaN) and empty masks.
    """
    try:
        mask = np.array(mask, copy=True)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise ValueError(f"Layout: mask must be an array of 0/1 or bool; got {e}") from None
    if mask.ndim not in (2, 3):
        raise ValueError(
            f"Layout: mask must be [R, C] or [H, R, C]; got shape {mask.shape}")
    if 0 in mask.shape:
        raise ValueError(f"Layout: mask must have at least one block along every dimension "
                         f"(no empty layouts); got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer)
            or jax.numpy.issubdtype(mask.dtype, np.floating)):  # bfloat16 too
        raise ValueError(f"Layout: mask must be bool, or integers / real floats that are all 0 "
                         f"or 1; got dtype {mask.dtype}")
    return zero_one_mask("Layout", mask)


def zero_one_mask(op: str, mask: np.ndarray) -> np.ndarray:
    """The numeric numpy `mask` as bool, `ValueError` naming `op` unless every entry is 0
    or 1: the one rule of `Layout` and `BlockMask.from_mask` (0.5 or 2 is not a block)."""
    zero, one = mask == 0, mask == 1
    if not np.all(zero | one):
        bad = mask[~(zero | one)].flat[0]
        raise ValueError(f"{op}: mask entries must be 0 or 1 (or bool); got {bad.item()!r} "
                         f"(pass `mask != 0` to keep every nonzero)")
    return one


def check_matrix_layout(op: str, layout) -> None:
    """Raise `ValueError` naming `op` unless `layout` is a 2-D (`[R, C]`) `Layout`."""
    if not isinstance(layout, Layout):
        raise ValueError(f"{op}: layout must be a jax_blocksparse.Layout; "
                         f"got {type(layout).__name__}")
    if layout.mask.ndim != 2:
        raise ValueError(f"{op}: layout must be 2-D ([R, C]); got mask of shape "
                         f"{layout.mask.shape}")


def _ids(mask: np.ndarray) -> np.ndarray:
    """int32 array shaped like `mask`: each stored block's id, -1 where there is none."""
    ids = np.full(mask.shape, -1, np.int32)
    ids[mask] = np.arange(np.count_nonzero(mask), dtype=np.int32)
    return ids


def _block_lists(mask: np.ndarray, ids: np.ndarray | None = None) -> BlockLists:
    """CSR lists of the nonzeros of a 2-D `mask`, with block ids from `ids`."""
    if ids is None:
        ids = _ids(mask)
    counts = mask.sum(axis=1).astype(np.int32)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    rows, cols = np.nonzero(mask)
    idx = cols.astype(np.int32)
    blk = ids[rows, cols].astype(np.int32)
    if len(idx) == 0:  # keep every operand non-empty
        idx = blk = np.zeros(1, np.int32)
    order = np.argsort(-counts, kind="stable").astype(np.int32)
    return BlockLists(ptr, idx, blk, order)


# The bs-16/32 matmul kernels' tiles (kBN, kBK of cuda/matmul/wgmma_group.cuh and
# wgmma_small.cuh): GROUP_COLUMNS (the per-line-accumulator kernel) or SMALL_COLUMNS
# output columns (columns / bs lines) per CTA, STEP_K of the contracted axis (64 / bs
# block rows) per step.
GROUP_COLUMNS, SMALL_COLUMNS, STEP_K = 256, 64, 64


def group_steps(mask: np.ndarray, ids: np.ndarray, block_size: int,
                columns: int = GROUP_COLUMNS) -> np.ndarray:
    """The records cuda/matmul/wgmma_group.cuh (`columns` = GROUP_COLUMNS, or 128 for its
    128-column form) or wgmma_small.cuh (SMALL_COLUMNS) reads for the lines (rows) of a 2-D
    `mask` `[lines, K]`
    at block size 16 or 32, with the blocks' ids `ids` (as `mask`; -1 where no block is).

    Lines are grouped G = columns / bs at a time (group g: lines g G .. g G + G - 1).
    A group's *union rows* are the sorted indices k where any of its lines has a block;
    they are taken R = STEP_K / bs per step. Returns int32 `[groups + 1 + steps * REC]`:
    the first step of each group (and the total at the end), then one record of
    REC = R + MW + R G ints per step: its R union rows (-1 past the group's last), its
    presence mask in MW = ceil(R G / 32) words (bit r G + j, counted from bit 0 of word 0:
    line j has a block at union row r), and the block id of each (r, j) place (-1: none).

    Size: about 4 (R + MW + R G) bytes a step, i.e. a few percent of the blocks' own bytes
    at densities of 0.05 and more (bs 16, density 0.1: 272 bytes a step of ~8 blocks, 4 KB).
    """
    if block_size not in (16, 32):
        raise ValueError(f"group_steps: block size 16 or 32, got {block_size}")
    if columns not in (SMALL_COLUMNS, 128, GROUP_COLUMNS):
        raise ValueError(f"group_steps: columns {SMALL_COLUMNS}, 128 or {GROUP_COLUMNS}, "
                         f"got {columns}")
    g_lines, r_rows = columns // block_size, STEP_K // block_size
    slots = r_rows * g_lines
    words = -(-slots // 32)
    lines, k_blocks = mask.shape
    groups = -(-lines // g_lines)
    pad = groups * g_lines - lines
    m = np.pad(mask.astype(bool), ((0, pad), (0, 0))).reshape(groups, g_lines, k_blocks)
    i = np.pad(ids.astype(np.int32), ((0, pad), (0, 0)), constant_values=-1)
    i = i.reshape(groups, g_lines, k_blocks)
    union = m.any(axis=1)  # [groups, K]
    counts = union.sum(axis=1)
    steps = -(-counts // r_rows)
    first = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
    total = int(first[-1])
    g_of, k_of = np.nonzero(union)  # by group, then k: each group's union rows in order
    union_first = np.concatenate([[0], np.cumsum(counts)])[:-1]
    pos = np.arange(len(g_of)) - union_first[g_of]
    step, r = first[g_of] + pos // r_rows, pos % r_rows
    rows = np.full((total, r_rows), -1, np.int32)
    rows[step, r] = k_of
    blocks = np.full((total, r_rows, g_lines), -1, np.int32)
    blocks[step, r] = i[g_of, :, k_of]
    bits = (blocks >= 0).reshape(total, words, slots // words)  # bit (r G + j) % 32
    weights = np.left_shift(np.uint64(1), np.arange(bits.shape[-1], dtype=np.uint64))
    mask_words = (bits.astype(np.uint64) * weights).sum(axis=-1).astype(np.uint32)
    records = np.concatenate([rows, mask_words.view(np.int32),
                              blocks.reshape(total, slots)], axis=1)
    if first[-1] >= 2**31:
        raise ValueError("group_steps: more than 2**31 steps")
    return np.concatenate([first.astype(np.int32), records.ravel()]).astype(np.int32)


# A Layout is a pytree with no leaves: the whole layout is the (hashable) tree metadata, so
# `jax.jit(f)(x, layout)` works with the layout as an ordinary argument (it is static).
jax.tree_util.register_pytree_node(Layout, lambda layout: ((), layout),
                                   lambda layout, _: layout)
