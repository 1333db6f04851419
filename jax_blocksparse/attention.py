"""Fused block-sparse attention: `attention(q, k, v, layout, causal=, scale=, kv_lengths=)`.

Three primitives (DESIGN.md §3), no `custom_vjp`:
  - `attention_p(q, k, v, kv_lengths) -> (o, lse)`: the forward; saves the float32
    log-sum-exp of every query row.
  - `attention_tangent_p(q, k, v, o, lse, kv_lengths, q̇, k̇, v̇) -> (ȯ, lsė)`: the JVP's
    tangent, linear in `q̇, k̇, v̇`. With `S = scale·QKᵀ` masked and `P = exp(S − lse)`:
    `lsė = rowsum(P ∘ Ṡ)`, `ȯ = (P ∘ (Ṡ − lsė)) V + P V̇`.
  - `attention_bwd_p(q, k, v, o, lse, dO, dlse, kv_lengths) -> (dq, dk, dv)`: the transpose
    of the tangent, i.e. the fused backward. `jax.grad` runs only this one.
The pure-JAX lowering (a block-gathered implementation: each query block attends to its
listed key blocks only, never the dense score matrix) serves every platform; on CUDA the
forward and backward lower to the fused kernels. The tangent lowers through the pure-JAX
implementation everywhere (it is only used by `jax.jvp`, never by `jax.grad`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_internals as jint
from ._checks import static_bool, static_float
from .attention_metadata import attention_metadata
from .layout import Layout

DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)


def _lse_dtype(dtype):
    """The dtype of the softmax statistics: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------- reference (pure JAX)
