"""Layout: properties, hashing, metadata, the generators, plotting, conversions."""

import copy
import pickle
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_blocksparse as jbs
from jax_blocksparse import layouts
from reference import from_dense64, to_dense64


def test_properties():
    mask = np.array([[1, 0, 1], [0, 0, 0]], bool)
    layout = jbs.Layout(mask, 32)
    assert layout.shape == (64, 96)
    assert layout.nnz == 2 and layout.density == pytest.approx(2 / 6)
    assert layout.block_size == 32 and layout.num_heads == 1
    np.testing.assert_array_equal(layout.T.mask, mask.T)
    assert layout.T.T == layout
    with pytest.raises(ValueError):
        layout.mask[0, 0] = False  # read-only
    with pytest.raises(AttributeError):
        layout.foo = 1


def test_hash_and_equality_by_content():
    a = jbs.Layout(np.eye(3), 16)
    b = jbs.Layout(np.eye(3, dtype=bool), 16)
    assert a == b and hash(a) == hash(b)
    assert a != jbs.Layout(np.eye(3), 32)
    assert a != jbs.Layout(np.ones((3, 3)), 16)
    assert len({a, b}) == 1


@pytest.mark.parametrize("mask", [np.random.default_rng(3).random((3, 5)) < 0.5,
                                  np.random.default_rng(4).random((2, 3, 4)) < 0.5])
def test_copy_deepcopy_and_pickle_give_an_equal_layout(mask):
    layout = jbs.Layout(mask, 32)
    if mask.ndim == 2:
        layout.rows  # a cached property computed before the copy
    for twin in (copy.copy(layout), copy.deepcopy(layout), pickle.loads(pickle.dumps(layout))):
        assert twin == layout and hash(twin) == hash(layout)
        np.testing.assert_array_equal(twin.mask, mask)
        assert twin.block_size == 32 and not twin.mask.flags.writeable


def test_layout_is_a_static_argument():
    f = jax.jit(lambda x, w, layout: jbs.matmul(x, w, layout), static_argnums=2)
    l1 = layouts.random(32, 32, 16, 0.5, seed=1)
    l2 = jbs.Layout(np.array(l1.mask), 16)
    x = jnp.ones((2, 32))
    w = jnp.arange(l1.nnz * 256, dtype=jnp.float32).reshape(l1.nnz, 16, 16)
    np.testing.assert_array_equal(f(x, w, l1), f(x, w, l2))


def test_3d_masks():
    layout = jbs.Layout(np.ones((4, 2, 3), bool), 64)
    assert layout.num_heads == 4 and layout.shape == (128, 192) and layout.nnz == 24
    assert layout.T.mask.shape == (4, 3, 2)
    with pytest.raises(ValueError, match="2-D"):
        layout.rows


def test_bad_layouts():
    with pytest.raises(ValueError, match="mask"):
        jbs.Layout(np.ones(3), 16)
    for block_size in (0, -16, True, np.bool_(True), 16.0, "16", None):
        with pytest.raises(ValueError, match="block_size must be a positive int"):
            jbs.Layout(np.ones((2, 2)), block_size)
    assert jbs.Layout(np.ones((2, 2)), np.int64(16)).block_size == 16


@pytest.mark.parametrize("mask, match", [
    (np.array([["a", "b"]]), "dtype"),
    (np.array([[1 + 1j, 0]]), "dtype complex"),
    (np.array([[object(), object()]]), "dtype object"),
    (np.array([[np.nan, 1.0]]), "0 or 1"),
    (np.array([[np.inf, 0.0]]), "0 or 1"),
    (np.array([[2, 0]]), "0 or 1"),
    (np.array([[0.5, 1.0]]), "0 or 1"),
    ([[1, 0], [1]], "mask"),
    (np.zeros((0, 3), bool), "at least one block"),
    (np.zeros((3, 0)), "at least one block"),
    (np.zeros((0, 2, 2), bool), "at least one block"),
])
def test_masks_that_are_not_boolean_like_or_empty_are_refused(mask, match):
    with pytest.raises(ValueError, match=match):
        jbs.Layout(mask, 16)


