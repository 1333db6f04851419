"""Decode attention (Tq <= 12 queries per sequence, 64 with an fp8 cache, against a KV cache): the decode primitive
(pure JAX on the CPU, the split-KV kernel on a GPU) against a dense float64 reference, over
contiguous and paged caches, GQA, masks shared, per head and per batch entry, query chunks
that straddle block rows, lengths that are not multiples of the block size, a cache longer
than one split holds; values, gradients, vmap, determinism, and the custom call it lowers to.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from test_attention import GRAD_TOL, TOL, platform  # noqa: F401 (the platform fixture)
from test_masks_from_data import dense_attention
from test_matmul import float64_enabled, poison, rel_err


def block_mask(kind, rng, b, hq, r):
    """bool `[Bm, Hm, R, R]` of one kind, and the mask argument for attention."""
    if kind == "local":
        m = jbs.layouts.local(r * 16, 16, 3 * 16).mask[None, None]  # 3-block window
    elif kind == "dense":
        m = np.tril(np.ones((r, r), bool))[None, None]
    elif kind == "per_head":  # head 0 has empty rows
        m = (rng.random((1, hq, r, r)) < 0.5) | np.eye(r, dtype=bool)
        m[0, 0, 1::2] = False
    else:  # per batch entry
        m = (rng.random((b, 1, r, r)) < 0.5) | np.eye(r, dtype=bool)
    return m


def as_mask(m, bs, per_batch):
    if per_batch:
        return jbs.BlockMask.from_mask(m, bs)
    return jbs.Layout(m[0], bs)


def allowed_at(m, bs, positions, tk, lengths, causal=True):
    """bool `[B, Hm, Tq, Tk]` of queries at `positions [B, Tq]` (rows inside the mask)."""
    b = positions.shape[0]
    rows = positions // bs
    per_b = [m[i if m.shape[0] > 1 else 0][:, rows[i]].repeat(bs, -1)[..., :tk]
             for i in range(b)]
    allowed = np.stack(per_b)  # [B, Hm, Tq, Tk]
    j = np.arange(tk)
    allowed &= j < lengths[:, None, None, None]
    if causal:
        allowed &= j <= positions[:, None, :, None]
    return allowed


def to_pages(rng, x, page_size, spare=3):
    """A page pool holding the cache `x [B, Tk, H, D]` in shuffled pages, and the table."""
    b, tk = x.shape[:2]
    per_seq = tk // page_size
    order = rng.permutation(b * per_seq + spare)[:b * per_seq]
    pool = jnp.asarray(rng.standard_normal((b * per_seq + spare, page_size) + x.shape[2:]),
                       x.dtype)  # spare pages hold noise: never read
    pool = pool.at[order].set(x.reshape((b * per_seq, page_size) + x.shape[2:]))
    return pool, jnp.asarray(order.reshape(b, per_seq), jnp.int32)


CASES = [  # dtype, head dim, block size, Tq, Hq, Hkv, mask kind, paged
    (jnp.bfloat16, 128, 128, 1, 8, 1, "local", False),
    (jnp.float16, 64, 64, 3, 4, 2, "dense", True),
    (jnp.bfloat16, 256, 16, 16, 2, 2, "per_head", False),
    (jnp.bfloat16, 96, 32, 5, 6, 3, "per_batch", True),
    (jnp.float16, 128, 64, 1, 16, 2, "dense", False),
    (jnp.bfloat16, 64, 16, 7, 8, 2, "local", False),
    (jnp.float32, 64, 32, 2, 4, 2, "dense", True),
    # speculative / chunked queries (issue 22): 64 per sequence, routed to the decode
    # primitive for this case (attention.DECODE_MAX_QUERIES raised)
    (jnp.bfloat16, 128, 64, 64, 8, 2, "local", True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(
    [jnp.dtype(c[0]).name, f"d{c[1]}", f"bs{c[2]}", f"tq{c[3]}", f"g{c[4] // c[5]}", c[6]] +
    (["paged"] if c[7] else [])))
def test_decode_matches_the_dense_reference(platform, case, monkeypatch):
    """Values and gradients: queries at per-batch positions (ending at each sequence's
    length, one chunk straddling a block row), kv_lengths, Tk not a multiple of bs. On a
    GPU each row's blocks are split over several CTAs (one block per split allowed)."""
    monkeypatch.setitem(jbs._cuda.DECODE, "min_blocks_per_split", 1)
    att = sys.modules["jax_blocksparse.attention"]
    monkeypatch.setattr(att, "DECODE_MAX_QUERIES", max(att.DECODE_MAX_QUERIES, case[3]))
    check_case(platform, case)


