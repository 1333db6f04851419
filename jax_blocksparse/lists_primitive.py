"""The block lists of attention metadata inside `jit`, as one primitive.

`block_lists` (`attention_metadata`) turns block kinds `[..., lines, other]` (int8: 0
absent, 1 partial, 2 full) into each line's list of entries, partial first, then full,
each group ascending, `width` wide. With jax.numpy that is two `argsort`s and a dozen
elementwise ops: tens of small XLA kernels, a visible share of a short attention call.
`block_lists_p` computes the same four int32 arrays (`counts`, `partial`, `lists`,
`order`) in one op:
  - on CUDA, where the extension is built (`_cuda.py` registers the lowering), one custom
    call, "jax_blocksparse_block_lists" (cuda/attention/lists.cu: per leading index, a
    warp per line compacting its entries with warp scans, over as many CTAs as the lines
    need, and one more CTA that counts the lines and puts them in `order` by a stable
    counting sort in shared memory);
  - elsewhere, and for empty operands or a partitioned (multi-device SPMD) lowering, the
    array-API code below (`block_lists_reference`, which numpy runs on the host too).
Both give the same arrays bit for bit. The primitive works on `[N, lines, other]`;
`block_lists` flattens and restores the leading axes; `vmap` folds the mapped axis into N.
The outputs are integers: their tangents are symbolic zeros.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from . import _jax_internals as jint
from . import _partitioning


def block_lists_reference(xp, kind, width: int) -> tuple:
    """`(counts, partial, lists, order)` of `kind [..., lines, other]` with the array module
    `xp` (numpy or jax.numpy): `counts [..., lines]` = min(#listed (kind > 0), width),
    `partial [..., lines]` = min(#(kind == 1), counts), `lists [..., lines, width]` the
    partial entries ascending, then the full ones ascending, truncated to `width`, padded
    with -1, `order [..., lines]` the lines by count descending, ties by line ascending.
    All int32. `width` at most `other` (or one of them 0 or 1: broadcasting)."""
    other = kind.shape[-1]
    lines = kind.shape[-2]
    group = xp.where(kind == 1, 0, xp.where(kind == 2, 1, 2))
    key = group * other + np.arange(other)  # unique keys: partial, full, absent; ascending
    entries = xp.argsort(key, axis=-1)[..., :width].astype(np.int32)
    listed = (kind > 0).sum(-1).astype(np.int32)
    counts = xp.minimum(listed, width).astype(np.int32)
    partial = xp.minimum((kind == 1).sum(-1), counts).astype(np.int32)
    lists = xp.where(np.arange(width) < counts[..., None], entries, -1).astype(np.int32)
    order = xp.argsort(-counts * lines + np.arange(lines), axis=-1).astype(np.int32)
    return counts, partial, lists, order


block_lists_p = jint.define_primitive("jax_blocksparse_block_lists", multiple_results=True)


def _abstract(kind, *, width):
    if kind.ndim != 3 or kind.dtype != np.int8:
        raise ValueError(f"block_lists: kind must be int8 [N, lines, other]; got "
                         f"{kind.dtype}{list(kind.shape)}")
    if width < 0:
        raise ValueError(f"block_lists: width must be >= 0; got {width}")
    n, lines, _ = kind.shape
    return tuple(_partitioning.result_aval(kind, shape, np.int32)
                 for shape in ((n, lines), (n, lines), (n, lines, width), (n, lines)))


def _block_lists_jnp(kind, *, width):
    """The primitive's default lowering. A width over `other` pads the lines with absent
    entries first (the lists then end in -1, as the kernel writes them; numpy's code takes
    widths up to `other` only)."""
    other = kind.shape[-1]
    if width > other:
        kind = jnp.pad(kind, [(0, 0)] * (kind.ndim - 1) + [(0, width - other)])
    return block_lists_reference(jnp, kind, width)


def _batch(args, dims, *, width):
    (kind,), (d,) = args, dims
    kind = jnp.moveaxis(kind, d, 0)
    size, n = kind.shape[:2]
    outs = block_lists_p.bind(kind.reshape((size * n,) + kind.shape[2:]), width=width)
    return [o.reshape((size, n) + o.shape[1:]) for o in outs], [0] * len(outs)


def _jvp(primals, tangents, *, width):
    outs = block_lists_p.bind(*primals, width=width)
    return outs, [jint.Zero.from_primal_value(o) for o in outs]


block_lists_p.def_abstract_eval(_abstract)
REFERENCE_LOWERING = jint.lower_fun(_block_lists_jnp, multiple_results=True)
jint.register_lowering_rule(block_lists_p, REFERENCE_LOWERING, None)
jint.register_batching(block_lists_p, _batch)
jint.register_jvp(block_lists_p, _jvp)


def block_lists(kind, width: int) -> tuple:
    """`block_lists_reference(jnp, kind, width)` through `block_lists_p`: `kind` int8
    `[..., lines, other]` (any leading axes; other dtypes take the jax.numpy code), `width`
    >= 0 (over `other`: the lists end in -1). Returns int32 `(counts [..., lines], partial [..., lines],
    lists [..., lines, width], order [..., lines])`. Raises ValueError for a rank below 2
    or a negative width; on CUDA, a line count over what one CTA's shared memory holds
    (`4 * (lines + min(other, width) + 1)` bytes) fails when the program runs, naming the
    device's limit."""
    kind = jnp.asarray(kind)
    width = int(width)
    if kind.ndim < 2:
        raise ValueError(f"block_lists: kind must be [..., lines, other]; got {kind.shape}")
    if width < 0:
        raise ValueError(f"block_lists: width must be >= 0; got {width}")
    if kind.dtype != np.int8:
        return _block_lists_jnp(kind, width=width)
    *lead, lines, other = kind.shape
    n = (int(np.prod(lead, dtype=np.int64)) if all(isinstance(d, int) for d in lead)
         else -1)  # a symbolic dimension (jax.export)
    outs = block_lists_p.bind(kind.reshape(n, lines, other), width=width)
    return tuple(o.reshape(tuple(lead) + o.shape[1:]) for o in outs)
