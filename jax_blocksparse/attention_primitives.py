"""The fused block-sparse attention primitives (`attention.attention` binds them; the
decode primitive, `attention_decode`, builds on their rules and pure-JAX pieces).

Three primitives (DESIGN.md §3), no `custom_vjp`. Each takes its float operands followed by
the same integer *context* operands, `(kv_lengths, q_positions, q_segment_ids,
kv_segment_ids, *by_query, *by_key)` (`q_positions [B or 1]`: the causal position of query
0; `by_query`, `by_key`: the four arrays of `AttentionLists`, with a leading batch axis of 1
or B; query block `r` of the operands uses line `r` of the lists): the kernels read the
block lists from operands, so a static `Layout` (lists computed on the host) and a traced
`BlockMask` (lists computed inside `jit`) share every primitive and kernel.
  - `attention_p(q, k, v, sinks, *ctx) -> (o, lse)`: the forward; saves the float32
    log-sum-exp of every query row.
  - `attention_tangent_p(q, k, v, o, lse, q̇, k̇, v̇, sinks, *ctx) -> (ȯ, lsė)`: the JVP's
    tangent, linear in `q̇, k̇, v̇`. With `S = scale·QKᵀ` masked and `P = exp(S − lse)`:
    `lsė = rowsum(P ∘ Ṡ)`, `ȯ = (P ∘ (Ṡ − lsė)) V + P V̇`.
  - `attention_bwd_p(q, k, v, o, lse, dO, dlse, sinks, *ctx) -> (dq, dk, dv)`: the
    transpose of the tangent, i.e. the fused backward. `jax.grad` runs only this one.
The context ends with the tile lists (`tile_*`, `TILES`: `attention_metadata.tile_lists`):
for a mask of block size 16 or 32, and of 64 where the Hopper backward runs, the lists of
the 128 x 128 tiles that the Hopper kernels run it on, with the bits of the mask blocks
each listed tile covers (placeholders for other block sizes); only those kernels'
lowerings read them (block 64: the backward's, where `attention` built them:
`_cuda.backward_tile_context`; else placeholders with no tile lines).
Each primitive also takes the static `softcap` (logit soft-capping, 0: none): the scaled
scores are `soft_cap(S) = cap·tanh(S/cap)` before the mask, so `Ṡ` and `dS` above take the
factor `1 − tanh²(S/cap)`. Attention sinks are the last float operand, `sinks`: float32
`[Hq]` (float64 for float64), or the placeholder `[0]` (`no_sinks`: none). A sink adds
`exp(sinks[h])` to each row's softmax denominator (`with_sinks`): the fused forwards start
each row's online softmax from it (no pass over `o` after the kernels), the references
apply `with_sinks` to the keys' result. `lse` then includes the sink, so `P = exp(S − lse)`
above is the sink-normalised one and the tangent and backward need no more (their
references recompute the same P from `sinks`); the sinks' own tangent and gradient are
computed in JAX beside them (`_sink_tangent`). The decode primitive keeps `with_sinks` as
a pass after it. The static `onepass_dq_slots` (2, 4 or 8) is the one-pass Hopper backward's
dQ slot count (`_cuda.onepass_dq_slots`: a static layout's lines; 2 for a traced mask);
only the CUDA backward's lowering reads it. The static `head_sections` (bool) asks the
Hopper forward for its grid in L2-sized sections of heads (`_cuda.forward_head_sections`:
a static layout's lines; False for a traced mask); only the CUDA forward's lowering reads
it. Neither changes the function computed.
The tangent and backward primitives have JVP rules of their own (the JVP of the pure-JAX
implementation), so attention is differentiable to any order.
The pure-JAX lowering (a block-gathered implementation: each query block attends to its
listed key blocks only, never the dense score matrix) serves every platform; on CUDA the
forward and backward lower to the fused kernels where the C++ dispatch table has them
(`_cuda.fused_attention_unsupported`).
Under a sharded `jit` each primitive runs on each device's shards of batch entries and
heads (`_partitioning`, the factors below).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _jax_internals as jint
from . import _partitioning
from .attention_metadata import AttentionLists

CONTEXT = ("kv_lengths", "q_positions", "q_segment_ids", "kv_segment_ids") + tuple(
    f"{side}_{field}" for side in ("by_query", "by_key") for field in AttentionLists._fields
) + tuple(f"tile_{field}" for field in AttentionLists._fields) + ("tile_bits",)
LISTS = CONTEXT.index("by_query_counts")  # where the block lists start in the context
# where the tile lists start (`TileLists`, by query tile: the four lists, then the bits):
# masks of block size 16 or 32 (and 64: the backward's) on the Hopper kernels' 128-row
# tiles; placeholders (`_tile_context`) for other block sizes
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
    `d sink[h] = -sum_{b, i} P_sink * delta`. Computed in float32 (float64 for float64).
    The decode path applies it after its kernel (one elementwise pass over o) and the
    pure-JAX forward reference after its softmax; the fused prefill forwards take the sinks
    as an operand instead and start each row's online softmax from the sink (the same
    result, no pass over o)."""
    f = _lse_dtype(o.dtype)
    keep, lse_all = keys_share(lse, sinks.astype(lse.dtype)[None, :, None])  # [1, Hq, 1]
    o = (o.astype(f) * jnp.swapaxes(keep, 1, 2)[..., None].astype(f)).astype(o.dtype)
    return o, lse_all