def test_boolean_like_masks_are_accepted():
    expected = np.array([[True, False], [False, True]])
    for mask in (expected, np.eye(2), np.eye(2, dtype=np.int8), np.eye(2, dtype=np.uint32),
                 np.eye(2, dtype=np.float16), [[1, 0], [0, 1]], [[True, False], [False, True]],
                 jnp.eye(2), jnp.eye(2, dtype=jnp.bfloat16)):
        layout = jbs.Layout(mask, 16)
        assert layout.mask.dtype == np.bool_
        np.testing.assert_array_equal(layout.mask, expected)
        block_mask = jbs.BlockMask.from_mask(mask, 16)  # the same masks, the same verdict
        np.testing.assert_array_equal(np.asarray(block_mask.mask)[0, 0], expected)


def test_block_mask_names_a_ragged_mask():
    with pytest.raises(ValueError, match="BlockMask.from_mask: mask must be an array"):
        jbs.BlockMask.from_mask([[1, 0], [1]], 16)


@pytest.mark.parametrize("make, match", [
    (lambda: layouts.random(128, 128, 0, 0.5), "random: block_size"),
    (lambda: layouts.random(128, 128, -16, 0.5), "random: block_size"),
    (lambda: layouts.random(128, 128, True, 0.5), "random: block_size"),
    (lambda: layouts.random(128, 128, 16.0, 0.5), "random: block_size"),
    (lambda: layouts.random(128, 100, 16, 0.5), "random: cols=100 must be a positive multiple"),
    (lambda: layouts.random(0, 128, 16, 0.5), "random: rows must be a positive int"),
    (lambda: layouts.random(128.0, 128, 16, 0.5), "random: rows must be a positive int"),
    (lambda: layouts.random(128, 128, 16, 0), r"random: density .* \(0, 1\]"),
    (lambda: layouts.random(128, 128, 16, 1.5), "random: density"),
    (lambda: layouts.random(128, 128, 16, float("nan")), "random: density"),
    (lambda: layouts.dense(-32, 64, 16), "dense: rows"),
    (lambda: layouts.dense(64, 24, 16), "dense: cols=24"),
    (lambda: layouts.barabasi_albert(128, 128, 16, 0), "barabasi_albert: density"),
    (lambda: layouts.barabasi_albert(128, 128, 0), "barabasi_albert: block_size"),
    (lambda: layouts.watts_strogatz(128, 128, 16, -0.1), "watts_strogatz: density"),
    (lambda: layouts.watts_strogatz(128, 128, 16, rewire=-1), r"rewire .* \[0, 1\]"),
    (lambda: layouts.watts_strogatz(128, 128, 16, rewire=1.5), "watts_strogatz: rewire"),
    (lambda: layouts.causal(128, 0), "causal: block_size"),
    (lambda: layouts.causal(100, 16), "causal: seq_len=100 must be a positive multiple"),
    (lambda: layouts.local(128, 16, 0), "local: window must be a positive int"),
    (lambda: layouts.local(128, 16, 2.5), "local: window"),
    (lambda: layouts.strided(128, 16, 0), "strided: stride must be a positive int"),
    (lambda: layouts.strided(128, 0, 64), "strided: block_size"),
    (lambda: layouts.fixed(128, 16, 0), "fixed: stride must be a positive int"),
    (lambda: layouts.fixed(128, 16, 64, summary=0), "fixed: summary"),
    (lambda: layouts.fixed(128, 16, 64, summary=65), r"fixed: summary must be in \(0, stride"),
    (lambda: layouts.fixed(0, 16, 64), "fixed: seq_len"),
    (lambda: layouts.bigbird(128, 16, num_random=-1), "bigbird: num_random must be an int >= 0"),
    (lambda: layouts.bigbird(128, 16, window=0), "bigbird: window must be a positive int"),
    (lambda: layouts.bigbird(128, 16, num_global=-1), "bigbird: num_global"),
    (lambda: layouts.bigbird(128, 0), "bigbird: block_size"),
    (lambda: layouts.local(64, 16, 16, causal="no"), "local: causal must be a Python bool"),
    (lambda: layouts.strided(64, 16, 16, causal=1), "strided: causal must be a Python bool"),
    (lambda: layouts.fixed(64, 16, 32, causal=None), "fixed: causal must be a Python bool"),
    (lambda: layouts.fixed(64, 16, 8), r"got 16 \(the default: one block\)"),
    (lambda: layouts.random(64, 64, 16, 0.5, seed=-1), "random: seed must be an int >= 0"),
    (lambda: layouts.random(64, 64, 16, 0.5, seed=None), "random: seed"),
    (lambda: layouts.bigbird(64, 16, seed=1.5), "bigbird: seed"),
    (lambda: layouts.watts_strogatz(64, 64, 16, seed="a"), "watts_strogatz: seed"),
    (lambda: layouts.barabasi_albert(64, 64, 16, seed=-2), "barabasi_albert: seed"),
    (lambda: layouts.longformer(128, 16, 32, num_global=-1), "longformer: num_global"),
    (lambda: layouts.longformer(128, 16, 0), "longformer: window"),
])
def test_generators_validate_their_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_generators_accept_edge_values():
    assert layouts.bigbird(128, 16, num_random=0, num_global=0, window=1).nnz == 8
    assert layouts.longformer(128, 16, 16, num_global=0) == layouts.local(128, 16, 16, False)
    assert layouts.watts_strogatz(128, 128, 16, 0.25, rewire=0).density > 0
    assert layouts.random(32, 32, 16, 1).nnz == 4
    assert layouts.fixed(128, 16, 64, summary=64).nnz > 0


