"""An fp8 KV cache (issue 22 item 2): k and v in float8_e4m3fn or float8_e5m2 with q in
bfloat16, float16 or float32, dequantized by `k_scale`, `v_scale` (a Python float or a
float32 `[Hkv]` array: key = `k.astype(float32) * k_scale[h]`). Against a float64
reference on the dequantized values: contiguous and paged caches, GQA, kv_lengths, causal
with q_offset, decode rows (Tq <= 64) against the rows of full attention; the argument
errors; `jax.grad` with respect to q; on a GPU, the decode kernel's name and values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from test_matmul import float64_enabled

FP8 = {"e4m3": jnp.float8_e4m3fn, "e5m2": jnp.float8_e5m2}
Q_DTYPES = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32}
TOL = {"bf16": 2e-2, "f16": 4e-3, "f32": 1e-4}  # max abs error of o (values of size ~1)


def cache(rng, shape, fp8):
    """An fp8 cache of values spread over the format's range (never zeros)."""
    x = rng.standard_normal(shape) * 4
    x = np.where(np.abs(x) < 0.1, 0.5, x)
    return jnp.asarray(x, FP8[fp8])


def scales(rng, kind, hkv):
    """A Python float or a float32 `[Hkv]` array, or None (1.0)."""
    if kind == "none":
        return None
    if kind == "scalar":
        return 0.125
    return jnp.asarray(rng.uniform(0.05, 0.3, hkv), jnp.float32)


def scale_array(s, hkv):
    return np.ones(hkv) if s is None else np.broadcast_to(np.asarray(s, np.float64), (hkv,))