def keys_share(lse_keys, sink):
    """`(exp(lse_keys - lse'), lse')` with `lse' = logaddexp(lse_keys, sink)`: the keys'
    share of a row whose sink logit is `sink` (broadcast against `lse_keys`), 0 for a row
    with no key. A sink of `-inf` (a head without one) leaves the row as it is; such a row
    with no key has `lse' = -inf`, and the share and its derivatives stay finite there
    (`exp(-inf - -inf)` is never formed, nor `logaddexp`'s derivative at (-inf, -inf):
    NaN; that row's `lse'` has derivative 0)."""
    empty = lse_keys == -jnp.inf
    void = empty & (sink == -jnp.inf)  # no key and no sink
    lse_all = jnp.where(void, -jnp.inf, jnp.logaddexp(jnp.where(void, 0.0, lse_keys),
                                                      jnp.where(void, 0.0, sink)))
    share = jnp.exp(jnp.where(empty, 0.0, lse_keys - jnp.where(empty, 0.0, lse_all)))
    return jnp.where(empty, 0.0, share), lse_all


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


def _has_sinks(sinks) -> bool:
    """Whether the `sinks` operand holds sinks (`[Hq]`), not the placeholder `[0]`."""
    return sinks.shape[0] != 0


def no_sinks(q):
    """The placeholder `sinks` operand of the attention primitives (no sinks): `[0]`."""
    return jnp.zeros((0,), _lse_dtype(q.dtype))


def attention_reference(q, k, v, sinks, *ctx, block_size, causal, scale, segments,
                        positioned, softcap=0.0, onepass_dq_slots=2, head_sections=False):
    """Block-gathered attention. Returns `(o [B, Tq, Hq, D] in q's dtype, lse [B, Hq, Tq]
    float32)`. Rows with no allowed key give `o = 0`, `lse = -inf`, zero gradients.
    Query i attends key j only if `j <= q_positions[b] + i` when `causal`. `softcap`
    (0: none): the scaled scores are `soft_cap(s, softcap)` before the mask. `sinks [Hq]`
    (or `[0]`: none) join each row by `with_sinks` after the softmax (the fused forwards
    start each row's online softmax from the sink instead: the same result)."""
    del positioned, onepass_dq_slots, head_sections  # the kernels' business
    _, _, vg, s, allowed = _gathered_scores(q, k, v, ctx, block_size=block_size,
                                            causal=causal, scale=scale, segments=segments,
                                            softcap=softcap)
    p, lse = _softmax(s, allowed)
    o = jnp.einsum("bhriwj,bhrwjd->bhrid", p, vg, precision="highest")
    b, hq, rq, bs = lse.shape
    tq = q.shape[1]
    o, lse = _rows_out(o, tq).astype(q.dtype), lse.reshape(b, hq, rq * bs)[:, :, :tq]
    return with_sinks(o, lse, sinks) if _has_sinks(sinks) else (o, lse)


def tangent_reference(q, k, v, o, lse, dq, dk, dv, sinks, *ctx, **params):
    del o, lse
    forward = lambda q, k, v: attention_reference(q, k, v, sinks, *ctx, **params)
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


