"""Masks from data: segment ids (packed documents), traced `BlockMask`s (per batch entry and
per head, built inside `jit`), sequence lengths that are not multiples of the block size,
against a dense float64 reference; values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from test_attention import GRAD_TOL, TOL, platform  # noqa: F401 (the platform fixture)
from test_matmul import float64_enabled, poison, rel_err


def allowed_pairs(block_mask, bs, tq, tk, causal, kv_lengths, q_ids=None, kv_ids=None):
    """bool `[B or 1, H or 1, Tq, Tk]`: the pairs attention may use, written elementwise."""
    block_mask = np.asarray(block_mask, bool).reshape((1,) * (4 - np.ndim(block_mask)) +
                                                      np.shape(block_mask))
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    allowed = block_mask[:, :, i // bs, j // bs]
    if causal:
        allowed = allowed & (j <= i + tk - tq)
    allowed = allowed & (j < np.asarray(kv_lengths)[:, None, None, None])
    if q_ids is not None:
        allowed = allowed & (np.asarray(q_ids)[:, None, :, None] ==
                             np.asarray(kv_ids)[:, None, None, :])
    return allowed


def dense_attention(q, k, v, allowed, scale):
    """Dense masked softmax attention over `allowed [B|1, H|1, Tq, Tk]` (call in float64)."""
    hq, hkv = q.shape[2], k.shape[2]
    kk = jnp.repeat(k, hq // hkv, axis=2)
    vv = jnp.repeat(v, hq // hkv, axis=2)
    s = jnp.where(allowed, jnp.einsum("bihd,bjhd->bhij", q, kk) * scale, -jnp.inf)
    m = jnp.max(s, -1, keepdims=True)
    p = jnp.where(allowed, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0)), 0)
    l = p.sum(-1, keepdims=True)
    return jnp.einsum("bhij,bjhd->bihd", p / jnp.where(l > 0, l, 1), vv)


def check(platform, f, args, allowed, dtype, scale, seed=0):
    """`f(*args)` and its gradients against the dense reference over `allowed`."""
    q = args[0]
    cot = jnp.asarray(np.random.default_rng(seed).standard_normal(q.shape), dtype)
    poison(platform)
    out, vjp = jax.vjp(jax.jit(f), *args)
    grads = jax.jit(vjp)(cot)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        want, ref_vjp = jax.vjp(lambda *a: dense_attention(*a, allowed, scale),
                                *map(up, args))
        want_grads = [np.asarray(g) for g in ref_vjp(up(cot))]
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, np.asarray(want)) < TOL[dtype], "output"
    for g, w, name in zip(grads, want_grads, "qkv"):
        assert rel_err(g, w) < GRAD_TOL[dtype], f"d{name}"


def inputs(rng, b, tq, tk, hq, hkv, d, dtype):
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    return arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)


def packed_ids(rng, b, t, low, high):
    """int32 `[B, T]`: documents of random lengths in [low, high] packed back to back."""
    ids = np.zeros((b, t), np.int32)
    for row in ids:
        start, doc = 0, 0
        while start < t:
            length = int(rng.integers(low, high + 1))
            row[start:start + length] = doc
            start, doc = start + length, doc + 1
    return jnp.asarray(ids)


# ------------------------------------------------------------------------ segment ids
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_segment_ids_packed_documents(platform, causal, dtype):
    rng = np.random.default_rng(301)
    b, t, hq, hkv, d, bs = 2, 256, 4, 2, 64, 64
    layout = jbs.layouts.local(t, bs, 160) if causal else jbs.layouts.bigbird(
        t, bs, num_random=1, window=1, num_global=1, seed=2)
    q, k, v = inputs(rng, b, t, t, hq, hkv, d, dtype)
    ids = packed_ids(rng, b, t, 20, 90)
    lengths = np.array([t, 201])
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, q_segment_ids=ids,
                                      kv_lengths=jnp.asarray(lengths))
    allowed = allowed_pairs(layout.mask, bs, t, t, causal, lengths, ids, ids)
    check(platform, f, (q, k, v), allowed, dtype, d ** -0.5)


def test_document_block_kinds():
    """Block pairs whose documents cannot meet are dropped from the lists, pairs inside one
    document keep their kind (full stays full), the rest become partial; per batch entry."""
    from jax_blocksparse.attention_metadata import attention_metadata, document_kinds
    bs, t = 16, 64  # 4 blocks; batch 0: documents [0..23], [24..63]; batch 1: one document
    ids = jnp.asarray(np.stack([np.repeat([0, 1], [24, 40]), np.zeros(t)]), jnp.int32)
    kind = attention_metadata(jbs.layouts.causal(t, bs), True, t, t).kind[None]
    got = np.asarray(document_kinds(kind, ids, ids, bs))
    assert got.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(got[1], kind[0])  # one document: unchanged
    want = np.array([[1, 0, 0, 0],    # block 0 holds document 0 only: its diagonal stays
                     [1, 1, 0, 0],    # block 1 holds both: every listed pair partial
                     [0, 1, 1, 0],    # block 2 holds document 1 only: block 0 dropped
                     [0, 1, 2, 1]])   # (3, 2): one same document, full stays full
    np.testing.assert_array_equal(got[0, 0], want)


def test_segment_ids_for_queries_and_keys_of_different_lengths(platform):
    """A query chunk at the end of its keys (Tq < Tk) with its own and the keys' ids."""
    rng = np.random.default_rng(303)
    b, tq, tk, d, bs = 2, 64, 192, 32, 32
    layout = jbs.layouts.causal(tk, bs)
    layout = jbs.Layout(layout.mask[-(tq // bs):], bs)  # the last query blocks
    q, k, v = inputs(rng, b, tq, tk, 2, 1, d, jnp.float32)
    kv_ids = packed_ids(rng, b, tk, 30, 100)
    q_ids = kv_ids[:, tk - tq:]
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, q_segment_ids=q_ids,
                                      kv_segment_ids=kv_ids)
    allowed = allowed_pairs(layout.mask, bs, tq, tk, True, [tk, tk], q_ids, kv_ids)
    check(platform, f, (q, k, v), allowed, jnp.float32, d ** -0.5)


def test_segment_id_errors():
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((2, 128, 1, 64))
    ids = jnp.zeros((2, 128), jnp.int32)
    with pytest.raises(ValueError, match="kv_segment_ids needs q_segment_ids"):
        jbs.attention(q, q, q, layout, kv_segment_ids=ids)
    with pytest.raises(ValueError, match=r"q_segment_ids must be an integer array \[B=2, 128\]"):
        jbs.attention(q, q, q, layout, q_segment_ids=ids[:, :64])
    with pytest.raises(ValueError, match="q_segment_ids must be an integer"):
        jbs.attention(q, q, q, layout, q_segment_ids=ids.astype(jnp.float32))
    with pytest.raises(ValueError, match="serve the keys only when Tq == Tk"):
        jbs.attention(q[:, :64], q, q, jbs.Layout(layout.mask[1:], 64),
                      q_segment_ids=ids[:, :64])


# ------------------------------------------------------------------------- BlockMask
def topk_block_mask(q, k, bs, top):
    """MoBA-style selection: each query block keeps its `top` key blocks by the score of
    the pooled query against the pooled keys (plus its own block), causally. [B, H, R, R]"""
    b, t, h, d = q.shape
    pooled_q = q.reshape(b, t // bs, bs, h, d).mean(2)
    pooled_k = jnp.repeat(k, h // k.shape[2], axis=2).reshape(b, t // bs, bs, h, d).mean(2)
    scores = jnp.einsum("brhd,bchd->bhrc", pooled_q, pooled_k)
    r = t // bs
    causal = np.tril(np.ones((r, r), bool))
    scores = jnp.where(causal, scores, -jnp.inf)
    kth = jnp.sort(scores, axis=-1)[..., -top][..., None]
    return ((scores >= kth) & causal) | np.eye(r, dtype=bool)


def test_traced_block_mask_per_batch_and_head(platform):
    rng = np.random.default_rng(307)
    b, t, hq, hkv, d, bs = 2, 256, 4, 2, 32, 32
    q, k, v = inputs(rng, b, t, t, hq, hkv, d, jnp.float32)
    block = jax.jit(lambda q, k: topk_block_mask(q, k, bs, 3))(q, k)  # [B, Hq, 8, 8]
    assert block.shape == (b, hq, 8, 8)
    assert not np.all(np.asarray(block[0]) == np.asarray(block[1]))  # differs per batch
    f = lambda q, k, v: jbs.attention(q, k, v, jbs.BlockMask.from_mask(block, bs), causal=True)
    allowed = allowed_pairs(block, bs, t, t, True, [t, t])
    check(platform, f, (q, k, v), allowed, jnp.float32, d ** -0.5)


def test_block_mask_selected_inside_the_same_jit_trains_end_to_end(platform):
    """The top-k selection and the attention in one jitted, differentiated function (the
    selection itself is not differentiable; gradients flow through attention)."""
    rng = np.random.default_rng(311)
    b, t, h, d, bs = 1, 256, 2, 32, 64
    q, k, v = inputs(rng, b, t, t, h, h, d, jnp.float32)

    def loss(q, k, v):
        mask = jbs.BlockMask.from_mask(topk_block_mask(q, k, bs, 2), bs)
        return jnp.sum(jnp.sin(jbs.attention(q, k, v, mask, causal=True)))

    poison(platform)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    block = np.asarray(topk_block_mask(q, k, bs, 2))
    allowed = allowed_pairs(block, bs, t, t, True, [t])
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        ref = lambda q, k, v: jnp.sum(jnp.sin(dense_attention(q, k, v, allowed, d ** -0.5)))
        want, want_grads = jax.value_and_grad(ref, argnums=(0, 1, 2))(up(q), up(k), up(v))
    assert abs(float(value) - float(want)) < 1e-4 * max(1.0, abs(float(want)))
    for g, w in zip(grads, want_grads):
        assert rel_err(g, np.asarray(w)) < 1e-4


def test_block_mask_equals_the_layout_and_compiles_once(platform):
    rng = np.random.default_rng(313)
    t, bs = 256, 64
    layout = jbs.layouts.local(t, bs, 100)
    q, k, v = inputs(rng, 2, t, t, 2, 1, 64, jnp.bfloat16)
    traces = []

    @jax.jit
    def f(q, k, v, mask):
        traces.append(1)
        return jbs.attention(q, k, v, mask, causal=True)

    want = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True))(q, k, v)
    got = f(q, k, v, jbs.BlockMask.from_mask(layout.mask, bs))
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               rtol=2e-2, atol=2e-2)
    for seed in range(3):  # new masks of the same shape reuse the compiled program
        mask = np.random.default_rng(seed).random((4, 4)) < 0.5
        got = f(q, k, v, jbs.BlockMask.from_mask(mask, bs))
        allowed = allowed_pairs(mask, bs, t, t, True, [t, t])
        with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
            up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
            ref = np.asarray(dense_attention(up(q), up(k), up(v), allowed, 64 ** -0.5))
        assert rel_err(got, ref) < TOL[jnp.bfloat16]
    assert len(traces) == 1


def test_block_mask_capacity_overflow_gives_nan_rows_never_truncation(platform):
    rng = np.random.default_rng(317)
    t, bs = 128, 32
    q, k, v = inputs(rng, 1, t, t, 1, 1, 16, jnp.float32)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, :2] = mask[2, :3] = mask[3, :] = True
    out = jbs.attention(q, k, v, jbs.BlockMask.from_mask(mask, bs, max_blocks=2))
    rows_nan = np.isnan(np.asarray(out)).all(axis=(2, 3))[0]  # [T]
    np.testing.assert_array_equal(rows_nan, np.repeat([False, False, True, True], bs))
    full = jbs.attention(q, k, v, jbs.BlockMask.from_mask(mask, bs, max_blocks=4))
    assert np.isfinite(np.asarray(full)).all()
    # max_blocks = Rk (the default): no row can overflow, and no pass puts NaN in rows
    program = lambda mb: str(jax.make_jaxpr(lambda m: jbs.attention(
        q, k, v, jbs.BlockMask.from_mask(m, bs, max_blocks=mb)))(jnp.asarray(mask)))
    assert "nan" in program(2) and "nan" not in program(4)