def attention_reference(q, k, v, kv_lengths, *, layout, causal, scale):
    """Block-gathered attention. Returns `(o [B, Tq, Hq, D] in q's dtype, lse [B, Hq, Tq]
    float32)`. Rows with no allowed key give `o = 0`, `lse = -inf`, zero gradients."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    bs = layout.block_size
    rq, rk = tq // bs, tk // bs
    meta = attention_metadata(layout, causal, tq, tk).by_query
    hm, _, width = meta.lists.shape
    slots = jnp.asarray(np.maximum(meta.lists, 0))  # [Hm, Rq, W]
    valid = jnp.asarray(np.arange(width) < meta.counts[..., None])  # [Hm, Rq, W]

    f32 = lambda x: x.astype(_lse_dtype(x.dtype))  # float32 (float64 stays float64)
    qh = f32(q).transpose(0, 2, 1, 3).reshape(b, hq, rq, bs, d)
    group = hq // hkv

    def by_query_head(x):  # [B, Tk, Hkv, D] -> [B, Hq, Rk, bs, D]
        x = jnp.repeat(f32(x).transpose(0, 2, 1, 3), group, axis=1)
        return x.reshape(b, hq, rk, bs, d)

    gather = jnp.broadcast_to(slots, (hq, rq, width)).reshape(1, hq, rq * width, 1, 1)
    kg = jnp.take_along_axis(by_query_head(k), gather, axis=2).reshape(b, hq, rq, width, bs, d)
    vg = jnp.take_along_axis(by_query_head(v), gather, axis=2).reshape(b, hq, rq, width, bs, d)
    s = jnp.einsum("bhrid,bhrwjd->bhriwj", qh, kg, precision="highest") * scale

    i_abs = (jnp.arange(rq)[:, None] * bs + jnp.arange(bs))[:, :, None, None]  # [Rq,bs,1,1]
    j_abs = (slots[:, :, None, :, None] * bs + jnp.arange(bs))  # [Hm, Rq, 1, W, bs]
    allowed = jnp.broadcast_to(valid[:, :, None, :, None], j_abs.shape)
    if causal:
        allowed = allowed & (j_abs <= i_abs + (tk - tq))
    allowed = allowed[None] & (j_abs[None] < kv_lengths[:, None, None, None, None, None])
    s = jnp.where(allowed, s, -jnp.inf)

    m = s.max(axis=(-2, -1), keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    l = p.sum(axis=(-2, -1), keepdims=True)
    nonempty = l > 0
    l_safe = jnp.where(nonempty, l, 1.0)
    o = jnp.einsum("bhriwj,bhrwjd->bhrid", p / l_safe, vg, precision="highest")
    lse = jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)
    o = o.reshape(b, hq, tq, d).transpose(0, 2, 1, 3).astype(q.dtype)
    return o, lse.reshape(b, hq, tq)


def tangent_reference(q, k, v, o, lse, kv_lengths, dq, dk, dv, **params):
    del o, lse
    forward = lambda q, k, v: attention_reference(q, k, v, kv_lengths, **params)
    return jax.jvp(forward, (q, k, v), (dq, dk, dv))[1]


def backward_reference(q, k, v, o, lse, d_o, d_lse, kv_lengths, **params):
    del o, lse
    forward = lambda q, k, v: attention_reference(q, k, v, kv_lengths, **params)
    return jax.vjp(forward, q, k, v)[1]((d_o, d_lse))


# ------------------------------------------------------------------------ primitives
attention_p = jint.define_primitive("blocksparse_attention", multiple_results=True)
attention_tangent_p = jint.define_primitive("blocksparse_attention_tangent",
                                            multiple_results=True)
attention_bwd_p = jint.define_primitive("blocksparse_attention_bwd", multiple_results=True)


def _out_avals(q, k, v):
    b, tq, hq, _ = q.shape
    o = q.update(shape=q.shape, dtype=q.dtype, weak_type=False)
    lse = q.update(shape=(b, hq, tq), dtype=_lse_dtype(q.dtype), weak_type=False)
    return o, lse


attention_p.def_abstract_eval(lambda q, k, v, kv_lengths, **_: _out_avals(q, k, v))
attention_tangent_p.def_abstract_eval(
    lambda q, k, v, o, lse, kv_lengths, dq, dk, dv, **_: _out_avals(q, k, v))
attention_bwd_p.def_abstract_eval(
    lambda q, k, v, o, lse, d_o, d_lse, kv_lengths, **_: tuple(
        x.update(shape=x.shape, dtype=x.dtype, weak_type=False) for x in (q, k, v)))

jint.register_default_lowering(attention_p, attention_reference, multiple_results=True)
jint.register_default_lowering(attention_tangent_p, tangent_reference, multiple_results=True)
jint.register_default_lowering(attention_bwd_p, backward_reference, multiple_results=True)


def _bind(prim, *args, **params):
    return prim.bind(*jint.match_varying_axes(*args), **params)


def _attention_jvp(primals, tangents, **params):
    q, k, v, kv_lengths = primals
    o, lse = _bind(attention_p, q, k, v, kv_lengths, **params)
    dq, dk, dv = (jint.instantiate(t) for t in tangents[:3])
    d_o, d_lse = _bind(attention_tangent_p, q, k, v, o, lse, kv_lengths, dq, dk, dv, **params)
    return (o, lse), (d_o, d_lse)


def _tangent_transpose(cts, q, k, v, o, lse, kv_lengths, dq, dk, dv, **params):
    for x in (q, k, v, o, lse, kv_lengths):
        if jint.is_undefined_primal(x):
            raise NotImplementedError("attention's tangent is linear in (dq, dk, dv) only")
    ct_o, ct_lse = cts
    if type(ct_o) is jint.Zero and type(ct_lse) is jint.Zero:
        grads = [jint.Zero(x.aval) for x in (dq, dk, dv)]
    else:
        ct_o = jnp.zeros(o.shape, o.dtype) if type(ct_o) is jint.Zero else ct_o
        ct_lse = jnp.zeros(lse.shape, lse.dtype) if type(ct_lse) is jint.Zero else ct_lse
        grads = _bind(attention_bwd_p, q, k, v, o, lse, ct_o, ct_lse, kv_lengths, **params)
    return [None] * 6 + [g if jint.is_undefined_primal(x) else None
                         for g, x in zip(grads, (dq, dk, dv))]


def _reference_jvp(prim, reference, array_positions):
    """A JVP rule for `prim` whose tangent is the JVP of its pure-JAX `reference`.

    `array_positions` are the operands the reference depends on (`o` and `lse` are
    functions of q, k, v that the reference recomputes, and `kv_lengths` is an integer);
    the primal output still comes from `prim` (the fused kernels on a GPU). This makes the
    tangent and backward primitives differentiable to any order: second and higher
    derivatives of `attention` run on the pure-JAX path on every platform."""
    def rule(primals, tangents, **params):
        out = _bind(prim, *primals, **params)

        def reference_of(*arrays):
            full = list(primals)
            for i, x in zip(array_positions, arrays):
                full[i] = x
            return reference(*full, **params)
        arrays = [primals[i] for i in array_positions]
        dots = [jint.instantiate(tangents[i]) for i in array_positions]
        _, out_dot = jax.jvp(reference_of, arrays, dots)
        return out, list(out_dot)
    return rule


jint.register_jvp(attention_p, _attention_jvp)
jint.register_transpose(attention_tangent_p, _tangent_transpose)
# attention_tangent_p(q, k, v, o, lse, kv_lengths, dq, dk, dv), depends on q, k, v, dq, dk, dv
jint.register_jvp(attention_tangent_p,
                  _reference_jvp(attention_tangent_p, tangent_reference, (0, 1, 2, 6, 7, 8)))
# attention_bwd_p(q, k, v, o, lse, d_o, d_lse, kv_lengths), depends on q, k, v, d_o, d_lse
jint.register_jvp(attention_bwd_p,
                  _reference_jvp(attention_bwd_p, backward_reference, (0, 1, 2, 5, 6)))


def _fold_batch(prim):
    """vmap: every operand has a leading batch axis B; fold the mapped axis into it."""
    def rule(args, dims, **params):
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not jint.not_mapped)
        folded = []
        for a, d in zip(args, dims):
            a = (jnp.broadcast_to(a[None], (size,) + a.shape) if d is jint.not_mapped
                 else jnp.moveaxis(a, d, 0))
            folded.append(a.reshape((-1,) + a.shape[2:]))
        outs = prim.bind(*folded, **params)
        return [o.reshape((size, -1) + o.shape[1:]) for o in outs], [0] * len(outs)
    return rule


for _prim in (attention_p, attention_tangent_p, attention_bwd_p):
    jint.register_batching(_prim, _fold_batch(_prim))


# ------------------------------------------------------------------------ public op
def _check(q, k, v, layout, kv_lengths):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"attention: {name} must be [B, T, H, D]; got shape {x.shape}")
        if not any(x.dtype == d for d in DTYPES):
            raise ValueError(f"attention: {name} has dtype {x.dtype}; supported: bfloat16, "
                             "float16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    b, tq, hq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must have the same shape")
    if k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"attention: k and v must be [B={b}, Tk, Hkv, D={d}]; got {k.shape}")
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"attention: q's heads ({hq}) must be a multiple of k's ({hkv})")
    if not isinstance(layout, Layout):
        raise ValueError(f"attention: layout must be a jax_blocksparse.Layout; "
                         f"got {type(layout).__name__}")
    heads = layout.mask.shape[0] if layout.mask.ndim == 3 else 1
    if heads not in (1, hq):
        raise ValueError(f"attention: layout has {heads} head masks; expected 1 or Hq={hq}")
    want = (tq, k.shape[1])
    if layout.shape != want:
        raise ValueError(f"attention: layout covers {layout.shape} (queries, keys) but q and k "
                         f"give {want}; Tq and Tk must be the layout's blocks x block_size")
    if kv_lengths is not None:
        if kv_lengths.shape != (b,) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer):
            raise ValueError(f"attention: kv_lengths must be an integer array [B={b}]; got "
                             f"{kv_lengths.dtype}{list(kv_lengths.shape)}")


def attention(q, k, v, layout: Layout, *, causal: bool = False, scale: float | None = None,
              kv_lengths=None, return_lse: bool = False):
    """Block-sparse (multi-head, grouped-query) attention.

    Args:
      q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]`, `Hq` a multiple of `Hkv`. dtypes
        bfloat16, float16 or float32 (all the same); any head dim `D`.
      layout: mask `[1 or Hq, Tq/bs, Tk/bs]` (or `[Tq/bs, Tk/bs]`), any block size. On an
        NVIDIA GPU, bfloat16/float16 with `D` in (64, 128) and block size 64 or 128 run the
        fused kernels; every other combination runs the pure-JAX implementation
        (`JAX_BLOCKSPARSE_DEBUG` says so when the program is compiled).
        Query i of head h attends to key j iff block `(i // bs, j // bs)` is in h's mask,
        and, when `causal`, `j <= i + (Tk - Tq)` (bottom-right aligned), and, when
        `kv_lengths` is given, `j < kv_lengths[b]`.
      causal: a Python bool (static).
      scale: score scale, a Python number (static), default `1 / sqrt(D)`.
      kv_lengths: optional int `[B]`, the number of valid keys of each batch entry.
      return_lse: also return the float32 log-sum-exp `[B, Hq, Tq]`.
    Returns:
      `[B, Tq, Hq, D]` in q's dtype (and the lse). A row with no key to attend to
      outputs 0 (lse `-inf`) and passes zero gradients.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths)
    _check(q, k, v, layout, kv_lengths)
    causal = static_bool("attention", "causal", causal)
    return_lse = static_bool("attention", "return_lse", return_lse)
    b, _, _, d = q.shape
    scale = 1.0 / math.sqrt(d) if scale is None else static_float("attention", "scale", scale)
    if kv_lengths is None:
        kv_lengths = jnp.full((b,), k.shape[1], jnp.int32)
    o, lse = _bind(attention_p, q, k, v, kv_lengths.astype(jnp.int32), layout=layout,
                   causal=causal, scale=scale)
    return (o, lse) if return_lse else o
