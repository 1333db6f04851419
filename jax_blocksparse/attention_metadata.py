"""The metadata of block-sparse attention: which key blocks each query block visits.

For a block mask `[..., Rq, Rk]` (leading axes: a batch axis `B or 1` and a head axis
`Hq or 1`), block size `bs` and sequence lengths `Tq`, `Tk` (`Rq = ceil(Tq / bs)`,
`Rk = ceil(Tk / bs)`), each listed block is
  - dropped when causality masks all of its pairs (query i sees key j iff
    `j <= i + offset`, offset = Tk - Tq: the bottom-right alignment of KV-cache decoding),
  - *partial* when some of its pairs need an element mask (the causal diagonal, or keys
    past `Tk` in the last block column),
  - *full* otherwise.
Lists keep partial blocks first, then full ones, each group in ascending order, padded with
-1 to a fixed width. The same lists by key block (its query blocks) serve the dK/dV pass of
the backward. `order` lists the lines of each mask head longest first. All int32.

One implementation serves both sources: a static `Layout` computes it once on the host with
numpy (`attention_metadata`, cached; leading axis `Hm`), and a traced `BlockMask` computes
it inside `jit` with jax.numpy (`device_metadata`; leading axes `Bm, Hm`), the lists
through one primitive (`lists_primitive`: a CUDA kernel on a GPU).

Masks of block size 16 or 32 run on the Hopper forward's 128 x 128 tiles (`tile_lists`;
the Hopper backward's too, and block 64 with mask sources: `tiled_blocks`):
a tile covers `(128 / bs)^2` mask blocks; it is listed when one of them is visited, full
when all of them are full, else partial, and each listed tile carries the bits of its
visited blocks (`TileLists.bits`), which the kernel joins to the element predicate of its
partial tiles. The Hopper backward also walks them by key tile (`key_tiles`: the transposed
tiles, the same words and partial flags).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import lists_primitive
from .layout import Layout


class AttentionLists(NamedTuple):
    counts: np.ndarray   # [..., lines]: listed blocks (at most the width)
    partial: np.ndarray  # [..., lines]: of which partial (listed first)
    lists: np.ndarray    # [..., lines, width], padded with -1
    order: np.ndarray    # [..., lines]: lines longest first


class TileLists(NamedTuple):
    """A fine mask (`tiled_blocks`) on `TILE x TILE` tiles: the tiles' lists, and per
    list entry the bits of the mask blocks it covers that are visited: bit `s * f + t`
    (`f = TILE / bs`) for mask block `(s, t)` of the tile, in a 64-bit word stored as two
    int32 (low word first). A list entry e of line r sits at `bits[..., r, 2e:2e + 2]`;
    padding entries have no bits. Full tiles have every bit set."""
    lists: AttentionLists  # [..., ceil(Tq / TILE)(, width)]
    bits: np.ndarray       # int32 [..., ceil(Tq / TILE), 2 * width]


class AttentionMetadata(NamedTuple):
    by_query: AttentionLists
    by_key: AttentionLists
    kind: np.ndarray  # int8 [..., Rq, Rk]: 0 absent or dropped, 1 partial, 2 full


def block_kinds(xp, mask, block_size: int, causal: bool, tq: int, tk: int,
                offset: int | None = None):
    """int8 `[..., Rq, Rk]`: 0 not visited, 1 partial (element mask), 2 full. Causal:
    query i sees key j iff `j <= i + offset` (default `Tk - Tq`)."""
    rq, rk = mask.shape[-2:]
    kind = xp.where(mask, 2, 0).astype(np.int8)
    c = np.arange(rk)[None, :]
    first_j, last_j = c * block_size, np.minimum((c + 1) * block_size, tk) - 1
    partial = np.broadcast_to(last_j - first_j + 1 < block_size, (rq, rk))  # cut by Tk
    if causal:
        r = np.arange(rq)[:, None]
        first_i, last_i = r * block_size, np.minimum((r + 1) * block_size, tq) - 1
        offset = tk - tq if offset is None else offset
        dropped = first_j > last_i + offset
        kind = xp.where(dropped, 0, kind).astype(np.int8)
        partial = partial | (last_j > first_i + offset)
    return xp.where(partial, xp.minimum(kind, 1), kind).astype(np.int8)


def document_kinds(kind, q_ids, kv_ids, block_size: int):
    """Block kinds `[Bm, Hm, Rq, Rk]` refined by documents (packed sequences), inside `jit`.

    `q_ids [B, Tq]`, `kv_ids [B, Tk]` are the segment ids (queries attend keys of their own
    document only). A (query block, key block) pair whose id ranges do not intersect is
    dropped; a pair whose two sides hold one and the same id keeps its kind (full stays
    full); every other listed pair becomes partial (the kernels compare ids element-wise
    there). Returns int8 `[B, Hm, Rq, Rk]`."""
    rq, rk = kind.shape[-2:]

    def ranges(ids, blocks):  # per block: (min, max) id; padding repeats the last id
        ids = jnp.pad(ids, ((0, 0), (0, blocks * block_size - ids.shape[1])), mode="edge")
        ids = ids.reshape(ids.shape[0], blocks, block_size)
        return ids.min(-1), ids.max(-1)
    (q_lo, q_hi), (k_lo, k_hi) = ranges(q_ids, rq), ranges(kv_ids, rk)
    meet = (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])
    same = ((q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :]
            & (q_lo[:, :, None] == k_lo[:, None, :]))
    meet, same = meet[:, None], same[:, None]  # [B, 1, Rq, Rk]
    kind = jnp.asarray(kind)
    return jnp.where(meet, jnp.where(same, kind, jnp.minimum(kind, 1)), 0).astype(jnp.int8)


TILE = 128  # the Hopper forward's tile (query rows and keys) for fine masks
FINE_BLOCKS = (16, 32)  # the block sizes that run on TILE x TILE tiles
# The block size whose backward also runs on TILE x TILE tiles: calls with a mask source
# (`documents`) that the FA2 backward at that block size lacks, and those whose tiles
# `attention` built (`_cuda.backward_tile_context`: masks that fill their tiles)
# (cuda/attention.h: TiledMaskBlock; the Hopper forward has rows of that block size).
TILED_BACKWARD_BLOCK = 64


def mask_sources(block_size: int, tq: int, tk: int, segments: bool, positioned: bool,
                 mask_batch: int) -> bool:
    """Whether an attention call has a mask source beyond a block mask shared by the batch
    over whole blocks: segment ids, `q_offset` (`positioned`), lists per batch entry
    (`mask_batch` > 1) or lengths `tq`, `tk` that are not multiples of `block_size`
    (the `documents` of the C++ dispatch, src/ffi_attention.cc)."""
    return bool(segments or positioned or mask_batch != 1 or tq % block_size
                or tk % block_size)


def tiled_blocks(block_size: int, documents: bool, *, backward: bool) -> bool:
    """Whether the fused kernels run a mask of `block_size` on TILE x TILE tiles with
    per-tile bits (`tile_lists`): `FINE_BLOCKS` in both phases; `TILED_BACKWARD_BLOCK` in
    the backward of calls with `documents` (`mask_sources`, or tile lists built)."""
    return block_size in FINE_BLOCKS or (
        backward and documents and block_size == TILED_BACKWARD_BLOCK)
# 2**i as int32 (bit 31 is the sign bit): sums of distinct ones are the bit words
_BIT_WEIGHTS = (np.uint32(1) << np.arange(32, dtype=np.uint32)).view(np.int32)


def tile_lists(xp, kind, block_size: int, width: int | None = None) -> TileLists:
    """The lists of the `TILE x TILE` tiles over fine block kinds `kind [..., Rq, Rk]` (0
    not visited, 1 partial, 2 full: after causality, documents, positions), `block_size`
    in `FINE_BLOCKS` or `TILED_BACKWARD_BLOCK` (`tiled_blocks`): a tile is listed when one
    of its blocks is visited, full (2) when all of them are full (blocks past the mask's
    edges are not), else partial (1). `width`:
    the lists' width (default, numpy only: the longest line's). Allowed pairs are those of
    the fine kinds exactly: a pair of a listed tile is allowed iff its block's bit is set
    and the element predicate (causal, kv_lengths, documents) holds, which every pair of a
    full fine block passes."""
    f = TILE // block_size
    *lead, rq, rk = kind.shape
    rqc, rkc = -(-rq // f), -(-rk // f)
    kind = xp.pad(kind, [(0, 0)] * len(lead) + [(0, rqc * f - rq), (0, rkc * f - rk)])
    blocks = xp.moveaxis(kind.reshape(*lead, rqc, f, rkc, f), -3, -2)  # [..., rqc, rkc, f, f]
    blocks = blocks.reshape(*lead, rqc, rkc, f * f)  # bit s * f + t: block (s, t)
    visited = blocks > 0
    coarse = xp.where(visited.any(-1), xp.where((blocks == 2).all(-1), 2, 1), 0)
    coarse = coarse.astype(np.int8)
    words = xp.pad(visited, [(0, 0)] * (len(lead) + 2) + [(0, 64 - f * f)])
    words = xp.where(words.reshape(*lead, rqc, rkc, 2, 32), _BIT_WEIGHTS, 0)
    words = words.sum(-1, dtype=np.int32)  # [..., rqc, rkc, 2]: exact (distinct bits)
    if width is None:
        width = max(int((coarse > 0).sum(-1).max(initial=0)), 1)
    lists = block_lists(xp, coarse, width)
    at = xp.maximum(lists.lists, 0)[..., None]  # [..., rqc, width, 1]
    bits = xp.take_along_axis(words, at, axis=-2)  # [..., rqc, width, 2]
    bits = xp.where((lists.lists >= 0)[..., None], bits, 0).astype(np.int32)
    return TileLists(lists, bits.reshape(*lead, rqc, 2 * width))


def _scatter_last(xp, shape, index, values):
    """Zeros of `shape` with `values` put at `index` along the last axis (`index` and
    `values` of one shape; where an index repeats, one of its values)."""
    if xp is np:
        out = np.zeros(shape, values.dtype)
        np.put_along_axis(out, index, values, axis=-1)
        return out
    return jnp.put_along_axis(jnp.zeros(shape, values.dtype), index, values, axis=-1,
                              inplace=False)


def key_tiles(xp, tiles: TileLists, rk: int) -> TileLists:
    """The by-key direction of by-query tile lists `tiles` (`[..., Rq(, 2 width)]`; `rk`
    key tiles): for key tile n its query tiles, partial first, each entry with the same
    partial flag and the same word as the (query tile, key tile) entry by query: bits
    `s * f + t` for the mask block in query row s, key column t of the tile, not
    transposed, so that the dQ and the dK/dV kernels apply one predicate. Lists `Rq`
    wide (at least 1)."""
    counts, partial, lists, _ = tiles.lists
    *lead, rq, width = lists.shape
    e = np.arange(width)
    listed = e < counts[..., None]
    kind = xp.where(listed, xp.where(e < partial[..., None], 1, 2), 0).astype(np.int8)
    col = xp.where(listed, lists, rk)  # unlisted entries: a dropped column rk
    words = tiles.bits.reshape(*lead, rq, width, 2)
    dense = [xp.swapaxes(_scatter_last(xp, (*lead, rq, rk + 1), col, x)[..., :rk], -1, -2)
             for x in (kind, words[..., 0], words[..., 1])]  # [..., rk, rq] each
    key_width = max(rq, 1)
    by_key = block_lists(xp, dense[0], key_width)
    at = xp.maximum(by_key.lists, 0)
    bits = xp.stack([xp.take_along_axis(w, at[..., :rq], axis=-1) for w in dense[1:]], -1)
    bits = xp.where((by_key.lists[..., :rq] >= 0)[..., None], bits, 0).astype(np.int32)
    if key_width > rq:  # no query tile (Tq = 0): one padding entry
        bits = xp.zeros((*lead, rk, key_width, 2), np.int32)
    return TileLists(by_key, bits.reshape(*lead, rk, 2 * key_width))


def block_lists(xp, kind, width: int) -> AttentionLists:
    """Lists along the last axis of `kind [..., lines, other]`, partial first, `width`
    entries each (a line with more listed blocks keeps its first `width`; `counts` then
    says `width`: the caller detects that from the mask). numpy computes them on the host;
    jax.numpy binds `lists_primitive.block_lists_p` (one CUDA kernel on a GPU, the same
    jax.numpy code elsewhere: the same arrays bit for bit)."""
    if xp is np:
        return AttentionLists(*lists_primitive.block_lists_reference(np, kind, width))
    return AttentionLists(*lists_primitive.block_lists(kind, width))


@functools.lru_cache(maxsize=64)
def attention_metadata(layout: Layout, causal: bool, tq: int, tk: int,
                       offset: int | None = None) -> AttentionMetadata:
    """Host metadata of a static `layout` (mask `[Hm, Rq, Rk]` or `[Rq, Rk]`); arrays with a
    leading axis `Hm`, lists as wide as the longest line."""
    mask = layout.mask if layout.mask.ndim == 3 else layout.mask[None]
    kind = block_kinds(np, mask, layout.block_size, causal, tq, tk, offset)
    widths = [max(int((k > 0).sum(-1).max(initial=0)), 1)
              for k in (kind, np.swapaxes(kind, -1, -2))]
    return AttentionMetadata(block_lists(np, kind, widths[0]),
                             block_lists(np, np.swapaxes(kind, -1, -2), widths[1]), kind)


@functools.lru_cache(maxsize=64)
def tile_metadata(layout: Layout, causal: bool, tq: int, tk: int,
                  offset: int | None = None) -> TileLists:
    """Host tile lists (`tile_lists`) of a static `layout` of a tiled block size
    (`tiled_blocks`), leading axis `Hm`, from the same kinds as `attention_metadata`'s."""
    kind = attention_metadata(layout, causal, tq, tk, offset).kind
    return tile_lists(np, kind, layout.block_size)


