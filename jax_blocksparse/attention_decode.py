"""Decode attention: a few queries per sequence (`Tq <= 12`, 64 with an fp8 cache) against a long
KV cache, contiguous or paged.

One primitive, `attention_decode_p(q, k, v, kv_lengths, q_rows, q_positions, counts,
lists, page_table, k_scale, v_scale) -> (o, lse)`:
  - q `[B, Tq, Hq, D]`; k, v `[B, Tk, Hkv, D]`, or, when `paged`, page pools
    `[P, page_size, Hkv, D]` with `page_table` int32 `[B, pages_per_seq]` (key j of batch
    entry b is row `j % page_size` of page `page_table[b, j // page_size]`;
    `Tk = pages_per_seq * page_size`); without pages `page_table` is a `[1, 1]` placeholder.
  - query i of batch entry b uses mask row `(q_rows[b] + i) // bs` of the block lists
    (`counts [Bm, Hm, R]`, `lists [Bm, Hm, R, W]`, Bm 1 or B, Hm 1 or Hq) and attends
    key j iff j's block is listed there,
    `j < kv_lengths[b]` and, when `causal`, `j <= q_positions[b] + i`.
  - k_scale, v_scale float32 `[Hkv]`: key j of kv head h is `k[..., h, :] * k_scale[h]`
    (computed in float32), values likewise; k and v may be float8 (`float8_e4m3fn`,
    `float8_e5m2`: an fp8 KV cache) with q bfloat16, float16 or float32; otherwise k, v
    share q's dtype and the scales are ones, or empty (`[0]`: no scale, read as 1; the
    kernel reads none, and no all-ones constant becomes a broadcast kernel per call).
  - o `[B, Tq, Hq, D]` in q's dtype, lse `[B, Hq, Tq]` float32 (float64 for float64); a row
    with no key: o = 0, lse = -inf; a query whose mask row lies outside `[0, R)`: NaN in o
    and lse (never a silently wrong row; the kernel's combine writes them, so no select
    follows the call).
  - the static `softcap` (0: none): the scaled scores become `cap * tanh(s / cap)` before
    the mask (`attention_primitives.soft_cap`).
The pure-JAX lowering gathers each query's listed key blocks (cost grows with the listed
blocks, never with the cache length); on CUDA the decode kernel runs where
`_cuda.decode_unsupported` allows (split-KV, a deterministic log-sum-exp combine, the query
heads of a kv head in one CTA). Differentiable to any order: the JVP's tangent is the JVP of
the pure-JAX implementation (inference runs the kernel; `jax.grad` works on every path).
`attention.attention` routes calls with `Tq <= DECODE_MAX_QUERIES` here.
"""

from __future__ import annotations

import jax.numpy as jnp

from . import _jax_internals as jint
from . import _partitioning
from .attention_primitives import (KV_DIMS, LSE_DIMS, Q_DIMS, _at_rows, _bind, _lse_dtype,
                                   _nan_rows, _reference_jvp, context_dims, paged_keys,
                                   soft_cap)

