"""Fused block-sparse attention: `attention(q, k, v, mask, causal=, scale=, kv_lengths=,
q_segment_ids=, kv_segment_ids=, q_offset=, page_table=, sinks=, logits_soft_cap=)`.

The primitives, their pure-JAX implementation and their rules live in
`attention_primitives` (their names are re-exported here); short queries take the decode
primitive (`attention_decode`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _cuda
from . import _partitioning
from . import _debug
from ._checks import (check_dtype, check_int, check_kv_scale, check_sinks, check_soft_cap,
                      is_fp8, static_bool, static_float)
from .attention_decode import decode
from .attention_metadata import (TILE, AttentionLists, TileLists, attention_metadata,
                                 block_lists, device_metadata, document_kinds, line_stats,
                                 mask_sources, tile_fill, tile_lists, tile_metadata)
from .attention_primitives import (_at_rows, _bind, _lse_dtype, _nan_rows, attention_p,
                                   no_sinks, paged_keys, with_sinks)
from .attention_primitives import (  # noqa: F401 (re-exported: the primitives' names)
    CONTEXT, FLOAT_OPERANDS, KV_DIMS, LISTS, LSE_DIMS, Q_DIMS, TILES, attention_bwd_p,
    attention_reference, attention_tangent_p, backward_reference, context_dims, soft_cap,
    soft_cap_slope, tangent_reference)
from .block_mask import BlockMask
from .layout import Layout

# Queries per sequence that take the decode primitive: at most 12, the crossover with the
# forward kernel measured on an H200 (benchmarks/decode.py --sweep, RESULTS.md 2026-12-03:
# B=8 Hq=64 Hkv=8 D=128 T=32768, decode 0.34 ms at Tq 1 plus 0.12 ms a query, the forward
# 1.70 ms at any Tq up to its 128-row tile); an fp8 cache up to the decode kernel's limit
# (the forward kernels read bf16/f16 only: there it would be dequantized first).
DECODE_MAX_QUERIES = 12
DECODE_FP8_MAX_QUERIES = _cuda.DECODE["max_queries"]


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
        check_int("attention", "mask.block_size", mask.block_size)
        check_int("attention", "mask.max_blocks", mask.max_blocks)
        if jnp.ndim(mask.mask) != 4 or jnp.result_type(mask.mask) != jnp.bool_:
            raise ValueError(f"attention: the BlockMask's mask must be bool [B or 1, H or 1, "
                             f"Rq, Rk] (BlockMask.from_mask makes one); got "
                             f"{jnp.result_type(mask.mask)} {jnp.shape(mask.mask)}")
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


def _fits_int32(dtype):
    """Whether every value of integer `dtype` is an int32 value."""
    return jnp.iinfo(dtype).min >= -2**31 and jnp.iinfo(dtype).max <= 2**31 - 1


def _saturated_int32(x, lo=-2**31, hi=2**31 - 1):
    """Integer array `x` as int32, its values clamped into `[lo, hi]` in its own dtype
    first: an int64 `2**32 + 5` stays large (not 5), a uint32 `2**31 + 5` positive."""
    info = jnp.iinfo(x.dtype)
    if info.min < lo or info.max > hi:
        x = jnp.clip(x, max(lo, info.min), min(hi, info.max))
    return x.astype(jnp.int32)


def _host_array(name, x):
    """Argument `name` as a numpy array, a JAX array unchanged: host integers stay on the
    host, where `jnp.asarray` would wrap those wider than int32 into int32 when
    `jax_enable_x64` is off (2**32 + 5 -> 5).

    Raises:
      ValueError: `x` is not an array of numbers (e.g. a ragged list).
    """
    if isinstance(x, jax.Array):
        return x
    try:
        return np.asarray(x)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"attention: {name} must be an integer array; {e}") from None


def _host_int(name, x, lo=-2**31, hi=2**31 - 1):
    """Integer argument `name` as a JAX array; a host value (Python ints of any size, a
    sequence, a numpy array) wider than int32 saturated into `[lo, hi]` on the host
    (`_host_array`). JAX arrays pass unchanged (`_saturated_int32` clamps them).

    Raises:
      ValueError: `x` holds something other than numbers.
    """
    host = _host_array(name, x)
    if isinstance(host, jax.Array):
        return host
    if host.dtype == object:  # Python ints beyond int64
        try:
            host = np.vectorize(lambda n: min(max(int(n), lo), hi), otypes=[np.int64])(host)
        except (TypeError, ValueError) as e:
            raise ValueError(f"attention: {name} must be an integer array; {e}") from None
    if host.dtype.kind in "iu" and not _fits_int32(host.dtype):
        info = np.iinfo(host.dtype)
        host = np.clip(host, max(lo, info.min), min(hi, info.max)).astype(np.int32)
    return jnp.asarray(host)


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
        x = _host_array(name, x)
        if x.shape != (b, t) or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"attention: {name} must be an integer array [B={b}, {t}]; got "
                             f"{x.dtype}{list(x.shape)}")
        if isinstance(x, np.ndarray) and not _fits_int32(x.dtype) and \
                (x.size == 0 or (x.min() >= -2**31 and x.max() < 2**31)):
            x = x.astype(np.int32)  # wide host ids whose values fit: exact
        ids.append(x)
    if all(_fits_int32(x.dtype) for x in ids):
        return jnp.asarray(ids[0], jnp.int32), jnp.asarray(ids[1], jnp.int32), True
    # ids wider than int32: each replaced by its rank among the batch entry's q and kv ids
    # (the index of its first occurrence in their sorted concatenation), which keeps the
    # equalities and the order that the masks and the tile skipping read; on the host for
    # host ids (exact with or without jax_enable_x64)
    on_host = all(isinstance(x, np.ndarray) for x in ids)
    if not on_host and jax.dtypes.canonicalize_dtype(np.int64) != np.int64:
        raise ValueError("attention: segment ids beyond int32 in a host array beside a JAX "
                         "array need jax_enable_x64 (or both as host arrays)")
    xp = np if on_host else jnp
    rank_of = lambda row: xp.searchsorted(xp.sort(row), row, side="left")
    joint = xp.concatenate(ids, axis=1)
    rank = np.stack([rank_of(row) for row in joint]) if on_host else jax.vmap(rank_of)(joint)
    rank = jnp.asarray(rank, jnp.int32).reshape(b, tq + tk)
    return rank[:, :tq], rank[:, tq:], True


def _context(mask, causal, tq, tk, offset=None, documents=None):
    """The block lists of `mask` as context operands (leading batch axis 1 or B), the
    bool `[Bm, Hm, Rq]` of query blocks whose lists overflowed (None for a Layout, or a
    `BlockMask` whose `max_blocks` is `Rk`: none can), and the
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
    tiles that the Hopper kernels run a fine mask on (block size 16 or 32; 64 where the
    Hopper backward runs: `_cuda.backward_tile_context`), and their bits
    (`attention_metadata.tile_lists`). `tiles`: a `TileLists` (a static layout's, from the
    host), or the fine block kinds `[Bm, Hm, R, Rk]` (tiled here, inside jit; `overflow`:
    their rows whose lists overflowed, NaN in the output, claim no tile, so that a tile row
    lists at most `128 / bs * width` tiles, `width` the fine lists' width), or None (other
    block sizes, and block-64 calls whose backward runs the FA2 rows:
    `_cuda.backward_tile_context`; `[1, 1, 0(, 1 or 2)]` placeholders that nothing reads).
    `all_partial`: every entry partial (q_offset with segment ids, as the fine lists)."""
    if tiles is None:  # no tile lines: never taken for a call's tiles (_cuda checks)
        zero = jnp.zeros((1, 1, 0), jnp.int32)
        return [zero, zero, jnp.zeros((1, 1, 0, 1), jnp.int32), zero,
                jnp.zeros((1, 1, 0, 2), jnp.int32)]
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


def _positioned(q, q_ids, lists, overflow, q_offset, bs, rows, kind=None, segments=False):
    """Queries placed at positions `q_offset[b] + i` of a mask with `rows` block rows.

    The queries of batch entry b move into a zero-padded buffer at slot `q_offset[b] % bs`,
    so that its block m is the mask's block row `q_offset[b] // bs + m`; the query lists are
    gathered per batch entry for those rows. Returns the padded q and ids, the by-query
    lists, the overflow flags of the rows, `q_positions [B]` (position of slot 0), the slots
    of the queries `[B, Tq]`, whether each query lies inside the mask `[B, Tq]`, and the
    block kinds `kind [Bm, Hm, rows, Rk]` (fine masks: None otherwise) at those rows (`[B,
    Hm, span, Rk]`, none for rows outside the mask): a 128-row tile of the buffer then
    covers `128 / bs` of its blocks, and q_positions stays the position of slot 0.
    `segments`: whether `q_ids` are segment ids `[B, Tq]` (placed like q; Tq may be 1)
    rather than the `[1, 1]` placeholder of a call without them."""
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
    ids_pad = place(q_ids) if segments else q_ids
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
      kv_lengths: optional int `[B]`, the number of valid keys of each batch entry
        (clamped into `[0, Tk]`; default: every key).
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
        Integer arguments of any width are taken by value: kv_lengths, q_offset and
        page_table entries outside int32 saturate (keeping their meaning above), and
        segment ids wider than int32 are compared exactly; host values (numpy arrays,
        Python ints) so with `jax_enable_x64` off too. (JAX itself narrows an int64
        argument of a jitted function to int32 when x64 is off, before this call sees
        it.)
      return_lse: also return the log-sum-exp `[B, Hq, Tq]` (float32; float64 for float64).
      sinks: optional float array `[Hq]` (any float dtype; computed in float32, float64
        for float64 inputs): attention sinks (StreamingLLM, Xiao et al. 2023; gpt-oss),
        one logit per query head in the units of the scaled scores. Row i of head h is
        then `o_i = sum_j exp(s_ij) v_j / (exp(sinks[h]) + sum_j exp(s_ij))` over its
        allowed keys and its log-sum-exp `log(exp(sinks[h]) + sum_j exp(s_ij))`; a row
        with no allowed key outputs 0 with lse `sinks[h]`. A sink of `-inf` is no sink
        for its head (such a row: 0, lse `-inf`, as without sinks). Differentiable
        (gradients flow to `sinks`).
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
        `q_offset` or `page_table` that are not integer arrays of the shapes above (or,
        with `jax_enable_x64` off, host segment ids beyond int32 beside segment ids that
        are a JAX array: they cannot be compared exactly); page pools `k`, `v` of
        different shapes; a
        `causal` that is not a Python bool, a `scale` that is not a finite Python number;
        `sinks` that is not a float array `[Hq]`; a `logits_soft_cap` that is not a
        positive finite Python number (a traced one included); fp8 q, k and v of
        different fp8 dtypes, fp8 k and v with q float64; `k_scale` or `v_scale` given for
        k, v that are not fp8, or not a positive Python float or a float array `[Hkv]`
        (non-positive values where they are known at trace time).
    Short queries (`Tq <= DECODE_MAX_QUERIES` = 12, up to 64 with an fp8 cache or where
    the decode kernel's GQA-packed Hopper form takes the call (`_decode_packed`); no
    segment ids: decoding with a KV cache, one or a few tokens per sequence) run the
    decode primitive (`attention_decode.py`): on an NVIDIA GPU,
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
    kept out of the output, as above); so does the backward where the Hopper backward runs
    (`_cuda.sm90_backward`: by default on sm_90a), at `D` 64, 128 and 256 (96 zero-padded to
    128; 256 on its own kernels unless JAX_BLOCKSPARSE_ATTN_BWD_D256=0), block size 128, and 16, 32 and 64 on
    its 128 x 128 tiles (64: with those mask sources, a `BlockMask`, or a `Layout` that fills its tiles:
    `_cuda.backward_tile_context`; other block-64 layouts the FA2 backward's rows); the
    other backwards, and elsewhere the forward, with block size 64 or 128, a mask
    shared by the batch (a `Layout`, or a `BlockMask` with `Bm = 1`), no segment ids,
    lengths that are multiples of the block size and no `q_offset`. The forward and backward
    decide separately. Every other call runs the pure-JAX implementation
    (`JAX_BLOCKSPARSE_DEBUG=1` says so when the program is compiled). Sinks run wherever the
    call runs: longer queries inside the forward kernels' online softmax (an operand of
    `attention_p`), short queries after the decode kernel (`with_sinks`). A soft cap runs
    every kernel above (the Hopper forward and backwards, the one-pass backward too) and the
    decode kernel.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if kv_lengths is not None:
        kv_lengths = _host_int("kv_lengths", kv_lengths)
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
    if kv_lengths is None:  # every key: any length >= Tk (the kernels and the pure path
        # compare or clamp), distinct so that XLA keeps a constant in memory (one whose
        # entries are all equal becomes a broadcast kernel launched on every call)
        kv_lengths = (np.minimum(tk + np.arange(b, dtype=np.int64), 2**31 - 1).astype(np.int32)
                      if isinstance(b, int) else  # a symbolic batch (jax.export)
                      jnp.full((b,), min(tk, 2**31 - 1), jnp.int32))
    kv_lengths = _saturated_int32(jnp.asarray(kv_lengths))
    offset = None if q_offset is None else _q_offset(q_offset, b)
    if causal and offset is not None:  # keys after the last query's position: no query of
        kv_lengths = jnp.minimum(kv_lengths, offset + tq)  # the call attends them
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
    # fine masks (block sizes 16, 32; 64 where the Hopper backward runs): their 128 x 128
    # tiles (_tile_context)
    tiles = None
    sources = mask_sources(bs, tq, tk, segments, offset is not None, lists[0].shape[0])
    if isinstance(mask, Layout) and offset is None and not segments:  # host, cached
        fill = functools.partial(tile_fill, mask, causal, tq, tk)
        if _cuda.backward_tile_context(bs, sources, fill):
            host = tile_metadata(mask, causal, tq, tk)
            tiles = TileLists(AttentionLists(*(jnp.asarray(x[None]) for x in host.lists)),
                              jnp.asarray(host.bits[None]))
    elif _cuda.backward_tile_context(bs, sources):  # the kinds, tiled inside jit (after
        tiles = kind  # the rows of q_offset are gathered)
    bad_pages = None  # [B]: batch entries that need a page outside the pools
    if paged:
        page_table, bad_pages = _checked_pages(page_table, k.shape, lists, offset, tq, bs,
                                               kv_lengths)
    context = (lists, overflow, kv_lengths, offset, page_table, q_ids, kv_ids, tiles)
    static = (("rows", rows), ("tk", tk), ("block_size", bs), ("causal", causal),
              ("scale", scale), ("segments", segments), ("softcap", softcap))
    short = DECODE_MAX_QUERIES if scales is None else DECODE_FP8_MAX_QUERIES
    packed = (not segments and short < tq <= _cuda.DECODE["max_queries"]
              and _decode_packed(q, k, lists, paged, bs, tk))
    if (tq <= short or packed) and not segments:
        o, lse = _short_queries(q, k, v, scales, context, static)
    else:
        if scales is not None:
            _debug.pure_path(f"attention q{list(q.shape)} k {k.dtype}",
                             f"fp8 KV cache: k and v dequantized to {q.dtype} before the "
                             "attention (the prefill kernels read bf16/f16 only)")
        # the one-pass Hopper backward's dQ slots and the forward's head sections
        # (_cuda.onepass_dq_slots, forward_head_sections: a static layout's lines, known
        # here; a traced mask's are not)
        static_lines = isinstance(mask, Layout) and offset is None
        stats = line_stats(mask, causal, tq, tk) if static_lines else None
        o, lse = _prefill(q, k, v, *context, scales=scales, sinks=sinks,
                          onepass_dq_slots=_cuda.onepass_dq_slots(stats),
                          head_sections=_cuda.forward_head_sections(stats), **dict(static))
        sinks = None  # inside the forward kernels' online softmax (attention_p's operand)
    if sinks is not None:  # short queries: the sink joins each row after the decode kernel
        o, lse = _partitioning.auto_mode(with_sinks, (o, lse))(o, lse, sinks)
    if bad_pages is not None:
        o, lse = _nan_rows(o, lse, bad_pages[:, None, None])
    return (o, lse) if return_lse else o


def _decode_packed(q, k, lists, paged, block_size, tk):
    """Whether the decode kernel's GQA-packed form runs this call (`_cuda.decode_form`:
    K and V read once per tile of 64 or 128 (query, head) rows on the Hopper wgmma
    pipeline; JAX_BLOCKSPARSE_DECODE_PACKED=0 turns it off);
    such calls take the decode primitive up to the kernel's limit of queries."""
    if not _cuda.cuda_available():
        return False
    b, tq, hq, d = q.shape
    block_lists = lists[2]  # [Bm, Hm, R, W] (_context)
    form = _cuda.decode_form(q.dtype, k.dtype, batch=b, tq=tq, tk=tk, hq=hq, hkv=k.shape[2],
                             head_dim=d, block_size=block_size,
                             mask_heads=block_lists.shape[1], width=block_lists.shape[-1],
                             page_size=k.shape[1] if paged else None)
    return form in ("packed", "packed64")


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
    del static["segments"], static["rows"]
    if scales is None:  # none: [0] (XLA makes an all-ones [Hkv] constant a broadcast kernel)
        none = np.zeros((0,), np.float32)
        scales = (none, none)
    return _decode(q, k, v, lists, overflow, kv_lengths, offset, page_table, *scales,
                   **static)


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
             *, rows, tk, block_size, causal, scale, segments, softcap, scales=None,
             sinks=None, onepass_dq_slots=2, head_sections=False):
    """Queries through `attention_p`; NaN for rows outside the mask or whose `BlockMask` row
    overflowed. `tiles`: None, or the tile lists of a fine mask (`TileLists`), or its block
    kinds `[Bm, Hm, R, Rk]` to tile here (`_tile_context`). `scales`: None, or the
    `(k_scale, v_scale)` of an fp8 cache, which is dequantized to q's dtype here (after a
    paged cache's gather: only the pages of the call). `sinks`: None or `[Hq]`, the
    attention sinks, an operand of `attention_p` (the fused forwards start each row's
    softmax from the sink). `onepass_dq_slots`, `head_sections`: the primitives' static
    parameters of those names (`_cuda.onepass_dq_slots`, `_cuda.forward_head_sections`).
    Returns (o, lse)."""
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
            q, q_ids, lists, overflow, offset, bs, rows, tiles, segments)
        if segments:  # lists not refined by documents: every entry compares ids
            by_query = [by_query[0], by_query[0], *by_query[2:]]  # partial = counts
        # the by-key lists of the positioned query blocks, per batch entry (the fused
        # backward's dK/dV pass): with segment ids every entry partial too, as by query
        lists = [*by_query, *_key_lists(by_query, -(-tk // bs), key_width)]
    tile_ops = _tile_context(tiles, overflow, bs, lists[2].shape[-1],
                             all_partial=positioned and segments)
    sinks = no_sinks(q) if sinks is None else sinks.astype(_lse_dtype(q.dtype))
    o, lse = _bind(attention_p, q_in, k, v, sinks, kv_lengths, q_positions,
                   ids_in, kv_ids, *lists, *tile_ops, block_size=bs, causal=causal,
                   scale=scale, segments=segments, positioned=positioned, softcap=softcap,
                   onepass_dq_slots=onepass_dq_slots, head_sections=head_sections)
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
    q_offset = _host_int("q_offset", q_offset, -2**30, 2**30)
    if not jnp.issubdtype(q_offset.dtype, jnp.integer) or q_offset.shape not in ((), (b,)):
        raise ValueError(f"attention: q_offset must be an int or an integer array [B={b}]; "
                         f"got {q_offset.dtype}{list(q_offset.shape)}")
    # +-2**30: outside any mask's rows either way, and `offset + Tq` stays in int32
    return jnp.broadcast_to(_saturated_int32(q_offset, -2**30, 2**30), (b,))


def _check_pages(q, k, v, page_table):
    """Validate a paged cache (pools `[P, page_size, Hkv, D]`); the table as int32."""
    b, d = q.shape[0], q.shape[3]
    page_table = _host_int("page_table", page_table)
    if page_table.ndim != 2 or page_table.shape[0] != b or page_table.shape[1] == 0 or \
            not jnp.issubdtype(page_table.dtype, jnp.integer):
        raise ValueError(f"attention: page_table must be an integer array [B={b}, "
                         f"pages_per_seq]; got {page_table.dtype}{list(page_table.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.ndim != 4 or x.shape[3] != d or 0 in x.shape:
            raise ValueError(f"attention: with page_table, {name} must be a page pool "
                             f"[P, page_size, Hkv, D={d}]; got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"attention: with page_table, k {k.shape} and v {v.shape} must be "
                         f"page pools of the same shape")
    return _saturated_int32(page_table)


def _mask_rows(mask) -> int:
    """The number of block rows of a `Layout` or `BlockMask`."""
    return mask.shape[-2] if isinstance(mask, BlockMask) else mask.mask.shape[-2]


def _decode(q, k, v, lists, overflow, kv_lengths, offset, page_table, k_scale, v_scale, *,
            tk, block_size, causal, scale, softcap):
    """Short queries through the decode primitive (keys `Tk = tk`; `lists` the mask's
    query lists): the mask rows of the queries, their causal positions, and NaN for rows
    whose `BlockMask` row overflowed (the primitive puts NaN in rows outside the mask).
    Returns (o, lse)."""
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
    if overflow is None:
        return o, lse
    row = (q_rows[:, None] + jnp.arange(tq)) // bs  # [B, Tq]
    return _nan_rows(o, lse, _at_rows(overflow, row))  # [Bm, Hm, R] -> [B, Hm, Tq]