def tile_fill(layout: Layout, causal: bool, tq: int, tk: int) -> float:
    """The fraction of the mask blocks in a static `layout`'s listed TILE x TILE tiles
    (`tile_metadata`) that it visits (after causality): 1 when every listed tile is all
    visited blocks. The kernels on those tiles compute every block of a listed tile, so
    this is the share of their products that are not discarded."""
    visited = int((attention_metadata(layout, causal, tq, tk).kind > 0).sum())
    f = TILE // layout.block_size
    return visited / max(f * f * int(tile_metadata(layout, causal, tq, tk).lists.counts.sum()), 1)


class LineStats(NamedTuple):
    """What a static layout's visited blocks (after causality) look like along its lines:
    `density`, the visited share of the `[Hm, Rq, Rk]` block grid; `query_line`, the
    longest query block's key blocks over Rk (1 for a global row); `key_line`, the longest
    key block's query blocks over Rq (1 for a global column)."""
    density: float
    query_line: float
    key_line: float


@functools.lru_cache(maxsize=64)
def line_stats(layout: Layout, causal: bool, tq: int, tk: int) -> LineStats:
    """`LineStats` of a static `layout` for a call of Tq `tq` and Tk `tk`, from
    `attention_metadata`'s block kinds (both cached: `attention` asks on every call)."""
    visited = attention_metadata(layout, causal, tq, tk).kind > 0
    rq, rk = visited.shape[-2:]
    return LineStats(float(visited.mean()) if visited.size else 0.0,
                     float(visited.sum(-1).max(initial=0) / max(rk, 1)),
                     float(visited.sum(-2).max(initial=0) / max(rq, 1)))


