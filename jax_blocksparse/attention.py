"""Fused block-sparse attention: `attention(q, k, v, mask, causal=, scale=, kv_lengths=,
q_segment_ids=, kv_segment_ids=, q_offset=, page_table=, sinks=, logits_soft_cap=)`.

Three primitives (DESIGN.md §3), no `custom_vjp`. Each takes its float operands followed by
the same integer *context* operands, `(kv_lengths, q_positions, q_segment_ids,
kv_segment_ids, *by_query, *by_key)` (`q_positions [B or 1]`: the causal position of query
0; `by_query`, `by_key`: the four arrays of `AttentionLists`, with a leading batch axis of 1
or B; query block `r` of the operands uses line `r` of the lists): the kernels read the
block lists from operands, so a static `Layout` (lists computed on the host) and a traced
`BlockMask` (lists computed inside `jit`) share every primitive and kernel.
  - `attention_p(q, k, v, *ctx) -> (o, lse)`: the forward; saves the float32 log-sum-exp
    of every query row.
  - `attention_tangent_p(q, k, v, o, lse, q̇, k̇, v̇, *ctx) -> (ȯ, lsė)`: the JVP's tangent,
    linear in `q̇, k̇, v̇`. With `S = scale·QKᵀ` masked and `P = exp(S − lse)`:
    `lsė = rowsum(P ∘ Ṡ)`, `ȯ = (P ∘ (Ṡ − lsė)) V + P V̇`.
  - `attention_bwd_p(q, k, v, o, lse, dO, dlse, *ctx) -> (dq, dk, dv)`: the transpose of the
    tangent, i.e. the fused backward. `jax.grad` runs only this one.
The context ends with the tile lists (`tile_*`, `TILES`: `attention_metadata.tile_lists`):
for a mask of block size 16 or 32, the lists of the 128 x 128 tiles that the Hopper forward
runs it on, with the bits of the mask blocks each listed tile covers (placeholders for
other block sizes); only that forward's lowering reads them.
Each primitive also takes the static `softcap` (logit soft-capping, 0: none): the scaled
scores are `soft_cap(S) = cap·tanh(S/cap)` before the mask, so `Ṡ` and `dS` above take the
factor `1 − tanh²(S/cap)`. Attention sinks are no operand: they join each row after the
primitives, exactly, from `o` and `lse` (`with_sinks`), so their gradient reaches the
backward as the lse cotangent.
The tangent and backward primitives have JVP rules of their own (the JVP of the pure-JAX
implementation), so attention is differentiable to any order.
The pure-JAX lowering (a block-gathered implementation: each query block attends to its
listed key blocks only, never the dense score matrix) serves every platform; on CUDA the
forward and backward lower to the fused kernels where `_cuda.FUSED_ATTENTION` has them.
Under a sharded `jit` each primitive runs on each device's shards of batch entries and
heads (`_partitioning`, the factors below).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from . import _jax_internals as jint
from . import _partitioning
from . import _debug
from ._checks import (check_dtype, check_kv_scale, check_sinks, check_soft_cap, is_fp8,
                      static_bool, static_float)
from .attention_metadata import (FINE_BLOCKS, TILE, AttentionLists, TileLists,
                                 attention_metadata, block_lists, device_metadata,
                                 document_kinds, tile_lists, tile_metadata)
from .block_mask import BlockMask
from .layout import Layout

DECODE_MAX_QUERIES = 16  # queries per sequence that take the decode primitive

CONTEXT = ("kv_lengths", "q_positions", "q_segment_ids", "kv_segment_ids") + tuple(
    f"{side}_{field}" for side in ("by_query", "by_key") for field in AttentionLists._fields
) + tuple(f"tile_{field}" for field in AttentionLists._fields) + ("tile_bits",)
LISTS = CONTEXT.index("by_query_counts")  # where the block lists start in the context
# where the tile lists start (`TileLists`, by query tile: the four lists, then the bits):
# masks of block size 16 or 32 on the Hopper forward's 128-row tiles; placeholders
# (`_tile_context`) for other block sizes
TILES = CONTEXT.index("tile_counts")


def _lse_dtype(dtype):
    """The dtype of the softmax statistics: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def paged_keys(x, page_table):
    """The contiguous `[B, pages_per_seq * page_size, Hkv, D]` view of a page pool
    `x [P, page_size, Hkv, D]` through `page_table [B, pages_per_seq]` (a gather)."""
    b, pages = page_table.shape
    return x[page_table].reshape((b, pages * x.shape[1]) + x.shape[2:])


