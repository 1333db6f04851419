"""The block-sparse matmul family as JAX primitives: `sdd`, `dsd`, `dds`.

With `op(x, t) = x.T if t else x` and `L` the static layout:

| primitive | operands                  | computes                           | result        |
|-----------|---------------------------|------------------------------------|---------------|
| `sdd_p`   | a dense, b dense          | `(op(a) @ op(b))` at L's blocks     | blocks        |
| `dsd_p`   | s blocks over L, b dense  | `op(S) @ op(b)`                    | dense         |
| `dds_p`   | a dense, w blocks over L  | `op(a) @ op(W)`                    | dense         |

Canonical shapes: a dense operand is `[rows, cols]` or `[G, rows, cols]`; a block operand is
`[nnz, bs, bs]` or `[G, nnz, bs, bs]`. An operand without the leading `G` is shared by
every batch entry; the result has `G` when any operand has it. Accumulation is float32
(float64 for float64 operands), the result has the operands' dtype. `precision` has `jnp.matmul`'s meaning.

Each primitive is bilinear, so its JVP is `op(ȧ, b) + op(a, ḃ)` and its transpose with
respect to either operand is another member of the family (the table in `_TRANSPOSES`),
which makes the family closed under differentiation to any order.

Every platform lowers through the pure-JAX reference implementation below (gathers and
batched matmuls; it doubles as the tests' oracle). `_cuda.py` registers the CUDA kernels
(for float32, float16 and bfloat16; float64 keeps this implementation on a GPU too).
Both are the lowerings of each primitive's local twin, which `_partitioning` wraps in the
sharding rules (`_factors`) so that a sharded `jit` runs it on each device's shards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _jax_internals as jint
from . import _partitioning
from .layout import Layout

DENSE_RANK = 2
BLOCKS_RANK = 3


def _op(x, transpose: bool):
    return jnp.swapaxes(x, -1, -2) if transpose else x


def _dense_dims(shape, transpose):
    rows, cols = shape[-2:]
    return (cols, rows) if transpose else (rows, cols)


def _batch(*pairs):
    """The shared batch size `G` of operands `(shape, base_rank)`, or None if none has one."""
    sizes = {shape[0] for shape, rank in pairs if len(shape) == rank + 1}
    if len(sizes) > 1:
        raise ValueError(f"operands have different batch sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _with_batch(g, shape):
    return shape if g is None else (g,) + tuple(shape)


def bind(prim, x, y, **params):
    """Bind one of the family's primitives (operands first made shard_map-consistent)."""
    x, y = jint.match_varying_axes(x, y)
    return prim.bind(x, y, **params)


# ------------------------------------------------------------------ shape rules
def sdd_shape(a_shape, b_shape, *, layout: Layout, trans_a, trans_b):
    m, k = _dense_dims(a_shape, trans_a)
    k2, n = _dense_dims(b_shape, trans_b)
    if k != k2 or (m, n) != layout.shape:
        raise ValueError(f"sdd: op(a) {(m, k)} @ op(b) {(k2, n)} does not give the "
                         f"layout's shape {layout.shape}")
    g = _batch((a_shape, DENSE_RANK), (b_shape, DENSE_RANK))
    bs = layout.block_size
    return _with_batch(g, (layout.nnz, bs, bs))


def _sparse_dims(s_shape, layout, trans):
    bs = layout.block_size
    if tuple(s_shape[-3:]) != (layout.nnz, bs, bs):
        raise ValueError(f"blocks must be [..., {layout.nnz}, {bs}, {bs}]; got {s_shape}")
    p, q = layout.shape
    return (q, p) if trans else (p, q)


def dsd_shape(s_shape, b_shape, *, layout: Layout, trans_s, trans_b):
    m, k = _sparse_dims(s_shape, layout, trans_s)
    k2, n = _dense_dims(b_shape, trans_b)
    if k != k2:
        raise ValueError(f"dsd: op(S) {(m, k)} @ op(b) {(k2, n)}: inner sizes differ")
    g = _batch((s_shape, BLOCKS_RANK), (b_shape, DENSE_RANK))
    return _with_batch(g, (m, n))


def dds_shape(a_shape, w_shape, *, layout: Layout, trans_a, trans_w):
    m, k = _dense_dims(a_shape, trans_a)
    k2, n = _sparse_dims(w_shape, layout, trans_w)
    if k != k2:
        raise ValueError(f"dds: op(a) {(m, k)} @ op(W) {(k2, n)}: inner sizes differ")
    g = _batch((a_shape, DENSE_RANK), (w_shape, BLOCKS_RANK))
    return _with_batch(g, (m, n))


