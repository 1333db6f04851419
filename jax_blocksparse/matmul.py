"""Public block-sparse matmul ops: `matmul`, `sdd`, `dsd`, `dds`.

Each checks its arguments at trace time (raising `ValueError` that names the argument),
folds leading batch dimensions, and binds the primitives of `matmul_primitives`.

Leading dimensions `...`: the two operands' leading dimensions must be equal, or one of
them has none (it is then shared by every batch entry). Supported: dtypes float32,
float16, bfloat16, float64 (`DTYPES`; both operands the same; float64 needs
`jax_enable_x64` and runs on the pure-JAX path, on a GPU too); block sizes 16, 32, 64, 128.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from ._checks import DTYPES, check_dtype, static_bool  # noqa: F401  (re-exported)
from .layout import Layout, check_matrix_layout
from .matmul_primitives import bind, canonical_precision, dds_p, dsd_p, sdd_p

BLOCK_SIZES = (16, 32, 64, 128)


def _check_layout(op, layout):
    check_matrix_layout(op, layout)
    if layout.block_size not in BLOCK_SIZES:
        raise ValueError(f"{op}: layout.block_size must be one of {BLOCK_SIZES}; "
                         f"got {layout.block_size}")


def _check_dtypes(op, **arrays):
    names = list(arrays)
    for name, x in arrays.items():
        check_dtype(op, name, x)
    first, second = names
    if arrays[first].dtype != arrays[second].dtype:
        raise ValueError(f"{op}: {first} ({arrays[first].dtype}) and {second} "
                         f"({arrays[second].dtype}) must have the same dtype")


def _check_dense(op, name, x, expect_rows, expect_cols, trans):
    """`x` must be `[..., rows, cols]` (`[..., cols, rows]` when `trans`); None = any size."""
    if x.ndim < 2:
        raise ValueError(f"{op}: {name} must have at least 2 dimensions; got shape {x.shape}")
    rows, cols = x.shape[-2:]
    if trans:
        rows, cols = cols, rows
    for what, got, want in (("rows", rows, expect_rows), ("columns", cols, expect_cols)):
        if want is not None and got != want:
            t = " (after transposition)" if trans else ""
            raise ValueError(f"{op}: {name} has {got} {what}{t}; the layout needs {want} "
                             f"(shape {x.shape})")


def _check_blocks(op, name, x, layout):
    bs, nnz = layout.block_size, layout.nnz
    if x.ndim < 3 or x.shape[-2:] != (bs, bs):
        raise ValueError(f"{op}: {name} must be [..., nnz, {bs}, {bs}] (blocks of the layout); "
                         f"got shape {x.shape}")
    if x.shape[-3] != nnz:
        raise ValueError(f"{op}: {name} has {x.shape[-3]} blocks; the layout has {nnz}")


def _fold(op, x, base_x, name_x, y, base_y, name_y):
    """Flatten matching leading dims of two operands into one batch axis `G`.

    Returns the reshaped operands and the leading shape of the result."""
    lead_x, lead_y = x.shape[:x.ndim - base_x], y.shape[:y.ndim - base_y]
    if lead_x and lead_y and lead_x != lead_y:
        raise ValueError(f"{op}: leading dimensions of {name_x} {lead_x} and {name_y} {lead_y} "
                         "must be equal, or one of them empty")
    lead = lead_x or lead_y

    def flat(z, lead_z, base):
        return z.reshape((math.prod(lead_z),) + z.shape[z.ndim - base:]) if lead_z else z
    return flat(x, lead_x, base_x), flat(y, lead_y, base_y), lead


def _unfold(out, lead, base):
    return out.reshape(lead + out.shape[out.ndim - base:]) if lead else out


def sdd(a, b, layout: Layout, *, trans_a: bool = False, trans_b: bool = False,
        precision=None):
    """Dense @ dense, computed only at the layout's blocks.

    Args:
      a: `[..., M, K]` (`[..., K, M]` if `trans_a`).
      b: `[..., K, N]` (`[..., N, K]` if `trans_b`).
      layout: 2-D layout over `(M, N)`.
      trans_a, trans_b: Python bools (static): read `a` / `b` transposed.
      precision: as in `jnp.matmul`: `None`/`"default"` (float32 inputs may use TF32 on
        a GPU) or `"highest"` (full float32).
    Supported: dtypes float32, float16, bfloat16, float64 (both operands the same;
    float32 accumulation, float64 for float64, which runs on the pure-JAX path on a GPU
    too; result in the operands' dtype); block sizes 16, 32, 64, 128.
    Raises `ValueError` at trace time, naming the argument, for anything else.
    Returns:
      blocks `[..., nnz, bs, bs]` of `op(a) @ op(b)`, in `a`'s dtype.
    """
    _check_layout("sdd", layout)
    trans_a = static_bool("sdd", "trans_a", trans_a)
    trans_b = static_bool("sdd", "trans_b", trans_b)
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_dtypes("sdd", a=a, b=b)
    m, n = layout.shape
    _check_dense("sdd", "a", a, m, None, trans_a)
    _check_dense("sdd", "b", b, None, n, trans_b)
    k_a = a.shape[-2] if trans_a else a.shape[-1]
    k_b = b.shape[-1] if trans_b else b.shape[-2]
    if k_a != k_b:
        raise ValueError(f"sdd: inner sizes differ: a gives {k_a}, b gives {k_b}")
    a, b, lead = _fold("sdd", a, 2, "a", b, 2, "b")
    out = bind(sdd_p, a, b, layout=layout, trans_a=trans_a, trans_b=trans_b,
                     precision=canonical_precision(precision))
    return _unfold(out, lead, 3)


def dsd(s, b, layout: Layout, *, trans_s: bool = False, trans_b: bool = False,
        precision=None):
    """Sparse @ dense.

    Args:
      s: blocks `[..., nnz, bs, bs]` of `S` over `layout` (`S` is `[P, Q]` in elements).
      b: `[..., K, N]` (`[..., N, K]` if `trans_b`), with `K = Q` (`P` if `trans_s`).
      layout: 2-D layout of `S`.
      trans_s, trans_b: Python bools (static): read `S` / `b` transposed.
      precision: as in `jnp.matmul`: `None`/`"default"` (float32 inputs may use TF32 on
        a GPU) or `"highest"` (full float32).
    Supported: dtypes float32, float16, bfloat16, float64 (both operands the same;
    float32 accumulation, float64 for float64, which runs on the pure-JAX path on a GPU
    too; result in the operands' dtype); block sizes 16, 32, 64, 128.
    Raises `ValueError` at trace time, naming the argument, for anything else.
    Returns:
      `op(S) @ op(b)`: `[..., M, N]` with `M = P` (`Q` if `trans_s`), in `s`'s dtype.
    """
    _check_layout("dsd", layout)
    trans_s = static_bool("dsd", "trans_s", trans_s)
    trans_b = static_bool("dsd", "trans_b", trans_b)
    s, b = jnp.asarray(s), jnp.asarray(b)
    _check_dtypes("dsd", s=s, b=b)
    _check_blocks("dsd", "s", s, layout)
    p, q = layout.shape
    _check_dense("dsd", "b", b, p if trans_s else q, None, trans_b)
    s, b, lead = _fold("dsd", s, 3, "s", b, 2, "b")
    out = bind(dsd_p, s, b, layout=layout, trans_s=trans_s, trans_b=trans_b,
                     precision=canonical_precision(precision))
    return _unfold(out, lead, 2)


def dds(a, w, layout: Layout, *, trans_a: bool = False, trans_w: bool = False,
        precision=None):
    """Dense @ sparse.

    Args:
      a: `[..., M, K]` (`[..., K, M]` if `trans_a`).
      w: blocks `[..., nnz, bs, bs]` of `W` over `layout` (`W` is `[P, Q]`), with
        `K = P` (`Q` if `trans_w`).
      layout: 2-D layout of `W`.
      trans_a, trans_w: Python bools (static): read `a` / `W` transposed.
      precision: as in `jnp.matmul`: `None`/`"default"` (float32 inputs may use TF32 on
        a GPU) or `"highest"` (full float32).
    Supported: dtypes float32, float16, bfloat16, float64 (both operands the same;
    float32 accumulation, float64 for float64, which runs on the pure-JAX path on a GPU
    too; result in the operands' dtype); block sizes 16, 32, 64, 128.
    Raises `ValueError` at trace time, naming the argument, for anything else.
    Returns:
      `op(a) @ op(W)`: `[..., M, N]` with `N = Q` (`P` if `trans_w`), in `a`'s dtype.
    """
    _check_layout("dds", layout)
    trans_a = static_bool("dds", "trans_a", trans_a)
    trans_w = static_bool("dds", "trans_w", trans_w)
    a, w = jnp.asarray(a), jnp.asarray(w)
    _check_dtypes("dds", a=a, w=w)
    _check_blocks("dds", "w", w, layout)
    p, q = layout.shape
    _check_dense("dds", "a", a, None, q if trans_w else p, trans_a)
    a, w, lead = _fold("dds", a, 2, "a", w, 3, "w")
    out = bind(dds_p, a, w, layout=layout, trans_a=trans_a, trans_w=trans_w,
                     precision=canonical_precision(precision))
    return _unfold(out, lead, 2)


def matmul(x, w, layout: Layout, *, precision=None):
    """`x @ W` for a block-sparse weight `W [C, K]`, the layer's forward product.

    Args:
      x: `[..., C]` dense activations (any number of leading dimensions).
      w: blocks `[nnz, bs, bs]` of `W` over `layout`, a 2-D layout over `(C, K)`.
      layout: the weight's layout.
      precision: as in `jnp.matmul` (float32 inputs: `HIGHEST` asks for full float32).
    Supported: dtypes float32, float16, bfloat16, float64 (x and w the same; float64
    runs on the pure-JAX path, on a GPU too); block sizes 16, 32, 64, 128. Raises
    `ValueError` at trace time, naming the argument, for anything else.
    Returns:
      `[..., K]` in `x`'s dtype.
    """
    _check_layout("matmul", layout)
    x, w = jnp.asarray(x), jnp.asarray(w)
    _check_dtypes("matmul", x=x, w=w)
    _check_blocks("matmul", "w", w, layout)
    if w.ndim != 3:
        raise ValueError(f"matmul: w must be [nnz, bs, bs]; got shape {w.shape} "
                         "(use dds for batched weights)")
    c, k = layout.shape
    if x.ndim < 1 or x.shape[-1] != c:
        raise ValueError(f"matmul: x must be [..., {c}] for this layout; got shape {x.shape}")
    rows = _rows(x)
    out = bind(dds_p, rows, w, layout=layout, trans_a=False, trans_w=False,
                     precision=canonical_precision(precision))
    return out.reshape(x.shape[:-1] + (k,))


def _rows(x):
    """`x [..., C]` as dds's dense operand: its rows `[M, C]`; but, where x is explicitly
    sharded on a leading dimension after the first (explicit sharding mode refuses to
    merge it), `[B, T, C]` itself (dds's batch `G = B`, the weight shared) or, at other
    ranks, x resharded to keep only its first and last dimensions' shardings."""
    sharding = jax.typeof(x).sharding  # an aval's spec names its Explicit axes only
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    spec = spec + (None,) * (x.ndim - len(spec))
    if all(e is None for e in spec[1:-1]):
        return x.reshape((-1, x.shape[-1]))
    if x.ndim == 3:
        return x
    keep = P(spec[0], *(None,) * (x.ndim - 2), spec[-1])
    x = jax.sharding.reshard(x, NamedSharding(sharding.mesh, keep))
    return x.reshape((-1, x.shape[-1]))