def test_layout_is_an_ordinary_jit_argument():
    """A Layout is a pytree without leaves: jit treats it as static without static_argnums."""
    layout = layouts.random(64, 64, 16, 0.5, seed=1)
    assert jax.tree.leaves(layout) == []
    assert jax.tree.unflatten(jax.tree.structure(layout), []) is layout
    x = jnp.arange(128, dtype=jnp.float32).reshape(2, 64)
    w = jnp.ones((layout.nnz, 16, 16))
    f = jax.jit(lambda x, layout: jbs.matmul(x, w, layout))
    np.testing.assert_allclose(f(x, layout), jbs.matmul(x, w, layout))
    np.testing.assert_allclose(f(x, jbs.Layout(np.array(layout.mask), 16)),
                               jbs.matmul(x, w, layout))
    other = layouts.random(64, 64, 16, 0.5, seed=2)
    np.testing.assert_allclose(f(x, other), jbs.matmul(x, w[:other.nnz], other))
    g = jax.jit(jax.grad(lambda x, layout: jbs.matmul(x, w, layout).sum()))
    np.testing.assert_allclose(g(x, layout), jax.grad(lambda x: jbs.matmul(x, w, layout).sum())(x))


def test_layout_is_an_ordinary_jit_argument_of_attention():
    q = jax.random.normal(jax.random.key(0), (1, 128, 2, 64))
    layout = jbs.Layout(np.array([[1, 0], [1, 1]], bool), 64)
    f = jax.jit(lambda q, layout: jbs.attention(q, q, q, layout, causal=True))
    np.testing.assert_allclose(f(q, layout), jbs.attention(q, q, q, layout, causal=True),
                               rtol=1e-6, atol=1e-6)
    local = jbs.Layout(np.array([[1, 0], [0, 1]], bool), 64)
    np.testing.assert_allclose(f(q, local), jbs.attention(q, q, q, local, causal=True),
                               rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_metadata_describes_the_mask(r, c, seed, density):
    mask = np.random.default_rng(seed).random((r, c)) < density
    layout = jbs.Layout(mask, 16)
    ids = -np.ones((r, c), int)
    ids[mask] = np.arange(mask.sum())
    coords = layout.coords[:layout.nnz]
    np.testing.assert_array_equal(coords, np.argwhere(mask))
    for lists, m, ident in ((layout.rows, mask, ids), (layout.cols, mask.T, ids.T)):
        assert lists.ptr[0] == 0 and lists.ptr[-1] == m.sum()
        for line in range(m.shape[0]):
            seg = slice(lists.ptr[line], lists.ptr[line + 1])
            np.testing.assert_array_equal(lists.idx[seg], np.flatnonzero(m[line]))
            np.testing.assert_array_equal(lists.blk[seg], ident[line, m[line]])
        counts = np.diff(lists.ptr)
        assert sorted(lists.order) == list(range(m.shape[0]))
        assert np.all(np.diff(counts[lists.order]) <= 0)  # longest first
        assert all(a.dtype == np.int32 for a in lists)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1), st.floats(0, 1),
       st.sampled_from([16, 32]), st.sampled_from(["row", "col"]), st.sampled_from([64, 128, 256]))
