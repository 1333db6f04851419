"""Layout: properties, hashing, metadata, the generators, plotting, conversions."""

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
    with pytest.raises(ValueError, match="block_size"):
        jbs.Layout(np.ones((2, 2)), 0)


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


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "layout.png"
    layouts.bigbird(512, 64).plot(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100
    jbs.Layout(np.ones((2, 4, 4), bool), 16).plot(tmp_path / "heads.png")
    assert (tmp_path / "heads.png").stat().st_size > 100


def test_work_list_covers_every_block_once_longest_first():
    layout = layouts.barabasi_albert(2048, 2048, 16, 0.05, seed=3)
    for by in ("row", "col"):
        lists = layout.lists(by)
        work = layout.work_list(by, 8)
        assert work.dtype == np.int32 and work.shape[1] == 3
        assert np.all(np.diff(work[:, 2]) <= 0) and work[:, 2].max() <= 8
        covered = np.concatenate([np.arange(f, f + c) for _, f, c in work])
        np.testing.assert_array_equal(np.sort(covered), np.arange(layout.nnz))
        for line, first, count in work:  # each segment lies inside its line
            assert lists.ptr[line] <= first and first + count <= lists.ptr[line + 1]
        assert set(work[:, 0]) == set(range(len(lists.ptr) - 1))  # every line, empty too