def device_metadata(mask, block_size: int, causal: bool, tq: int, tk: int, capacity: int,
                    offset: int | None = None) -> tuple[AttentionMetadata, jnp.ndarray]:
    """Metadata of a block mask `[Bm, Hm, Rq, Rk]` (a jax array, e.g. traced), computed with
    jax.numpy: query lists `capacity` wide, key lists `Rq` wide. Also returns the bool
    `[Bm, Hm, Rq]` of query blocks that list more than `capacity` key blocks, or None
    when none can (`capacity >= Rk`): the callers then skip the pass that puts NaN in
    such rows (a read and write of the whole output)."""
    kind = block_kinds(jnp, mask, block_size, causal, tq, tk, offset)
    overflow = None if capacity >= kind.shape[-1] else (kind > 0).sum(-1) > capacity
    if overflow is not None:  # such rows list nothing (NaN in the output; no gradient
        # reaches them), so that the key lists stay the query lists' transpose (the one-pass
        # backward's dQ order counts the adders of a query block by its list)
        kind = jnp.where(overflow[..., None], jnp.int8(0), kind)
    by_query = block_lists(jnp, kind, capacity)
    by_key = block_lists(jnp, jnp.swapaxes(kind, -1, -2), mask.shape[-2])
    return AttentionMetadata(by_query, by_key, kind), overflow