def test_group_steps_list_every_block_once_in_order(r, c, seed, density, bs, by, columns):
    """The bs-16/32 kernels' group records (cuda/matmul/wgmma_group.cuh: 256 or 128
    columns a group, wgmma_small.cuh: 64), decoded here as the kernels read them, give back each
    line's blocks: every block once, at its block row, in the order of the group's sorted
    union rows, and nothing else."""
    mask = np.random.default_rng(seed).random((r, c)) < density
    layout = jbs.Layout(mask, bs)
    ids = -np.ones((r, c), int)
    ids[mask] = np.arange(mask.sum())
    m, ident = (mask, ids) if by == "row" else (mask.T, ids.T)
    rec = layout.group_steps(by, columns)
    assert rec.dtype == np.int32 and rec is layout.group_steps(by, columns)  # cached
    g_lines, r_rows = columns // bs, 64 // bs
    words = -(-r_rows * g_lines // 32)
    size = r_rows + words + r_rows * g_lines
    groups = -(-m.shape[0] // g_lines)
    first = rec[:groups + 1]
    body = rec[groups + 1:].reshape(-1, size)
    assert first[0] == 0 and first[-1] == len(body) and np.all(np.diff(first) >= 0)
    seen = np.full(m.shape, -1)
    for g in range(groups):
        union = []
        for step in body[first[g]:first[g + 1]]:
            rows, bits, blocks = (step[:r_rows], step[r_rows:r_rows + words].view(np.uint32),
                                  step[r_rows + words:].reshape(r_rows, g_lines))
            for u in range(r_rows):
                union.append(rows[u])
                for j in range(g_lines):
                    bit = u * g_lines + j
                    present = bool(bits[bit // 32] >> np.uint32(bit % 32) & 1)
                    assert present == (blocks[u, j] >= 0)
                    if present:
                        line = g * g_lines + j
                        assert rows[u] >= 0 and line < m.shape[0] and seen[line, rows[u]] < 0
                        seen[line, rows[u]] = blocks[u, j]
        live = [u for u in union if u >= 0]
        tail = union[len(live):]
        assert live == sorted(set(live)) and all(u == -1 for u in tail) and len(tail) < r_rows
        lines = m[g * g_lines:(g + 1) * g_lines]
        np.testing.assert_array_equal(live, np.flatnonzero(lines.any(axis=0)))
    np.testing.assert_array_equal(seen, np.where(m, ident, -1))


def test_group_steps_refuse_other_block_sizes_widths_and_3d_layouts():
    with pytest.raises(ValueError, match="block size 16 or 32"):
        jbs.Layout(np.ones((2, 2), bool), 64).group_steps("row")
    with pytest.raises(ValueError, match="columns 64, 128 or 256"):
        jbs.Layout(np.ones((2, 2), bool), 16).group_steps("row", 32)
    with pytest.raises(ValueError, match="2-D layout"):
        jbs.Layout(np.ones((2, 2, 2), bool), 16).group_steps("row")


def test_conversions_round_trip_and_batch():
    rng = np.random.default_rng(0)
    layout = layouts.random(64, 96, 32, 0.5, seed=3)
    blocks = rng.standard_normal((2, layout.nnz, 32, 32)).astype(np.float32)
    dense = jbs.to_dense(blocks, layout)
    np.testing.assert_array_equal(dense, to_dense64(blocks, layout))
    np.testing.assert_array_equal(jbs.from_dense(dense, layout), blocks)
    x = rng.standard_normal((64, 96)).astype(np.float32)
    np.testing.assert_array_equal(jbs.from_dense(x, layout), from_dense64(x, layout))
    with pytest.raises(ValueError, match="blocks must be"):
        jbs.to_dense(blocks[:, 1:], layout)
    with pytest.raises(ValueError, match="x must be"):
        jbs.from_dense(x[:, :64], layout)


# ------------------------------------------------------------------------ generators
def test_generators_are_deterministic_per_seed():
    for make in (layouts.random, layouts.barabasi_albert, layouts.watts_strogatz):
        assert make(256, 256, 16, 0.2, seed=5) == make(256, 256, 16, 0.2, seed=5)
        assert make(256, 256, 16, 0.2, seed=5) != make(256, 256, 16, 0.2, seed=6)
    assert layouts.bigbird(512, 64, seed=1) == layouts.bigbird(512, 64, seed=1)


def test_weight_generators():
    assert layouts.dense(64, 128, 32).nnz == 8
    assert layouts.random(512, 512, 32, 0.25, seed=0).nnz == 64
    ba = layouts.barabasi_albert(4096, 4096, 16, 0.05, seed=0)
    counts = ba.mask.sum(1)
    assert 0.03 < ba.density < 0.08
    assert counts.max() > 3 * counts.mean()  # power law: a few very long rows
    ws = layouts.watts_strogatz(1024, 1024, 16, 0.1, seed=0)
    assert 0.05 < ws.density < 0.15
    assert np.array_equal(ws.mask, ws.mask.T)
    assert layouts.barabasi_albert(512, 256, 32, 0.2).mask.shape == (16, 8)


def _pairs(layout):
    """Element-level (query, key) pairs inside kept blocks, as a boolean matrix."""
    bs = layout.block_size
    return np.kron(layout.mask, np.ones((bs, bs), bool))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [1, 5, 16, 40, 100])
def test_local_keeps_exactly_the_blocks_touching_the_window(window, causal):
    bs, n = 16, 128
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    inside = ((0 <= i - j) & (i - j < window)) if causal else (np.abs(i - j) < window)
    layout = layouts.local(n, bs, window, causal=causal)
    expected = inside.reshape(n // bs, bs, n // bs, bs).any(axis=(1, 3))
    np.testing.assert_array_equal(layout.mask, expected)


def test_causal_strided_fixed_bigbird_longformer():
    n, bs = 256, 16
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]

    def blocks_of(pairs):
        return pairs.reshape(n // bs, bs, n // bs, bs).any(axis=(1, 3))

    np.testing.assert_array_equal(layouts.causal(n, bs).mask, blocks_of(j <= i))
    stride = 64
    strided = ((0 <= i - j) & (i - j < stride)) | (((i - j) % stride == 0) & (j <= i))
    np.testing.assert_array_equal(layouts.strided(n, bs, stride).mask, blocks_of(strided))
    fixed = ((j // stride == i // stride) | (j % stride >= stride - bs)) & (j <= i)
    np.testing.assert_array_equal(layouts.fixed(n, bs, stride).mask, blocks_of(fixed))
    bb = layouts.bigbird(n, bs, num_random=2, window=3, num_global=1, seed=0)
    assert bb.mask[0].all() and bb.mask[:, 0].all()
    assert all(bb.mask[r, max(r - 1, 0):r + 2].all() for r in range(n // bs))
    assert (bb.mask[1:].sum(1) <= 3 + 2 + 1).all()
    lf = layouts.longformer(n, bs, window=32, num_global=1)
    np.testing.assert_array_equal(lf.mask[1:, 1:], blocks_of(np.abs(i - j) < 32)[1:, 1:])
    assert lf.mask[0].all() and lf.mask[:, 0].all()


def read_png(path):
    """(width, height) from the IHDR chunk, and the pixels `[height, width]` of an 8-bit
    grayscale PNG written with filter 0 (as `_png.write_png` writes them)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (depth, color) == (8, 0)  # 8-bit grayscale
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, width + 1)
    assert not rows[:, 0].any()  # filter 0 on every row
    return (width, height), rows[:, 1:]


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "layout.png"
    layout = layouts.bigbird(512, 64)
    layout.plot(path)
    (width, height), pixels = read_png(path)
    assert width == height == 512 and set(np.unique(pixels)) == {0, 255}
    np.testing.assert_array_equal(pixels[::64, ::64] == 0, layout.mask)


def test_plot_separates_heads_with_a_gray_column(tmp_path):
    mask = np.zeros((3, 4, 5), bool)
    mask[0, 0, 0] = mask[1, 3, 4] = mask[2] = True
    jbs.Layout(mask, 16).plot(tmp_path / "heads.png")
    (width, height), pixels = read_png(tmp_path / "heads.png")
    gray = np.flatnonzero((pixels == 128).all(axis=0))
    assert len(gray) == 2 and (pixels == 128).sum() == 2 * height  # two 1-pixel columns
    tile = (width - 2) // 3
    assert list(gray) == [tile, 2 * tile + 1] and height == 4 * tile // 5
    heads = np.split(pixels, gray, axis=1)
    assert heads[0][0, 0] == 0 and heads[0][-1, -1] == 255
    assert heads[1][:, 0].min() == 128  # each later head starts with its separator
    assert heads[1][-1, -1] == 0 and heads[1][0, 1] == 255
    assert (heads[2][:, 1:] == 0).all()


@pytest.mark.parametrize("shape", [(2, 2000), (2000, 2), (4, 4096), (4096, 4), (3000, 3000),
                                   (2, 1500, 1500)])
def test_plot_of_thin_and_big_masks_is_readable_and_keeps_every_block(tmp_path, shape):
    mask = np.zeros(shape, bool)
    mask[..., -1, -1] = mask[..., 0, 1] = True  # isolated blocks: OR-pooling must keep them
    jbs.Layout(mask, 16).plot(tmp_path / "thin.png")
    (width, height), pixels = read_png(tmp_path / "thin.png")
    assert 64 <= width <= 1024 and 64 <= height <= 1024
    assert pixels[-1, -1] == 0 and pixels[0].min() == 0
    assert (pixels == 0).mean() < 0.1  # mostly white: a kept block stays small


def test_tensor_parallel_split_and_merge_check_shapes():
    """split_blocks / merge_blocks refuse blocks or slabs of another shape (a missing block
    became NaN, a wrong block size passed) and round-trip the right ones."""
    from jax_blocksparse import tensor_parallel as tp
    split = tp.split_layout(jbs.Layout(np.eye(4, dtype=bool), 16), 2)
    blocks = jnp.asarray(np.random.default_rng(4).standard_normal((4, 16, 16)), jnp.float32)
    np.testing.assert_array_equal(tp.merge_blocks(tp.split_blocks(blocks, split), split),
                                  blocks)
    for bad in (blocks[:3], blocks[:, :8, :8]):
        with pytest.raises(ValueError, match=r"split_blocks: blocks must be \[nnz=4, 16, 16\]"):
            tp.split_blocks(bad, split)
    with pytest.raises(ValueError, match=r"merge_blocks: slabs must be .* \[2, 2, 16, 16\]"):
        tp.merge_blocks(jnp.ones((1, 2, 16, 16)), split)
    layout = jbs.Layout(np.eye(4, dtype=bool), 16)
    for args, match in (((layout, True), "split_layout: n must be a positive int"),
                        ((layout, 0), "split_layout: n must be a positive int"),
                        ((np.eye(4, dtype=bool), 2), "split_layout: layout must be a"),
                        ((layout, 3), "do not split into 3"),
                        ((layout, 2, "diagonal"), "split_layout: by must be")):
        with pytest.raises(ValueError, match=match):
            tp.split_layout(*args)