# ------------------------------------------------------- reference implementations
# Each works on the nonzero blocks only (gathers, one batched product over the blocks, and
# a segment sum into the output's block lines), so its cost grows with `nnz`, and a value
# reaches only the outputs that the layout connects it to, as in the kernels.
def _matmul(x, y, precision):
    """Batched matmul in float32 (float64 for float64 operands), the operands upcast first:
    XLA's CPU backend has no bf16 x bf16 -> f32 dot for every batch layout."""
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    return jnp.matmul(x.astype(accumulate), y.astype(accumulate), precision=precision)


def _oriented_blocks(blocks, layout, transpose):
    """The blocks of `op(S)` for `S` stored over `layout`: (blocks, block row ids, block
    column ids), each block transposed and the coordinates swapped when `transpose`."""
    coords = layout.coords[:layout.nnz]
    rows, cols = jnp.asarray(coords[:, 0]), jnp.asarray(coords[:, 1])
    if transpose:
        return jnp.swapaxes(blocks, -1, -2), cols, rows
    return blocks, rows, cols


def _sum_into_lines(products, line_ids, lines):
    """Sum `products [..., nnz, p, q]` into `[..., lines, p, q]` by `line_ids [nnz]`."""
    summed = jax.ops.segment_sum(jnp.moveaxis(products, -3, 0), line_ids, num_segments=lines)
    return jnp.moveaxis(summed, 0, -3)


def sdd_reference(a, b, *, layout, trans_a, trans_b, precision):
    """`op(a) @ op(b)` at the layout's blocks: gathers of block rows/columns and one
    batched matmul over the nonzero blocks (never the dense product)."""
    bs, nnz = layout.block_size, layout.nnz
    coords = jnp.asarray(layout.coords[:nnz])
    a, b = _op(a, trans_a), _op(b, trans_b)  # [.., M, K], [.., K, N]
    r, c = layout.mask.shape  # explicit sizes: K (or a batch) may be 0
    a_rows = a.reshape(a.shape[:-2] + (r, bs, a.shape[-1]))  # [.., R, bs, K]
    b_cols = jnp.swapaxes(b.reshape(b.shape[:-1] + (c, bs)), -3, -2)  # [.., C, K, bs]
    lhs = jnp.take(a_rows, coords[:, 0], axis=-3)  # [.., nnz, bs, K]
    rhs = jnp.take(b_cols, coords[:, 1], axis=-3)  # [.., nnz, K, bs]
    return _matmul(lhs, rhs, precision).astype(a.dtype)