def _pad_to(x, length, axis):
    """`x` zero-padded along `axis` to `length`."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def _at_rows(x, row):
    """`x [Bm, Hm, R, ...]` (Bm 1 or B) at the block rows `row [B, n]`, clipped into
    `[0, R)`: `[B, Hm, n, ...]`."""
    b, n = row.shape
    return jnp.take_along_axis(
        jnp.broadcast_to(x, (b,) + x.shape[1:]),
        jnp.clip(row, 0, x.shape[2] - 1).reshape((b, 1, n) + (1,) * (x.ndim - 3)), axis=2)


def _nan_rows(o, lse, bad):
    """`o [B, Tq, H, D]` and `lse [B, H, Tq]` with NaN in the rows where `bad` (bool
    `[B or 1, H or 1, Tq]`) holds: never a silently wrong row."""
    return (jnp.where(jnp.swapaxes(bad, 1, 2)[..., None], jnp.nan, o),
            jnp.where(bad, jnp.nan, lse))


def soft_cap(s, cap):
    """Logit soft-capping (Gemma 2, Team Gemma 2024): the scaled scores `s` become
    `cap * tanh(s / cap)`; `cap = 0` leaves them as they are."""
    return s if not cap else cap * jnp.tanh(s / cap)


def soft_cap_slope(s_capped, allowed, cap):
    """`d soft_cap(s) / ds = 1 - tanh²(s / cap)` from the capped scores `s_capped`
    (0 where not `allowed`, whose capped score is -inf); 1 when `cap = 0`."""
    if not cap:
        return 1.0
    t = jnp.where(allowed, s_capped, 0.0) / cap
    return jnp.where(allowed, 1.0 - t * t, 0.0)


def with_sinks(o, lse, sinks):
    """Attention sinks (StreamingLLM, Xiao et al. 2023; gpt-oss) on the result of the keys
    alone: `o [B, Tq, Hq, D]`, `lse [B, Hq, Tq]` and `sinks [Hq]` (the sink logit of each
    query head, in the units of the scaled scores). The sink adds `exp(sinks[h])` to every
    row's softmax denominator and nothing to its numerator, so with
    `lse' = logaddexp(lse, sink)` the row is `o' = o * exp(lse - lse')` and its log-sum-exp
    `lse'` (a row with no key: `o' = 0`, `lse' = sink`). Exact, and differentiable through
    `o` and `lse` (the backward already takes the lse cotangent): with
    `P_sink = exp(sink - lse')` and `delta = rowsum(dO' * o') - dlse'`,
    `d sink[h] = -sum_{b, i} P_sink * delta`. Computed in float32 (float64 for float64)."""
    f = _lse_dtype(o.dtype)
    sink = sinks.astype(lse.dtype)[None, :, None]  # [1, Hq, 1]
    lse_all = jnp.logaddexp(lse, sink)
    keep = jnp.exp(lse - lse_all)  # the keys' share of the row: 0 for a row with no key
    o = (o.astype(f) * jnp.swapaxes(keep, 1, 2)[..., None].astype(f)).astype(o.dtype)
    return o, lse_all


# --------------------------------------------------------------- reference (pure JAX)
def _gathered_scores(q, k, v, ctx, *, block_size, causal, scale, segments, softcap=0.0):
    """The pieces of the block-gathered implementation: each query block `r` gathers the
    key blocks its list names (`W` of them, `bs` keys each).

    Returns `(qh [B, Hq, Rq, bs, D], kg, vg [B, Hq, Rq, W, bs, D], s [B, Hq, Rq, bs, W, bs],
    allowed)` in float32 (float64 for float64): `s` the scaled scores, `-inf` where query i
    may not attend key j, `allowed` the bool mask of that. A gathered key that no query of
    the call attends (unlisted slot, past `Tk` or `kv_lengths[b]`) is zero-filled on load,
    so garbage there (a serving cache's NaN) never reaches arithmetic."""
    kv_lengths, q_positions, q_seg, kv_seg = ctx[:LISTS]
    counts, _, lists, _ = ctx[LISTS:LISTS + 4]  # by query: [Bm, Hm, Rq], [Bm, Hm, Rq, W]
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    bs = block_size
    bm, hm, rq, width = lists.shape
    rk = -(-tk // bs)
    slots = jnp.broadcast_to(jnp.maximum(lists, 0), (bm, hq, rq, width))
    valid = jnp.broadcast_to(jnp.arange(width) < counts[..., None], (bm, hq, rq, width))

    f32 = lambda x: x.astype(_lse_dtype(x.dtype))  # float32 (float64 stays float64)
    qh = _pad_to(f32(q), rq * bs, 1).transpose(0, 2, 1, 3).reshape(b, hq, rq, bs, d)
    group = hq // hkv

    def by_query_head(x):  # [B, Tk, Hkv, D] -> [B, Hq, Rk, bs, D]
        x = jnp.repeat(_pad_to(f32(x), rk * bs, 1).transpose(0, 2, 1, 3), group, axis=1)
        return x.reshape(b, hq, rk, bs, d)

    j_abs = slots[..., None] * bs + jnp.arange(bs)  # [Bm, Hq, Rq, W, bs]
    needed = (valid[..., None] & (j_abs < tk)
              & (j_abs < kv_lengths[:, None, None, None, None]))  # [B, Hq, Rq, W, bs]
    gather = slots.reshape(bm, hq, rq * width, 1, 1)

    def gathered(x):  # [B, Hq, Rq, W, bs, D], zero where no query needs the key
        x = jnp.take_along_axis(by_query_head(x), gather, axis=2)
        return jnp.where(needed[..., None], x.reshape(b, hq, rq, width, bs, d), 0)
    kg, vg = gathered(k), gathered(v)
    s = soft_cap(jnp.einsum("bhrid,bhrwjd->bhriwj", qh, kg, precision="highest") * scale,
                 softcap)

    i_abs = (jnp.arange(rq)[:, None] * bs + jnp.arange(bs))[:, :, None, None]  # [Rq,bs,1,1]
    allowed = needed[:, :, :, None]  # [B, Hq, Rq, 1, W, bs]
    if causal:
        allowed = allowed & (j_abs[:, :, :, None] <=
                             i_abs + q_positions[:, None, None, None, None, None])
    if segments:
        q_ids = _pad_to(q_seg, rq * bs, 1).reshape(-1, 1, rq, bs, 1, 1)
        kv_ids = _pad_to(kv_seg, rk * bs, 1).reshape(-1, 1, rk, bs)
        kv_ids = jnp.take_along_axis(kv_ids, slots.reshape(bm, hq, rq * width, 1), axis=2)
        allowed = allowed & (q_ids == kv_ids.reshape(-1, hq, rq, 1, width, bs))
    return qh, kg, vg, jnp.where(allowed, s, -jnp.inf), allowed


def _softmax(s, allowed):
    """`(P, lse)` of masked scores `s [B, Hq, Rq, bs, W, bs]` over each row's `(W, bs)`:
    rows with no allowed key have `P = 0`, `lse = -inf`."""
    m = s.max(axis=(-2, -1), keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(allowed, jnp.exp(s - m), 0.0)
    l = p.sum(axis=(-2, -1), keepdims=True)
    nonempty = l > 0
    l_safe = jnp.where(nonempty, l, 1.0)
    return p / l_safe, jnp.where(nonempty, m + jnp.log(l_safe), -jnp.inf)[..., 0, 0]


def _rows_out(x, tq):
    """`[B, Hq, Rq, bs, D]` -> `[B, Tq, Hq, D]`."""
    b, hq, rq, bs, d = x.shape
    return x.reshape(b, hq, rq * bs, d)[:, :, :tq].transpose(0, 2, 1, 3)


def attention_reference(q, k, v, *ctx, block_size, causal, scale, segments, positioned,
                        softcap=0.0):
    """Block-gathered attention. Returns `(o [B, Tq, Hq, D] in q's dtype, lse [B, Hq, Tq]
    float32)`. Rows with no allowed key give `o = 0`, `lse = -inf`, zero gradients.
    Query i attends key j only if `j <= q_positions[b] + i` when `causal`. `softcap`
    (0: none): the scaled scores are `soft_cap(s, softcap)` before the mask."""
    del positioned  # the kernels' business: the positions are operands here
    _, _, vg, s, allowed = _gathered_scores(q, k, v, ctx, block_size=block_size,
                                            causal=causal, scale=scale, segments=segments,
                                            softcap=softcap)
    p, lse = _softmax(s, allowed)
    o = jnp.einsum("bhriwj,bhrwjd->bhrid", p, vg, precision="highest")
    b, hq, rq, bs = lse.shape
    tq = q.shape[1]
    return _rows_out(o, tq).astype(q.dtype), lse.reshape(b, hq, rq * bs)[:, :, :tq]


def tangent_reference(q, k, v, o, lse, dq, dk, dv, *ctx, **params):
    del o, lse
    forward = lambda q, k, v: attention_reference(q, k, v, *ctx, **params)
    return jax.jvp(forward, (q, k, v), (dq, dk, dv))[1]


def _key_block_slots(lists, counts, rk, width_k):
    """For each key block `c`, the `(query block r, slot w)` pairs whose lists name it, as
    flat indices `r * W + w` into the gathered `[Rq, W]` axis: `[Bm, Hm, Rk, width_k]` in
    ascending `r`, and whether each is real. These are the transposed lists of the kernels'
    dK/dV pass, derived from the query lists themselves (so they agree with the forward's
    gathers, q_offset's shifted rows included) by one sort: no scatter."""
    bm, hm, rq, width = lists.shape
    n = rq * width
    col = jnp.where(jnp.arange(width) < counts[..., None], lists, rk).reshape(bm, hm, n)
    order = jnp.argsort(col, axis=-1, stable=True)  # by key block, then by r
    sorted_col = jnp.take_along_axis(col, order, axis=-1)
    find = lambda side: jax.vmap(jax.vmap(
        lambda s: jnp.searchsorted(s, jnp.arange(rk, dtype=s.dtype), side=side)))(sorted_col)
    first, end = find("left"), find("right")  # [Bm, Hm, Rk]
    at = first[..., None] + jnp.arange(width_k)  # [Bm, Hm, Rk, Wk]
    flat = jnp.take_along_axis(order, jnp.minimum(at, n - 1).reshape(bm, hm, -1), axis=-1)
    real = at < end[..., None]
    return jnp.where(real, flat.reshape(at.shape), 0), real


def backward_reference(q, k, v, o, lse, d_o, d_lse, *ctx, **params):
    """The VJP of `attention_reference`, deterministic on every platform: dQ sums over each
    query block's listed key blocks, dK and dV over each key block's listed query blocks
    (gathers and fixed-order sums, never a scatter-add, whose order XLA leaves to atomics on
    GPUs). P is recomputed from q and k (`o` and `lse` are not read, so the JVP of this
    function is that of the true gradient). With `dP = dO Vᵀ`, `delta = rowsum(P ∘ dP)`:
    `dS = P ∘ (dP − delta + dlse)`, `dQ = scale·dS K`, `dK = scale·dSᵀ Q`, `dV = Pᵀ dO`
    (FlashAttention-2, Dao 2023, Algorithm 2, with the lse cotangent added). With a soft cap
    `dS` takes the factor `1 - tanh²(s / cap)` of the capped scores."""
    del o, lse
    scale, bs, cap = params["scale"], params["block_size"], params.get("softcap", 0.0)
    qh, kg, vg, s, allowed = _gathered_scores(
        q, k, v, ctx, block_size=bs, causal=params["causal"], scale=scale,
        segments=params["segments"], softcap=cap)
    p, _ = _softmax(s, allowed)
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    rq, width = s.shape[2], s.shape[4]
    rk = -(-tk // bs)
    f32 = lambda x: x.astype(qh.dtype)
    do = _pad_to(f32(d_o), rq * bs, 1).transpose(0, 2, 1, 3).reshape(b, hq, rq, bs, d)
    dlse = _pad_to(f32(d_lse), rq * bs, 2).reshape(b, hq, rq, bs, 1, 1)
    dp = jnp.einsum("bhrid,bhrwjd->bhriwj", do, vg, precision="highest")
    delta = (p * dp).sum(axis=(-2, -1), keepdims=True)
    ds = p * (dp - delta + dlse) * soft_cap_slope(s, allowed, cap) * scale
    dq = jnp.einsum("bhriwj,bhrwjd->bhrid", ds, kg, precision="highest")
    dkg = jnp.einsum("bhriwj,bhrid->bhrwjd", ds, qh, precision="highest")
    dvg = jnp.einsum("bhriwj,bhrid->bhrwjd", p, do, precision="highest")

    counts, lists = ctx[LISTS], ctx[LISTS + 2]
    width_k = min(rq, ctx[LISTS + 6].shape[-1])  # a key block's listings: <= its key list
    flat, real = _key_block_slots(lists, counts, rk, width_k)  # [Bm, Hm, Rk, Wk]
    flat = jnp.broadcast_to(flat, (flat.shape[0], hq) + flat.shape[2:])
    real = jnp.broadcast_to(real, flat.shape)

    def by_key_block(x):  # [B, Hq, Rq, W, bs, D] -> [B, Tk, Hkv, D], a fixed-order sum
        x = jnp.take_along_axis(x.reshape(b, hq, rq * width, bs * d),
                                flat.reshape(flat.shape[:2] + (rk * width_k, 1)), axis=2)
        x = jnp.where(real.reshape(real.shape[:2] + (rk * width_k, 1)), x, 0)
        x = x.reshape(b, hkv, hq // hkv, rk, width_k, bs, d).sum(axis=(2, 4))
        return x.reshape(b, hkv, rk * bs, d)[:, :, :tk].transpose(0, 2, 1, 3)
    return (_rows_out(dq, tq).astype(q.dtype), by_key_block(dkg).astype(k.dtype),
            by_key_block(dvg).astype(v.dtype))


# ------------------------------------------------------------------------ primitives
attention_p = jint.define_primitive("blocksparse_attention", multiple_results=True)
attention_tangent_p = jint.define_primitive("blocksparse_attention_tangent",
                                            multiple_results=True)
attention_bwd_p = jint.define_primitive("blocksparse_attention_bwd", multiple_results=True)
# how many float operands come before the context operands
FLOAT_OPERANDS = {attention_p: 3, attention_tangent_p: 8, attention_bwd_p: 7}


def _out_avals(q, k, v):
    b, tq, hq, _ = q.shape
    return (_partitioning.result_aval(q, q.shape, q.dtype),
            _partitioning.result_aval(q, (b, hq, tq), _lse_dtype(q.dtype)))


def _abstract(prim):
    """The abstract eval of `prim`, with the shardings of explicitly sharded operands."""
    def rule(q, k, v, *rest, **params):
        if prim is attention_bwd_p:
            out = [_partitioning.result_aval(x, x.shape, x.dtype) for x in (q, k, v)]
        else:
            out = _out_avals(q, k, v)
        return tuple(_partitioning.with_shardings(_factors(prim), (q, k, v, *rest), out,
                                                  **params))
    return rule


_REFERENCES = {attention_p: attention_reference, attention_tangent_p: tangent_reference,
               attention_bwd_p: backward_reference}

# Sharding factors (`_partitioning`): batch entries `b` and kv heads `h` may be sharded
# (query heads are `(h, g)`: a kv head's group stays together); positions, the head dim
# and the block lists' rows stay whole. A context operand with a leading axis of 1 (shared
# by the batch) or a placeholder is replicated.
Q_DIMS, KV_DIMS, LSE_DIMS = ("b", "tq", ("h", "g"), "d"), ("b", "tk", "h", "d"), (
    "b", ("h", "g"), "tq")
_FLOAT_DIMS = {
    attention_p: ([Q_DIMS, KV_DIMS, KV_DIMS], [Q_DIMS, LSE_DIMS]),
    attention_tangent_p: ([Q_DIMS, KV_DIMS, KV_DIMS, Q_DIMS, LSE_DIMS, Q_DIMS, KV_DIMS,
                           KV_DIMS], [Q_DIMS, LSE_DIMS]),
    attention_bwd_p: ([Q_DIMS, KV_DIMS, KV_DIMS, Q_DIMS, LSE_DIMS, Q_DIMS, LSE_DIMS],
                      [Q_DIMS, KV_DIMS, KV_DIMS]),
}


def context_dims(name, aval, batch, heads, index):
    """The factors of one context operand: its leading axis is `b` when it carries the
    batch, its head axis `(h, g)` when it has a list per query head."""
    lead = "b" if aval.shape[0] == batch else f"x{index}_0"
    if name in ("kv_lengths", "q_positions", "q_rows"):
        return (lead,)
    if name.endswith("segment_ids"):
        t = "tq" if name.startswith("q") else "tk"
        return (lead, t if aval.shape[1] > 1 else f"x{index}_1")
    head = ("h", "g") if aval.shape[1] == heads else f"x{index}_1"
    line = ("rt" if name.startswith("tile_") else
            "rq" if "by_query" in name or name in ("counts", "lists") else "rk")
    rest = (f"w{index}",) if aval.ndim == 4 else ()
    return (lead, head, line) + rest


def _factors(prim):
    def factors(avals_in, avals_out, **params):
        floats, results = _FLOAT_DIMS[prim]
        b, _, hq, _ = avals_in[0].shape
        ctx = [context_dims(name, aval, b, hq, i) for i, (name, aval) in
               enumerate(zip(CONTEXT, avals_in[len(floats):]))]
        return _partitioning.factors_of(floats + ctx, results, {"b", "h"}, avals_in,
                                        avals_out)
    return factors


for _prim in (attention_p, attention_tangent_p, attention_bwd_p):
    _partitioning.define_partitioned(_prim, _abstract(_prim), _REFERENCES[_prim],
                                     _factors(_prim))


def _bind(prim, *args, **params):
    return prim.bind(*jint.match_varying_axes(*args), **params)


def _attention_jvp(primals, tangents, **params):
    q, k, v, *ctx = primals
    o, lse = _bind(attention_p, q, k, v, *ctx, **params)
    dq, dk, dv = (jint.instantiate(t) for t in tangents[:3])
    d_o, d_lse = _bind(attention_tangent_p, q, k, v, o, lse, dq, dk, dv, *ctx, **params)
    return (o, lse), (d_o, d_lse)


def _tangent_transpose(cts, q, k, v, o, lse, dq, dk, dv, *ctx, **params):
    for x in (q, k, v, o, lse, *ctx):
        if jint.is_undefined_primal(x):
            raise NotImplementedError("attention's tangent is linear in (dq, dk, dv) only")
    ct_o, ct_lse = cts
    if type(ct_o) is jint.Zero and type(ct_lse) is jint.Zero:
        grads = [jint.Zero(x.aval) for x in (dq, dk, dv)]
    else:
        ct_o = jnp.zeros(o.shape, o.dtype) if type(ct_o) is jint.Zero else ct_o
        ct_lse = jnp.zeros(lse.shape, lse.dtype) if type(ct_lse) is jint.Zero else ct_lse
        grads = _bind(attention_bwd_p, q, k, v, o, lse, ct_o, ct_lse, *ctx, **params)
    return [None] * 5 + [_partitioning.like_primal(g, x.aval) if jint.is_undefined_primal(x)
                         else None for g, x in zip(grads, (dq, dk, dv))] + [None] * len(ctx)


def _reference_jvp(prim, reference, array_positions):
    """A JVP rule for `prim` whose tangent is the JVP of its pure-JAX `reference`.

    `array_positions` are the float operands the reference depends on (`o` and `lse` are
    functions of q, k, v that the reference recomputes; the context operands are integers);
    the primal output still comes from `prim` (the fused kernels on a GPU). This makes the
    tangent and backward primitives differentiable to any order: second and higher
    derivatives of `attention` run on the pure-JAX path on every platform. In explicit
    sharding mode the reference runs with the mesh axes Auto (`_partitioning.auto_mode`)."""
    def rule(primals, tangents, **params):
        out = _bind(prim, *primals, **params)

        def tangent(primals, dots):
            def reference_of(*arrays):
                full = list(primals)
                for i, x in zip(array_positions, arrays):
                    full[i] = x
                return reference(*full, **params)
            arrays = [primals[i] for i in array_positions]
            return list(jax.jvp(reference_of, arrays, dots)[1])
        dots = [jint.instantiate(tangents[i]) for i in array_positions]
        return out, _partitioning.auto_mode(tangent, out)(list(primals), dots)
    return rule


jint.register_jvp(attention_p, _attention_jvp)
jint.register_transpose(attention_tangent_p, _tangent_transpose)
# attention_tangent_p(q, k, v, o, lse, dq, dk, dv, *ctx): depends on q, k, v, dq, dk, dv
jint.register_jvp(attention_tangent_p,
                  _reference_jvp(attention_tangent_p, tangent_reference, (0, 1, 2, 5, 6, 7)))
# attention_bwd_p(q, k, v, o, lse, d_o, d_lse, *ctx): depends on q, k, v, d_o, d_lse
jint.register_jvp(attention_bwd_p,
                  _reference_jvp(attention_bwd_p, backward_reference, (0, 1, 2, 5, 6)))


def _fold_batch(prim):
    """vmap: fold the mapped axis into the leading batch axis B of every operand. The float
    operands and `kv_lengths` always carry B (the kernels read `kv_lengths[b]`); the other
    context operands whose leading axis is 1 (shared by the batch: a static layout's lists,
    absent segment ids, the default query position) stay shared unless they are mapped;
    segment ids that are present always carry B (the fused forward reads them per batch
    entry)."""
    per_batch = FLOAT_OPERANDS[prim] + 1  # ... and kv_lengths, the first context operand
    segment_ids = {FLOAT_OPERANDS[prim] + CONTEXT.index(n)
                   for n in ("q_segment_ids", "kv_segment_ids")}

    def rule(args, dims, **params):
        args = [a if d is jint.not_mapped else jnp.moveaxis(a, d, 0)
                for a, d in zip(args, dims)]
        size = next(a.shape[0] for a, d in zip(args, dims) if d is not jint.not_mapped)
        batch = args[0].shape[0 if dims[0] is jint.not_mapped else 1]
        folded = []
        for i, (a, d) in enumerate(zip(args, dims)):
            if d is jint.not_mapped:
                if (i >= per_batch and a.shape[0] == 1 and  # shared by the batch: stays shared
                        not (params["segments"] and i in segment_ids)):
                    folded.append(a)
                    continue
                a = a[None]
            a = jnp.broadcast_to(a, (size, batch) + a.shape[2:])
            folded.append(a.reshape((size * batch,) + a.shape[2:]))
        outs = prim.bind(*folded, **params)
        return [o.reshape((size, batch) + o.shape[1:]) for o in outs], [0] * len(outs)
    return rule


for _prim in (attention_p, attention_tangent_p, attention_bwd_p):
    jint.register_batching(_prim, _fold_batch(_prim))


# ------------------------------------------------------------------------ public op
def _check_fp8(q, k, v):
    """Whether k and v are an fp8 KV cache (`FP8_DTYPES`); `ValueError` for fp8 q, for k
    and v of different fp8 dtypes, or fp8 k, v with q not bfloat16, float16 or float32."""
    if is_fp8(q.dtype):
        raise ValueError(f"attention: q has dtype {q.dtype}: fp8 queries are not supported "
                         "(only k and v may be fp8: a KV cache, with k_scale, v_scale)")
    if not (is_fp8(k.dtype) or is_fp8(v.dtype)):
        return False
    if k.dtype != v.dtype:
        raise ValueError(f"attention: an fp8 KV cache needs k and v of one fp8 dtype; got "
                         f"{k.dtype}, {v.dtype}")
    if not any(q.dtype == d for d in (jnp.bfloat16, jnp.float16, jnp.float32)):
        raise ValueError(f"attention: with fp8 k and v, q must be bfloat16, float16 or "
                         f"float32; got {q.dtype}")
    return True


def _check(q, k, v, mask, kv_lengths, positioned):
    fp8 = _check_fp8(q, k, v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"attention: {name} must be [B, T, H, D]; got shape {x.shape}")
        if name == "q" or not fp8:
            check_dtype("attention", name, x)
        if 0 in x.shape[1:]:  # an empty batch is fine: the result is empty
            raise ValueError(f"attention: {name} has an empty axis: {x.shape}")
    if not (q.dtype == k.dtype == v.dtype) and not fp8:
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
    if isinstance(mask, Layout):
        heads = mask.mask.shape[0] if mask.mask.ndim == 3 else 1
        batches, blocks, what = 1, mask.mask.shape[-2:], "layout"
    elif isinstance(mask, BlockMask):
        batches, heads, *blocks = mask.shape
        what = "BlockMask"
    else:
        raise ValueError(f"attention: mask must be a jax_blocksparse.Layout or BlockMask; "
                         f"got {type(mask).__name__}")
    if heads not in (1, hq):
        raise ValueError(f"attention: {what} has {heads} head masks; expected 1 or Hq={hq}")
    if batches not in (1, b):
        raise ValueError(f"attention: {what} has {batches} batch masks; expected 1 or B={b}")
    bs = mask.block_size
    want = (-(-tq // bs), -(-k.shape[1] // bs))
    if positioned and blocks[1] != want[1]:  # rows: positions, any number
        raise ValueError(f"attention: {what} has {blocks[1]} key blocks of {bs} but k needs "
                         f"{want[1]} (ceil(Tk/bs)) for Tk={k.shape[1]}")
    if not positioned and tuple(blocks) != want:
        raise ValueError(f"attention: {what} has {tuple(blocks)} blocks of {bs} but q and k "
                         f"need {want} (ceil(Tq/bs), ceil(Tk/bs)) for Tq={tq}, "
                         f"Tk={k.shape[1]}")
    if kv_lengths is not None:
        if kv_lengths.shape != (b,) or not jnp.issubdtype(kv_lengths.dtype, jnp.integer):
            raise ValueError(f"attention: kv_lengths must be an integer array [B={b}]; got "
                             f"{kv_lengths.dtype}{list(kv_lengths.shape)}")


def _segment_ids(q_segment_ids, kv_segment_ids, b, tq, tk):
    """The int32 `(q ids [B, Tq], kv ids [B, Tk])`, or shared placeholders `[1, 1]` when
    there are none; and whether there are."""
    if q_segment_ids is None:
        if kv_segment_ids is not None:
            raise ValueError("attention: kv_segment_ids needs q_segment_ids too")
        none = jnp.zeros((1, 1), jnp.int32)
        return none, none, False
    if kv_segment_ids is None:
        if tq != tk:
            raise ValueError(f"attention: q_segment_ids alone serve the keys only when "
                             f"Tq == Tk (got {tq}, {tk}); pass kv_segment_ids")
        kv_segment_ids = q_segment_ids
    ids = []
    for name, x, t in (("q_segment_ids", q_segment_ids, tq),
                       ("kv_segment_ids", kv_segment_ids, tk)):
        x = jnp.asarray(x)
        if x.shape != (b, t) or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"attention: {name} must be an integer array [B={b}, {t}]; got "
                             f"{x.dtype}{list(x.shape)}")
        ids.append(x.astype(jnp.int32))
    return ids[0], ids[1], True


def _context(mask, causal, tq, tk, offset=None, documents=None):
    """The block lists of `mask` as context operands (leading batch axis 1 or B), the
    bool `[Bm, Hm, Rq]` of query blocks whose lists overflowed (None for a Layout), and the
    int8 block kinds `[Bm, Hm, Rq, Rk]` the lists list (numpy for a Layout without
    documents). With `documents = (q_ids, kv_ids)` the lists are per batch entry and skip
    the block pairs of different documents (`attention_metadata.document_kinds`)."""
    if isinstance(mask, Layout):  # host lists, with a leading batch axis of 1
        meta, overflow = attention_metadata(mask, causal, tq, tk, offset), None
        kind = meta.kind[None]
        arrays = [jnp.asarray(x[None]) for x in (*meta.by_query, *meta.by_key)]
    else:
        meta, overflow = device_metadata(mask.mask, mask.block_size, causal, tq, tk,
                                         mask.max_blocks, offset)
        kind, arrays = meta.kind, [*meta.by_query, *meta.by_key]
    if documents is None:
        return arrays, overflow, kind
    widths = [x.lists.shape[-1] for x in (meta.by_query, meta.by_key)]
    kind = document_kinds(kind, *documents, mask.block_size)
    return [*block_lists(jnp, kind, widths[0]),
            *block_lists(jnp, jnp.swapaxes(kind, -1, -2), widths[1])], overflow, kind


def _tile_context(tiles, overflow, block_size, width, all_partial):
    """The tile operands of `attention_p` (`CONTEXT[TILES:]`): the lists of the 128 x 128
    tiles that the Hopper forward runs a fine mask (block size 16 or 32) on, and their bits
    (`attention_metadata.tile_lists`). `tiles`: a `TileLists` (a static layout's, from the
    host), or the fine block kinds `[Bm, Hm, R, Rk]` (tiled here, inside jit; `overflow`:
    their rows whose lists overflowed, NaN in the output, claim no tile, so that a tile
    row lists at most `128 / bs * width` tiles, `width` the fine lists' width), or None
    (other block sizes: `[1, 1, 1(, 1 or 2)]` placeholders that nothing reads).
    `all_partial`: every entry partial (q_offset with segment ids, as the fine lists)."""
    if tiles is None:
        zero = jnp.zeros((1, 1, 1), jnp.int32)
        return [zero, zero, jnp.full((1, 1, 1, 1), -1, jnp.int32), zero,
                jnp.zeros((1, 1, 1, 2), jnp.int32)]
    if not isinstance(tiles, TileLists):
        kind = tiles
        if overflow is not None:
            kind = jnp.where(overflow[..., None], 0, kind)
        f = TILE // block_size
        tiles = tile_lists(jnp, kind, block_size, min(-(-kind.shape[-1] // f), f * width))
    lists = list(tiles.lists)
    if all_partial:
        lists[1] = lists[0]
    return [*lists, tiles.bits]


def _positioned(q, q_ids, lists, overflow, q_offset, bs, rows, kind=None):
    """Queries placed at positions `q_offset[b] + i` of a mask with `rows` block rows.

    The queries of batch entry b move into a zero-padded buffer at slot `q_offset[b] % bs`,
    so that its block m is the mask's block row `q_offset[b] // bs + m`; the query lists are
    gathered per batch entry for those rows. Returns the padded q and ids, the by-query
    lists, the overflow flags of the rows, `q_positions [B]` (position of slot 0), the slots
    of the queries `[B, Tq]`, whether each query lies inside the mask `[B, Tq]`, and the
    block kinds `kind [Bm, Hm, rows, Rk]` (fine masks: None otherwise) at those rows (`[B,
    Hm, span, Rk]`, none for rows outside the mask): a 128-row tile of the buffer then
    covers `128 / bs` of its blocks, and q_positions stays the position of slot 0."""
    b, tq = q.shape[:2]
    span = -(-(bs - 1 + tq) // bs)  # block rows that Tq queries can touch
    first_row, shift = q_offset // bs, q_offset % bs
    row = first_row[:, None] + jnp.arange(span)  # [B, span]
    inside = (row >= 0) & (row < rows)
    counts, partial, lists_, order = lists[:4]
    by_query = [jnp.where(inside[:, None], _at_rows(counts, row), 0),
                jnp.where(inside[:, None], _at_rows(partial, row), 0), _at_rows(lists_, row),
                jnp.broadcast_to(jnp.arange(span, dtype=jnp.int32), (b, order.shape[1], span))]
    def place(x):  # explicit sharding mode: as x is sharded but on its positions
        pad = lambda x, s: jax.lax.dynamic_update_slice_in_dim(
            jnp.zeros((span * bs,) + x.shape[1:], x.dtype), x, s, axis=0)
        return _partitioning.auto_mode(jax.vmap(pad), _partitioning.unsharded(x, 1))(x, shift)
    q_pad = place(q)
    ids_pad = q_ids if q_ids.shape[1] == 1 else place(q_ids)
    if overflow is not None:
        overflow = _at_rows(overflow, row)
    slots = shift[:, None] + jnp.arange(tq)
    positions = q_offset[:, None] + jnp.arange(tq)
    if kind is not None:
        kind = jnp.where(inside[:, None, :, None], _at_rows(kind, row), 0).astype(jnp.int8)
    return (q_pad, ids_pad, by_query, overflow, first_row * bs, slots,
            (positions >= 0) & (positions < rows * bs), kind)


def _key_lists(by_query, rk, width):
    """The by-key lists (`[Bm, Hm, Rk, ...]`, `width` wide) of the by-query lists
    `by_query` (`[Bm, Hm, R, ...]`): for each of the `rk` key blocks the query blocks whose
    lists name it, partial where those have it partial (the same entries, seen from the
    keys), built inside `jit` by a comparison and a max: no scatter."""
    counts, partial, lists, _ = by_query
    slot = jnp.arange(lists.shape[-1])
    kinds = jnp.where(slot < partial[..., None], 1, jnp.where(slot < counts[..., None], 2, 0))
    named = lists[..., None] == jnp.arange(rk)  # [Bm, Hm, R, W, Rk] (padding -1: none)
    kind = jnp.where(named, kinds[..., None], 0).max(axis=-2).astype(jnp.int8)
    return block_lists(jnp, jnp.swapaxes(kind, -1, -2), width)


def attention(q, k, v, mask, *, causal: bool = False, scale: float | None = None,
              kv_lengths=None, q_segment_ids=None, kv_segment_ids=None, q_offset=None,
              page_table=None, return_lse: bool = False, sinks=None,
              logits_soft_cap: float | None = None, k_scale=None, v_scale=None):
    """Block-sparse (multi-head, grouped-query) attention.

    Args:
      q: `[B, Tq, Hq, D]`; k, v: `[B, Tk, Hkv, D]`, `Hq` a multiple of `Hkv`. dtypes
        bfloat16, float16, float32 or float64 (all the same); any head dim `D`; any
        lengths. Or an fp8 KV cache: k and v both `float8_e4m3fn` or both `float8_e5m2`
        with q bfloat16, float16 or float32 (see `k_scale`).
      mask: a static `Layout` with mask `[1 or Hq, Rq, Rk]` (or `[Rq, Rk]`), or a
        `BlockMask` `[1 or B, 1 or Hq, Rq, Rk]` (data, e.g. computed in the same `jit`),
        with `Rq = ceil(Tq / bs)`, `Rk = ceil(Tk / bs)`, any block size `bs`.
        Query i of head h attends to key j iff block `(i // bs, j // bs)` is in the mask,
        and, when `causal`, `j <= i + (Tk - Tq)` (bottom-right aligned), and, when
        `kv_lengths` is given, `j < kv_lengths[b]`, and, with segment ids, iff
        `q_segment_ids[b, i] == kv_segment_ids[b, j]`.
      causal: a Python bool (static).
      scale: score scale, a Python number (static), default `1 / sqrt(D)`.
      kv_lengths: optional int `[B]`, the number of valid keys of each batch entry.
        Keys that no query of the call attends (at or past `kv_lengths[b]`, in blocks or
        pages the call does not list, after the causal position of the call's last query)
        are never read into arithmetic, on every path: garbage there (a serving cache's
        NaN or inf) reaches no output or gradient. A key that some queries of a tile
        attend and others may not (the causal diagonal, two documents in one block) is
        read: a non-finite value there may reach the other queries of that tile.
      q_segment_ids: optional int `[B, Tq]`: the document of each query (packed
        sequences). kv_segment_ids: optional int `[B, Tk]`; defaults to `q_segment_ids`
        when Tq == Tk.
      q_offset: optional int, or int `[B]`: query i of batch entry b sits at position
        `p = q_offset[b] + i` of the mask's query axis (any number of block rows): it uses
        mask row `p // bs` and, when `causal`, attends keys `j <= p`. Decoding a token per
        sequence is `attention(q[:, None], k_cache, v_cache, layout, causal=True,
        q_offset=lengths - 1, kv_lengths=lengths)`. A query whose position lies outside
        the mask's rows outputs NaN.
      page_table: optional int `[B, pages_per_seq]`: k and v are then page pools
        `[P, page_size, Hkv, D]` (a paged KV cache, as serving engines keep it): key j of
        batch entry b is `k[page_table[b, j // page_size], j % page_size]`, and
        `Tk = pages_per_seq * page_size`. Pages may be shared and in any order. Entries
        the call does not need (pages wholly past `kv_lengths[b]` or holding no listed
        key) are never read, whatever they hold (`-1` padding is fine); an entry outside
        `[0, P)` that the call needs makes the rows of that batch entry NaN, never a read
        outside the pools.
      return_lse: also return the log-sum-exp `[B, Hq, Tq]` (float32; float64 for float64).
      sinks: optional float array `[Hq]` (any float dtype; computed in float32, float64
        for float64 inputs): attention sinks (StreamingLLM, Xiao et al. 2023; gpt-oss),
        one logit per query head in the units of the scaled scores. Row i of head h is
        then `o_i = sum_j exp(s_ij) v_j / (exp(sinks[h]) + sum_j exp(s_ij))` over its
        allowed keys and its log-sum-exp `log(exp(sinks[h]) + sum_j exp(s_ij))`; a row
        with no allowed key outputs 0 with lse `sinks[h]`. Differentiable (gradients
        flow to `sinks`).
      logits_soft_cap: optional Python float `> 0` (static): logit soft-capping (Gemma 2,
        Team Gemma 2024): the scaled scores become `cap * tanh(s / cap)` before the mask
        and the softmax; gradients include the factor `1 - tanh²(s / cap)`.
      k_scale, v_scale: the dequantization scales of an fp8 KV cache (fp8 k and v only):
        None (1.0), a positive Python float, or a float array `[Hkv]` (one per kv head).
        The keys are `k.astype(float32) * k_scale[h]` for kv head h, the values likewise
        `v.astype(float32) * v_scale[h]`; the scores and the softmax are computed as for
        float32 keys. Short queries (decode rows) take the scales inside the computation
        (the decode kernel reads the fp8 bytes where it runs); longer queries dequantize k
        and v to q's dtype first and run as a q-dtype call (an interim: the prefill kernels
        read bfloat16/float16). fp8 k and v and the scales are constants to
        differentiation (`jax.lax.stop_gradient`: zero gradients); `jax.grad` with respect
        to q works.
    Returns:
      `[B, Tq, Hq, D]` in q's dtype (and the lse). A row with no key to attend to
      outputs 0 (lse `-inf`) and passes zero gradients. The rows of a query block whose
      `BlockMask` row lists more than `max_blocks` key blocks are NaN.
    Raises:
      ValueError: at trace time, naming the argument: q, k, v not `[B, T, H, D]`, not of
        one dtype of those above, or of shapes that do not fit together (k and v, `B`,
        `D`, `Hq` not a multiple of `Hkv`); a mask that is not a `Layout` or `BlockMask`,
        or whose heads, batch or blocks do not fit q and k; `kv_lengths`, segment ids,
        `q_offset` or `page_table` that are not integer arrays of the shapes above; a
        `causal` that is not a Python bool, a `scale` that is not a finite Python number;
        `sinks` that is not a float array `[Hq]`; a `logits_soft_cap` that is not a
        positive finite Python number (a traced one included); fp8 q, k and v of
        different fp8 dtypes, fp8 k and v with q float64; `k_scale` or `v_scale` given for
        k, v that are not fp8, or not a positive Python float or a float array `[Hkv]`
        (non-positive values where they are known at trace time).
    Short queries (`Tq <= 16`, no segment ids: decoding with a KV cache, one or a few
    tokens per sequence) run the decode primitive (`attention_decode.py`): on an NVIDIA GPU,
    bfloat16/float16 q (k and v of its dtype, or an fp8 cache: the kernel reads the fp8
    bytes) with `D` in (64, 96, 128, 256), a block size and page size that are
    multiples of 16 run the split-KV decode kernel (`_cuda.decode_unsupported`), with any
    mask, `q_offset`, `kv_lengths` and paged cache; their derivatives are those of the same
    call through the longer queries' primitive (its backward: fused, or the deterministic
    pure-JAX one). Longer queries: bfloat16/float16 with
    `D` in (64, 128) and block size 64 or 128 (16, 32: below) run the fused kernels
    (`_cuda.fused_attention_unsupported`; a paged cache is gathered first): on Hopper
    (sm_90) the forward also at `D` 96 and 256, and with segment ids, any mask (a
    `BlockMask` with `Bm = B` too), any lengths and `q_offset` (with or without segment
    ids), and block sizes 16 and 32 too, at every head dim above (the block-128 kernel on
    128 x 128 tiles: a tile with some listed block is read whole, its unlisted blocks
    masked element-wise; keys of block columns that no query row of the tile lists are
    kept out of the output, as above); so does the backward at block size 128 where the
    Hopper backward runs (`_cuda.sm90_backward`: today when
    `JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=2` or `3`), without block sizes 16 and 32 (no fused
    backward: the pure-JAX one); the other backwards, and elsewhere the forward, with block
    size 64 or 128, a mask shared by the batch (a `Layout`, or a `BlockMask` with
    `Bm = 1`), no segment ids, lengths that are multiples of the block size and no
    `q_offset`. The forward and backward decide separately. Every other call runs the
    pure-JAX implementation (`JAX_BLOCKSPARSE_DEBUG=1` says so when the program is
    compiled). Sinks run wherever the call runs (they join each row after the kernels:
    `with_sinks`). A soft cap runs every kernel above (the Hopper forward and backward
    too) and the decode kernel; under `JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=4` (the one-pass
    backward, which takes no cap) a capped backward runs the FA2 backward, within its
    scope, else the pure-JAX path.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths)
    positioned = q_offset is not None
    paged = page_table is not None
    if paged:
        page_table = _check_pages(q, k, v, page_table)
        keys = jax.ShapeDtypeStruct((q.shape[0], page_table.shape[1] * k.shape[1]) +
                                    k.shape[2:], k.dtype)
        _check(q, keys, keys, mask, kv_lengths, positioned)
    else:
        _check(q, k, v, mask, kv_lengths, positioned)
    causal = static_bool("attention", "causal", causal)
    return_lse = static_bool("attention", "return_lse", return_lse)
    scales = _kv_scales(q, k, k_scale, v_scale)  # float32 [Hkv] each, or None: not fp8
    b, tq, _, d = q.shape
    tk = page_table.shape[1] * k.shape[1] if paged else k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else static_float("attention", "scale", scale)
    q_ids, kv_ids, segments = _segment_ids(q_segment_ids, kv_segment_ids, b, tq, tk)
    sinks = check_sinks("attention", sinks, q.shape[2])
    softcap = check_soft_cap("attention", logits_soft_cap)
    if kv_lengths is None:
        kv_lengths = jnp.full((b,), tk, jnp.int32)
    kv_lengths = kv_lengths.astype(jnp.int32)
    offset = None if q_offset is None else _q_offset(q_offset, b)
    if causal:  # keys after the last query's position: no query of the call attends them
        kv_lengths = jnp.minimum(kv_lengths, tk if offset is None else offset + tq)
    bs = mask.block_size
    if b == 0:  # an empty batch: the empty result
        o = jnp.zeros(q.shape, q.dtype)
        lse = jnp.zeros((0, q.shape[2], tq), _lse_dtype(q.dtype))
        return (o, lse) if return_lse else o
    rows = _mask_rows(mask)
    if offset is None:  # with segment ids: lists per batch entry, by document
        lists, overflow, kind = _context(mask, causal, tq, tk,
                                         documents=(q_ids, kv_ids) if segments else None)
    else:
        lists, overflow, kind = _context(mask, causal, rows * bs, tk, offset=0)
    tiles = None  # fine masks (block sizes 16, 32): their 128 x 128 tiles (_tile_context)
    if bs in FINE_BLOCKS:
        if isinstance(mask, Layout) and offset is None and not segments:  # host, cached
            host = tile_metadata(mask, causal, tq, tk)
            tiles = TileLists(AttentionLists(*(jnp.asarray(x[None]) for x in host.lists)),
                              jnp.asarray(host.bits[None]))
        else:  # the kinds, tiled inside jit (after the rows of q_offset are gathered)
            tiles = kind
    bad_pages = None  # [B]: batch entries that need a page outside the pools
    if paged:
        page_table, bad_pages = _checked_pages(page_table, k.shape, lists, offset, tq, bs,
                                               kv_lengths)
    context = (lists, overflow, kv_lengths, offset, page_table, q_ids, kv_ids, tiles)
    static = (("rows", rows), ("tk", tk), ("block_size", bs), ("causal", causal),
              ("scale", scale), ("segments", segments), ("softcap", softcap))
    if tq <= DECODE_MAX_QUERIES and not segments:
        o, lse = _short_queries(q, k, v, scales, context, static)
    else:
        if scales is not None:
            _debug.pure_path(f"attention q{list(q.shape)} k {k.dtype}",
                             f"fp8 KV cache: k and v dequantized to {q.dtype} before the "
                             "attention (the prefill kernels read bf16/f16 only)")
        o, lse = _prefill(q, k, v, *context, scales=scales, **dict(static))
    if sinks is not None:  # the sink joins each row's denominator (`with_sinks`)
        o, lse = _partitioning.auto_mode(with_sinks, (o, lse))(o, lse, sinks)
    if bad_pages is not None:
        o, lse = _nan_rows(o, lse, bad_pages[:, None, None])
    return (o, lse) if return_lse else o


def _kv_scales(q, k, k_scale, v_scale):
    """The scales of an fp8 KV cache, float32 `[Hkv]` each (`check_kv_scale`), as
    constants to differentiation; None when k and v are not fp8 (scales then raise)."""
    if not is_fp8(k.dtype):
        for name, x in (("k_scale", k_scale), ("v_scale", v_scale)):
            if x is not None:
                raise ValueError(f"attention: {name} applies to an fp8 KV cache only; k and "
                                 f"v have dtype {k.dtype}")
        return None
    hkv = k.shape[2]
    return tuple(jax.lax.stop_gradient(check_kv_scale("attention", name, x, hkv))
                 for name, x in (("k_scale", k_scale), ("v_scale", v_scale)))


def _dequantized(x, scale, dtype):
    """An fp8 cache `x [..., Hkv, D]` dequantized (`x * scale[h]` in float32) to `dtype`,
    a constant to differentiation."""
    x = jax.lax.stop_gradient(x)
    return (x.astype(jnp.float32) * scale[:, None]).astype(dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def _short_queries(q, k, v, scales, context, static):
    """Short queries: the decode primitive computes the values; their derivatives are those
    of the same call through `attention_p` (`_prefill`), whose backward is the fused one or
    the deterministic pure-JAX one (the decode primitive's own JVP would transpose into
    scatter-adds over the cache). `scales`: None, or the `(k_scale, v_scale)` of an fp8
    cache (then only q has a derivative). `context` and `static` as `_prefill` takes
    them."""
    lists, overflow, kv_lengths, offset, page_table, _, _, _ = context
    static = dict(static)
    del static["segments"]
    if scales is None:
        ones = jnp.ones((k.shape[2],), jnp.float32)
        scales = (ones, ones)
    return _decode(q, k, v, lists, overflow, static.pop("rows"), kv_lengths, offset,
                   page_table, *scales, **static)


@_short_queries.defjvp
def _short_queries_jvp(static, primals, tangents):
    q, k, v, scales, context = primals
    out = _short_queries(q, k, v, scales, context, static)
    if scales is None:
        prefill = lambda q, k, v: _prefill(q, k, v, *context, **dict(static))
        return out, jax.jvp(prefill, (q, k, v), tuple(tangents[:3]))[1]
    prefill = lambda q: _prefill(q, k, v, *context, scales=scales, **dict(static))
    return out, jax.jvp(prefill, (q,), (tangents[0],))[1]


def _prefill(q, k, v, lists, overflow, kv_lengths, offset, page_table, q_ids, kv_ids, tiles,
             *, rows, tk, block_size, causal, scale, segments, softcap, scales=None):
    """Queries through `attention_p`; NaN for rows outside the mask or whose `BlockMask` row
    overflowed. `tiles`: None, or the tile lists of a fine mask (`TileLists`), or its block
    kinds `[Bm, Hm, R, Rk]` to tile here (`_tile_context`). `scales`: None, or the
    `(k_scale, v_scale)` of an fp8 cache, which is dequantized to q's dtype here (after a
    paged cache's gather: only the pages of the call). Returns (o, lse)."""
    b, tq = q.shape[:2]
    bs = block_size
    positioned = offset is not None
    if page_table is not None:  # the fused kernels read contiguous caches: gather the pages
        like = _partitioning.unsharded(k, (0, 1))  # explicit mode: heads and dims as the pool
        k, v = _partitioning.auto_mode(lambda k, v: (paged_keys(k, page_table),
                                                     paged_keys(v, page_table)),
                                       (like, like))(k, v)
    if scales is not None:
        k, v = (_dequantized(x, sc, q.dtype) for x, sc in zip((k, v), scales))
    if not positioned:
        q_positions = jnp.full((1,), tk - tq, jnp.int32)  # bottom-right aligned
        q_in, ids_in = q, q_ids
    else:
        key_width = min(-(-(bs - 1 + tq) // bs), lists[4 + 2].shape[-1])
        q_in, ids_in, by_query, overflow, q_positions, slots, inside, tiles = _positioned(
            q, q_ids, lists, overflow, offset, bs, rows, tiles)
        if segments:  # lists not refined by documents: every entry compares ids
            by_query = [by_query[0], by_query[0], *by_query[2:]]  # partial = counts
        # the by-key lists of the positioned query blocks, per batch entry (the fused
        # backward's dK/dV pass): with segment ids every entry partial too, as by query
        lists = [*by_query, *_key_lists(by_query, -(-tk // bs), key_width)]
    tile_ops = _tile_context(tiles, overflow, bs, lists[2].shape[-1],
                             all_partial=positioned and segments)
    o, lse = _bind(attention_p, q_in, k, v, kv_lengths, q_positions,
                   ids_in, kv_ids, *lists, *tile_ops, block_size=bs, causal=causal,
                   scale=scale, segments=segments, positioned=positioned, softcap=softcap)
    bad = None  # [B or 1, H or 1, Tq]: rows that are NaN, never silently wrong
    if overflow is not None:
        bad = jnp.repeat(overflow, bs, axis=-1)  # [Bm, Hm, rows of the operands]
    if positioned:
        o, lse = _partitioning.auto_mode(lambda o, lse, slots: (
            jnp.take_along_axis(o, slots[:, :, None, None], axis=1),
            jnp.take_along_axis(lse, slots[:, None, :], axis=2)), (o, lse))(o, lse, slots)
        if bad is not None:
            bad = jnp.take_along_axis(jnp.broadcast_to(bad, (b,) + bad.shape[1:]),
                                      slots[:, None, :], axis=2)
        bad = ~inside[:, None, :] if bad is None else bad | ~inside[:, None, :]
    if bad is not None:
        o, lse = _nan_rows(o, lse, bad[..., :tq])
    return o, lse


def _checked_pages(page_table, pool_shape, lists, offset, tq, bs, kv_lengths):
    """A page table safe to read, and the bool `[B]` of batch entries that need a page id
    outside the pools (`pool_shape`: `[P, page_size, ...]`).

    A page is needed when it holds a key that some query of the call may attend: in a key
    block listed by a mask row of the call's queries, before `kv_lengths[b]` (which the
    caller has already cut at the last query's causal position). Ids of pages the call does
    not need are never read, whatever they hold (serving engines pad tables with -1); an
    out-of-range id that is needed makes that batch entry's rows NaN, never a read outside
    the pools. Out-of-range ids become page 0 in the table the kernels read."""
    b, pages_per_seq = page_table.shape
    pool_pages, page_size = pool_shape[:2]
    tk = pages_per_seq * page_size
    rk = -(-tk // bs)
    counts, _, block_lists, _ = lists[:4]  # [Bm, Hm, R], [Bm, Hm, R, W]
    rows, width = block_lists.shape[2:]
    first = jnp.zeros((b,), jnp.int32) if offset is None else offset
    span = -(-(bs - 1 + tq) // bs)  # mask rows the queries can touch
    row = first[:, None] // bs + jnp.arange(span)  # [B, span]
    listed = (((row >= 0) & (row < rows))[:, None, :, None]
              & (jnp.arange(width) < _at_rows(counts, row)[..., None]))  # [B, Hm, span, W]
    block = jnp.where(listed, _at_rows(block_lists, row), rk)  # unlisted: a dropped column
    used = jnp.zeros((b, rk + 1), jnp.bool_).at[
        jnp.arange(b)[:, None, None, None], block].set(True)[:, :rk]  # [B, Rk]
    keys = jnp.repeat(used, bs, axis=1)[:, :tk] & (jnp.arange(tk) < kv_lengths[:, None])
    needed = keys.reshape(b, pages_per_seq, page_size).any(axis=-1)
    in_pools = (page_table >= 0) & (page_table < pool_pages)
    return jnp.where(in_pools, page_table, 0), (needed & ~in_pools).any(axis=1)


def _q_offset(q_offset, b):
    """`q_offset` as int32 `[B]` (an int or a scalar serves every batch entry)."""
    q_offset = jnp.asarray(q_offset)
    if not jnp.issubdtype(q_offset.dtype, jnp.integer) or q_offset.shape not in ((), (b,)):
        raise ValueError(f"attention: q_offset must be an int or an integer array [B={b}]; "
                         f"got {q_offset.dtype}{list(q_offset.shape)}")
    return jnp.broadcast_to(q_offset.astype(jnp.int32), (b,))


def _check_pages(q, k, v, page_table):
    """Validate a paged cache (pools `[P, page_size, Hkv, D]`); the table as int32."""
    b, d = q.shape[0], q.shape[3]
    page_table = jnp.asarray(page_table)
    if page_table.ndim != 2 or page_table.shape[0] != b or page_table.shape[1] == 0 or \
            not jnp.issubdtype(page_table.dtype, jnp.integer):
        raise ValueError(f"attention: page_table must be an integer array [B={b}, "
                         f"pages_per_seq]; got {page_table.dtype}{list(page_table.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.ndim != 4 or x.shape[3] != d or 0 in x.shape:
            raise ValueError(f"attention: with page_table, {name} must be a page pool "
                             f"[P, page_size, Hkv, D={d}]; got shape {x.shape}")
    return page_table.astype(jnp.int32)


def _mask_rows(mask) -> int:
    """The number of block rows of a `Layout` or `BlockMask`."""
    return mask.shape[-2] if isinstance(mask, BlockMask) else mask.mask.shape[-2]


def _decode(q, k, v, lists, overflow, rows, kv_lengths, offset, page_table, k_scale,
            v_scale, *, tk, block_size, causal, scale, softcap):
    """Short queries through the decode primitive (keys `Tk = tk`; `lists` the mask's
    query lists): the mask rows of the queries, their causal positions, and NaN for rows
    outside the mask or whose `BlockMask` row overflowed. Returns (o, lse)."""
    from .attention_decode import decode  # the decode module builds on this one's rules

    b, tq = q.shape[:2]
    bs = block_size
    if offset is None:  # query i on mask row i // bs, causal bottom-right aligned
        q_rows = jnp.zeros((b,), jnp.int32)
        q_positions = jnp.full((b,), tk - tq, jnp.int32)
    else:
        q_rows = q_positions = offset
    counts, _, block_lists, _ = lists[:4]
    paged = page_table is not None
    table = page_table if paged else jnp.zeros((1, 1), jnp.int32)
    o, lse = decode(q, k, v, kv_lengths, q_rows, q_positions, counts, block_lists, table,
                    k_scale, v_scale, block_size=bs, causal=causal, scale=scale, paged=paged,
                    softcap=softcap)
    row = (q_rows[:, None] + jnp.arange(tq)) // bs  # [B, Tq]
    bad = ((row < 0) | (row >= rows))[:, None, :]  # [B, 1, Tq]
    if overflow is not None:  # [Bm, Hm, R] -> [B, Hm, Tq]
        bad = bad | _at_rows(overflow, row)
    return _nan_rows(o, lse, bad)