def backward_reference(q, k, v, o, lse, d_o, d_lse, sinks, *ctx, **params):
    """The VJP of `attention_reference`, deterministic on every platform: dQ sums over each
    query block's listed key blocks, dK and dV over each key block's listed query blocks
    (gathers and fixed-order sums, never a scatter-add, whose order XLA leaves to atomics on
    GPUs). P is recomputed from q and k (`o` and `lse` are not read, so the JVP of this
    function is that of the true gradient). With `dP = dO Vᵀ`, `delta = rowsum(P ∘ dP)`:
    `dS = P ∘ (dP − delta + dlse)`, `dQ = scale·dS K`, `dK = scale·dSᵀ Q`, `dV = Pᵀ dO`
    (FlashAttention-2, Dao 2023, Algorithm 2, with the lse cotangent added). With a soft cap
    `dS` takes the factor `1 - tanh²(s / cap)` of the capped scores. With `sinks`, P is
    the sink-normalised `exp(S - lse')` (`lse' = logaddexp(lse, sink)`), as the kernels
    read it from the forward's lse; the sinks' own gradient is not a result here
    (`_sink_tangent`)."""
    del o, lse
    scale, bs, cap = params["scale"], params["block_size"], params.get("softcap", 0.0)
    qh, kg, vg, s, allowed = _gathered_scores(
        q, k, v, ctx, block_size=bs, causal=params["causal"], scale=scale,
        segments=params["segments"], softcap=cap)
    p, lse_keys = _softmax(s, allowed)
    if _has_sinks(sinks):  # the keys' share of each row (0 for a row with no key)
        keep, _ = keys_share(lse_keys, sinks.astype(lse_keys.dtype)[None, :, None, None])
        p = p * keep[..., None, None]
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
FLOAT_OPERANDS = {attention_p: 4, attention_tangent_p: 9, attention_bwd_p: 8}
# the `sinks` operand: the last float operand of each (`[Hq]`, or `[0]`: none)
SINKS = {prim: n - 1 for prim, n in FLOAT_OPERANDS.items()}


def _out_avals(q, k, v):
    b, tq, hq, _ = q.shape
    return (_partitioning.result_aval(q, q.shape, q.dtype),
            _partitioning.result_aval(q, (b, hq, tq), _lse_dtype(q.dtype)))


def _abstract(prim):
    """The abstract eval of `prim`, with the shardings of explicitly sharded operands."""
    def rule(q, k, v, *rest, **params):
        sinks = rest[SINKS[prim] - 3]
        if sinks.ndim != 1 or sinks.shape[0] not in (0, q.shape[2]):
            raise ValueError(f"{prim.name}: sinks must be [Hq={q.shape[2]}] or [0] (none); "
                             f"got {sinks.dtype}{list(sinks.shape)}")
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
# `sinks [Hq]` is sharded with the query heads; its placeholder `[0]` is replicated
# (`_sinks_dims`: the last float operand's entry below is filled in by shape)
_FLOAT_DIMS = {
    attention_p: ([Q_DIMS, KV_DIMS, KV_DIMS, None], [Q_DIMS, LSE_DIMS]),
    attention_tangent_p: ([Q_DIMS, KV_DIMS, KV_DIMS, Q_DIMS, LSE_DIMS, Q_DIMS, KV_DIMS,
                           KV_DIMS, None], [Q_DIMS, LSE_DIMS]),
    attention_bwd_p: ([Q_DIMS, KV_DIMS, KV_DIMS, Q_DIMS, LSE_DIMS, Q_DIMS, LSE_DIMS, None],
                      [Q_DIMS, KV_DIMS, KV_DIMS]),
}


def _sinks_dims(aval):
    """The factors of the `sinks` operand: the query heads, or replicated (`[0]`)."""
    return (("h", "g"),) if _has_sinks(aval) else ("sinks0",)


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
        floats = floats[:-1] + [_sinks_dims(avals_in[len(floats) - 1])]
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


def _sink_tangent(o, lse, sinks, d_sinks, d_o, d_lse):
    """`(ȯ, lsė)` with the sinks' tangent `d_sinks [Hq]` added. With the sink in the row,
    `lse = logaddexp(lse_keys, sink)` and `o = sum_j exp(s_j - lse) v_j`, so with
    `P_sink = exp(sink - lse)`: `lsė += P_sink * ṡink` and `ȯ -= o * P_sink * ṡink`.
    Linear in `d_sinks` (o and lse are the forward's results): its transpose, JAX's, is the
    sinks' gradient `d sink[h] = -sum_{b, i} P_sink * (rowsum(dO * o) - dlse)` (as
    `with_sinks`'s). Computed in float32 (float64 for float64)."""
    def add(o, lse, d_o, d_lse, sinks, d_sinks):
        f = lse.dtype
        # P_sink; 0 where lse is -inf (a sink of -inf on a row with no key: never NaN)
        p_sink = jnp.exp(jnp.where(lse == -jnp.inf, -jnp.inf,
                                   sinks.astype(f)[None, :, None] - lse))
        w = p_sink * d_sinks.astype(f)[None, :, None]
        d_o = (d_o.astype(f) - o.astype(f) * jnp.swapaxes(w, 1, 2)[..., None]).astype(d_o.dtype)
        return d_o, d_lse + w
    return _partitioning.auto_mode(add, (d_o, d_lse))(o, lse, d_o, d_lse, sinks, d_sinks)