def test_block_mask_vmap_and_errors(platform):
    rng = np.random.default_rng(319)
    t, bs = 128, 64
    q, k, v = inputs(rng, 1, t, t, 2, 2, 16, jnp.float32)
    masks = jnp.asarray(np.array([[[1, 0], [1, 1]], [[1, 0], [0, 1]]], bool))
    f = lambda m: jbs.attention(q, k, v, jbs.BlockMask.from_mask(m, bs), causal=True)
    got = jax.vmap(f)(masks)
    for i in range(2):
        np.testing.assert_allclose(got[i], f(masks[i]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        jbs.BlockMask.from_mask(masks[0], 0)
    with pytest.raises(ValueError, match="mask must be boolean or 0/1 numbers; got dtype <U1"):
        jbs.BlockMask.from_mask(np.array([["a", "b"], ["c", "d"]]), bs)
    with pytest.raises(ValueError, match="max_blocks must be a positive int"):
        jbs.BlockMask.from_mask(masks[0], bs, max_blocks=0)
    with pytest.raises(ValueError, match=r"BlockMask has \(2, 2\) blocks of 32"):
        jbs.attention(q, k, v, jbs.BlockMask.from_mask(masks[0], 32))
    with pytest.raises(ValueError, match="BlockMask has 3 batch masks"):
        jbs.attention(q, k, v, jbs.BlockMask.from_mask(jnp.ones((3, 1, 2, 2), bool), bs))
    with pytest.raises(ValueError, match="mask must be a jax_blocksparse.Layout or BlockMask"):
        jbs.attention(q, k, v, masks[0])


def test_block_mask_and_layout_share_one_rule_for_numeric_masks():
    """bool, or numbers that are all 0 or 1: `0.5` and `2` are refused by both (a traced
    mask must be bool, since its values cannot be checked)."""
    ones = np.array([[1, 0], [1, 1]])
    for numbers in (ones, ones.astype(np.float32), jnp.asarray(ones, jnp.int8)):
        got = jbs.BlockMask.from_mask(numbers, 64).mask
        assert got.dtype == jnp.bool_ and got.shape == (1, 1, 2, 2)
        np.testing.assert_array_equal(got[0, 0], ones == 1)
        np.testing.assert_array_equal(jbs.Layout(np.asarray(numbers), 64).mask, ones == 1)
    for bad in (0.5, 2, -1):
        mask = np.array([[1.0, 0.0], [bad, 1.0]])
        with pytest.raises(ValueError, match=r"BlockMask.from_mask: mask entries must be 0 or 1"):
            jbs.BlockMask.from_mask(mask, 64)
        with pytest.raises(ValueError, match=r"Layout: mask entries must be 0 or 1"):
            jbs.Layout(mask, 64)
    with pytest.raises(ValueError, match="BlockMask.from_mask: a traced mask must be bool"):
        jax.jit(lambda m: jbs.BlockMask.from_mask(m, 64).mask)(jnp.asarray(ones))
    traced = jax.jit(lambda m: jbs.BlockMask.from_mask(m != 0, 64).mask)(jnp.asarray(ones))
    np.testing.assert_array_equal(traced[0, 0], ones == 1)


# ----------------------------------------------- lengths not multiples of the block size
@pytest.mark.parametrize("tq,tk", [(1, 200), (37, 37), (100, 333), (64, 65)])
def test_lengths_not_multiples_of_the_block_size(platform, tq, tk):
    rng = np.random.default_rng(331 + tq)
    bs = 32
    rq, rk = -(-tq // bs), -(-tk // bs)
    mask = np.random.default_rng(tk).random((2, rq, rk)) < 0.7
    mask[:, :, -1] = True
    layout = jbs.Layout(mask, bs)
    q, k, v = inputs(rng, 2, tq, tk, 2, 1, 16, jnp.float32)
    lengths = np.array([tk, max(1, tk - 7)])
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                      kv_lengths=jnp.asarray(lengths))
    check(platform, f, (q, k, v), allowed_pairs(mask, bs, tq, tk, True, lengths), jnp.float32,
          16 ** -0.5)


# -------------------------------------------------------- query positions (q_offset)
@pytest.mark.parametrize("mask_kind", ["local", "dense_causal", "block_mask_per_batch"])
def test_decoding_with_q_offset_equals_the_rows_of_full_attention(platform, mask_kind):
    """One token (and a chunk of three) per sequence at different positions per batch
    entry, against a KV cache longer than every sequence: equal to the rows of attention
    over the whole sequence (float32), GQA."""
    rng = np.random.default_rng(337)
    b, t, hq, hkv, d, bs = 3, 200, 4, 2, 16, 32  # t is not a multiple of bs
    r = -(-t // bs)
    if mask_kind == "local":
        mask = jbs.Layout(jbs.layouts.local(r * bs, bs, 80).mask, bs)
    elif mask_kind == "dense_causal":
        mask = jbs.Layout(np.tril(np.ones((r, r), bool)), bs)
    else:
        blocks = (np.random.default_rng(3).random((b, 1, r, r)) < 0.6) | np.eye(r, dtype=bool)
        mask = jbs.BlockMask.from_mask(blocks, bs)
    q, k, v = inputs(rng, b, t, t, hq, hkv, d, jnp.float32)
    full = jax.jit(lambda q, k, v: jbs.attention(q, k, v, mask, causal=True))(q, k, v)
    lengths = jnp.array([37, 200, 121], jnp.int32)

    @jax.jit
    def decode(q_new, lengths):
        return jbs.attention(q_new, k, v, mask, causal=True, q_offset=lengths - q_new.shape[1],
                             kv_lengths=lengths)

    poison(platform)
    for step in range(2):  # token by token: the positions move
        n = lengths - step
        q_tok = jnp.take_along_axis(q, (n - 1)[:, None, None, None], axis=1)  # [B, 1, H, D]
        got = decode(q_tok, n)
        want = jnp.take_along_axis(full, (n - 1)[:, None, None, None], axis=1)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)
    rows = lambda x: jnp.stack([jnp.take_along_axis(x, (lengths - 3 + i)[:, None, None, None],
                                                     axis=1)[:, 0] for i in range(3)], axis=1)
    got = decode(rows(q), lengths)  # a chunk of 3 tokens per sequence (speculative decoding)
    want = rows(full)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("tq", [1, 3])
def test_decoding_packed_documents_with_q_offset_equals_full_attention(platform, tq):
    """Segment ids with q_offset (decoding packed documents), one token and a chunk of 3
    per sequence at positions that are not multiples of the block size: equal to the rows
    of full attention with the same ids, values and the gradients of q, k, v. A query's id
    travels with it to its slot (a [B, 1] id array once stayed at slot 0 and was compared
    as document 0)."""
    rng = np.random.default_rng(353 + tq)
    b, t, h, d, bs = 2, 96, 2, 16, 32
    mask = jbs.Layout(np.tril(np.ones((t // bs, t // bs), bool)), bs)
    q, k, v = inputs(rng, b, t, t, h, h, d, jnp.float32)
    ids = jnp.asarray(np.stack([np.repeat([0, 1, 2], [20, 45, 31]),
                                np.repeat([0, 1], [70, 26])]), jnp.int32)
    full = lambda q, k, v: jbs.attention(q, k, v, mask, causal=True, q_segment_ids=ids,
                                         kv_segment_ids=ids)
    ends = np.array([52, 81])  # last query position + 1 per sequence: inside documents
    at = (ends - tq)[:, None] + np.arange(tq)  # [B, tq]
    take = lambda x: jnp.take_along_axis(x, jnp.asarray(at)[:, :, None, None], axis=1)

    def chunk(q_new, k, v):
        return jbs.attention(q_new, k, v, mask, causal=True, q_offset=jnp.asarray(ends - tq),
                             q_segment_ids=jnp.take_along_axis(ids, jnp.asarray(at), axis=1),
                             kv_segment_ids=ids)

    poison(platform)
    np.testing.assert_allclose(np.asarray(jax.jit(chunk)(take(q), k, v)),
                               np.asarray(take(jax.jit(full)(q, k, v))), rtol=2e-5, atol=2e-5)
    cot = jnp.asarray(rng.standard_normal((b, tq, h, d)), jnp.float32)
    got = jax.jit(jax.grad(lambda q, k, v: (chunk(take(q), k, v) * cot).sum(),
                           argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(lambda q, k, v: (take(full(q, k, v)) * cot).sum(),
                            argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_q_offset_values_gradients_and_out_of_range(platform):
    """A chunk of queries placed mid-sequence (bfloat16) against the dense reference,
    values and gradients; positions outside the mask's rows are NaN."""
    rng = np.random.default_rng(347)
    b, tq, tk, d, bs = 2, 40, 160, 64, 32
    layout = jbs.layouts.local(tk, bs, 70)  # 5 x 5 blocks: positions 0..159
    q, k, v = inputs(rng, b, tq, tk, 2, 1, d, jnp.bfloat16)
    offsets = np.array([13, 100])
    lengths = np.array([tk, 150])
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, kv_lengths=lengths,
                                      q_offset=jnp.asarray(offsets))
    positions = offsets[:, None] + np.arange(tq)  # [B, Tq]
    i, j = positions[:, None, :, None], np.arange(tk)[None, None, None, :]
    allowed = (layout.mask[positions // bs][:, None, :, :].repeat(bs, -1)[..., :tk]
               & (j <= i) & (j < lengths[:, None, None, None]))
    check(platform, f, (q, k, v), allowed, jnp.bfloat16, d ** -0.5)
    out = jbs.attention(q, k, v, layout, causal=True, q_offset=jnp.asarray([-2, 130]))
    nan_rows = np.isnan(np.asarray(out, np.float32)).all(axis=(2, 3))
    np.testing.assert_array_equal(nan_rows[0], np.arange(tq) < 2)
    np.testing.assert_array_equal(nan_rows[1], np.arange(tq) >= 30)
    with pytest.raises(ValueError, match="q_offset must be an int or an integer array"):
        jbs.attention(q, k, v, layout, q_offset=jnp.zeros((3,), jnp.int32))


def test_key_lists_transpose_the_query_lists():
    """The by-key lists that q_offset builds from the positioned query lists (for the fused
    backward's dK/dV pass, per batch entry) are the lists of the transposed block kinds:
    the same entries, partial where the query lists have them partial."""
    from jax_blocksparse.attention import _key_lists
    from jax_blocksparse.attention_metadata import block_lists
    rng = np.random.default_rng(5)
    kind = rng.integers(0, 3, (2, 3, 5, 7)).astype(np.int8)  # [B, Hm, R, Rk]: 0, 1, 2
    kind[0, 1, 2] = 0  # an empty query block
    kind[1, :, :, 4] = 0  # an empty key block
    by_query = block_lists(np, kind, 7)
    got = _key_lists([jnp.asarray(x) for x in by_query], 7, 5)
    for g, w in zip(got, block_lists(np, np.swapaxes(kind, -1, -2), 5)):
        np.testing.assert_array_equal(np.asarray(g), w)
