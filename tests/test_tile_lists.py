"""Masks of block size 16 and 32 on the Hopper forward's 128 x 128 tiles, and of block
size 64 with mask sources on the Hopper backward's (`attention_metadata.tile_lists`): the
tile lists and their bit words, expanded to element masks the way the kernel reads them (a
listed tile: every pair when full; when partial, the pairs whose block bit is set and that
pass the element predicate: causal, keys before Tk, segment ids), must give exactly the
pairs the fine mask allows, written out elementwise by brute force; a tile is listed only
when some pair in it is allowed (keys no query attends are never loaded). Random masks at
the three block sizes, causal or not, documents,
masks per batch entry and per head, Tq and Tk that are not multiples of 128; the host
(numpy) and device (jax.numpy) computations agree; through `attention` itself (its
primitive's operands) for static layouts, traced `BlockMask`s (overflowing rows too),
segment ids and q_offset. CPU only: no kernel runs here."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from jax_blocksparse.attention_metadata import (TILE, block_kinds, document_kinds,
                                                key_tiles, tile_lists)
from test_masks_from_data import allowed_pairs, packed_ids

att = sys.modules["jax_blocksparse.attention"]  # the module (the package exports the op)


def words(bits):
    """int32 `[..., lines, 2 W]` -> the 64-bit words `[..., lines, W]` (low word first)."""
    u = np.asarray(bits).view(np.uint32).astype(np.uint64)
    return u[..., 0::2] | (u[..., 1::2] << np.uint64(32))


def tile_pairs(counts, partial, lists, bits, bs, predicate, by_key=False):
    """bool `[Bm, Hm, lines * 128, cols * 128]`: the pairs the kernel attends, from the
    tile lists (`counts [Bm, Hm, lines]`, ...). `predicate` (bool `[B or 1, 1, lines * 128,
    cols * 128]`) is the element term the kernel evaluates on partial entries only (causal,
    j < Tk, segment ids). No tile is listed twice in a line. `by_key`: the lists are the
    backward's by-key ones (`key_tiles`: a line per key tile, entries query tiles; the
    words in the same (query row, key column) convention)."""
    counts, partial, lists = map(np.asarray, (counts, partial, lists))
    f = TILE // bs
    w = words(bits)
    bm, hm, lines = counts.shape
    rows_all, cols = predicate.shape[-2] // TILE, predicate.shape[-1] // TILE
    assert lines == (cols if by_key else rows_all)
    out = np.zeros((max(bm, predicate.shape[0]), hm, rows_all * TILE, cols * TILE), bool)
    for b, h, r in np.ndindex(out.shape[0], hm, lines):
        line = (min(b, bm - 1), h, r)
        listed = lists[line][:counts[line]]
        assert len(set(listed.tolist())) == len(listed) and (listed >= 0).all()
        for e, c in enumerate(listed):
            rows = slice((c if by_key else r) * TILE, ((c if by_key else r) + 1) * TILE)
            keys = slice((r if by_key else c) * TILE, ((r if by_key else c) + 1) * TILE)
            if e < partial[line]:
                word = int(w[line][e])
                block = np.array([[(word >> (s * f + t)) & 1 for t in range(f)]
                                  for s in range(f)], bool)
                pairs = np.kron(block, np.ones((bs, bs), bool)).astype(bool)
                pairs &= predicate[min(b, predicate.shape[0] - 1), 0, rows, keys]
            else:
                pairs = True
            out[b, h, rows, keys] = pairs
    return out


def element_predicate(b, lines, cols, tq, tk, causal, offset, q_ids=None, kv_ids=None):
    """The kernel's element term on a padded `[lines * 128, cols * 128]` grid: `[B or 1, 1,
    ...]`. `offset [B or 1]`: the position of query row 0 (causal: j <= i + offset)."""
    i = np.arange(lines * TILE)[:, None]
    j = np.arange(cols * TILE)[None, :]
    pred = np.broadcast_to(j < tk, (b, 1, lines * TILE, cols * TILE)).copy()
    if causal:
        pred &= j <= i + np.asarray(offset).reshape(-1, 1, 1, 1)
    if q_ids is not None:
        pad = lambda x, n: np.pad(np.asarray(x), ((0, 0), (0, n - x.shape[1])),
                                  constant_values=-1)
        qi = pad(q_ids, lines * TILE)[:, None, :, None]
        ki = pad(kv_ids, cols * TILE)[:, None, None, :]
        pred &= qi == ki
    return pred


def check_tiles(tiles, bs, want, pred, tq, tk, needed=True):
    """The tiles' pairs equal `want` (bool `[B or 1, Hm, Tq, Tk]`) on the real rows and
    keys; with `needed`, every listed tile holds an allowed pair (its keys are needed:
    not with documents, whose block lists keep a block pair when both its documents and
    its causal pairs meet, not necessarily in one pair)."""
    got = tile_pairs(*tiles.lists[:3], tiles.bits, bs, pred)
    want = np.broadcast_to(want, got.shape[:2] + want.shape[2:])
    np.testing.assert_array_equal(got[:, :, :tq, :tk], want)
    check_key_tiles(tiles, bs, pred, got)
    counts, _, lists = map(np.asarray, tiles.lists[:3])
    for b, h, r in () if not needed else np.ndindex(got.shape[:2] + counts.shape[2:]):
        line = (min(b, counts.shape[0] - 1), h, r)
        for c in lists[line][:counts[line]]:
            assert want[b, h, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE].any(), (
                "a listed tile that no query attends", b, h, r, c)


def entries(tiles, by_key=False):
    """{(b, h, query tile, key tile): (partial, word)} of the listed entries."""
    counts, partial, lists = map(np.asarray, tiles.lists[:3])
    w = words(tiles.bits)
    out = {}
    for line in np.ndindex(counts.shape):
        for e in range(counts[line]):
            other = int(lists[line][e])
            pair = (other, line[2]) if by_key else (line[2], other)
            assert line[:2] + pair not in out
            out[line[:2] + pair] = (e < partial[line], int(w[line][e]))
    return out


def check_key_tiles(tiles, bs, pred, got):
    """The backward's by-key tile lists (`key_tiles`) of `tiles`: the same entries with
    the same partial flags and words (so both backward kernels apply one predicate),
    partial entries first in each line, the same pairs as by query (`got`); the device
    computation is the host one."""
    cols = pred.shape[-1] // TILE
    keys = key_tiles(np, tiles, cols)
    assert keys.lists.counts.shape == tiles.lists.counts.shape[:-1] + (cols,)
    assert entries(keys, by_key=True) == entries(tiles)
    by_key = tile_pairs(*keys.lists[:3], keys.bits, bs, pred, by_key=True)
    np.testing.assert_array_equal(by_key, got)
    counts, partial, lists, order = map(np.asarray, keys.lists)
    assert (partial <= counts).all()
    for line in np.ndindex(counts.shape):  # each group ascending, padding -1
        part, full = lists[line][:partial[line]], lists[line][partial[line]:counts[line]]
        assert (np.diff(part) > 0).all() and (np.diff(full) > 0).all()
        assert (lists[line][counts[line]:] == -1).all()
        assert sorted(order[line[:2]].tolist()) == list(range(cols))
    device = jax.jit(lambda *x: key_tiles(jnp, tiles._replace(
        lists=type(tiles.lists)(*x[:4]), bits=x[4]), cols))(
            *map(jnp.asarray, (*tiles.lists, tiles.bits)))
    for x, y in zip((*keys.lists, keys.bits), (*device.lists, device.bits)):
        np.testing.assert_array_equal(np.asarray(y), x)


def random_block_mask(rng, shape, density):
    return rng.random(shape) < density


SHAPES = {  # (Bm, Hm, B, Tq, Tk)
    "tails_1000_1100": (1, 1, 2, 1000, 1100),
    "per_head_512_384": (1, 3, 2, 512, 384),
    "per_batch_tq_lt_tk": (2, 1, 2, 200, 1000),
    "per_batch_per_head_999": (2, 2, 2, 999, 999),
}


@pytest.mark.parametrize("documents", [False, True], ids=["", "docs"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("bs", [16, 32, 64])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_tile_lists_give_exactly_the_fine_mask(shape, bs, causal, documents):
    bm, hm, b, tq, tk = SHAPES[shape]
    rng = np.random.default_rng([bs, causal, documents, list(SHAPES).index(shape)])
    rq, rk = -(-tq // bs), -(-tk // bs)
    mask = random_block_mask(rng, (bm, hm, rq, rk), 0.3)
    mask[..., :2, :] = False  # empty rows, and a full row
    mask[..., 3, :] = True
    kind = block_kinds(np, mask, bs, causal, tq, tk)
    q_ids = kv_ids = None
    if documents:
        kv_ids = np.asarray(packed_ids(rng, b, tk, bs // 2, 6 * bs))
        q_ids = kv_ids[:, tk - tq:] if tq <= tk else np.asarray(packed_ids(rng, b, tq, 5, 99))
        kind = np.asarray(document_kinds(kind, jnp.asarray(q_ids), jnp.asarray(kv_ids), bs))
    tiles = tile_lists(np, kind, bs)
    lines, cols = -(-tq // TILE), -(-tk // TILE)
    assert tiles.lists.counts.shape == kind.shape[:2] + (lines,)
    assert tiles.bits.shape == kind.shape[:2] + (lines, 2 * tiles.lists.lists.shape[-1])
    pred = element_predicate(b, lines, cols, tq, tk, causal, [tk - tq], q_ids, kv_ids)
    want = allowed_pairs(mask, bs, tq, tk, causal, np.full(b, tk), q_ids, kv_ids)
    check_tiles(tiles, bs, want, pred, tq, tk, needed=not documents)
    # full tiles need no predicate: every pair of theirs inside [Tq, Tk) is allowed
    assert (np.asarray(tiles.lists.partial) <= np.asarray(tiles.lists.counts)).all()
    # the device computation (inside jit) is the host one
    width = tiles.lists.lists.shape[-1]
    device = jax.jit(lambda k: tile_lists(jnp, k, bs, width))(jnp.asarray(kind))
    for x, y in zip((*tiles.lists, tiles.bits), (*device.lists, device.bits)):
        np.testing.assert_array_equal(np.asarray(y), x)


@pytest.mark.parametrize("bs", [16, 32, 64])
def test_tile_kinds_and_bits_by_hand(bs):
    """One tile row: a tile with every block full is full (no bits needed, all set), a
    tile with one visited block is partial with that block's bit, an empty one unlisted;
    bit s * f + t is block (s, t), the upper 32 bits in the second int32."""
    f = TILE // bs
    mask = np.zeros((f, 3 * f), bool)
    mask[:, :f] = True               # tile 0: full
    mask[f - 1, 2 * f + f - 1] = True  # tile 2: its last block only
    tiles = tile_lists(np, block_kinds(np, mask[None], bs, False, TILE, 3 * TILE), bs)
    counts, partial, lists, order = (np.asarray(x)[0, 0] for x in tiles.lists)
    assert counts == 2 and partial == 1 and list(lists) == [2, 0]
    w = words(tiles.bits)[0, 0]
    assert int(w[0]) == 1 << (f * f - 1)
    assert int(w[1]) == (1 << (f * f)) - 1
    if bs == 16:  # bit 63: the sign bit of the second int32
        assert int(np.asarray(tiles.bits)[0, 0, 1]) < 0


def primitive_operands(monkeypatch, fn):
    """The operands of `attention_p` when `fn()` runs (eagerly, on the CPU): a dict of the
    context operands by name, with the block size."""
    seen = []
    bind = att._bind

    def spy(prim, *args, **params):
        if prim is att.attention_p:
            seen.append((args, params))
        return bind(prim, *args, **params)
    monkeypatch.setattr(att, "_bind", spy)
    fn()
    (args, params), = seen
    names = ("q", "k", "v", "sinks") + att.CONTEXT
    return {n: np.asarray(a) for n, a in zip(names, args)}, params


def operand_tiles(ops):
    from jax_blocksparse.attention_metadata import AttentionLists, TileLists
    return TileLists(AttentionLists(*(ops[f"tile_{n}"] for n in AttentionLists._fields)),
                     ops["tile_bits"])


CALLS = {  # name: (bs, causal, Bm, Hm, B, Tq, Tk, Hq, traced, documents, q_offset)
    "layout_causal_tails": (16, True, 1, 1, 2, 1000, 1100, 2, False, False, None),
    "layout_per_head": (32, False, 1, 2, 1, 300, 520, 2, False, False, None),
    "traced_per_batch_per_head_causal": (32, True, 2, 2, 2, 640, 700, 2, True, False, None),
    "traced_overflow": (16, False, 1, 1, 1, 512, 512, 2, True, False, None),
    "layout_documents_causal": (16, True, 1, 1, 2, 700, 700, 2, False, True, None),
    "traced_documents": (32, False, 2, 1, 2, 500, 600, 2, True, True, None),
    "q_offset_causal": (16, True, 1, 1, 2, 200, 1024, 2, False, False, [300, 811]),
    "q_offset_traced_per_head": (32, True, 2, 2, 2, 150, 900, 2, True, False, [5, 700]),
    "q_offset_documents": (16, True, 1, 1, 2, 180, 800, 2, False, True, [100, 600]),
    # block size 64 with a mask source: tiles for the Hopper backward
    "bs64_layout_tails_causal": (64, True, 1, 1, 2, 1000, 1100, 2, False, False, None),
    "bs64_traced_per_batch": (64, False, 2, 2, 2, 640, 768, 2, True, False, None),
    "bs64_documents_causal": (64, True, 1, 1, 2, 700, 700, 2, False, True, None),
    "bs64_q_offset_documents": (64, True, 1, 1, 2, 180, 800, 2, False, True, [100, 600]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_attention_passes_tile_lists_of_exactly_its_mask(monkeypatch, name):
    """What `attention` hands its primitive: the tile operands over the rows the kernel
    sees (q_offset: the padded query buffer at `q_positions`) give exactly the allowed
    pairs of every query, on every path (host lists of a layout, device lists of a traced
    BlockMask, documents, q_offset: positions and, with segment ids, every entry partial);
    rows of a BlockMask that overflow `max_blocks` (NaN in the output) claim no tile."""
    bs, causal, bm, hm, b, tq, tk, hq, traced, documents, offsets = CALLS[name]
    from jax_blocksparse import _cuda
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)  # block 64: tiles built there
    rng = np.random.default_rng(list(CALLS).index(name))
    rows = -(-tk // bs) if offsets is not None else -(-tq // bs)
    rk = -(-tk // bs)
    mask = random_block_mask(rng, (bm, hm, rows, rk), 0.35)
    max_blocks = None
    if name == "traced_overflow":  # rows of at most 6 blocks, but row 5: every block
        max_blocks = 6
        mask &= np.cumsum(mask, axis=-1) <= max_blocks
        mask[0, 0, 5] = True  # overflows: NaN rows, no tiles of their own
    q = jnp.zeros((b, tq, hq, 64), jnp.float32)
    k = jnp.zeros((b, tk, hq, 64), jnp.float32)
    q_ids = kv_ids = None
    if documents:
        kv_ids = np.asarray(packed_ids(rng, b, tk, bs // 2, 8 * bs))
        q_ids = (kv_ids[:, tk - tq:] if offsets is None else
                 np.stack([kv_ids[i, o:o + tq] for i, o in enumerate(offsets)]))

    def call():
        m = (jbs.BlockMask.from_mask(jnp.asarray(mask), bs, max_blocks=max_blocks)
             if traced else jbs.Layout(mask[0] if hm > 1 else mask[0, 0], bs))
        return jbs.attention(q, k, k, m, causal=causal, q_segment_ids=q_ids,
                             kv_segment_ids=kv_ids,
                             q_offset=None if offsets is None else jnp.asarray(offsets))
    if not traced:
        mask = mask[:1]
    ops, params = primitive_operands(monkeypatch, call)
    assert params["block_size"] == bs
    tiles = operand_tiles(ops)
    buffer = ops["q"].shape[1]  # the rows the kernel sees (q_offset: the padded buffer)
    lines, cols = -(-buffer // TILE), -(-tk // TILE)
    assert tiles.lists.counts.shape[-1] == lines
    positions = ops["q_positions"]  # the causal position of buffer row 0
    buffer_ids = None if q_ids is None else ops["q_segment_ids"]
    pred = element_predicate(b, lines, cols, buffer, tk, causal, positions, buffer_ids,
                             kv_ids)
    got = tile_pairs(*tiles.lists[:3], tiles.bits, bs, pred)
    # the queries' rows of the buffer, and what each may attend (brute force)
    if offsets is None:  # query i: mask row i // bs, position i + Tk - Tq
        slots = np.broadcast_to(np.arange(tq), (b, tq))
        pos, at = slots + tk - tq, slots
    else:  # query i: buffer row q_offset % bs + i, position (and mask row) q_offset + i
        slots = np.asarray(offsets)[:, None] % bs + np.arange(tq)
        pos = at = np.asarray(offsets)[:, None] + np.arange(tq)
    full = allowed_pairs(mask, bs, rows * bs, tk, False, np.full(b, tk))  # by mask row
    full = np.broadcast_to(full, (b,) + full.shape[1:])
    want = np.stack([full[i][:, at[i]] for i in range(b)])
    if causal:
        want = want & (np.arange(tk) <= pos[:, None, :, None])
    if q_ids is not None:
        want = want & (q_ids[:, None, :, None] == kv_ids[:, None, None, :])
    have = np.stack([got[i][:, slots[i], :tk] for i in range(b)])
    have = np.broadcast_to(have, want.shape)
    if name == "traced_overflow":  # the overflowing row's queries: NaN, not checked
        ok = np.ones(tq, bool)
        ok[5 * bs:6 * bs] = False
        want, have = want[:, :, ok], have[:, :, ok]
    np.testing.assert_array_equal(have, want)
    if offsets is not None and documents:
        np.testing.assert_array_equal(tiles.lists.partial, tiles.lists.counts)


def test_other_block_sizes_pass_placeholders(monkeypatch):
    """Block size 128, and 64 where the Hopper backward does not run: placeholders."""
    from jax_blocksparse import _cuda
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: False)
    for bs in (64, 128):
        layout = jbs.layouts.local(256, bs, 100)
        q = jnp.zeros((1, 256, 2, 64), jnp.float32)
        ops, _ = primitive_operands(monkeypatch, lambda: jbs.attention(q, q, q, layout))
        assert ops["tile_counts"].shape == (1, 1, 0), bs  # no tile lines: never tile lists
        assert ops["tile_bits"].shape == (1, 1, 0, 2), bs


def test_tile_fill():
    """`tile_fill`: visited blocks over the blocks of the listed 128 x 128 tiles (the share
    of the tiled backward's products a block-64 layout keeps, `_cuda.TILED64_MIN_FILL`)."""
    from jax_blocksparse.attention_metadata import tile_fill
    assert tile_fill(jbs.Layout(np.ones((8, 8), bool), 64), False, 512, 512) == 1.0
    # causal: 8 * 9 / 2 tiles hold 16 * 17 / 2 visited blocks (the diagonal tiles 3 of 4)
    assert tile_fill(jbs.layouts.causal(1024, 64), True, 1024, 1024) == 136 / (4 * 36)
    one = np.zeros((8, 8), bool)
    one[::2, ::2] = True  # one block in every tile
    assert tile_fill(jbs.Layout(one, 64), False, 512, 512) == 0.25
    heads = np.stack([one, np.ones((8, 8), bool)])  # per head: 16 + 64 blocks in 32 tiles
    assert tile_fill(jbs.Layout(heads, 64), False, 512, 512) == 80 / (4 * 32)


def test_line_stats(monkeypatch):
    """`line_stats`: a static layout's visited share of the block grid (after causality) and
    its longest lines, a query block's key blocks and a key block's query blocks, as shares
    of the other axis (what `_cuda.onepass_dq_slots` chooses the one-pass backward's dQ
    slots by, and `_cuda.forward_head_sections` the forward's sections of heads: a long
    query line in a sparse layout)."""
    from jax_blocksparse import _cuda
    from jax_blocksparse.attention_metadata import line_stats
    monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_onepass_dq_slots=0))
    glob = np.eye(8, dtype=bool) | (np.arange(8) == 0)[None, :]  # a global key column
    stats = line_stats(jbs.Layout(glob, 128), False, 1024, 1024)
    assert stats == (15 / 64, 2 / 8, 1.0) and _cuda.onepass_dq_slots(stats) == 2
    assert _cuda.forward_head_sections(stats)
    stats = line_stats(jbs.Layout(glob.T, 128), False, 1024, 1024)  # a global query row
    assert stats == (15 / 64, 1.0, 2 / 8) and _cuda.onepass_dq_slots(stats) == 4
    assert not _cuda.forward_head_sections(stats)
    # a global query row cut by causality to key blocks 0..8: 9 of 16, still a long line
    row = np.eye(16, dtype=bool)
    row[8] = True
    stats = line_stats(jbs.Layout(row, 64), True, 1024, 1024)
    assert stats == (24 / 256, 9 / 16, 2 / 16) and _cuda.onepass_dq_slots(stats) == 4
    stats = line_stats(jbs.layouts.local(1024, 128, 256), True, 1024, 1024)
    assert stats[1:] == (3 / 8, 3 / 8) and _cuda.onepass_dq_slots(stats) == 2
    assert _cuda.forward_head_sections(stats)
    # per head: the mean over heads; Tq < Tk (bottom-right aligned causality)
    heads = np.stack([np.ones((4, 8), bool), np.zeros((4, 8), bool)])
    assert line_stats(jbs.Layout(heads, 128), True, 512, 1024) == ((26 / 32) / 2, 1.0, 1.0)
    causal = line_stats(jbs.Layout(np.ones((8, 8), bool), 128), True, 1024, 1024)
    assert _cuda.onepass_dq_slots(causal) == 2 and _cuda.forward_head_sections(causal)  # dense
    assert _cuda.onepass_dq_slots(None) == 2  # a traced mask's lines are not known
    assert not _cuda.forward_head_sections(None)
    for switch in (2, 4, 8):  # JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS set: its value
        monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(
            attn_bwd_onepass_dq_slots=switch))
        assert _cuda.onepass_dq_slots(stats) == _cuda.onepass_dq_slots(None) == switch