# More than 16 (query, head) rows per kv head: the decode kernel's 64-row form under
# JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1 (36 rows: its last warp has none; 256: 4 chunks)
SHARED_CASES = [CASES[5], CASES[7],
                (jnp.float16, 256, 32, 9, 8, 2, "dense", True),
                (jnp.bfloat16, 96, 64, 12, 16, 4, "per_batch", False)]


def run_shared_cases():
    """SHARED_CASES on the GPU, in a process started with the switch (`run_python`)."""
    from reference import mark_case
    jbs._cuda.DECODE["min_blocks_per_split"] = 1
    sys.modules["jax_blocksparse.attention"].DECODE_MAX_QUERIES = 64
    for i, case in enumerate(SHARED_CASES):
        mark_case(str(i))
        check_case("gpu", case)


@pytest.mark.gpu
def test_shared_stage_form():
    """JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1 with the packed form off (which takes the
    calls it applies to first): every case of more than 16 rows per kv head runs the 64-row
    form and passes test_decode_matches_the_dense_reference's checks."""
    assert_form_runs("run_shared_cases()", range(len(SHARED_CASES)), "64-row CTAs",
                     JAX_BLOCKSPARSE_DECODE_SHARED_TILES="1", JAX_BLOCKSPARSE_DECODE_PACKED="0")


def assert_form_runs(call, cases, kernel_text, **switch):
    """Runs `call` of this module (cases, each after a `mark_case` line) in a fresh process
    with JAX_BLOCKSPARSE_DEBUG=1 and `switch`; each of `cases` launches the decode kernel,
    and only under a name holding `kernel_text`."""
    from reference import kernels_by_case, run_python
    stderr = run_python(f"import test_decode as t; t.{call}", JAX_BLOCKSPARSE_DEBUG="1",
                        **switch).stderr
    logs = kernels_by_case(stderr)
    for i in cases:
        names = [kernel for op, kernel in logs.get(str(i), []) if op == "attention_decode"]
        assert names and all(kernel_text in n for n in names), (i, names, stderr[-3000:])


# More than 16 (query, head) rows per kv head, a GQA group of a power of two, block sizes
# multiples of 128, a mask shared by the heads, a cache in q's dtype: the GQA-packed form
# (64- or 128-row tiles on the Hopper forward's wgmma pipeline), the default (issue 22;
# JAX_BLOCKSPARSE_DECODE_PACKED=0 turns it off). 128 rows (group 8 x 16 queries, group 4 x 32),
# 64 rows, 96 rows (12 queries of group 8: a partial last query group), 512 rows (64
# queries of group 8: four 128-row tiles), 32 and 20 rows (a tile mostly past Tq), groups
# 1, 16 and 32, a block of 256 (two key tiles an entry: the second past the causal limit in
# some rows), per-batch masks, a window, head dims 64 and 128, float16, paged caches (pages
# of 64 keys and of 128); more than 12 queries reach the decode primitive through the
# routing itself (attention._decode_packed), not a raised DECODE_MAX_QUERIES.
PACKED_CASES = [(jnp.bfloat16, 128, 128, 16, 16, 2, "dense", False),
                (jnp.float16, 64, 128, 32, 8, 2, "local", False),
                (jnp.bfloat16, 128, 256, 8, 8, 1, "per_batch", False),
                (jnp.bfloat16, 64, 128, 12, 16, 2, "dense", False),
                (jnp.bfloat16, 128, 128, 64, 8, 1, "local", False),
                (jnp.float16, 128, 128, 8, 16, 1, "dense", False),
                (jnp.bfloat16, 64, 128, 4, 32, 1, "dense", False),  # 4 queries a tile
                (jnp.bfloat16, 128, 128, 64, 2, 2, "local", False),  # group 1: 64 rows
                (jnp.bfloat16, 128, 128, 4, 8, 1, "per_batch", False),  # 32 rows
                (jnp.float16, 64, 128, 20, 2, 2, "local", False),  # group 1: 20 rows
                (jnp.bfloat16, 128, 128, 16, 16, 2, "per_batch", True),  # 64-key pages
                (jnp.float16, 64, 256, 8, 8, 1, "dense", True)]  # 128-key pages