def _attention_jvp(primals, tangents, **params):
    q, k, v, sinks, *ctx = primals
    o, lse = _bind(attention_p, q, k, v, sinks, *ctx, **params)
    dq, dk, dv = (jint.instantiate(t) for t in tangents[:3])
    d_o, d_lse = _bind(attention_tangent_p, q, k, v, o, lse, dq, dk, dv, sinks, *ctx,
                       **params)
    if _has_sinks(sinks) and type(tangents[3]) is not jint.Zero:
        d_o, d_lse = _sink_tangent(o, lse, sinks, tangents[3], d_o, d_lse)
    return (o, lse), (d_o, d_lse)


def _tangent_transpose(cts, q, k, v, o, lse, dq, dk, dv, sinks, *ctx, **params):
    for x in (q, k, v, o, lse, sinks, *ctx):
        if jint.is_undefined_primal(x):
            raise NotImplementedError("attention's tangent is linear in (dq, dk, dv) only")
    ct_o, ct_lse = cts
    if type(ct_o) is jint.Zero and type(ct_lse) is jint.Zero:
        grads = [jint.Zero(x.aval) for x in (dq, dk, dv)]
    else:
        ct_o = jnp.zeros(o.shape, o.dtype) if type(ct_o) is jint.Zero else ct_o
        ct_lse = jnp.zeros(lse.shape, lse.dtype) if type(ct_lse) is jint.Zero else ct_lse
        grads = _bind(attention_bwd_p, q, k, v, o, lse, ct_o, ct_lse, sinks, *ctx,
                      **params)
    return [None] * 5 + [_partitioning.like_primal(g, x.aval) if jint.is_undefined_primal(x)
                         else None for g, x in zip(grads, (dq, dk, dv))] + [None] * (
                             1 + len(ctx))


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
# attention_tangent_p(q, k, v, o, lse, dq, dk, dv, sinks, *ctx): depends on q, k, v, dq,
# dk, dv, sinks
jint.register_jvp(attention_tangent_p, _reference_jvp(
    attention_tangent_p, tangent_reference, (0, 1, 2, 5, 6, 7, 8)))
# attention_bwd_p(q, k, v, o, lse, d_o, d_lse, sinks, *ctx): depends on q, k, v, d_o,
# d_lse, sinks
jint.register_jvp(attention_bwd_p,
                  _reference_jvp(attention_bwd_p, backward_reference, (0, 1, 2, 5, 6, 7)))


def _fold_batch(prim):
    """vmap: fold the mapped axis into the leading batch axis B of every operand. The float
    operands and `kv_lengths` always carry B (the kernels read `kv_lengths[b]`); the other
    context operands whose leading axis is 1 (shared by the batch: a static layout's lists,
    absent segment ids, the default query position) stay shared unless they are mapped;
    segment ids that are present always carry B (the fused forward reads them per batch
    entry). `sinks [Hq]` has no batch axis: unmapped it stays as it is; mapped (sinks per
    entry of the vmap: the kernels take one per head) the primitive runs once per entry
    of the mapped axis (`lax.map`)."""
    per_batch = FLOAT_OPERANDS[prim] + 1  # ... and kv_lengths, the first context operand
    sinks_at = SINKS[prim]
    segment_ids = {FLOAT_OPERANDS[prim] + CONTEXT.index(n)
                   for n in ("q_segment_ids", "kv_segment_ids")}

    def rule(args, dims, **params):
        args = [a if d is jint.not_mapped else jnp.moveaxis(a, d, 0)
                for a, d in zip(args, dims)]
        mapped = [d is not jint.not_mapped for d in dims]
        if mapped[sinks_at]:  # one call per entry of the mapped axis
            def one(xs):
                xs = iter(xs)
                return prim.bind(*[next(xs) if m else a for a, m in zip(args, mapped)],
                                 **params)
            outs = jax.lax.map(one, [a for a, m in zip(args, mapped) if m])
            return list(outs), [0] * len(outs)
        size = next(a.shape[0] for a, d in zip(args, dims) if d is not jint.not_mapped)
        batch = args[0].shape[0 if dims[0] is jint.not_mapped else 1]
        folded = []
        for i, (a, d) in enumerate(zip(args, dims)):
            if i == sinks_at:  # not mapped (above): per head, no batch axis
                folded.append(a)
                continue
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