def decode_reference(q, k, v, kv_lengths, q_rows, q_positions, counts, lists, page_table,
                     k_scale, v_scale, *, block_size, causal, scale, paged, softcap=0.0):
    """The decode primitive in pure JAX: each query gathers the key blocks its mask row
    lists (`[B, Hm, Tq, W * bs]` keys, dequantized: times `k_scale[h]`, `v_scale[h]` in
    float32, float64 for float64), then a masked softmax (of the soft-capped scores when
    `softcap`: `attention_primitives.soft_cap`); NaN rows for queries outside the mask's
    rows."""
    if paged:
        k, v = paged_keys(k, page_table), paged_keys(v, page_table)
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    bm, hm, rows, width = lists.shape
    bs = block_size
    group = hq // hkv
    row = (q_rows[:, None] + jnp.arange(tq)) // bs  # [B, Tq]
    inside = (row >= 0) & (row < rows)
    count = jnp.where(inside[:, None], _at_rows(counts, row), 0)  # [B, Hm, Tq]
    blocks = _at_rows(lists, row)  # [B, Hm, Tq, W]
    keys = (jnp.maximum(blocks, 0)[..., None] * bs + jnp.arange(bs)).reshape(b, hm, tq, -1)
    listed = jnp.repeat(jnp.arange(width)[None, None, None] < count[..., None], bs, axis=-1)
    allowed = listed & (keys < jnp.minimum(kv_lengths, tk)[:, None, None, None])
    if causal:
        allowed &= keys <= (q_positions[:, None] + jnp.arange(tq))[:, None, :, None]
    keys = jnp.minimum(keys, tk - 1)  # [B, Hm, Tq, N]

    f = _lse_dtype(q.dtype)
    f32 = lambda x: x.astype(f)
    batch = jnp.arange(b)[:, None, None, None]
    # keys the query may not attend are zero-filled on load: garbage there (a serving
    # cache's NaN past kv_lengths) never reaches arithmetic
    per_head = lambda sc: jnp.ones((hkv,), f) if sc.shape[0] == 0 else f32(jnp.asarray(sc))
    load = lambda x, sc, heads: jnp.where(
        allowed[..., None], f32(x)[batch, keys, heads] * per_head(sc)[heads][..., None], 0)
    if hm == 1:  # keys shared by the query heads: gather per kv head
        heads = jnp.arange(hkv)[None, :, None, None]
        kg, vg = (load(x, sc, heads) for x, sc in ((k, k_scale), (v, v_scale)))
        qg = f32(q).reshape(b, tq, hkv, group, d)
        s = jnp.einsum("bihgd,bhind->bhgin", qg, kg, precision="highest") * scale
        allowed = allowed[:, :, None]  # [B, 1, 1, Tq, N]
    else:  # a mask per query head: gather per query head
        heads = (jnp.arange(hq) // group)[None, :, None, None]
        kg, vg = (load(x, sc, heads) for x, sc in ((k, k_scale), (v, v_scale)))
        kg, vg = (x.reshape(b, hkv, group, tq, -1, d) for x in (kg, vg))
        qg = f32(q).reshape(b, tq, hkv, group, d)
        s = jnp.einsum("bihgd,bhgind->bhgin", qg, kg, precision="highest") * scale
        allowed = allowed.reshape(b, hkv, group, tq, -1)
    s = jnp.where(allowed, soft_cap(s, softcap), -jnp.inf)
    m = s.max(axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    l = p.sum(axis=-1, keepdims=True)
    nonempty = l > 0
    l_safe = jnp.where(nonempty, l, 1.0)
    spec = "bhgin,bhind->bhgid" if hm == 1 else "bhgin,bhgind->bhgid"
    o = jnp.einsum(spec, p / l_safe, vg, precision="highest")  # [B, Hkv, G, Tq, D]
    lse = jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)[..., 0]  # [B, Hkv, G, Tq]
    o = o.reshape(b, hq, tq, d).transpose(0, 2, 1, 3).astype(q.dtype)
    return _nan_rows(o, lse.reshape(b, hq, tq), ~inside[:, None, :])


attention_decode_p = jint.define_primitive("blocksparse_attention_decode",
                                           multiple_results=True)


def _abstract_eval(q, k, v, *ctx, **params):
    b, tq, hq, _ = q.shape
    o = _partitioning.result_aval(q, q.shape, q.dtype)
    lse = _partitioning.result_aval(q, (b, hq, tq), _lse_dtype(q.dtype))
    return tuple(_partitioning.with_shardings(_factors, (q, k, v, *ctx), [o, lse], **params))


DECODE_OPERANDS = ("q", "k", "v", "kv_lengths", "q_rows", "q_positions", "counts", "lists",
                   "page_table", "k_scale", "v_scale")


def _factors(avals_in, avals_out, *, paged, **params):
    """Sharding factors: batch entries and kv heads (`attention_primitives.context_dims`);
    a page pool is shared by the batch (pages stay whole on every device)."""
    b, _, hq, _ = avals_in[0].shape
    kv = ("pages", "page_rows", "h", "d") if paged else KV_DIMS
    dims = [Q_DIMS, kv, kv] + [context_dims(name, aval, b, hq, i) for i, (name, aval) in
                               enumerate(zip(DECODE_OPERANDS[3:8], avals_in[3:8]))]
    per_batch_table = paged and avals_in[8].shape[0] == b  # else a [1, 1] placeholder
    dims.append(("b", "tables") if per_batch_table else ("x_table", "y_table"))
    # the scales: one per kv head, or none ([0]: a cache in q's dtype)
    dims += [("h",) if aval.shape[0] else ("no_scale",) for aval in avals_in[9:11]]
    return _partitioning.factors_of(dims, [Q_DIMS, LSE_DIMS], {"b", "h"}, avals_in,
                                    avals_out)


_partitioning.define_partitioned(attention_decode_p, _abstract_eval, decode_reference,
                                 _factors)
jint.register_jvp(attention_decode_p,
                  _reference_jvp(attention_decode_p, decode_reference, (0, 1, 2)))


def _fold_batch(args, dims, *, paged, **params):
    """vmap: fold the mapped axis into B. q, the [B] context operands and the page table
    carry B; contiguous k, v carry B; page pools fold their mapped axis into the pages
    (the page table then points into the folded pool); lists shared by the batch stay
    shared unless mapped. Mapped scales (a scale per mapped index) are applied to k and v
    here (dequantized to float32: the pure-JAX path), the folded call's scales ones."""
    q, k, v, kv_lengths, q_rows, q_positions, counts, lists, page_table, k_scale, v_scale = (
        a if d is jint.not_mapped else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims))
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not jint.not_mapped)
    mapped = [d is not jint.not_mapped for d in dims]
    batch = q.shape[1 if mapped[0] else 0]
    if mapped[9] or mapped[10]:  # [size, Hkv] scales: multiply them into k and v
        def apply(x, sc, x_mapped, sc_mapped):
            sc = sc if sc_mapped else jnp.broadcast_to(sc, (size,) + sc.shape)
            x = x if x_mapped else jnp.broadcast_to(x, (size,) + x.shape)
            return x.astype(jnp.float32) * sc.astype(jnp.float32)[:, None, None, :, None]
        k = apply(k, k_scale, mapped[1], mapped[9])
        v = apply(v, v_scale, mapped[2], mapped[10])
        mapped[1] = mapped[2] = True
        k_scale = v_scale = jnp.ones(k.shape[-2], jnp.float32)

    def fold_b(a, is_mapped, may_share=False):  # [B, ...] (or [1, ...] when may_share)
        if may_share and not is_mapped and a.shape[0] == 1:
            return a  # shared by the batch: stays shared
        a = a if is_mapped else a[None]
        a = jnp.broadcast_to(a, (size, batch) + a.shape[2:])
        return a.reshape((size * batch,) + a.shape[2:])

    q, kv_lengths, q_rows, q_positions = (
        fold_b(a, m) for a, m in zip((q, kv_lengths, q_rows, q_positions),
                                     (mapped[0], *mapped[3:6])))
    counts, lists = (fold_b(a, m, may_share=True) for a, m in zip((counts, lists), mapped[6:8]))
    if not paged:
        k, v = fold_b(k, mapped[1]), fold_b(v, mapped[2])
    else:
        table = fold_b(page_table, mapped[8])
        if mapped[1] or mapped[2]:  # a pool per mapped index: offset the table into their fold
            pages = k.shape[1] if mapped[1] else k.shape[0]
            k, v = (jnp.broadcast_to(x if m else x[None], (size,) + x.shape[int(m):])
                    .reshape((size * pages,) + x.shape[1 + int(m):])
                    for x, m in ((k, mapped[1]), (v, mapped[2])))
            offset = jnp.repeat(jnp.arange(size, dtype=table.dtype) * pages, batch)
            table = table + offset[:, None]
        page_table = table
    o, lse = attention_decode_p.bind(q, k, v, kv_lengths, q_rows, q_positions, counts, lists,
                                     page_table, k_scale, v_scale, paged=paged, **params)
    return ([o.reshape((size, batch) + o.shape[1:]), lse.reshape((size, batch) + lse.shape[1:])],
            [0, 0])


jint.register_batching(attention_decode_p, _fold_batch)


def decode(q, k, v, kv_lengths, q_rows, q_positions, counts, lists, page_table, k_scale,
           v_scale, **params):
    """Bind `attention_decode_p` (operands as in the module docstring)."""
    return _bind(attention_decode_p, q, k, v, kv_lengths, q_rows, q_positions, counts, lists,
                 page_table, k_scale, v_scale, **params)
