"""Block-sparse attention against a dense masked float64 reference: values, gradients, jvp,
GQA, Tq != Tk, kv_lengths, empty rows, every attention layout generator. Runs on the CPU
and, marked `gpu`, on an NVIDIA GPU (the fused kernels)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_blocksparse as jbs
from reference import attention64, attention_mask64, from_dense64, lse_err, to_dense64
from test_matmul import PLATFORMS, float64_enabled, poison, rel_err

TOL = {jnp.float32: 1e-5, jnp.float16: 5e-3, jnp.bfloat16: 3e-2}
GRAD_TOL = {jnp.float32: 1e-4, jnp.float16: 1e-2, jnp.bfloat16: 5e-2}


@pytest.fixture(params=PLATFORMS)
def platform(request):
    with jax.default_device(jax.devices(request.param)[0]):
        yield request.param


def dense_reference(q, k, v, layout, causal, scale, kv_lengths):
    """Dense masked softmax attention, written the obvious way (call under float64)."""
    b, tq, hq, d = q.shape
    tk, hkv = k.shape[1], k.shape[2]
    bs = layout.block_size
    mask = layout.mask if layout.mask.ndim == 3 else layout.mask[None]
    allowed = np.kron(mask, np.ones((bs, bs), bool))[None]  # [1, Hm, Tq, Tk]
    i, j = np.arange(tq)[:, None], np.arange(tk)[None, :]
    if causal:
        allowed = allowed & (j <= i + tk - tq)
    allowed = allowed & (np.arange(tk)[None, None, None, :] <
                         np.asarray(kv_lengths)[:, None, None, None])
    kk = jnp.repeat(k, hq // hkv, axis=2)
    vv = jnp.repeat(v, hq // hkv, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, kk) * scale
    s = jnp.where(allowed, s, -jnp.inf)
    m = jnp.max(s, -1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0)
    p = jnp.where(allowed, jnp.exp(s - m), 0)
    l = p.sum(-1, keepdims=True)
    o = jnp.einsum("bhij,bjhd->bihd", p / jnp.where(l > 0, l, 1), vv)
    return o


CASES = {
    # name: (B, Tq, Tk, Hq, Hkv, D, bs, layout maker, causal, kv_lengths)
    "mha_local_causal": (2, 256, 256, 2, 2, 64, 64,
                         lambda: jbs.layouts.local(256, 64, 100), True, None),
    "gqa2_random_empty_rows": (1, 256, 256, 4, 2, 128, 64, lambda: jbs.Layout(
        np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], bool), 64), False,
        None),
    "gqa8_causal_bs128": (1, 256, 256, 8, 1, 64, 128,
                          lambda: jbs.layouts.causal(256, 128), True, None),
    "tq_ne_tk_per_head": (2, 128, 384, 2, 1, 64, 64, lambda: jbs.Layout(
        np.random.default_rng(1).random((2, 2, 6)) < 0.7, 64), True, None),
    "kv_lengths_bigbird": (2, 256, 256, 2, 2, 64, 64,
                           lambda: jbs.layouts.bigbird(256, 64, num_random=1, window=1,
                                                       num_global=1), False, [200, 77]),
}


def make_inputs(case, dtype, seed=0):
    b, tq, tk, hq, hkv, d, _, _, _, kv = case
    rng = np.random.default_rng(seed)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    kv = None if kv is None else jnp.asarray(kv, jnp.int32)
    return arr(b, tq, hq, d), arr(b, tk, hkv, d), arr(b, tk, hkv, d), kv


def check_case(platform, name, dtype):
    case = CASES[name]
    b, tq, tk, hq, hkv, d, bs, make_layout, causal, _ = case
    layout = make_layout()
    q, k, v, kv = make_inputs(case, dtype, seed=len(name))
    scale = 1 / np.sqrt(d)
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, kv_lengths=kv)
    cot = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), dtype)
    poison(platform)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    grads = jax.jit(vjp)(cot)
    kv_np = np.full(b, tk) if kv is None else np.asarray(kv)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        ref = functools.partial(dense_reference, layout=layout, causal=causal, scale=scale,
                                kv_lengths=kv_np)
        want, ref_vjp = jax.vjp(ref, up(q), up(k), up(v))
        want_grads = ref_vjp(up(cot))
        want, want_grads = np.asarray(want), [np.asarray(g) for g in want_grads]
    assert out.dtype == dtype and out.shape == q.shape
    assert rel_err(out, want) < TOL[dtype], "output"
    for g, w, name_ in zip(grads, want_grads, "qkv"):
        assert g.dtype == dtype
        assert rel_err(g, w) < GRAD_TOL[dtype], f"d{name_}"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients(platform, name, dtype):
    check_case(platform, name, dtype)


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_float32(name):
    check_case("cpu", name, jnp.float32)


@pytest.mark.parametrize("generator", ["causal", "local", "strided", "fixed", "bigbird",
                                       "longformer"])
def test_every_attention_layout_generator(platform, generator):
    t, bs = 512, 64
    make = {
        "causal": lambda: jbs.layouts.causal(t, bs),
        "local": lambda: jbs.layouts.local(t, bs, 130),
        "strided": lambda: jbs.layouts.strided(t, bs, 128),
        "fixed": lambda: jbs.layouts.fixed(t, bs, 128),
        "bigbird": lambda: jbs.layouts.bigbird(t, bs),
        "longformer": lambda: jbs.layouts.longformer(t, bs, 64),
    }[generator]
    causal = generator in ("causal", "local", "strided", "fixed")
    CASES_GEN = (1, t, t, 2, 1, 64, bs, make, causal, None)
    CASES[f"gen_{generator}"] = CASES_GEN
    try:
        check_case(platform, f"gen_{generator}", jnp.bfloat16)
    finally:
        del CASES[f"gen_{generator}"]


def test_row_without_keys_gives_zero_output_and_zero_gradients(platform):
    layout = jbs.Layout(np.array([[1, 0], [0, 0]], bool), 64)  # query block 1: no keys
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 128, 2, 64)), jnp.bfloat16)
               for _ in range(3))
    poison(platform)
    (o, lse), vjp = jax.vjp(
        jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, return_lse=True)), q, k, v)
    assert np.all(np.asarray(o[:, 64:], np.float32) == 0)
    assert np.all(np.isneginf(np.asarray(lse[:, :, 64:])))
    dq, dk, dv = vjp((jnp.ones_like(o), jnp.ones_like(lse)))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in (dq, dk, dv))
    assert np.all(np.asarray(dq[:, 64:], np.float32) == 0)


def test_kv_lengths_zero_row(platform):
    rng = np.random.default_rng(1)
    layout = jbs.layouts.local(128, 64, 64, causal=False)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 128, 1, 64)), jnp.float16) for _ in range(3))
    poison(platform)
    o = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, kv_lengths=jnp.array([0, 128])))(
        q, k, v)
    assert np.all(np.asarray(o[0], np.float32) == 0)
    assert np.all(np.isfinite(np.asarray(o[1], np.float32)))


def test_jvp_against_finite_differences():
    """Forward mode (the tangent primitive) in float64 on the reference path."""
    case = CASES["tq_ne_tk_per_head"]
    layout = case[7]()
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        q, k, v, _ = make_inputs(case, jnp.float64)
        f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, scale=0.125,
                                          return_lse=True)
        check_grads(f, (q, k, v), order=1, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_jvp_float32_matches_reference(platform):
    case = CASES["gqa2_random_empty_rows"]
    layout = case[7]()
    q, k, v, _ = make_inputs(case, jnp.float32)
    f = lambda q, k, v: jbs.attention(q, k, v, layout)
    tangents = make_inputs(case, jnp.float32, seed=9)[:3]
    out, tan = jax.jit(lambda p, t: jax.jvp(f, p, t))((q, k, v), tangents)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        ref = functools.partial(dense_reference, layout=layout, causal=False,
                                scale=1 / np.sqrt(128), kv_lengths=np.array([256]))
        _, want = jax.jvp(ref, tuple(map(up, (q, k, v))), tuple(map(up, tangents)))
        want = np.asarray(want)
    assert rel_err(tan, want) < 1e-4


def test_grad_runs_the_backward_primitive_not_the_tangent():
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((1, 128, 1, 64))
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda q: jbs.attention(q, q, q, layout, causal=True).sum()))(q))
    assert "blocksparse_attention_bwd" in jaxpr
    assert "blocksparse_attention_tangent" not in jaxpr


def test_vmap_jit_checkpoint(platform):
    case = CASES["mha_local_causal"]
    layout = case[7]()
    q, k, v, _ = make_inputs(case, jnp.float32)
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True)
    stacked = jnp.stack([q, 2 * q])
    got = jax.jit(jax.vmap(f, in_axes=(0, None, None)))(stacked, k, v)
    np.testing.assert_allclose(got[1], f(2 * q, k, v), rtol=2e-5, atol=2e-5)
    g1 = jax.grad(lambda q: jax.checkpoint(f)(q, k, v).sum())(q)
    g2 = jax.grad(lambda q: f(q, k, v).sum())(q)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-5)


def test_softmax_composes_with_sdd_and_dsd_into_attention(platform):
    rng = np.random.default_rng(3)
    t, d = 256, 64
    layout = jbs.layouts.local(t, 64, 100)
    q, k, v = (jnp.asarray(rng.standard_normal((t, d)), jnp.float32) for _ in range(3))
    hp = dict(precision="highest")

    def unfused(q, k, v):
        s = jbs.sdd(q, k, layout, trans_b=True, **hp)
        return jbs.dsd(jbs.softmax(s, layout, scale=d ** -0.5, causal=True), v, layout, **hp)

    fused = lambda q, k, v: jbs.attention(q[None, :, None], k[None, :, None], v[None, :, None],
                                          layout, causal=True)[0, :, 0]
    np.testing.assert_allclose(jax.jit(unfused)(q, k, v), fused(q, k, v), rtol=1e-4, atol=1e-5)
    g1 = jax.grad(lambda q: unfused(q, k, v).sum())(q)
    g2 = jax.grad(lambda q: fused(q, k, v).sum())(q)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-5)


def softmax64(blocks, layout, scale, causal, cot):
    """float64 numpy block softmax and its gradient for the cotangent `cot` (both blocks)."""
    r, c = layout.mask.shape
    bs = layout.block_size
    allowed = to_dense64(np.ones((layout.nnz, bs, bs)), layout) > 0
    if causal:
        i, j = np.arange(r * bs)[:, None], np.arange(c * bs)[None, :]
        allowed &= j <= i + (c - r) * bs
    s = np.where(allowed, to_dense64(blocks, layout) * scale, -np.inf)
    m = np.max(s, -1, keepdims=True)
    e = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0.0)), 0.0)
    p = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    dp = to_dense64(cot, layout)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    return from_dense64(p, layout), from_dense64(ds, layout)


@pytest.mark.parametrize("causal", [False, True])
def test_float64_softmax_attention_and_conversions(causal):
    """With x64 on, softmax, attention, to_dense and from_dense compute float64 in float64:
    values and gradients against float64 numpy, to float64 rounding."""
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(71)
        normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float64)
        layout = jbs.Layout(rng.random((3, 4)) < 0.6, 16)
        blocks, cot = normal(layout.nnz, 16, 16), normal(layout.nnz, 16, 16)
        f = lambda x: jbs.softmax(x, layout, scale=0.7, causal=causal)
        out, vjp = jax.vjp(jax.jit(f), blocks)
        want, want_grad = softmax64(blocks, layout, 0.7, causal, cot)
        assert out.dtype == jnp.float64 and rel_err(out, want) < 1e-13
        assert rel_err(vjp(cot)[0], want_grad) < 1e-13

        dense, vjp = jax.vjp(lambda x: jbs.to_dense(x, layout), blocks)
        np.testing.assert_array_equal(dense, to_dense64(blocks, layout))
        x = normal(48, 64)
        np.testing.assert_array_equal(vjp(x)[0], from_dense64(x, layout))
        gathered, vjp = jax.vjp(lambda x: jbs.from_dense(x, layout), x)
        np.testing.assert_array_equal(gathered, from_dense64(x, layout))
        np.testing.assert_array_equal(vjp(blocks)[0], to_dense64(blocks, layout))

        att = jbs.layouts.local(96, 32, 40, causal=causal)
        q, k, v = normal(2, 96, 4, 16), normal(2, 80, 2, 16), normal(2, 80, 2, 16)
        k, v = jnp.pad(k, ((0, 0), (0, 16), (0, 0), (0, 0))), jnp.pad(v, ((0, 0), (0, 16),
                                                                        (0, 0), (0, 0)))
        lengths = np.array([96, 70])
        do, dlse = normal(2, 96, 4, 16), normal(2, 4, 96)
        g = lambda q, k, v: jbs.attention(q, k, v, att, causal=causal, scale=0.3,
                                          kv_lengths=lengths, return_lse=True)
        (o, lse), vjp = jax.vjp(jax.jit(g), q, k, v)
        allowed = attention_mask64(att, causal, 96, 96, lengths)
        want = attention64(q, k, v, allowed, 0.3, do, dlse)
        assert o.dtype == lse.dtype == jnp.float64
        assert rel_err(o, want[0]) < 1e-13 and lse_err(lse, want[1]) < 1e-12
        for got, w in zip(vjp((do, dlse)), want[2:]):
            assert got.dtype == jnp.float64 and rel_err(got, w) < 1e-12


def test_softmax_refuses_integer_and_bool_blocks():
    layout = jbs.layouts.causal(64, 32)
    for dtype in (jnp.int32, jnp.bool_, jnp.uint8):
        with pytest.raises(ValueError, match=f"softmax: blocks has dtype {jnp.dtype(dtype)}"):
            jax.jit(lambda x: jbs.softmax(x, layout))(jnp.ones((layout.nnz, 32, 32), dtype))


def test_bad_input():
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((1, 128, 4, 64))
    k = jnp.ones((1, 128, 2, 64))
    cases = [
        (lambda: jbs.attention(q, jnp.ones((1, 128, 3, 64)), jnp.ones((1, 128, 3, 64)), layout),
         "multiple"),
        (lambda: jbs.attention(q, k, k, jbs.layouts.causal(256, 64)),
         r"layout has \(4, 4\) blocks of 64"),
        (lambda: jbs.attention(q, k, k, layout, causal=jnp.bool_(True)), "causal must be"),
        (lambda: jbs.attention(q, k, k, layout, scale=jnp.float32(0.1)), "scale must be"),
        (lambda: jbs.attention(q, k, k, layout, scale=float("nan")), "scale must be finite"),
        (lambda: jbs.attention(q, k, k, layout, causal="yes"), "causal must be"),
        (lambda: jbs.attention(q, k, k.astype(jnp.float16), layout), "share a dtype"),
        (lambda: jbs.attention(q, k, k, layout, kv_lengths=jnp.ones((2,), jnp.int32)),
         "kv_lengths"),
        (lambda: jbs.attention(q, k, k, jbs.Layout(np.ones((3, 2, 2), bool), 64)), "head masks"),
        (lambda: jbs.attention(q[0], k, k, layout), r"q must be \[B, T, H, D\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            jax.jit(call)()


def test_integers_wider_than_int32_keep_their_meaning():
    """int64 / uint32 kv_lengths, q_offset, page_table and segment ids (numpy's default
    int64 under x64) are not wrapped into int32: a length past Tk means every key, a
    position or page far out of range stays out of range (NaN rows), and ids 0 and 2**32
    are two documents (also traced)."""
    rng = np.random.default_rng(21)
    with float64_enabled():
        arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
        q, k, v = arr(1, 32, 1, 8), arr(1, 32, 1, 8), arr(1, 32, 1, 8)
        layout = jbs.Layout(np.ones((2, 2), bool), 16)
        every = jbs.attention(q, k, v, layout)
        for n in (jnp.asarray([2**32 + 5], jnp.int64), jnp.asarray([2**31 + 5], jnp.uint32)):
            np.testing.assert_array_equal(jbs.attention(q, k, v, layout, kv_lengths=n), every)
        ids = np.zeros((1, 32), np.int64)
        ids[0, 16:] = 2**32
        want = jbs.attention(q, k, v, layout, q_segment_ids=(ids > 0).astype(np.int32))
        for call in (lambda s: jbs.attention(q, k, v, layout, q_segment_ids=s),
                     jax.jit(lambda s: jbs.attention(q, k, v, layout, q_segment_ids=s))):
            np.testing.assert_array_equal(call(ids), want)
        assert not np.array_equal(want, every)  # the two documents differ from one
        for offset in (jnp.asarray([2**32 + 3], jnp.int64), 2**40, -2**40):
            assert np.isnan(np.asarray(jbs.attention(q[:, :2], k, v, layout,
                                                     q_offset=offset))).all()
        pool = arr(3, 16, 1, 8)
        table = jnp.asarray([[0, 2**32 + 1]], jnp.int64)  # page 1 + 2**32: out of range
        assert np.isnan(np.asarray(jbs.attention(q[:, :2], pool, pool, layout, q_offset=30,
                                                 page_table=table))).all()


def test_host_integers_wider_than_int32_without_x64():
    """Host (numpy, Python) int64 kv_lengths, q_offset, page_table and segment ids keep
    their meaning where jax_enable_x64 is off, which would wrap them into int32 on the way
    into JAX (2**32 + 5 -> 5): they saturate on the host, ids compare exactly; values
    that fit int32 are taken as they are."""
    assert jnp.asarray(np.int64(2**32 + 5)).dtype == jnp.int32  # x64 off here
    rng = np.random.default_rng(23)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    q, k, v = arr(1, 32, 1, 8), arr(1, 32, 1, 8), arr(1, 32, 1, 8)
    layout = jbs.Layout(np.ones((2, 2), bool), 16)
    every = jbs.attention(q, k, v, layout)
    five = jbs.attention(q, k, v, layout, kv_lengths=jnp.asarray([5], jnp.int32))
    for n in (np.array([2**32 + 5]), [2**32 + 5], [2**70], np.array([2**63 + 5], np.uint64)):
        np.testing.assert_array_equal(jbs.attention(q, k, v, layout, kv_lengths=n), every)
    np.testing.assert_array_equal(jbs.attention(q, k, v, layout, kv_lengths=np.array([5])),
                                  five)
    for offset in (np.array([2**32 + 3]), np.array([-2**32 + 3]), [2**40]):
        assert np.isnan(np.asarray(jbs.attention(q[:, :2], k, v, layout,
                                                 q_offset=offset))).all()
    ids = np.zeros((1, 32), np.int64)
    ids[0, 16:] = 2**32
    want = jbs.attention(q, k, v, layout, q_segment_ids=(ids > 0).astype(np.int32))
    assert not np.array_equal(want, every)  # the two documents differ from one
    for q_ids, kv_ids in ((ids, None), (ids, ids.tolist()), (ids - 2**40, ids - 2**40)):
        np.testing.assert_array_equal(
            jax.jit(lambda: jbs.attention(q, k, v, layout, q_segment_ids=q_ids,
                                          kv_segment_ids=kv_ids))(), want)
    with pytest.raises(ValueError, match="segment ids beyond int32 in a host array"):
        jbs.attention(q, k, v, layout, q_segment_ids=ids,
                      kv_segment_ids=jnp.asarray(ids > 0, jnp.int32))
    pool = arr(3, 16, 1, 8)
    for table in (np.array([[0, 2**32 + 1]]), [[0, 2**32 + 1]]):  # page 1 + 2**32: outside
        assert np.isnan(np.asarray(jbs.attention(q[:, :2], pool, pool, layout, q_offset=30,
                                                 page_table=table))).all()
    with pytest.raises(ValueError, match="kv_lengths must be an integer array"):
        jbs.attention(q, k, v, layout, kv_lengths=[[1], [2, 3]])


def test_traced_causal_and_scale_are_refused_by_name():
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((1, 128, 1, 64))
    with pytest.raises(ValueError, match="attention: scale must be a Python number"):
        jax.jit(lambda q, s: jbs.attention(q, q, q, layout, scale=s))(q, 0.5)
    with pytest.raises(ValueError, match="attention: causal must be a Python bool"):
        jax.jit(lambda q, c: jbs.attention(q, q, q, layout, causal=c))(q, True)


HEAD_DIM_CASES = [(16, 16, jnp.float32), (32, 32, jnp.bfloat16), (80, 16, jnp.float16),
                  (96, 64, jnp.bfloat16), (256, 32, jnp.float32), (8, 128, jnp.float16),
                  (64, 32, jnp.bfloat16)]


@pytest.mark.parametrize("head_dim,bs,dtype", HEAD_DIM_CASES,
                         ids=lambda x: jnp.dtype(x).name if not isinstance(x, int) else str(x))
def test_any_head_dim_and_block_size(platform, head_dim, bs, dtype):
    """Head dims and block sizes without a fused kernel run the pure-JAX path (on a GPU
    too; head dim 96 at block 64: the fused forward on Hopper, the backward on the head
    dim 128 kernels zero-padded),
    values and gradients, GQA and causal."""
    t = 128
    layout = jbs.Layout(np.tril(np.random.default_rng(bs).random((t // bs, t // bs)) < 0.6)
                        | np.eye(t // bs, dtype=bool), bs)
    rng = np.random.default_rng(head_dim)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dtype)
    q, k, v = arr(1, t, 2, head_dim), arr(1, t, 1, head_dim), arr(1, t, 1, head_dim)
    cot = arr(1, t, 2, head_dim)
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True)
    poison(platform)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    grads = vjp(cot)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        ref = functools.partial(dense_reference, layout=layout, causal=True,
                                scale=head_dim ** -0.5, kv_lengths=np.array([t]))
        want, ref_vjp = jax.vjp(ref, up(q), up(k), up(v))
        want_grads = ref_vjp(up(cot))
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_err(out, np.asarray(want)) < TOL[dtype]
    for g, w in zip(grads, want_grads):
        assert rel_err(g, np.asarray(w)) < GRAD_TOL[dtype]


@pytest.mark.parametrize("tq", [1, 128], ids=["decode", "prefill"])
def test_empty_batch_gives_the_empty_result(tq):
    """A zero-size batch returns empty results and gradients, as the matmul family does."""
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((0, tq, 4, 64), jnp.bfloat16)
    k = jnp.ones((0, 128, 2, 64), jnp.bfloat16)
    f = jax.jit(lambda q, k: jbs.attention(q, k, k, layout, causal=True, return_lse=True,
                                           q_offset=None if tq > 1 else 127))
    o, lse = f(q, k)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert lse.shape == (0, 4, tq) and lse.dtype == jnp.float32
    dq, dk = jax.grad(lambda q, k: f(q, k)[0].astype(jnp.float32).sum(), argnums=(0, 1))(q, k)
    assert dq.shape == q.shape and dk.shape == k.shape


def test_export_with_a_symbolic_batch_and_hand_built_block_masks():
    """`jax.export` with a symbolic batch: the default kv_lengths, segment ids and a
    per-batch BlockMask trace (they once needed a concrete B), equal to jit at B 2.
    A BlockMask built by its constructor is checked: non-bool, not 4-D, bad sizes."""
    from jax import export
    rng = np.random.default_rng(359)
    q = jnp.asarray(rng.standard_normal((2, 64, 2, 8)), jnp.float32)
    ids = jnp.asarray(np.repeat([[0, 1]], 32, axis=1).reshape(1, 64).repeat(2, 0), jnp.int32)
    blocks = jbs.BlockMask.from_mask(np.tril(np.ones((2, 1, 4, 4), bool)), 16)
    layout = jbs.Layout(np.tril(np.ones((4, 4), bool)), 16)
    calls = {"default kv_lengths": lambda q: jbs.attention(q, q, q, layout, causal=True),
             "segment ids": lambda q: jbs.attention(q, q, q, layout, q_segment_ids=ids[:1]
                                                    .repeat(q.shape[0], 0)),
             "per-batch BlockMask": lambda q: jbs.attention(q, q, q, jbs.BlockMask(
                 jnp.broadcast_to(blocks.mask[:1], (q.shape[0], 1, 4, 4)), 16, 4))}
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, 64, 2, 8"), jnp.float32)
    for name, f in calls.items():
        exported = export.export(jax.jit(f))(spec)
        np.testing.assert_allclose(np.asarray(exported.call(q)), np.asarray(jax.jit(f)(q)),
                                   rtol=1e-6, atol=1e-6, err_msg=name)
    for bad, match in ((jbs.BlockMask(blocks.mask, 16, 0), "mask.max_blocks"),
                       (jbs.BlockMask(blocks.mask, 0, 4), "mask.block_size"),
                       (jbs.BlockMask(blocks.mask[0, 0], 16, 4), "must be bool"),
                       (jbs.BlockMask(blocks.mask.astype(jnp.float32) * 0.3, 16, 4),
                        "must be bool")):
        with pytest.raises(ValueError, match=match):
            jbs.attention(q, q, q, bad)