def reference(q, k, v, ks, vs, allowed, scale):
    """float64 attention of the dequantized cache: `allowed` bool `[B, 1 or Hq, Tq, Tk]`;
    rows with no key are 0."""
    q = np.asarray(q.astype(jnp.float32), np.float64)
    hq, hkv = q.shape[2], k.shape[2]
    kd = np.asarray(k.astype(jnp.float32), np.float64) * scale_array(ks, hkv)[:, None]
    vd = np.asarray(v.astype(jnp.float32), np.float64) * scale_array(vs, hkv)[:, None]
    kd, vd = (np.repeat(x, hq // hkv, axis=2) for x in (kd, vd))
    s = np.einsum("bihd,bjhd->bhij", q, kd) * scale
    s = np.where(allowed, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.where(allowed, np.exp(s - m), 0)
    l = p.sum(-1, keepdims=True)
    p = p / np.where(l > 0, l, 1)
    return np.einsum("bhij,bjhd->bihd", p, vd)


def to_pages(rng, x, page_size):
    """A page pool (shuffled pages, two spare ones of noise) holding `x [B, Tk, H, D]`."""
    b, tk = x.shape[:2]
    per_seq = tk // page_size
    order = rng.permutation(b * per_seq + 2)[:b * per_seq]
    pool = cache(rng, (b * per_seq + 2, page_size) + x.shape[2:], "e4m3").astype(x.dtype)
    pool = pool.at[order].set(x.reshape((b * per_seq, page_size) + x.shape[2:]))
    return pool, jnp.asarray(order.reshape(b, per_seq), jnp.int32)


CASES = [  # fp8, q dtype, scales, paged, Tq, Hq, Hkv
    ("e4m3", "bf16", "array", False, 1, 4, 2),
    ("e4m3", "f16", "scalar", True, 3, 4, 1),
    ("e5m2", "bf16", "array", True, 1, 8, 2),
    ("e5m2", "f32", "none", False, 5, 2, 2),
    ("e4m3", "f32", "array", True, 16, 6, 3),
    ("e5m2", "f16", "scalar", False, 2, 4, 4),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_decode_rows_match_reference(case):
    """Short queries at `q_offset` with kv_lengths, causal, against float64."""
    fp8, qd, kind, paged, tq, hq, hkv = case
    rng = np.random.default_rng(7)
    b, tk, d, bs = 2, 128, 32, 32
    q = jnp.asarray(rng.standard_normal((b, tq, hq, d)), Q_DTYPES[qd])
    k, v = cache(rng, (b, tk, hkv, d), fp8), cache(rng, (b, tk, hkv, d), fp8)
    ks, vs = scales(rng, kind, hkv), scales(rng, kind, hkv)
    lengths = np.array([tk, 70])
    offset = lengths - tq
    layout = jbs.layouts.causal(tk, bs)
    kw = dict(causal=True, q_offset=jnp.asarray(offset), kv_lengths=jnp.asarray(lengths),
              k_scale=ks, v_scale=vs)
    if paged:
        kp, table = to_pages(rng, k, 16)
        vp = jnp.zeros_like(kp).at[table.reshape(-1)].set(v.reshape(-1, 16, hkv, d))
        got = jax.jit(lambda q, k, v, t: jbs.attention(q, k, v, layout, page_table=t, **kw))(
            q, kp, vp, table)
    else:
        got = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, **kw))(q, k, v)
    assert got.dtype == q.dtype
    pos = offset[:, None] + np.arange(tq)
    j = np.arange(tk)
    allowed = (j <= pos[:, :, None]) & (j < lengths[:, None, None])
    want = reference(q, k, v, ks, vs, allowed[:, None], 1 / np.sqrt(d))
    err = np.max(np.abs(np.asarray(got.astype(jnp.float32)) - want))
    assert err < TOL[qd] * max(1.0, np.abs(want).max()), err


@pytest.mark.parametrize("fp8", ["e4m3", "e5m2"])
def test_decode_rows_equal_full_attention_rows(fp8):
    """The last rows of a full (prefill) call equal the same queries as decode rows."""
    rng = np.random.default_rng(3)
    b, t, hq, hkv, d, bs = 2, 64, 4, 2, 16, 16
    q = jnp.asarray(rng.standard_normal((b, t, hq, d)), jnp.float32)
    k, v = cache(rng, (b, t, hkv, d), fp8), cache(rng, (b, t, hkv, d), fp8)
    ks, vs = scales(rng, "array", hkv), 0.5
    layout = jbs.layouts.causal(t, bs)
    full = jbs.attention(q, k, v, layout, causal=True, k_scale=ks, v_scale=vs)
    n = jnp.full((b,), t, jnp.int32)
    rows = jbs.attention(q[:, -2:], k, v, layout, causal=True, q_offset=n - 2, kv_lengths=n,
                         k_scale=ks, v_scale=vs)
    np.testing.assert_allclose(np.asarray(rows), np.asarray(full[:, -2:]), atol=1e-5)
    allowed = np.tril(np.ones((t, t), bool))[None, None]
    want = reference(q, k, v, ks, vs, allowed, 1 / np.sqrt(d))
    np.testing.assert_allclose(np.asarray(full), want, atol=1e-4)


def test_full_attention_gqa_paged_lengths():
    """Longer queries (the prefill path: dequantized first) with a paged cache, GQA and
    kv_lengths, bfloat16 q."""
    rng = np.random.default_rng(11)
    b, t, hq, hkv, d, bs = 2, 64, 4, 2, 32, 32
    q = jnp.asarray(rng.standard_normal((b, t, hq, d)), jnp.bfloat16)
    k, v = cache(rng, (b, t, hkv, d), "e4m3"), cache(rng, (b, t, hkv, d), "e4m3")
    ks, vs = scales(rng, "array", hkv), scales(rng, "array", hkv)
    kp, table = to_pages(rng, k, 16)
    vp = jnp.zeros_like(kp).at[table.reshape(-1)].set(v.reshape(-1, 16, hkv, d))
    lengths = np.array([64, 40])
    got = jbs.attention(q, kp, vp, jbs.layouts.dense(t, t, bs),
                        kv_lengths=jnp.asarray(lengths), page_table=table,
                        k_scale=ks, v_scale=vs)
    allowed = (np.arange(t) < lengths[:, None, None, None])
    # the prefill path dequantizes to q's dtype (bfloat16) first
    want = reference(q, k, v, ks, vs, allowed, 1 / np.sqrt(d))
    assert np.max(np.abs(np.asarray(got.astype(jnp.float32)) - want)) < 3e-2


def test_grad_wrt_q():
    """`jax.grad` with respect to q runs (decode rows and full attention) and matches the
    gradient of the same call on the dequantized float32 cache; the fp8 cache and the
    scales get zero gradients."""
    rng = np.random.default_rng(5)
    b, t, hq, hkv, d, bs = 2, 64, 4, 2, 16, 16
    k, v = cache(rng, (b, t, hkv, d), "e4m3"), cache(rng, (b, t, hkv, d), "e4m3")
    ks = scales(rng, "array", hkv)
    kd = k.astype(jnp.float32) * ks[:, None]
    vd = v.astype(jnp.float32) * 0.25
    layout = jbs.layouts.causal(t, bs)
    n = jnp.asarray([t, 50], jnp.int32)
    for tq in (1, t):
        q = jnp.asarray(rng.standard_normal((b, tq, hq, d)), jnp.float32)
        kw = dict(causal=True) if tq == t else dict(causal=True, q_offset=n - 1, kv_lengths=n)
        w = jnp.asarray(rng.standard_normal((b, tq, hq, d)), jnp.float32)
        loss = lambda q, k, v, ks: (jbs.attention(q, k, v, layout, k_scale=ks, v_scale=0.25,
                                                  **kw) * w).sum()
        gq, gk, gs = jax.grad(loss, argnums=(0, 1, 3))(q, k, v, ks)
        want = jax.grad(lambda q: (jbs.attention(q, kd, vd, layout, **kw) * w).sum())(q)
        np.testing.assert_allclose(np.asarray(gq), np.asarray(want), atol=1e-4, rtol=1e-4)
        assert not np.any(np.asarray(gk.astype(jnp.float32))) and not np.any(np.asarray(gs))


def test_vmap_over_scales():
    """vmap over the scales (a scale per mapped index) dequantizes before the decode."""
    rng = np.random.default_rng(2)
    b, t, hq, hkv, d, bs = 1, 32, 2, 1, 16, 16
    q = jnp.asarray(rng.standard_normal((b, 1, hq, d)), jnp.float32)
    k, v = cache(rng, (b, t, hkv, d), "e4m3"), cache(rng, (b, t, hkv, d), "e4m3")
    layout = jbs.layouts.causal(t, bs)
    many = jnp.asarray([[0.5], [2.0]], jnp.float32)
    f = lambda ks: jbs.attention(q, k, v, layout, causal=True, q_offset=t - 1, k_scale=ks,
                                 v_scale=ks)
    got = jax.vmap(f)(many)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(f(many[i])), atol=1e-5)


def test_errors():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 1, 4, 16)), jnp.bfloat16)
    k = cache(rng, (1, 32, 2, 16), "e4m3")
    layout = jbs.layouts.causal(32, 16)
    call = lambda q=q, k=k, v=k, **kw: jbs.attention(q, k, v, layout, causal=True,
                                                     q_offset=31, **kw)
    for bad in (0.0, -1.0, float("inf"), jnp.ones(4), jnp.ones((1, 2)),
                jnp.asarray([1.0, -2.0]), jnp.asarray([1, 2]), "1.0"):
        for name in ("k_scale", "v_scale"):
            with pytest.raises(ValueError, match=name):
                call(**{name: bad})
    with pytest.raises(ValueError, match="fp8 queries"):
        call(q=q.astype(jnp.float8_e4m3fn))
    with pytest.raises(ValueError, match="one fp8 dtype"):
        call(v=k.astype(jnp.float8_e5m2))
    with pytest.raises(ValueError, match="one fp8 dtype"):
        call(v=k.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="q must be bfloat16, float16 or float32"):
        with float64_enabled():
            call(q=q.astype(jnp.float64))
    with pytest.raises(ValueError, match="fp8 KV cache only"):
        call(k=k.astype(jnp.bfloat16), v=k.astype(jnp.bfloat16), k_scale=1.0)
    # a traced scale array of the right shape is accepted (its values unchecked)
    jax.jit(lambda s: call(k_scale=s))(jnp.ones(2))