def run_packed_cases(indices=None):
    """PACKED_CASES (those at `indices`; None: all) on the GPU, in a fresh process
    (`run_python`): each with a split per listed block (the combine over many splits) and
    with one split per row (a CTA's loop over all of the row's key tiles)."""
    from reference import mark_case
    for i, case in enumerate(PACKED_CASES):
        if indices is not None and i not in indices:
            continue
        mark_case(str(i))
        for min_blocks in (1, 1000):
            jbs._cuda.DECODE["min_blocks_per_split"] = min_blocks
            check_case("gpu", case)


def packed_rows(case):
    """(query, head) rows per kv head of a PACKED_CASES case."""
    _, _, _, tq, hq, hkv, _, _ = case
    return tq * (hq // hkv)


@pytest.mark.gpu
@pytest.mark.parametrize("tile,part", [("1", 0), ("1", 1), ("1", 2), ("128", None),
                                       ("64", None)], ids=["1-0", "1-1", "1-2", "128", "64"])
def test_gqa_packed_form(tile, part):
    """JAX_BLOCKSPARSE_DECODE_PACKED on an sm_90a build and device: every case runs the
    packed form (and only it) and passes test_decode_matches_the_dense_reference's checks
    (values against the float64 reference; gradients through the forward's path). "1":
    every case, on the tile the call picks (64 rows up to 64 rows per kv head, else 128),
    in three parts (every third case: the parts run side by side under xdist, where the
    whole took 225 s on the H100, the GPU suite's longest test); "128": the cases of up to
    64 rows (a tile mostly past Tq); "64": those of more rows and a group of at most 64
    (several 64-row chunks)."""
    if not jbs._cuda._sm90a_device():
        pytest.skip("the packed form needs an sm_90a build on an sm_90 device")
    cases, text = {
        "1": (list(range(len(PACKED_CASES)))[part::3], "GQA-packed"),
        "128": ([i for i, c in enumerate(PACKED_CASES) if packed_rows(c) <= 64],
                "GQA-packed 128-row"),
        "64": ([i for i, c in enumerate(PACKED_CASES)
                if packed_rows(c) > 64 and c[4] // c[5] <= 64], "GQA-packed 64-row")}[tile]
    assert_form_runs(f"run_packed_cases({list(cases)})", cases, text,
                     JAX_BLOCKSPARSE_DECODE_PACKED=tile)


@pytest.mark.gpu
def test_packed_form_off():
    """With the switch off (its "0") the cases of up to 12 queries run the 16-row form
    (more take the forward primitive) and pass the same checks."""
    att = sys.modules["jax_blocksparse.attention"]
    short = [i for i, case in enumerate(PACKED_CASES) if case[3] <= att.DECODE_MAX_QUERIES]
    assert_form_runs(f"run_packed_cases({short})", short, "16-key warp tiles",
                     JAX_BLOCKSPARSE_DECODE_PACKED="0")


def test_packed_routing(monkeypatch):
    """Where the packed form applies (`_cuda.decode_form` says "packed"), 13 to 64 queries
    take the decode primitive, with the form asked about the call's own shape; elsewhere
    they take the forward's."""
    asked = []

    def form(dtype, kv_dtype, **shape):
        asked.append(shape)
        return "packed"
    monkeypatch.setattr(jbs._cuda, "cuda_available", lambda: True)
    monkeypatch.setattr(jbs._cuda, "decode_form", form)
    rng = np.random.default_rng(31)
    b, tq, hq, hkv, d, bs, r = 2, 16, 8, 1, 64, 128, 3
    tk = r * bs
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
    q, k, v = arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
    layout = jbs.Layout(np.tril(np.ones((r, r), bool)), bs)
    lengths = jnp.asarray([tk, 200], jnp.int32)
    jaxpr = lambda: str(jax.make_jaxpr(  # a new function: a new trace
        lambda q: jbs.attention(q, k, v, layout, causal=True, q_offset=lengths - tq,
                                kv_lengths=lengths))(q))
    assert "blocksparse_attention_decode" in jaxpr()
    assert asked[-1] == dict(batch=b, tq=tq, tk=tk, hq=hq, hkv=hkv, head_dim=d, block_size=bs,
                             mask_heads=1, width=r, page_size=None)
    monkeypatch.setattr(jbs._cuda, "decode_form", lambda *a, **s: "packed64")
    assert "blocksparse_attention_decode" in jaxpr()
    monkeypatch.setattr(jbs._cuda, "decode_form", lambda *a, **s: "warp_tiles")
    assert "blocksparse_attention_decode" not in jaxpr()


def test_packed_form_is_the_default():
    """On an sm_90a device a call of more than 16 rows per kv head takes the packed form
    unless JAX_BLOCKSPARSE_DECODE_PACKED=0; the split count of each form fills the CTAs of
    one wave."""
    form = jbs._cuda.decode_form(jnp.bfloat16, jnp.bfloat16, batch=2, tq=16, tk=4096, hq=16,
                                 hkv=2, head_dim=128, block_size=128, mask_heads=1, width=32,
                                 page_size=None)
    switch = os.environ.get("JAX_BLOCKSPARSE_DECODE_PACKED", "")
    packed = "packed64" if switch == "64" else "packed"  # 128 rows: 128-row tiles
    assert form == (packed if switch != "0" and jbs._cuda._sm90a_device() else "warp_tiles")
    assert jbs._cuda.decode_splits(8, 64, 8, 1, 16, 256, 132, "packed") == 2  # 64 CTAs a split
    assert jbs._cuda.decode_splits(8, 64, 8, 1, 16, 256, 264, "warp_tiles") == 1  # 512


def dense_lse(q, k, allowed, scale):
    """The log-sum-exp `[B, Hq, Tq]` of dense masked attention's scores (call in float64;
    q, k and `allowed` as `dense_attention`'s); -inf on a row without keys."""
    s = jnp.einsum("bihd,bjhd->bhij", q, jnp.repeat(k, q.shape[2] // k.shape[2], axis=2))
    return jax.nn.logsumexp(jnp.where(allowed, s * scale, -jnp.inf), axis=-1)


def check_case(platform, case, repeats=1, traced_lengths=False):
    """test_decode_matches_the_dense_reference's checks of one case; `repeats` > 1 runs the
    same jitted call (one executable) on that many sets of fresh values back to back, then
    checks each: XLA records a program into a command buffer from its second run on, but a
    new executable (any compile, e.g. the checks' own) evicts the recorded ones and the
    next run is a warm-up outside the graph (xla/backends/gpu/runtime/command_buffer_thunk.cc,
    EvictCommandBuffers), so nothing compiles between the runs; `traced_lengths`:
    kv_lengths and q_offset are computed in the program from an argument (then the program
    holds more than the custom call: a lone one with constant operands was not recorded)."""
    dtype, d, bs, tq, hq, hkv, kind, paged = case
    rng = np.random.default_rng(d + bs + tq)
    b, r = 3, 6
    tk = r * bs - (bs // 2 if not paged else 0)  # paged: whole pages
    page = 16 if bs == 16 else bs // 2
    m = block_mask(kind, rng, b, hq, r)
    mask = as_mask(m, bs, kind == "per_batch")
    lengths = np.array([tk, tq + 2, 2 * bs + tq // 2 + 1])  # the last: a chunk across rows
    positions = (lengths - tq)[:, None] + np.arange(tq)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    allowed = allowed_at(m, bs, positions, tk, lengths)
    table, runs = None, []
    for _ in range(repeats):  # every set of values first (their programs compile here)
        q, k, v = arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
        if paged:
            if table is None:
                kp, table = to_pages(rng, k, page)
                empty = jnp.zeros_like(kp)
                pages = lambda x: empty.at[table.reshape(-1)].set(
                    x.reshape((-1, page, hkv, d)))  # the cache x in the pool's pages
            else:
                kp = pages(k)
            args = (q, kp, pages(v))
        else:
            args = (q, k, v)
        runs.append((args, arr(b, tq, hq, d)))
    contiguous = ((lambda q, kp, vp: (q, kp[table].reshape((b, tk, hkv, d)),
                                      vp[table].reshape((b, tk, hkv, d))))
                  if paged else (lambda *a: a))
    attend = lambda q, k, v, n: jbs.attention(
        q, k, v, mask, causal=True, page_table=table if paged else None,
        q_offset=n - tq, kv_lengths=n)
    if traced_lengths:
        jitted, n = jax.jit(attend), jnp.asarray(lengths, jnp.int32)
        call = lambda q, k, v: jitted(q, k, v, n)
    else:  # numpy: static
        call = jax.jit(lambda q, k, v: attend(q, k, v, lengths))
    poison(platform)  # compiled here, before the runs
    outs = []
    for args, _ in runs:  # back to back: the same executable, nothing compiled between
        poison(platform)
        outs.append(call(*args))
    for (args, cot), out in zip(runs, outs):
        _, vjp = jax.vjp(call, *args)
        grads = jax.jit(vjp)(cot)
        with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
            up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
            ref = lambda *a: dense_attention(*contiguous(*a), allowed, d ** -0.5)
            want, ref_vjp = jax.vjp(ref, *map(up, args))
            want_grads = ref_vjp(up(cot))
        assert out.dtype == dtype and out.shape == args[0].shape
        assert rel_err(out, np.asarray(want)) < TOL[dtype], "output"
        for g, w, name in zip(grads, want_grads, "qkv"):
            assert rel_err(g, np.asarray(w)) < GRAD_TOL[dtype], f"d{name}"


def test_long_cache_several_splits_and_determinism(platform):
    """A cache whose row lists more blocks than one split holds (1024): every block is
    read once, and the result is bitwise the same run to run."""
    rng = np.random.default_rng(5)
    b, hq, hkv, d, bs, tk = 2, 4, 1, 64, 16, 1100 * 16 + 5
    r = -(-tk // bs)
    layout = jbs.Layout(np.ones((r, r), bool), bs)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(jnp.bfloat16)
    q, k, v = arr(b, 1, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
    lengths = np.array([tk, tk - 3000])
    f = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                              q_offset=lengths - 1, kv_lengths=lengths))
    poison(platform)
    out = f(q, k, v)
    allowed = allowed_at(layout.mask[None, None], bs, (lengths - 1)[:, None], tk, lengths)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        want = dense_attention(up(q), up(k), up(v), allowed, d ** -0.5)
    assert rel_err(out, np.asarray(want)) < TOL[jnp.bfloat16]
    again = f(q, k, v)
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)),
                                  np.asarray(again.astype(jnp.float32)))


@pytest.mark.parametrize("max_splits", [1, 128], ids=["one_split", "splits"])
def test_paged_splits_lse_and_determinism(platform, max_splits, monkeypatch):
    """A paged cache, GQA rows in two chunks (the second partly empty), a query pair across
    a block row: o and lse against the float64 reference, one split per row or many (their
    log-sum-exp combine, a second launch), and bitwise the same run to run (the combine's order is fixed)."""
    monkeypatch.setitem(jbs._cuda.DECODE, "min_blocks_per_split", 1)
    monkeypatch.setitem(jbs._cuda.DECODE, "max_splits", max_splits)
    rng = np.random.default_rng(22)
    b, tq, hq, hkv, d, bs, page, r = 3, 3, 12, 2, 128, 32, 32, 40
    tk = r * bs
    splits = jbs._cuda.decode_splits(b, hq, hkv, 1, tq, r)
    assert splits == 1 if max_splits == 1 else splits > 8  # what the GPU run covers
    layout = jbs.Layout(np.tril(np.ones((r, r), bool)), bs)
    lengths = np.array([tk, 700, 33])  # the last: queries 30, 31 | 32 across block rows
    positions = (lengths - tq)[:, None] + np.arange(tq)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(jnp.bfloat16)
    q, k, v = arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
    kp, table = to_pages(rng, k, page)
    vp = jnp.zeros_like(kp).at[table.reshape(-1)].set(v.reshape((-1, page, hkv, d)))
    f = jax.jit(lambda q, kp, vp: jbs.attention(
        q, kp, vp, layout, causal=True, page_table=table, q_offset=lengths - tq,
        kv_lengths=lengths, return_lse=True))
    poison(platform)
    out, lse = f(q, kp, vp)
    allowed = allowed_at(layout.mask[None, None], bs, positions, tk, lengths)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        want = dense_attention(up(q), up(k), up(v), allowed, d ** -0.5)
        want_lse = dense_lse(up(q), up(k), allowed, d ** -0.5)
    assert out.shape == q.shape and lse.shape == (b, hq, tq)
    assert rel_err(out, np.asarray(want)) < TOL[jnp.bfloat16], "output"
    np.testing.assert_allclose(np.asarray(lse), np.asarray(want_lse), rtol=0, atol=1e-3)
    poison(platform)
    again, again_lse = f(q, kp, vp)
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.float32)),
                                  np.asarray(again.astype(jnp.float32)))
    np.testing.assert_array_equal(np.asarray(lse), np.asarray(again_lse))


def test_decode_token_by_token_equals_full_attention_paged(platform):
    """Generation: each step's token, attending a paged cache, equals the row of full
    attention over the whole sequence (float32, GQA, a local window)."""
    rng = np.random.default_rng(11)
    b, t, hq, hkv, d, bs, page = 2, 96, 4, 2, 32, 16, 16
    layout = jbs.layouts.local(t, bs, 40)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = arr(b, t, hq, d), arr(b, t, hkv, d), arr(b, t, hkv, d)
    full = jbs.attention(q, k, v, layout, causal=True)
    kp, table = to_pages(rng, k, page)
    vp = jnp.zeros_like(kp).at[table.reshape(-1)].set(v.reshape((-1, page, hkv, d)))
    step = jax.jit(lambda q1, n: jbs.attention(q1, kp, vp, layout, causal=True, q_offset=n - 1,
                                               kv_lengths=n, page_table=table))
    poison(platform)
    for n in ([1, 5], [40, 96], [63, 64]):
        n = jnp.asarray(n, jnp.int32)
        q1 = jnp.take_along_axis(q, (n - 1)[:, None, None, None], axis=1)
        want = jnp.take_along_axis(full, (n - 1)[:, None, None, None], axis=1)
        np.testing.assert_allclose(np.asarray(step(q1, n)), np.asarray(want), rtol=2e-5,
                                   atol=2e-5)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("hq", [4, 16], ids=["g2", "g8"])
def test_queries_outside_the_mask_rows_are_nan(platform, hq, paged, monkeypatch):
    """Decode-sized chunks (Tq 5) placed partly before position 0 and partly past the
    mask's last row: exactly those queries are NaN in o and lse (the decode kernel's
    combine writes them on a GPU, the pure path selects them), every other row equals
    the dense float64 reference (o and lse), with GQA groups 2 and 8 (on sm_90 the
    GQA-packed partial kernel takes the 40 rows of group 8), several splits a row, and
    kv_lengths. On a GPU freed memory is filled with a finite value first, so a NaN row
    is one the kernel wrote."""
    monkeypatch.setitem(jbs._cuda.DECODE, "min_blocks_per_split", 1)
    rng = np.random.default_rng(29)
    b, tq, hkv, d, bs, tk = 3, 5, 2, 64, 64, 320  # 5 mask rows: positions 0..319
    layout = jbs.layouts.local(tk, bs, 160)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(jnp.bfloat16)
    q, k, v = arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
    offsets = np.array([-2, 317, 130])  # rows -1, -1, 0.. / 4, 4, 4, 5, 5 / inside
    lengths = np.array([tk, tk, 300])
    kw = {}
    if paged:
        k, table = to_pages(rng, k, 16)
        v = jnp.zeros_like(k).at[table.reshape(-1)].set(arr(b * tk // 16, 16, hkv, d))
        kw = dict(page_table=table)
    f = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                              q_offset=jnp.asarray(offsets),
                                              kv_lengths=jnp.asarray(lengths),
                                              return_lse=True, **kw))
    poison(platform, 7.0)  # a finite value where the outputs are likely allocated
    o, lse = f(q, k, v)
    positions = offsets[:, None] + np.arange(tq)  # [B, Tq]
    outside = (positions < 0) | (positions >= tk)
    o32, lse = np.asarray(o, np.float32), np.asarray(lse)
    np.testing.assert_array_equal(np.isnan(o32).all(axis=(2, 3)), outside)
    np.testing.assert_array_equal(np.isnan(o32).any(axis=(2, 3)), outside)
    np.testing.assert_array_equal(np.isnan(lse).all(axis=1), outside)
    np.testing.assert_array_equal(np.isnan(lse).any(axis=1), outside)
    kd = k if not paged else jnp.stack([k[table[i]].reshape(tk, hkv, d) for i in range(b)])
    vd = v if not paged else jnp.stack([v[table[i]].reshape(tk, hkv, d) for i in range(b)])
    allowed = allowed_at(layout.mask[None, None], bs, np.clip(positions, 0, tk - 1), tk,
                         lengths)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        q64, k64, v64 = up(q), up(kd), up(vd)
        want = np.asarray(dense_attention(q64, k64, v64, allowed, d ** -0.5))
        want_lse = np.asarray(dense_lse(q64, k64, allowed, d ** -0.5))
    inside = ~outside
    assert rel_err(o32[inside], want[inside]) < TOL[jnp.bfloat16]
    inside_lse = np.broadcast_to(inside[:, None, :], lse.shape)
    np.testing.assert_allclose(lse[inside_lse], want_lse[inside_lse], rtol=1e-2, atol=1e-2)


def test_vmap_over_queries_and_page_pools(platform):
    """vmap of paged decoding over the queries and over one page pool per mapped index
    equals the loop."""
    rng = np.random.default_rng(13)
    b, t, hq, hkv, d, bs, page = 2, 64, 4, 2, 64, 32, 16
    layout = jbs.layouts.local(t, bs, 40)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(jnp.bfloat16)
    qs, pools_k, pools_v = arr(3, b, 1, hq, d), arr(3, 10, page, hkv, d), arr(3, 10, page, hkv, d)
    table = jnp.asarray(rng.permutation(10)[:8].reshape(b, 4), jnp.int32)
    n = jnp.asarray([64, 30], jnp.int32)
    f = lambda q, kp, vp: jbs.attention(q, kp, vp, layout, causal=True, q_offset=n - 1,
                                        kv_lengths=n, page_table=table)
    poison(platform)
    got = jax.jit(jax.vmap(f))(qs, pools_k, pools_v)
    shared = jax.jit(jax.vmap(f, in_axes=(0, None, None)))(qs, pools_k[0], pools_v[0])
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(got[i], np.float32),
                                      np.asarray(f(qs[i], pools_k[i], pools_v[i]), np.float32))
        np.testing.assert_array_equal(np.asarray(shared[i], np.float32),
                                      np.asarray(f(qs[i], pools_k[0], pools_v[0]), np.float32))


def test_paged_long_queries_and_errors():
    """Long queries over a paged cache gather the pages (equal to the contiguous call); a bad
    page table or pool is refused at trace time, naming the argument."""
    rng = np.random.default_rng(17)
    b, t, h, d, bs, page = 2, 64, 2, 16, 32, 16
    layout = jbs.layouts.local(t, bs, 40)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = arr(b, t, h, d), arr(b, t, h, d), arr(b, t, h, d)
    kp, table = to_pages(rng, k, page)
    vp = jnp.zeros_like(kp).at[table.reshape(-1)].set(v.reshape((-1, page, h, d)))
    np.testing.assert_allclose(
        np.asarray(jbs.attention(q, kp, vp, layout, causal=True, page_table=table)),
        np.asarray(jbs.attention(q, k, v, layout, causal=True)), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="page_table must be an integer array"):
        jbs.attention(q[:, :1], kp, vp, layout, q_offset=3, page_table=table[:1])
    with pytest.raises(ValueError, match="page_table must be an integer array"):
        jbs.attention(q[:, :1], kp, vp, layout, q_offset=3, page_table=table.astype(float))
    with pytest.raises(ValueError, match="k must be a page pool"):
        jbs.attention(q[:, :1], kp[..., :8], vp, layout, q_offset=3, page_table=table)
    for pool in (vp[:-1], vp[:, :8], vp[:, :, :1]):  # fewer pages, smaller pages, one head
        with pytest.raises(ValueError, match="k .* and v .* must be page pools of the same"):
            jax.jit(lambda p: jbs.attention(q, kp, p, layout, page_table=table))(pool)


def lowered_decode_call(f, *args):
    """`f(*args)` lowered for CUDA (any machine: the decode lowering registered where the
    extension is not built; with the `decode_kernels` fixture): the module's text and its
    one decode custom call's line."""
    from jax_blocksparse import _cuda, _jax_internals as jint, _partitioning
    from jax_blocksparse import attention_decode as dec
    if not jbs.cuda_built():
        jint.register_lowering_rule(_partitioning.LOCAL[dec.attention_decode_p],
                                    _cuda._attention_decode_lowering, "cuda")
    text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    (call,) = [ln for ln in text.splitlines() if "@jax_blocksparse_attention_decode(" in ln]
    return text, call


def test_decode_call_has_no_scale_and_no_select(decode_kernels):
    """Lowered for CUDA (no GPU needed), a bf16 cache's decode call with a static Layout is
    the custom call alone: its scales are the empty `[0]` placeholders (no all-ones
    constant, which XLA would make a broadcast kernel per call) and no select follows it
    (the combine kernel writes the NaN rows of queries outside the mask)."""
    b, tk, hq, hkv, d = 2, 256, 4, 2, 64
    q = jnp.ones((b, 1, hq, d), jnp.bfloat16)
    k = jnp.ones((b, tk, hkv, d), jnp.bfloat16)
    n = jnp.full((b,), tk, jnp.int32)
    f = lambda q, k, n: jbs.attention(q, k, k, jbs.layouts.local(tk, 64, 128), causal=True,
                                      q_offset=n - 1, kv_lengths=n)
    text, call = lowered_decode_call(f, q, k, n)
    assert call.count("tensor<0xf32>") == 2, call
    assert "stablehlo.select" not in text, text


@pytest.mark.skipif(not jbs.cuda_built(), reason="the CUDA extension is not built")
def test_short_queries_lower_to_the_decode_kernel():
    """For "cuda", one token per sequence (contiguous or paged) lowers to the decode custom
    call, with its split workspace; float32 lowers to pure JAX."""
    layout = jbs.layouts.local(4096, 128, 1024)
    q = jnp.ones((8, 1, 64, 128), jnp.bfloat16)
    k = jnp.ones((8, 4096, 8, 128), jnp.bfloat16)
    n = jnp.full((8,), 4096, jnp.int32)
    lower = lambda f, *a: jax.jit(f).trace(*a).lower(lowering_platforms=("cuda",)).as_text()
    text = lower(lambda q, k: jbs.attention(q, k, k, layout, causal=True, q_offset=n - 1,
                                            kv_lengths=n), q, k)
    assert "@jax_blocksparse_attention_decode(" in text
    assert "@jax_blocksparse_attention_fwd(" not in text
    pools = jnp.ones((300, 64, 8, 128), jnp.bfloat16)
    table = jnp.zeros((8, 64), jnp.int32)
    text = lower(lambda q, p: jbs.attention(q, p, p, layout, causal=True, q_offset=n - 1,
                                            kv_lengths=n, page_table=table), q, pools)
    assert "@jax_blocksparse_attention_decode(" in text
    text = lower(lambda q, k: jbs.attention(q, k, k, layout, causal=True, q_offset=n - 1),
                 q.astype(jnp.float32), k.astype(jnp.float32))
    assert "custom_call" not in text
