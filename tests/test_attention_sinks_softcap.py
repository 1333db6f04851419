"""Attention sinks (`sinks=`) and logit soft-capping (`logits_soft_cap=`): values, lse and
gradients (q, k, v, sinks) against a float64 reference whose gradients are derived by hand
(`reference.attention64_sinks`), with GQA, causal, `kv_lengths`, segment ids, a mask per
batch entry, rows with no key, decode rows (contiguous and paged) equal to the full
attention's rows, second-order gradients, vmap, and the errors of bad arguments. Runs on
the CPU and, marked `gpu`, on an NVIDIA GPU (the fused and decode kernels)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_blocksparse as jbs
from reference import attention64_sinks, attention_mask64, lse_err, rel_err
from test_matmul import PLATFORMS, float64_enabled, poison

# relative errors (lse: absolute) allowed per dtype
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2, jnp.float16: 5e-3}
GRAD_TOL = {jnp.float32: 2e-4, jnp.bfloat16: 6e-2, jnp.float16: 1.5e-2}
LSE_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 3e-2, jnp.float16: 5e-3}


@pytest.fixture(params=PLATFORMS)
def platform(request):
    return request.param


def _random_mask(rng, shape, empty_row=True):
    mask = rng.random(shape) < 0.6
    mask[..., 0, 0] = True
    if empty_row:
        mask[..., 1, :] = False  # a query block with no key block: rows with no key
    return mask


# name: B, Tq, Tk, Hq, Hkv, D, bs, causal, kv_lengths, segments, per-batch mask, sinks, cap
CASES = {
    "gqa_causal_sinks_cap": (2, 64, 64, 4, 2, 16, 16, True, None, False, False, True, 3.0),
    "empty_rows_kv_lengths_sinks": (2, 64, 96, 2, 1, 16, 16, False, [70, 9], False, False,
                                    True, None),
    "segments_sinks_cap": (2, 64, 64, 4, 1, 16, 16, True, None, True, False, True, 2.0),
    "batch_mask_sinks_cap": (2, 64, 64, 2, 2, 16, 16, False, [64, 40], False, True, True,
                             4.0),
    "cap_only": (1, 64, 64, 2, 1, 16, 16, True, None, False, False, False, 1.5),
}


def _inputs(case, dtype, seed):
    b, tq, tk, hq, hkv, d, bs, causal, kv, segments, per_batch, use_sinks, cap = case
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    q, k, v = arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d)
    q = q * 2  # sharper scores: the cap bites
    sinks = jnp.asarray(rng.standard_normal(hq) + 1.0, jnp.float32) if use_sinks else None
    if per_batch:
        mask = _random_mask(rng, (b, hq, -(-tq // bs), -(-tk // bs)))
        mask_arg = jbs.BlockMask.from_mask(jnp.asarray(mask), bs)
        allowed = np.kron(mask, np.ones((bs, bs), bool))[:, :, :tq, :tk]
        i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
        if causal:
            allowed = allowed & (j <= i + tk - tq)
    else:
        mask = _random_mask(rng, (hq, -(-tq // bs), -(-tk // bs)))
        mask_arg = jbs.Layout(mask, bs)
        allowed = attention_mask64(mask_arg, causal, tq, tk, np.full(b, tk))
    lengths = None if kv is None else jnp.asarray(kv, jnp.int32)
    if kv is not None:
        allowed = allowed & (np.arange(tk) < np.asarray(kv)[:, None, None, None])
    ids = None
    if segments:
        ids = np.sort(rng.integers(0, 3, (b, tq)), axis=1)
        allowed = allowed & (ids[:, None, :, None] == ids[:, None, None, :])
        ids = jnp.asarray(ids, jnp.int32)
    cots = (arr(b, tq, hq, d), jnp.asarray(rng.standard_normal((b, hq, tq)), jnp.float32))
    kwargs = dict(causal=causal, kv_lengths=lengths, q_segment_ids=ids,
                  logits_soft_cap=cap, return_lse=True)
    return (q, k, v, sinks), mask_arg, kwargs, allowed, cots


def _check(platform, name, dtype):
    case = CASES[name]
    (q, k, v, sinks), mask, kwargs, allowed, (do, dlse) = _inputs(case, dtype, len(name))
    cap = kwargs["logits_soft_cap"]
    scale = 1 / np.sqrt(q.shape[-1])

    def f(q, k, v, sinks):
        return jbs.attention(q, k, v, mask, sinks=sinks, **kwargs)
    poison(platform)
    (o, lse), vjp = jax.vjp(jax.jit(f), q, k, v, sinks)
    dq, dk, dv, ds = jax.jit(vjp)((do, dlse.astype(lse.dtype)))
    want = attention64_sinks(q, k, v, allowed, scale, do, dlse, sinks=sinks, cap=cap)
    assert o.dtype == dtype and lse.dtype == jnp.float32
    assert rel_err(o, want[0]) < TOL[dtype], "o"
    assert lse_err(lse, want[1]) < LSE_TOL[dtype], "lse"
    for got, w, what in zip((dq, dk, dv), want[2:5], ("dq", "dk", "dv")):
        assert rel_err(got, w) < GRAD_TOL[dtype], what
    if sinks is not None:
        assert ds.dtype == sinks.dtype
        assert rel_err(ds, want[5]) < GRAD_TOL[dtype], "dsinks"
        rows = ~np.asarray(allowed).any(-1)  # [B, Hm, Tq]: rows with no key
        if rows.any():  # those output 0 with lse = sink
            rows = np.broadcast_to(rows, lse.shape)
            np.testing.assert_array_equal(np.asarray(o).transpose(0, 2, 1, 3)[rows], 0)
            sink_of = np.broadcast_to(np.asarray(sinks)[None, :, None], lse.shape)
            np.testing.assert_allclose(np.asarray(lse)[rows], sink_of[rows], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_lse_and_gradients_float32(name):
    _check("cpu", name, jnp.float32)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_lse_and_gradients_bf16(platform, name):
    _check(platform, name, jnp.bfloat16)


def test_float64_is_exact():
    """float64 in, float64 out: sinks and the cap computed in float64 match the hand-derived
    reference to rounding."""
    with float64_enabled():
        case = CASES["gqa_causal_sinks_cap"]
        (q, k, v, sinks), mask, kwargs, allowed, (do, dlse) = _inputs(case, jnp.float64, 3)
        sinks = sinks.astype(jnp.float64)
        f = lambda q, k, v, s: jbs.attention(q, k, v, mask, sinks=s, **kwargs)
        (o, lse), vjp = jax.vjp(f, q, k, v, sinks)
        grads = vjp((do, dlse.astype(jnp.float64)))
        want = attention64_sinks(q, k, v, allowed, 1 / np.sqrt(q.shape[-1]), do, dlse,
                                 sinks=sinks, cap=kwargs["logits_soft_cap"])
        assert o.dtype == lse.dtype == jnp.float64
        assert rel_err(o, want[0]) < 1e-12 and lse_err(lse, want[1]) < 1e-12
        for got, w in zip(grads, want[2:]):
            assert rel_err(got, w) < 1e-11


def test_sinks_of_any_float_dtype():
    case = CASES["gqa_causal_sinks_cap"]
    (q, k, v, sinks), mask, kwargs, _, _ = _inputs(case, jnp.float32, 4)
    want = jbs.attention(q, k, v, mask, sinks=sinks.astype(jnp.bfloat16).astype(jnp.float32),
                         **kwargs)
    got = jbs.attention(q, k, v, mask, sinks=sinks.astype(jnp.bfloat16), **kwargs)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    g = jax.grad(lambda s: jbs.attention(q, k, v, mask, sinks=s, causal=True).sum())(
        sinks.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16 and np.all(np.asarray(g, np.float32) != 0)


@pytest.mark.parametrize("rows", ["prefill", "decode"])
def test_sink_of_minus_infinity_is_no_sink(platform, rows):
    """A sink of `-inf` switches its head's sink off: the same values, lse and gradients as
    a sink far below every score (-1e4), a sink gradient of 0 for that head, and on a row
    with no key an output of 0 with lse `-inf`; nothing NaN (`exp(-inf - -inf)` was formed
    in `with_sinks` and the sinks' tangent)."""
    rng = np.random.default_rng(11)
    b, t, hq, hkv, d, bs = 2, 64, 4, 2, 16, 16
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = arr(b, t, hq, d), arr(b, t, hkv, d), arr(b, t, hkv, d)
    layout = jbs.Layout(_random_mask(rng, (hq, t // bs, t // bs)), bs)  # block row 1 empty
    off = {"prefill": 0, "decode": 20}[rows]  # decode: 3 rows at 20-22, of block row 1
    q = q[:, off:off + 3] if rows == "decode" else q
    f = lambda q, k, v, s: jbs.attention(q, k, v, layout, sinks=s, q_offset=off or None,
                                         return_lse=True)
    sinks = jnp.asarray([-jnp.inf, 0.5, -jnp.inf, -1.0], jnp.float32)
    far = jnp.where(jnp.isinf(sinks), -1e4, sinks)
    poison(platform)
    (o, lse), vjp = jax.vjp(jax.jit(f), q, k, v, sinks)
    (o_far, lse_far), vjp_far = jax.vjp(jax.jit(f), q, k, v, far)
    cots = (arr(*o.shape), arr(*lse.shape))
    grads, grads_far = jax.jit(vjp)(cots), jax.jit(vjp_far)(cots)
    empty = np.asarray(lse) == -np.inf  # rows with no key of a sink-less head
    no_key = ~np.asarray(layout.mask).any(-1)[:, (off + np.arange(o.shape[1])) // bs]
    want_empty = no_key & np.isinf(np.asarray(sinks))[:, None]  # [Hq, Tq]
    np.testing.assert_array_equal(empty, np.broadcast_to(want_empty, empty.shape))
    assert empty.any() and not np.isinf(np.asarray(lse_far)).any()
    np.testing.assert_allclose(np.asarray(lse)[~empty], np.asarray(lse_far)[~empty],
                               rtol=1e-6)
    np.testing.assert_allclose(o, o_far, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(o).transpose(0, 2, 1, 3)[empty], 0)
    for g, w in zip(grads[:3], grads_far[:3]):
        assert np.isfinite(np.asarray(g)).all()
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # the sinks' gradient: 0 for the -inf heads (the far sink's is not: it is the lse of
    # the rows with no key), the other heads' as with the far sinks
    np.testing.assert_array_equal(np.asarray(grads[3])[[0, 2]], 0)
    np.testing.assert_allclose(np.asarray(grads[3])[[1, 3]], np.asarray(grads_far[3])[[1, 3]],
                               rtol=1e-4)
    assert np.all(np.asarray(grads[3])[[1, 3]] != 0)


def _decode_case(dtype, seed=0):
    rng = np.random.default_rng(seed)
    b, t, hq, hkv, d, bs, n = 2, 64, 4, 2, 16, 16, 3
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    q, k, v = arr(b, t, hq, d) * 2, arr(b, t, hkv, d), arr(b, t, hkv, d)
    sinks = jnp.asarray(rng.standard_normal(hq), jnp.float32)
    mask = rng.random((hq, t // bs, t // bs)) < 0.7
    mask[:, :, 0] = True
    return q, k, v, sinks, jbs.Layout(mask, bs), n


@pytest.mark.parametrize("cap", [None, 2.5], ids=["sinks", "sinks_cap"])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_decode_rows_equal_full_attention_rows(platform, paged, cap):
    """The last queries through the decode primitive (`q_offset`, `kv_lengths`, contiguous
    or paged cache) give the full attention's rows, lse and gradients (q, k, v, sinks)."""
    q, k, v, sinks, layout, n = _decode_case(jnp.float32, seed=int(paged))
    b, t = q.shape[:2]
    opts = dict(causal=True, sinks=sinks, logits_soft_cap=cap, return_lse=True)
    full = lambda q, k, v, s: jbs.attention(q, k, v, layout, **dict(opts, sinks=s))
    page = 16
    table = jnp.asarray(np.random.default_rng(7).permutation(b * t // page)
                        .reshape(b, t // page), jnp.int32)
    pool = lambda x: jnp.zeros((b * t // page, page) + x.shape[2:], x.dtype).at[
        table.reshape(-1)].set(x.reshape((b * t // page, page) + x.shape[2:]))

    def short(q_last, k, v, s):
        kv = (pool(k), pool(v)) if paged else (k, v)
        return jbs.attention(q_last, *kv, layout, q_offset=t - n,
                             kv_lengths=jnp.full((b,), t, jnp.int32),
                             page_table=table if paged else None, **dict(opts, sinks=s))
    poison(platform)
    o_full, lse_full = jax.jit(full)(q, k, v, sinks)
    (o, lse), vjp = jax.vjp(jax.jit(short), q[:, t - n:], k, v, sinks)
    np.testing.assert_allclose(o, o_full[:, t - n:], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(lse, lse_full[:, :, t - n:], rtol=2e-5, atol=2e-6)
    rng = np.random.default_rng(3)
    do = jnp.asarray(rng.standard_normal(o.shape), jnp.float32)
    dlse = jnp.asarray(rng.standard_normal(lse.shape), jnp.float32)
    got = jax.jit(vjp)((do, dlse))
    pad_o = jnp.zeros(o_full.shape).at[:, t - n:].set(do)
    pad_lse = jnp.zeros(lse_full.shape).at[:, :, t - n:].set(dlse)
    want = jax.vjp(full, q, k, v, sinks)[1]((pad_o, pad_lse))
    np.testing.assert_allclose(got[0], want[0][:, t - n:], rtol=1e-4, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_second_order_gradients():
    """Differentiable to second order in q, k, v and the sinks (the cap included)."""
    with float64_enabled():
        rng = np.random.default_rng(5)
        arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float64)
        q, k, v, sinks = arr(1, 32, 2, 8), arr(1, 32, 1, 8), arr(1, 32, 1, 8), arr(2)
        layout = jbs.Layout(np.tril(np.ones((2, 2), bool)), 16)
        f = lambda q, k, v, s: jbs.attention(q, k, v, layout, causal=True, sinks=s,
                                             logits_soft_cap=2.0)
        check_grads(f, (q, k, v, sinks), order=2, modes=["rev"], atol=1e-5, rtol=1e-5)
        g = lambda q1, k, v, s: jbs.attention(q1, k, v, layout, causal=True, sinks=s,
                                              q_offset=30, logits_soft_cap=2.0)
        check_grads(g, (q[:, :2], k, v, sinks), order=2, modes=["fwd", "rev"], atol=1e-5,
                    rtol=1e-5)


def test_vmap_jit_checkpoint():
    """vmap over q, k, v and the sinks (a set of sinks per mapped index) equals a loop."""
    rng = np.random.default_rng(6)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v, sinks = arr(3, 1, 32, 2, 8), arr(3, 1, 32, 2, 8), arr(3, 1, 32, 2, 8), arr(3, 2)
    layout = jbs.Layout(np.tril(np.ones((2, 2), bool)), 16)
    f = lambda q, k, v, s: jbs.attention(q, k, v, layout, causal=True, sinks=s,
                                         logits_soft_cap=5.0)
    loss = lambda q, k, v, s: jax.vmap(jax.checkpoint(f))(q, k, v, s).sum()
    got = jax.jit(jax.vmap(f))(q, k, v, sinks)
    want = jnp.stack([f(q[i], k[i], v[i], sinks[i]) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ds = jax.jit(jax.grad(loss, argnums=3))(q, k, v, sinks)
    want = jnp.stack([jax.grad(lambda s: f(q[i], k[i], v[i], s).sum())(sinks[i])
                      for i in range(3)])
    np.testing.assert_allclose(ds, want, rtol=1e-4, atol=1e-6)
    # sinks shared by the mapped calls (not mapped)
    got = jax.vmap(f, in_axes=(0, 0, 0, None))(q, k, v, sinks[0])
    np.testing.assert_allclose(got[1], f(q[1], k[1], v[1], sinks[0]), rtol=1e-5, atol=1e-6)


def test_bad_sinks_and_cap_raise_naming_the_argument():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 32, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 32, 2, 8)), jnp.float32)
    layout = jbs.Layout(np.ones((2, 2), bool), 16)
    for bad in (jnp.ones(2), jnp.ones((1, 4)), jnp.ones(4, jnp.int32), 1.0):
        with pytest.raises(ValueError, match="sinks"):
            jbs.attention(q, k, k, layout, sinks=bad)
    for bad in (0.0, -1.0, float("inf"), "2", jnp.float32(2.0), True):
        with pytest.raises(ValueError, match="logits_soft_cap"):
            jbs.attention(q, k, k, layout, logits_soft_cap=bad)
    with pytest.raises(ValueError, match="logits_soft_cap"):
        jax.jit(lambda c: jbs.attention(q, k, k, layout, logits_soft_cap=c))(2.0)
    with pytest.raises(ValueError, match="sinks"):  # the decode entry point too
        jbs.attention(q[:, :1], k, k, layout, q_offset=3, sinks=jnp.ones(3))


def test_sinks_lower_every_row_and_cap_bounds_the_scores():
    """Sanity of the semantics: a sink only takes probability from the keys (a very
    negative sink changes nothing), and the cap makes huge scores finite and bounded."""
    rng = np.random.default_rng(8)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = arr(1, 32, 2, 8), arr(1, 32, 2, 8), arr(1, 32, 2, 8)
    layout = jbs.Layout(np.ones((2, 2), bool), 16)
    plain = jbs.attention(q, k, v, layout)
    np.testing.assert_allclose(jbs.attention(q, k, v, layout, sinks=jnp.full(2, -1e4)), plain,
                               rtol=1e-6)
    _, lse = jbs.attention(q * 1e4, k, v, layout, logits_soft_cap=3.0, return_lse=True)
    assert np.all(np.asarray(lse) <= 3.0 + np.log(32) + 1e-4)


def test_cuda_routing_and_attributes(monkeypatch, attention_kernels, decode_kernels):
    """Lowered for "cuda" (any machine): a capped forward runs wherever an uncapped one
    does (the FA3-design forward takes the cap: segment ids, partial tiles, head dim 96,
    block size 32 too), and so does a capped backward (the FA3-design backward takes it:
    segment ids, partial tiles, block sizes 16 and 32; under backward variant 4 the
    one-pass kernel takes capped calls too); the decode kernel takes the cap, with the attribute
    `softcap`; sinks are an operand of the forward's custom call
    (`test_cuda_forward_takes_sinks_operand`), the decode kernel's join after it."""
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    dec = sys.modules["jax_blocksparse.attention_decode"]
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: True)
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)
    why = lambda d=128, tq=1024, segments=False, bs=128, **kw: (
        _cuda.fused_attention_unsupported(jnp.bfloat16, d, bs, tq, tq, segments, False, 1, **kw))
    for cap in (0.0, 2.0):  # the Hopper forward, capped or not
        assert why(forward=True, segments=True, softcap=cap) is None
        assert why(forward=True, tq=1000, softcap=cap) is None
        assert why(forward=True, d=96, softcap=cap) is None
        assert why(forward=True, d=256, segments=True, softcap=cap) is None
        assert why(forward=True, bs=32, softcap=cap) is None
        assert why(forward=True, bs=16, tq=1000, softcap=cap) is None
        assert why(forward=True, softcap=cap) is None
        assert why(forward=True, d=80, softcap=cap) == "head dim 80"
    assert _cuda.fused_attention_unsupported(jnp.bfloat16, 128, 128, 1000, 1000, False, True,
                                             2, forward=True, softcap=2.0) is None
    for cap in (0.0, 2.0):  # the Hopper backward, capped or not
        assert why(forward=False, segments=True, softcap=cap) is None
        assert why(forward=False, tq=1000, softcap=cap) is None
        assert why(forward=False, bs=16, tq=1000, softcap=cap) is None
        assert why(forward=False, bs=32, segments=True, softcap=cap) is None
        assert why(forward=False, softcap=cap) is None
        assert why(forward=False, d=80, softcap=cap) == "head dim 80"
        assert why(forward=False, d=96, softcap=cap) == "head dim 96"  # no fused backward at 96
    # backward variant 4 (the one-pass kernel, which takes the cap): capped calls run it
    # where uncapped ones do, and variant 2 the rest, as for documents
    switches = _cuda.SWITCHES
    monkeypatch.setattr(_cuda, "SWITCHES", switches._replace(attn_bwd_variant=4))
    for cap in (0.0, 2.0):
        assert why(forward=False, segments=True, softcap=cap) is None
        assert why(forward=False, tq=1000, softcap=cap) is None
        assert why(forward=False, bs=16, softcap=cap) is None
        assert why(forward=False, softcap=cap) is None
        assert _cuda.onepass_backward(jnp.bfloat16, 128, 128, cap)
    monkeypatch.setattr(_cuda, "SWITCHES", switches)
    # without a Hopper forward (another GPU, or the FA2 forward forced): the FA2 forward's
    # scope, capped or not
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: False)
    assert why(forward=True, segments=True, softcap=2.0) == "segment ids"
    assert why(forward=True, d=96, softcap=2.0) == "head dim 96"
    assert why(forward=True, softcap=2.0) is None
    assert _cuda.decode_unsupported(jnp.bfloat16, 128, 64, None) is None  # no cap argument: the kernel takes one
    if not jbs.cuda_built():
        for prim, rule in ((att.attention_p, _cuda._attention_forward_lowering),
                           (att.attention_bwd_p, _cuda._attention_backward_lowering),
                           (dec.attention_decode_p, _cuda._attention_decode_lowering)):
            jint.register_lowering_rule(_partitioning.LOCAL[prim], rule, "cuda")
    lower = lambda f, *a: jax.jit(f).trace(*a).lower(lowering_platforms=("cuda",)).as_text()
    calls = lambda text, name: [ln for ln in text.splitlines() if f"@{name}(" in ln]
    q = jnp.ones((2, 256, 4, 64), jnp.bfloat16)
    k = jnp.ones((2, 256, 2, 64), jnp.bfloat16)
    sinks = jnp.ones(4, jnp.float32)
    layout = jbs.layouts.causal(256, 64)
    for cap, attr in ((2.0, "softcap = 2.000000e+00 : f32"), (None, "softcap = 0.000000e+00")):
        loss = lambda q, k, s: jbs.attention(q, k, k, layout, causal=True, sinks=s,
                                             logits_soft_cap=cap).astype(jnp.float32).sum()
        text = lower(jax.grad(loss, argnums=(0, 1, 2)), q, k, sinks)
        (fwd,) = calls(text, "jax_blocksparse_attention_fwd")
        (bwd,) = calls(text, "jax_blocksparse_attention_bwd")
        assert attr in fwd and attr in bwd, (fwd, bwd)
        n = jnp.full((2,), 256, jnp.int32)
        text = lower(lambda q, k, s: jbs.attention(q, k, k, layout, causal=True, q_offset=n - 1,
                                                   kv_lengths=n, sinks=s, logits_soft_cap=cap),
                     q[:, :1], k, sinks)
        (call,) = calls(text, "jax_blocksparse_attention_decode")
        assert attr in call, call


def test_cuda_forward_takes_sinks_operand(monkeypatch, attention_kernels):
    """Lowered for "cuda" (any machine): the forward's custom call takes the sinks as its
    fourth operand, float32 `[Hq]` (the kernels start each row's softmax from them), and
    the placeholder `[0]` without sinks, for any float dtype of `sinks`; no elementwise
    pass over o follows it. The backward's custom call has no sinks operand (its P reads
    the forward's lse, which includes the sink); the sinks' gradient is computed beside it
    in JAX (an exp of the lse)."""
    import re
    import sys
    from jax_blocksparse import _cuda, _partitioning
    from jax_blocksparse import _jax_internals as jint
    att = sys.modules["jax_blocksparse.attention"]
    monkeypatch.setattr(_cuda, "sm90_forward", lambda: True)
    monkeypatch.setattr(_cuda, "sm90_backward", lambda: True)
    if not jbs.cuda_built():
        for prim, rule in ((att.attention_p, _cuda._attention_forward_lowering),
                           (att.attention_bwd_p, _cuda._attention_backward_lowering)):
            jint.register_lowering_rule(_partitioning.LOCAL[prim], rule, "cuda")
    lower = lambda f, *a: jax.jit(f).trace(*a).lower(lowering_platforms=("cuda",)).as_text()

    def operand_types(text, name):  # the operand types of the one call of `name`
        (line,) = [ln for ln in text.splitlines() if f"@{name}(" in ln]
        return re.search(r":\s*\(([^)]*)\)\s*->", line).group(1).split(", ")
    q = jnp.ones((2, 256, 4, 64), jnp.bfloat16)
    k = jnp.ones((2, 256, 2, 64), jnp.bfloat16)
    layout = jbs.layouts.causal(256, 64)
    fwd = lambda q, k, s: jbs.attention(q, k, k, layout, causal=True, sinks=s)
    for sinks in (jnp.ones(4, jnp.float32), jnp.ones(4, jnp.bfloat16)):
        types = operand_types(lower(fwd, q, k, sinks), "jax_blocksparse_attention_fwd")
        assert types[:4] == ["tensor<2x256x4x64xbf16>", "tensor<2x256x2x64xbf16>",
                             "tensor<2x256x2x64xbf16>", "tensor<4xf32>"], types
    plain = operand_types(lower(lambda q, k: jbs.attention(q, k, k, layout, causal=True), q, k),
                          "jax_blocksparse_attention_fwd")
    assert plain[3] == "tensor<0xf32>" and len(plain) == len(types), plain
    loss = lambda q, k, s: fwd(q, k, s).astype(jnp.float32).sum()
    with_sinks = operand_types(lower(jax.grad(loss, argnums=(0, 1, 2)), q, k,
                                     jnp.ones(4, jnp.float32)), "jax_blocksparse_attention_bwd")
    without = operand_types(lower(jax.grad(lambda q, k: jbs.attention(
        q, k, k, layout, causal=True).astype(jnp.float32).sum(), argnums=(0, 1)), q, k),
        "jax_blocksparse_attention_bwd")
    assert with_sinks == without, (with_sinks, without)
    assert "tensor<4xf32>" not in with_sinks


# --------------------------------------------------------------------- on a GPU: the kernels
GPU_CASES = {
    # name: B, T, Hq, Hkv, D, bs, dtype, kv_lengths, sinks, cap
    "fa2_gqa_bs64_d64_f16": (2, 256, 4, 2, 64, 64, "f16", [256, 100], True, 4.0),
    "fa2_bs128_d128_bf16": (1, 512, 2, 1, 128, 128, "bf16", None, True, 30.0),
    "cap_only_bs128_d64_bf16": (2, 256, 2, 2, 64, 128, "bf16", None, False, 2.0),
    "sinks_only_bs128_d128_bf16": (2, 256, 4, 2, 128, 128, "bf16", [256, 130], True, None),
}


def gpu_case_mask(name, seed=0):
    """GPU case `name`'s block mask [Hq, T/bs, T/bs]: 70% of the blocks, block row 1 empty
    (rows with no key); its own random stream, so the routing test can rebuild it."""
    _, t, hq, _, _, bs = GPU_CASES[name][:6]
    mask = np.random.default_rng([len(name), seed, 1]).random((hq, t // bs, t // bs)) < 0.7
    mask[:, 1] = False
    return mask


def gpu_check(name, seed=0):
    """One GPU case through the kernels: o, lse, dq, dk, dv, dsinks against the float64
    reference, and decode rows (contiguous and paged) against the full rows."""
    b, t, hq, hkv, d, bs, dtype, kv, use_sinks, cap = GPU_CASES[name]
    dtype = {"f16": jnp.float16, "bf16": jnp.bfloat16}[dtype]
    rng = np.random.default_rng([len(name), seed])
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    q, k, v, do = arr(b, t, hq, d) * 2, arr(b, t, hkv, d), arr(b, t, hkv, d), arr(b, t, hq, d)
    dlse = jnp.asarray(rng.standard_normal((b, hq, t)), jnp.float32)
    sinks = jnp.asarray(rng.standard_normal(hq) + 1, jnp.float32) if use_sinks else None
    layout = jbs.Layout(gpu_case_mask(name, seed), bs)
    lengths = jnp.full((b,), t, jnp.int32) if kv is None else jnp.asarray(kv, jnp.int32)
    opts = dict(causal=True, kv_lengths=lengths, logits_soft_cap=cap, return_lse=True)

    def f(q, k, v, s):
        return jbs.attention(q, k, v, layout, sinks=s, **opts)
    poison("gpu")
    (o, lse), vjp = jax.vjp(jax.jit(f), q, k, v, sinks)
    grads = jax.jit(vjp)((do, dlse))
    allowed = attention_mask64(layout, True, t, t, np.asarray(lengths))
    want = attention64_sinks(q, k, v, allowed, 1 / np.sqrt(d), do, dlse, sinks=sinks, cap=cap)
    assert rel_err(o, want[0]) < TOL[dtype], "o"
    assert lse_err(lse, want[1]) < 2e-2, "lse"
    for got, w, what in zip(grads, want[2:], ("dq", "dk", "dv", "dsinks")):
        if w is not None:
            assert rel_err(got, w) < GRAD_TOL[dtype], what
    n = 2  # the last n queries through the decode kernel (contiguous, then paged)
    page = 16
    table = jnp.asarray(rng.permutation(b * t // page).reshape(b, t // page), jnp.int32)
    pool = lambda x: jnp.zeros((b * t // page, page) + x.shape[2:], x.dtype).at[
        table.reshape(-1)].set(x.reshape((b * t // page, page) + x.shape[2:]))
    for paged in (False, True):
        kv_ = (pool(k), pool(v)) if paged else (k, v)
        od, lsed = jax.jit(lambda q, k, v, s: jbs.attention(
            q, k, v, layout, sinks=s, q_offset=t - n, page_table=table if paged else None,
            **opts))(q[:, t - n:], *kv_, sinks)
        assert rel_err(od, want[0][:, t - n:]) < TOL[dtype], ("decode o", paged)
        assert lse_err(lsed, want[1][:, :, t - n:]) < 2e-2, ("decode lse", paged)


def run_gpu_cases(names):
    from reference import mark_case
    for name in names:
        mark_case(name)
        gpu_check(name)


@pytest.mark.gpu
@pytest.mark.parametrize("bwd_variant,fwd_variant", [("", ""), ("2", ""), ("4", ""), ("", "0")])
def test_kernels_take_sinks_and_soft_cap(bwd_variant, fwd_variant):
    """On a GPU every case runs the kernels, never the pure-JAX path: a soft cap the
    default forward (the FA3-design forward on an sm_90 GPU, else the FA2 one), the
    variant's backward (on an sm_90 GPU at block size 128: variant 4, forced or the
    default, the one-pass kernel; variant 2 and the rest the FA3-design backward; at block
    size 64 the FA2 backward) and the decode kernel; sinks alone the default kernels (the
    FA3-design forward on an sm_90 GPU). Forward variant 0: the FA2 forward on every GPU
    (its sinks and cap on an sm_90 one too)."""
    from jax_blocksparse import _cuda
    from reference import kernels_by_case, run_python
    names = list(GPU_CASES)
    result = run_python(f"import test_attention_sinks_softcap as t; t.run_gpu_cases({names!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=bwd_variant,
                        JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=fwd_variant)
    assert "pure-JAX path" not in result.stderr, result.stderr[-3000:]
    logs = kernels_by_case(result.stderr)
    forward = "fa3_forward" if _cuda.sm90_forward() and fwd_variant != "0" else "fa2_forward"
    hopper_bwd = _cuda._sm90a_device()  # at block size 128, under each variant
    for name in names:
        launches = logs.get(name, [])
        ops = {op for op, _ in launches}
        assert {"attention_fwd", "attention_bwd", "attention_decode"} <= ops, (name, launches)
        if GPU_CASES[name][-1] is not None:  # a cap: the default forward, the backward above
            bs = GPU_CASES[name][5]
            onepass = bwd_variant == "4" or (bwd_variant == ""
                                            and _cuda.SM90_BACKWARD_DEFAULT == 4)
            backward = ("fa2_backward" if not (hopper_bwd and bs == 128)
                        else "fa3_backward(one pass, deterministic dq)" if onepass
                        else "fa3_backward(wgmma, tma, ws, overlap)")
            for op, kernel in launches:
                if op == "attention_fwd":
                    assert kernel.startswith(forward), (name, kernel)
                if op == "attention_bwd":
                    assert kernel.startswith(backward), (name, kernel)
        if GPU_CASES[name][-2]:  # sinks: inside the default forward (or variant 0's)
            fwd = [kernel for op, kernel in launches if op == "attention_fwd"]
            assert all(k.startswith(forward) for k in fwd), (name, fwd)


# Capped forwards with what only the FA3-design forward takes (issue 21): segment ids, head
# dims 96 and 256, block sizes 16 and 32 (on 128 x 128 tiles), partial last tiles. Their
# backward runs the FA3-design backward (which takes the cap and all of these): at head
# dim 96 zero-padded to 128, at 256 its own kernels.
FWD_CASES = {
    # name: B, Tq, Tk, Hq, Hkv, D, bs, dtype, segments, causal, cap
    "fwd_segments_d128_bs128_bf16": (2, 512, 512, 4, 2, 128, 128, "bf16", True, True, 5.0),
    "fwd_d96_bs64_f16": (2, 256, 256, 4, 2, 96, 64, "f16", False, True, 3.0),
    "fwd_d96_segments_bs128_bf16": (2, 384, 384, 2, 1, 96, 128, "bf16", True, False, 2.0),
    "fwd_bs32_segments_d64_bf16": (2, 256, 256, 2, 1, 64, 32, "bf16", True, False, 2.0),
    "fwd_bs32_d128_causal_f16": (1, 384, 384, 4, 4, 128, 32, "f16", False, True, 6.0),
    "fwd_partial_d256_bs128_bf16": (1, 200, 300, 2, 2, 256, 128, "bf16", False, True, 10.0),
    "fwd_bs16_partial_d128_f16": (1, 200, 300, 2, 1, 128, 16, "f16", False, True, 4.0),
}
# ... and with attention sinks (inside the forward kernel's online softmax: rows with no
# allowed key in the masks here give o = 0, lse = the sink)
FWD_SINKS = {"fwd_segments_d128_bs128_bf16", "fwd_d96_segments_bs128_bf16",
             "fwd_bs32_d128_causal_f16", "fwd_partial_d256_bs128_bf16"}


def case_mask(name, seed=0):
    """Case `name`'s block mask [Hq, Rq, Rk] (its own random stream: the tests that route by
    it rebuild it)."""
    _, tq, tk, hq, _, _, bs = FWD_CASES[name][:7]
    return _random_mask(np.random.default_rng([len(name), seed, 1]),
                        (hq, -(-tq // bs), -(-tk // bs)))


def gpu_forward_check(name, seed=0):
    """One capped forward through the kernels: o and lse against the float64 reference,
    and dq, dk, dv (the backward of these: the kernels test_hopper_forward_takes_soft_cap
    names on an sm_90 GPU)."""
    b, tq, tk, hq, hkv, d, bs, dtype, segments, causal, cap = FWD_CASES[name]
    dtype = {"f16": jnp.float16, "bf16": jnp.bfloat16}[dtype]
    rng = np.random.default_rng([len(name), seed])
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    q, k, v, do = arr(b, tq, hq, d) * 2, arr(b, tk, hkv, d), arr(b, tk, hkv, d), arr(b, tq, hq, d)
    dlse = jnp.asarray(rng.standard_normal((b, hq, tq)), jnp.float32)
    sinks = (jnp.asarray(rng.standard_normal(hq) + 1, jnp.float32) if name in FWD_SINKS
             else None)
    mask = case_mask(name, seed)
    layout = jbs.Layout(mask, bs)
    allowed = np.kron(mask, np.ones((bs, bs), bool))[None, :, :tq, :tk]
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    if causal:
        allowed = allowed & (j <= i + tk - tq)
    ids = None
    if segments:  # tq == tk in these cases
        ids = np.sort(rng.integers(0, 4, (b, tq)), axis=1)
        allowed = allowed & (ids[:, None, :, None] == ids[:, None, None, :])
        ids = jnp.asarray(ids, jnp.int32)

    def f(q, k, v, s):
        return jbs.attention(q, k, v, layout, causal=causal, q_segment_ids=ids,
                             kv_segment_ids=ids, logits_soft_cap=cap, sinks=s,
                             return_lse=True)
    poison("gpu")
    (o, lse), vjp = jax.vjp(jax.jit(f), q, k, v, sinks)
    grads = jax.jit(vjp)((do, dlse))
    want = attention64_sinks(q, k, v, allowed, 1 / np.sqrt(d), do, dlse, sinks=sinks, cap=cap)
    assert rel_err(o, want[0]) < TOL[dtype], "o"
    assert lse_err(lse, want[1]) < 2e-2, "lse"
    for got, w, what in zip(grads, want[2:], ("dq", "dk", "dv", "dsinks")):
        if w is not None:
            assert rel_err(got, w) < GRAD_TOL[dtype], what


def run_gpu_forward_cases(names):
    from reference import mark_case
    for name in names:
        mark_case(name)
        gpu_forward_check(name)


def cap_serves_as_max(name):
    """Whether the Hopper forward takes the cap's bound as case `name`'s rows' maximum
    (the default; JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=0 opts out; cuda/attention/shared.cuh
    CapServesAsMax: 2 cap log2(e) at most 120 for bf16, 12 for f16; no sinks)."""
    dtype, cap = FWD_CASES[name][7], FWD_CASES[name][10]
    return name not in FWD_SINKS and 2 * cap * np.log2(np.e) <= (120 if dtype == "bf16" else 12)


@pytest.mark.gpu
@pytest.mark.parametrize("persistent,lazy,cap_max", [("0", "", ""), ("1", "", ""), ("0", "0", ""),
                                                     ("0", "", "0"), ("1", "", "0")])
def test_hopper_forward_takes_soft_cap(persistent, lazy, cap_max):
    """On an sm_90 GPU a capped forward with segment ids, head dim 96 or 256, block size 16
    or 32 or partial last tiles runs the FA3-design forward (plain, then persistent), with
    attention sinks in some (FWD_SINKS): o and lse against the float64 reference (dsinks
    too), with the lazy rescale (the default: the running maximum moved only by a tile
    maximum more than 8 above it, log2 units) and without (=0), and with the cap's bound as
    the rows' maximum (the default: the bf16 and f16 cases without sinks whose caps allow
    it, `cap_serves_as_max`; the others as before) and without (=0); its backward (dq, dk, dv
    against the reference too) the default FA3-design backward at head dims 64 and 128
    (FA2's at block size 64), at 96 the same zero-padded to 128
    (`_cuda.BACKWARD_PADDED_HEAD_DIMS`), at 256 its own Hopper backward."""
    from jax_blocksparse import _cuda
    from reference import kernels_by_case, run_python
    if not _cuda.sm90_forward():
        pytest.skip("the FA3-design forward runs on an sm_90 GPU only")
    names = list(FWD_CASES)
    result = run_python(
        f"import test_attention_sinks_softcap as t; t.run_gpu_forward_cases({names!r})",
        JAX_BLOCKSPARSE_DEBUG="1", JAX_BLOCKSPARSE_ATTN_BWD_VARIANT="",  # the default
        JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=persistent, JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=lazy,
        JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=cap_max)
    assert "attention_fwd" not in "".join(
        ln for ln in result.stderr.splitlines() if "pure-JAX path" in ln), result.stderr[-3000:]
    logs = kernels_by_case(result.stderr)
    for name in names:
        fwd = [kernel for op, kernel in logs.get(name, []) if op == "attention_fwd"]
        assert fwd and all(k.startswith("fa3_forward") for k in fwd), (name, fwd)
        assert all(("persistent" in k) == (persistent == "1") for k in fwd), (name, fwd)
        assert all((" eager-rescale" in k) == (lazy == "0") for k in fwd), (name, fwd)
        cap_max_on = cap_max != "0" and cap_serves_as_max(name)
        assert all((" cap-max" in k) == cap_max_on for k in fwd), (name, fwd)
        bwd = [kernel for op, kernel in logs.get(name, []) if op == "attention_bwd"]
        _, tq, tk, _, _, d, bs = FWD_CASES[name][:7]
        # capped, head dim 96 zero-padded to 128: the Hopper backward, FA2's at block 64;
        # 256: its own Hopper backward (on 128 x 128 tiles at block 64); the one-pass
        # backward (the default, variant 4) at block size 128 on whole tiles, else variant 2
        onepass = (bs == 128 and d != 256 and tq % bs == 0 and tk % bs == 0
                   and _cuda.SM90_BACKWARD_DEFAULT == 4)
        want = ("fa3_backward(wgmma, tma, ws, overlap, d256 64-row CTAs)" if d == 256
                else "fa2_backward(delta, dq 64-row, dk/dv per kv head)" if bs == 64
                else "fa3_backward(one pass, deterministic dq)" if onepass
                else "fa3_backward(wgmma, tma, ws, overlap)")
        assert bwd and all(k == want for k in bwd), (name, bwd)