def test_decode_lowers_fp8_to_the_kernel(decode_kernels):
    """Lowered for CUDA (no GPU needed): bfloat16/float16 q with an fp8 cache is one decode
    custom call on the fp8 bytes with the two float32 [Hkv] scales (a Python float scale
    filled); float32 q takes the pure-JAX path; the routing table says why not."""
    from jax_blocksparse import _cuda
    from test_decode import lowered_decode_call

    why = _cuda.decode_unsupported
    assert why(jnp.bfloat16, 128, 64, None, jnp.float8_e4m3fn) is None
    assert why(jnp.float16, 64, 64, 16, jnp.float8_e5m2) is None
    assert why(jnp.float32, 64, 64, None, jnp.float8_e5m2) == "dtype float32"
    assert why(jnp.bfloat16, 64, 64, None, jnp.float32) == "k, v dtype float32"
    b, tk, hq, hkv, d = 2, 256, 4, 2, 64
    q = jnp.ones((b, 1, hq, d), jnp.bfloat16)
    k = jnp.ones((b, tk, hkv, d), jnp.float8_e4m3fn)
    n = jnp.full((b,), tk, jnp.int32)
    f = lambda q, k, s: jbs.attention(q, k, k, jbs.layouts.causal(tk, 64), causal=True,
                                      q_offset=n - 1, kv_lengths=n, k_scale=s, v_scale=0.5)
    _, call = lowered_decode_call(f, q, k, jnp.ones(hkv))
    assert "f8E4M3FN" in call and call.count("tensor<2xf32>") == 2, call


