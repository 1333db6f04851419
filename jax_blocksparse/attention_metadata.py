"""Host-side metadata of block-sparse attention: which key blocks each query block visits.

For a layout mask `[Hm, Rq, Rk]` (Hm = 1 shared or one per query head), block size `bs`,
and optional causality (query i sees key j iff j <= i + offset, offset = Tk - Tq, the
bottom-right alignment that KV-cache decoding needs), each block is:
  - dropped when causality masks all of its pairs,
  - *partial* when causality masks some of its pairs (it needs an element mask),
  - *full* otherwise.
Lists keep partial blocks first, then full ones, each group in ascending order. The same
lists by key block (its query blocks) serve the dK/dV pass of the backward. `order` lists
the lines of each mask head longest first. All arrays are int32 (see cuda/attention.h).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .layout import Layout


class AttentionLists(NamedTuple):
    counts: np.ndarray   # [Hm, lines]
    partial: np.ndarray  # [Hm, lines]
    lists: np.ndarray    # [Hm, lines, max(longest, 1)], padded with -1
    order: np.ndarray    # [Hm, lines]


class AttentionMetadata(NamedTuple):
    by_query: AttentionLists
    by_key: AttentionLists
    kind: np.ndarray  # int8 [Hm, Rq, Rk]: 0 absent or dropped, 1 partial, 2 full


def block_kinds(mask: np.ndarray, block_size: int, causal: bool, offset: int) -> np.ndarray:
    """int8 `[Hm, Rq, Rk]`: 0 not visited, 1 partial (element mask), 2 full."""
    kind = np.where(mask, 2, 0).astype(np.int8)
    if causal:
        rq, rk = mask.shape[-2:]
        r = np.arange(rq)[:, None]
        c = np.arange(rk)[None, :]
        first_i, last_i = r * block_size, (r + 1) * block_size - 1
        first_j, last_j = c * block_size, (c + 1) * block_size - 1
        dropped = first_j > last_i + offset
        full = last_j <= first_i + offset
        kind = np.where(dropped, 0, np.where(full, kind, np.minimum(kind, 1))).astype(np.int8)
    return kind


def _lists(kind: np.ndarray) -> AttentionLists:
    """Lists along the last axis of `kind [Hm, lines, other]`, partial first."""
    hm, lines, _ = kind.shape
    counts = (kind > 0).sum(-1).astype(np.int32)
    partial = (kind == 1).sum(-1).astype(np.int32)
    width = max(int(counts.max(initial=0)), 1)
    lists = np.full((hm, lines, width), -1, np.int32)
    for h in range(hm):
        for line in range(lines):
            row = kind[h, line]
            entries = np.concatenate([np.flatnonzero(row == 1), np.flatnonzero(row == 2)])
            lists[h, line, :len(entries)] = entries
    order = np.argsort(-counts, axis=1, kind="stable").astype(np.int32)
    return AttentionLists(counts, partial, lists, order)


@functools.lru_cache(maxsize=64)
def attention_metadata(layout: Layout, causal: bool, tq: int, tk: int) -> AttentionMetadata:
    """The metadata of `layout` (mask `[Hm, Tq/bs, Tk/bs]` or `[Tq/bs, Tk/bs]`)."""
    mask = layout.mask if layout.mask.ndim == 3 else layout.mask[None]
    kind = block_kinds(mask, layout.block_size, causal, tk - tq)
    return AttentionMetadata(_lists(kind), _lists(np.swapaxes(kind, 1, 2)), kind)