def dsd_reference(s, b, *, layout, trans_s, trans_b, precision):
    """`op(S) @ op(b)`: each block of `op(S)` times the block row of `op(b)` it reads,
    summed into the output's block rows."""
    bs = layout.block_size
    blocks, out_rows, in_rows = _oriented_blocks(s, layout, trans_s)
    b = _op(b, trans_b)  # [.., K, N]
    b_rows = b.reshape(b.shape[:-2] + (b.shape[-2] // bs, bs, b.shape[-1]))  # [.., K/bs,bs,N]
    products = _matmul(blocks, jnp.take(b_rows, in_rows, axis=-3), precision)  # [.., nnz, bs, N]
    m = layout.shape[1] if trans_s else layout.shape[0]
    out = _sum_into_lines(products, out_rows, m // bs)  # [.., M/bs, bs, N]
    return out.reshape(out.shape[:-3] + (m, b.shape[-1])).astype(s.dtype)


def dds_reference(a, w, *, layout, trans_a, trans_w, precision):
    """`op(a) @ op(W)`: the block column of `op(a)` each block of `op(W)` reads, times the
    block, summed into the output's block columns."""
    bs = layout.block_size
    blocks, in_cols, out_cols = _oriented_blocks(w, layout, trans_w)
    a = _op(a, trans_a)  # [.., M, K]
    a_cols = a.reshape(a.shape[:-1] + (a.shape[-1] // bs, bs))  # [.., M, K/bs, bs]
    a_cols = jnp.moveaxis(a_cols, -2, -3)  # [.., K/bs, M, bs]
    products = _matmul(jnp.take(a_cols, in_cols, axis=-3), blocks, precision)  # [.., nnz, M, bs]
    n = layout.shape[0] if trans_w else layout.shape[1]
    out = _sum_into_lines(products, out_cols, n // bs)  # [.., N/bs, M, bs]
    out = jnp.moveaxis(out, -3, -2)  # [.., M, N/bs, bs]
    return out.reshape(out.shape[:-2] + (n,)).astype(a.dtype)


# --------------------------------------------------------------------- primitives
sdd_p = jint.define_primitive("blocksparse_sdd")
dsd_p = jint.define_primitive("blocksparse_dsd")
dds_p = jint.define_primitive("blocksparse_dds")

_SHAPES = {sdd_p: sdd_shape, dsd_p: dsd_shape, dds_p: dds_shape}
_REFERENCES = {sdd_p: sdd_reference, dsd_p: dsd_reference, dds_p: dds_reference}
_BASE_RANKS = {  # unbatched rank of (first operand, second operand, result)
    sdd_p: (DENSE_RANK, DENSE_RANK, BLOCKS_RANK),
    dsd_p: (BLOCKS_RANK, DENSE_RANK, DENSE_RANK),
    dds_p: (DENSE_RANK, BLOCKS_RANK, DENSE_RANK),
}


def _shape_params(params):
    return {k: v for k, v in params.items() if k != "precision"}


def _abstract_eval(prim):
    def rule(x, y, **params):
        if x.dtype != y.dtype:
            raise ValueError(f"{prim.name}: operand dtypes differ ({x.dtype}, {y.dtype})")
        shape = _SHAPES[prim](x.shape, y.shape, **_shape_params(params))
        out = _partitioning.result_aval(x, shape, x.dtype)
        return _partitioning.with_shardings(_factors(prim), (x, y), [out], **params)[0]
    return rule


def _bilinear_jvp(prim):
    def rule(primals, tangents, **params):
        x, y = primals
        dx, dy = tangents
        out = bind(prim, x, y, **params)
        terms = []
        if type(dx) is not jint.Zero:
            terms.append(bind(prim, dx, y, **params))
        if type(dy) is not jint.Zero:
            terms.append(bind(prim, x, dy, **params))
        tangent = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        return out, tangent
    return rule


# The transpose table (DESIGN.md §2), one row per (primitive, operand). Each entry maps
# (cotangent ct, the other operand, params p) to the cotangent of that operand.
def _again(prim, x, y, p, **flags):
    """Bind `prim` with the layout and precision of the primitive being transposed."""
    return bind(prim, x, y, layout=p["layout"], precision=p["precision"], **flags)


def _sdd_ct_a(ct, b, p):
    if not p["trans_a"]:
        return _again(dsd_p, ct, b, p, trans_s=False, trans_b=not p["trans_b"])
    return _again(dds_p, b, ct, p, trans_a=p["trans_b"], trans_w=True)


def _sdd_ct_b(ct, a, p):
    if not p["trans_b"]:
        return _again(dds_p, a, ct, p, trans_a=not p["trans_a"], trans_w=False)
    return _again(dsd_p, ct, a, p, trans_s=True, trans_b=p["trans_a"])


def _dsd_ct_s(ct, b, p):
    if not p["trans_s"]:
        return _again(sdd_p, ct, b, p, trans_a=False, trans_b=not p["trans_b"])
    return _again(sdd_p, b, ct, p, trans_a=p["trans_b"], trans_b=True)


def _dsd_ct_b(ct, s, p):
    if not p["trans_b"]:
        return _again(dsd_p, s, ct, p, trans_s=not p["trans_s"], trans_b=False)
    return _again(dds_p, ct, s, p, trans_a=True, trans_w=p["trans_s"])


def _dds_ct_a(ct, w, p):
    if not p["trans_a"]:
        return _again(dds_p, ct, w, p, trans_a=False, trans_w=not p["trans_w"])
    return _again(dsd_p, w, ct, p, trans_s=p["trans_w"], trans_b=True)


def _dds_ct_w(ct, a, p):
    if not p["trans_w"]:
        return _again(sdd_p, a, ct, p, trans_a=not p["trans_a"], trans_b=False)
    return _again(sdd_p, ct, a, p, trans_a=True, trans_b=p["trans_a"])


_TRANSPOSES = {sdd_p: (_sdd_ct_a, _sdd_ct_b), dsd_p: (_dsd_ct_s, _dsd_ct_b),
               dds_p: (_dds_ct_a, _dds_ct_w)}


def _transpose(prim):
    first_rule, second_rule = _TRANSPOSES[prim]
    first_rank, second_rank, _ = _BASE_RANKS[prim]

    def rule(ct, x, y, **params):
        undefined_x = jint.is_undefined_primal(x)
        if undefined_x == jint.is_undefined_primal(y):
            raise NotImplementedError(f"{prim.name} is bilinear: transpose needs one constant")
        target, other = (x, y) if undefined_x else (y, x)
        if type(ct) is jint.Zero:
            cotangent = jint.Zero(target.aval)
        else:
            cotangent = (first_rule if undefined_x else second_rule)(ct, other, params)
            base = first_rank if undefined_x else second_rank
            if len(target.aval.shape) == base and cotangent.ndim == base + 1:
                cotangent = cotangent.sum(axis=0)  # the operand was shared by the batch
            cotangent = _partitioning.like_primal(cotangent.astype(target.aval.dtype),
                                                  target.aval)
        return (cotangent, None) if undefined_x else (None, cotangent)
    return rule


def _batching(prim):
    """vmap over any operands, at any axis, with or without their own batch axis `G`.

    Each mapped operand's axis moves to the front. Without a `G` anywhere, the vmapped axis
    becomes `G` (unmapped operands stay shared). With one, the vmapped axis and `G` fold
    into one batch axis of `size * G` entries; an operand lacking one of the two is
    broadcast over it, except an operand with neither, which stays shared."""
    ranks = _BASE_RANKS[prim]

    def rule(args, dims, **params):
        args = [a if d is jint.not_mapped else jnp.moveaxis(a, d, 0)
                for a, d in zip(args, dims)]
        mapped = [d is not jint.not_mapped for d in dims]
        size = next(a.shape[0] for a, m in zip(args, mapped) if m)
        has_g = [a.ndim - m == rank + 1 for a, m, rank in zip(args, mapped, ranks)]
        g_sizes = {a.shape[int(m)] for a, m, h in zip(args, mapped, has_g) if h}
        if len(g_sizes) > 1:
            raise ValueError(f"{prim.name}: operands have different batch sizes "
                             f"{sorted(g_sizes)}")
        if not g_sizes:
            # dds with only a dense, untransposed `a` mapped: fold into its rows instead
            if prim is dds_p and mapped == [True, False] and not params["trans_a"]:
                a = args[0]
                out = bind(prim, a.reshape((-1, a.shape[-1])), args[1], **params)
                return out.reshape(a.shape[:-1] + out.shape[-1:]), 0
            return bind(prim, *args, **params), 0
        g = g_sizes.pop()
        folded = []
        for a, m, h in zip(args, mapped, has_g):
            if m or h:
                if not m:
                    a = a[None]
                if not h:
                    a = a[:, None]
                a = jnp.broadcast_to(a, (size, g) + a.shape[2:])
                a = a.reshape((size * g,) + a.shape[2:])
            folded.append(a)
        out = bind(prim, *folded, **params)
        return out.reshape((size, g) + out.shape[1:]), 0
    return rule


def _factors(prim):
    """The sharding factors (`_partitioning`): a leading `g` and the dense operands' free
    rows/columns may be sharded (data parallel; `sdd`'s inner dimension `k` too, summed
    afterwards: the weight gradient), the layout's dimensions and the blocks may not."""
    def factors(avals_in, avals_out, **params):
        x, y = avals_in
        lead = lambda aval, rank: ("g",) if aval.ndim > rank else ()
        blocks = ("z", "r", "c")
        if prim is sdd_p:  # op(a) [P, K] @ op(b) [K, Q] -> blocks
            ta, tb = params["trans_a"], params["trans_b"]
            dims = [lead(x, 2) + (("k", "p") if ta else ("p", "k")),
                    lead(y, 2) + (("q", "k") if tb else ("k", "q"))]
            out, shardable = lead(avals_out[0], 3) + blocks, {"g", "k"}
        elif prim is dsd_p:  # op(S) [M, K] @ op(b) [K, N]
            dims = [lead(x, 3) + blocks,
                    lead(y, 2) + (("n", "k") if params["trans_b"] else ("k", "n"))]
            out, shardable = lead(avals_out[0], 2) + ("m", "n"), {"g", "n"}
        else:  # dds: op(a) [M, K] @ op(W) [K, N]
            dims = [lead(x, 2) + (("k", "m") if params["trans_a"] else ("m", "k")),
                    lead(y, 3) + blocks]
            out, shardable = lead(avals_out[0], 2) + ("m", "n"), {"g", "m"}
        return _partitioning.factors_of(dims, [out], shardable, avals_in, avals_out)
    return factors


for _prim in (sdd_p, dsd_p, dds_p):
    _partitioning.define_partitioned(_prim, _abstract_eval(_prim), _REFERENCES[_prim],
                                     _factors(_prim))
    jint.register_jvp(_prim, _bilinear_jvp(_prim))
    jint.register_transpose(_prim, _transpose(_prim))
    jint.register_batching(_prim, _batching(_prim))


def canonical_precision(precision):
    """`None` or a `jax.lax.Precision` from what `jnp.matmul` accepts (a pair must agree)."""
    if precision is None:
        return None
    if isinstance(precision, (tuple, list)):
        first, second = (canonical_precision(p) for p in precision)
        if first != second:
            raise ValueError(f"precision: a pair must name one precision; got {precision}")
        return first
    if isinstance(precision, jax.lax.Precision):
        return precision
    try:
        return jax.lax.Precision(precision)  # "default", "high", "highest", "fastest", ...
    except ValueError:
        raise ValueError(f"precision: expected None, a jax.lax.Precision or its name; "
                         f"got {precision!r}") from None