@pytest.mark.gpu
def test_gpu_decode_kernel_reads_fp8():
    """On a GPU: the decode kernel runs the fp8 cache (its launch line names it) and
    matches float64."""
    from reference import run_python

    code = """
import jax, jax.numpy as jnp, numpy as np, jax_blocksparse as jbs
from test_attention_fp8_cache import cache, reference
rng = np.random.default_rng(0)
for fp8 in ("e4m3", "e5m2"):
    for dt, d in ((jnp.bfloat16, 128), (jnp.float16, 64)):
        b, tk, hq, hkv = 2, 4096, 8, 2
        q = jnp.asarray(rng.standard_normal((b, 1, hq, d)), dt)
        k, v = cache(rng, (b, tk, hkv, d), fp8), cache(rng, (b, tk, hkv, d), fp8)
        ks = jnp.asarray(rng.uniform(0.05, 0.3, hkv), jnp.float32)
        n = jnp.asarray([tk, 1000], jnp.int32)
        o = jbs.attention(q, k, v, jbs.layouts.causal(tk, 64), causal=True, q_offset=n - 1,
                          kv_lengths=n, k_scale=ks, v_scale=0.2)
        allowed = np.arange(tk) < np.asarray(n)[:, None, None, None]
        want = reference(q, k, v, ks, 0.2, allowed, 1 / np.sqrt(d))
        err = np.max(np.abs(np.asarray(o.astype(jnp.float32)) - want))
        assert err < 3e-2 * max(1.0, np.abs(want).max()), (fp8, dt, err)
"""
    result = run_python(code, JAX_BLOCKSPARSE_DEBUG="1")
    for fp8 in ("e4m3", "e5m2"):
        assert f"fp8 {fp8} cache" in result.stderr, result.stderr[-3000:]
    assert "attention_decode" in result.stderr and "pure-JAX path" not in result.stderr
