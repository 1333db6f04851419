"""Every transformation over every operand: vmap (any axis, over operands that have their
own leading dimensions, nested), jacfwd, jacrev and hessian of each op of the matmul family
against the same transformations of the dense function, and attention differentiated to
second order (grad of grad, hessian, jacfwd of jacfwd) against a dense reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jax_blocksparse as jbs
from reference import random, rel_err
from test_attention import dense_reference
from test_matmul import PLATFORMS, float64_enabled, poison

HIGHEST = dict(precision="highest")
# 2 x 3 blocks of 16 with an empty block column: small enough for dense Hessians
SMALL = jbs.Layout(np.array([[1, 0, 1], [1, 0, 1]], bool), 16)


@pytest.fixture(params=PLATFORMS)
def platform(request):
    with jax.default_device(jax.devices(request.param)[0]):
        yield request.param


def _tr(x, t):
    return jnp.swapaxes(x, -1, -2) if t else x


def op_case(op, rng, layout=SMALL, free=5):
    """(block-sparse fn, dense fn computing the same function, argument shapes)."""
    p, q = layout.shape
    bs, nnz = layout.block_size, layout.nnz
    block_mask = jnp.asarray(np.kron(layout.mask, np.ones((bs, bs))), jnp.float32)
    if op == "sdd":
        fn = functools.partial(jbs.sdd, layout=layout, trans_b=True, **HIGHEST)
        dense = lambda a, b: jbs.from_dense(jnp.matmul(a, _tr(b, True), **HIGHEST) * block_mask,
                                            layout)
        return fn, dense, ((p, free), (q, free))
    if op == "dsd":
        fn = functools.partial(jbs.dsd, layout=layout, trans_s=True, **HIGHEST)
        dense = lambda s, b: jnp.matmul(_tr(jbs.to_dense(s, layout), True), b, **HIGHEST)
        return fn, dense, ((nnz, bs, bs), (p, free))
    if op == "dds":
        fn = functools.partial(jbs.dds, layout=layout, trans_a=True, **HIGHEST)
        dense = lambda a, w: jnp.matmul(_tr(a, True), jbs.to_dense(w, layout), **HIGHEST)
        return fn, dense, ((p, free), (nnz, bs, bs))
    fn = functools.partial(jbs.matmul, layout=layout, **HIGHEST)
    dense = lambda x, w: jnp.matmul(x, jbs.to_dense(w, layout), **HIGHEST)
    return fn, dense, ((free, p), (nnz, bs, bs))


OPS = ["sdd", "dsd", "dds", "matmul"]


# ---------------------------------------------------------------------------- vmap
@pytest.mark.parametrize("lead", ["none", "first", "second", "both"])
@pytest.mark.parametrize("axes", [(0, None), (None, 0), (1, 1), (0, 2)], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_vmap_over_operands_with_their_own_leading_dims(platform, op, axes, lead):
    """Mapped axes anywhere, over operands with (or without) leading batch dimensions."""
    if op == "matmul" and lead in ("second", "both"):
        pytest.skip("matmul's weight has no leading dimensions")
    rng = np.random.default_rng(101)
    fn, dense, shapes = op_case(op, rng)
    extra = {"none": ((), ()), "first": ((3,), ()), "second": ((), (3,)),
             "both": ((3,), (3,))}[lead]
    args = [random(rng, e + s, jnp.float32) for e, s in zip(extra, shapes)]
    stacked = [a if ax is None else jnp.stack([a, -0.5 * a + 1], axis=min(ax, a.ndim))
               for a, ax in zip(args, axes)]
    axes = tuple(None if ax is None else min(ax, a.ndim - 1) for a, ax in zip(stacked, axes))
    poison(platform)
    got = jax.jit(jax.vmap(fn, in_axes=axes))(*stacked)
    # the dense function broadcasts a missing leading dimension, as the ops do
    want = np.stack([np.asarray(dense(*[a if ax is None else jnp.take(a, i, axis=ax)
                                        for a, ax in zip(stacked, axes)]), np.float64)
                     for i in range(2)])
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("op", OPS)
def test_nested_vmap(platform, op):
    rng = np.random.default_rng(103)
    fn, dense, (s1, s2) = op_case(op, rng)
    x = random(rng, (2, 3) + s1, jnp.float32)  # mapped twice
    y = random(rng, (3,) + s2, jnp.float32)  # mapped by the inner vmap only
    poison(platform)
    got = jax.jit(jax.vmap(jax.vmap(fn), in_axes=(0, None)))(x, y)
    want = jax.vmap(jax.vmap(dense), in_axes=(0, None))(x, y)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-5
    got = jax.jit(jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(1, None)))(x, y)
    want = jax.vmap(jax.vmap(dense, in_axes=(None, 0)), in_axes=(1, None))(x, y)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-5


# ------------------------------------------------------- jacobians and Hessians
@pytest.mark.parametrize("argnum", [0, 1])
@pytest.mark.parametrize("op", OPS)
def test_jacobians_and_hessian_of_every_operand(platform, op, argnum):
    rng = np.random.default_rng(107 + argnum)
    fn, dense, shapes = op_case(op, rng, free=3)
    args = [random(rng, s, jnp.float32) for s in shapes]
    scalar = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a))))
    for transform in (jax.jacfwd, jax.jacrev):
        poison(platform)
        got = jax.jit(transform(fn, argnums=argnum))(*args)
        want = transform(dense, argnums=argnum)(*args)
        assert rel_err(got, np.asarray(want, np.float64)) < 1e-5, transform.__name__
    poison(platform)
    got = jax.jit(jax.hessian(scalar(fn), argnums=argnum))(*args)
    want = jax.hessian(scalar(dense), argnums=argnum)(*args)
    assert rel_err(got, np.asarray(want, np.float64)) < 1e-4


def test_hessian_with_respect_to_the_weights_of_the_issue(platform):
    """The example of the bug report: a Hessian of matmul with respect to `w`."""
    layout = jbs.layouts.random(64, 64, 16, 0.5, seed=0)
    rng = np.random.default_rng(109)
    x = random(rng, (2, 64), jnp.float32)
    w = random(rng, (layout.nnz, 16, 16), jnp.float32)
    f = lambda w: jnp.sin(jbs.matmul(x, w, layout, **HIGHEST)).sum()
    g = lambda w: jnp.sin(jnp.matmul(x, jbs.to_dense(w, layout), **HIGHEST)).sum()
    got = jax.jit(jax.hessian(f))(w)
    assert got.shape == w.shape * 2
    assert rel_err(got, np.asarray(jax.hessian(g)(w), np.float64)) < 1e-4


# ------------------------------------------------ attention, second order and beyond
ATT_LAYOUT = jbs.Layout(np.array([[1, 0], [1, 1]], bool), 16)


def _attention_args(rng, dtype=jnp.float32, d=16):
    q = random(rng, (1, 32, 2, d), dtype)
    k = random(rng, (1, 32, 1, d), dtype)
    v = random(rng, (1, 32, 1, d), dtype)
    return q, k, v


def test_attention_check_grads_order_3_float64():
    """The tangent and backward primitives' own JVP rules, tightly, to third order."""
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        rng = np.random.default_rng(113)
        q, k, v = (x.astype(jnp.float64) for x in _attention_args(rng))
        lengths = jnp.array([27], jnp.int32)
        f = lambda q, k, v: jbs.attention(q, k, v, ATT_LAYOUT, causal=True, scale=0.3,
                                          kv_lengths=lengths, return_lse=True)
        check_grads(f, (q, k, v), order=3, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_attention_gradient_penalty_and_hessian(platform, dtype):
    """grad of a function of grad, hessian and jacfwd(jacfwd) against a float64 dense
    reference; bfloat16 exercises the fused backward with pure-JAX second-order terms."""
    rng = np.random.default_rng(127)
    layout = jbs.layouts.causal(128, 64) if dtype != jnp.float32 else ATT_LAYOUT
    d = 64 if dtype != jnp.float32 else 16
    t = layout.shape[0]
    q = random(rng, (1, t, 2, d), dtype)
    k, v = (random(rng, (1, t, 1, d), dtype) for _ in range(2))
    lengths = np.array([t - 5])

    def penalty(attend):
        def grad_norm(q, k, v):
            g = jax.grad(lambda q, k, v: jnp.sum(
                jnp.sin(attend(q, k, v).astype(jnp.float32))), argnums=(0, 1, 2))(q, k, v)
            return sum(jnp.sum(x.astype(jnp.float32) ** 2) for x in g)
        return jax.grad(grad_norm, argnums=(0, 1, 2))

    ours = lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                         kv_lengths=jnp.asarray(lengths, jnp.int32))
    poison(platform)
    got = jax.jit(penalty(ours))(q, k, v)
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x.astype(jnp.float32)), jnp.float64)
        ref = functools.partial(dense_reference, layout=layout, causal=True,
                                scale=1 / np.sqrt(d), kv_lengths=lengths)
        want = [np.asarray(w) for w in penalty(ref)(up(q), up(k), up(v))]
    tol = 1e-4 if dtype == jnp.float32 else 6e-2
    for g, w, name in zip(got, want, "qkv"):
        assert g.dtype == dtype
        assert rel_err(g, w) < tol, f"d{name}"


def test_attention_hessians(platform):
    """hessian (jacfwd of jacrev) and jacfwd of jacfwd against the dense reference."""
    rng = np.random.default_rng(131)
    q, k, v = (random(rng, (1, 32, 1, 4), jnp.float32) for _ in range(3))
    lengths = np.array([29])
    ours = lambda q: jnp.sum(jnp.sin(jbs.attention(
        q, k, v, ATT_LAYOUT, causal=True, kv_lengths=jnp.asarray(lengths, jnp.int32))))
    poison(platform)
    got = [jax.jit(jax.hessian(ours))(q), jax.jit(jax.jacfwd(jax.jacfwd(ours)))(q)]
    with float64_enabled(), jax.default_device(jax.devices("cpu")[0]):
        up = lambda x: jnp.asarray(np.asarray(x), jnp.float64)
        ref = lambda q: jnp.sum(jnp.sin(dense_reference(
            q, up(k), up(v), ATT_LAYOUT, True, 0.5, lengths)))
        want = np.asarray(jax.hessian(ref)(up(q)))
    for h in got:
        assert h.shape == q.shape * 2
        assert rel_err(h, want) < 1e-4


def test_attention_vmap_any_axes_and_nested(platform):
    rng = np.random.default_rng(137)
    layout = jbs.layouts.causal(128, 64)
    q = random(rng, (2, 3, 1, 128, 2, 64), jnp.bfloat16)  # vmapped twice at axes 0, 1
    k = random(rng, (1, 128, 2, 3, 64), jnp.bfloat16)  # vmapped at axis 3 (inner vmap)
    v = random(rng, (1, 128, 2, 64), jnp.bfloat16)  # unmapped
    lengths = jnp.array([[100], [77]], jnp.int32)  # vmapped at axis 0 (outer vmap)
    f = lambda q, k, n: jbs.attention(q, k, v, layout, causal=True, kv_lengths=n)
    poison(platform)
    got = jax.jit(jax.vmap(jax.vmap(f, in_axes=(0, 3, None)), in_axes=(0, None, 0)))(
        q, k, lengths)
    assert got.shape == (2, 3, 1, 128, 2, 64)
    for i in range(2):
        for j in range(3):
            want = f(q[i, j], k[:, :, :, j], lengths[i])
            assert rel_err(got[i, j], np.asarray(want.astype(jnp.float32), np.float64)) < 1e-2


def test_attention_vmap_over_block_masks_gradients(platform):
    """vmap of the gradient over `BlockMask`s of block 64 (their lists fold per batch entry,
    so on Hopper the backward runs on 128 x 128 tiles), one 128-row tile and two: each
    entry's dq, dk, dv equal the unmapped call's."""
    rng = np.random.default_rng(139)
    for t in (128, 256):
        masks = jnp.asarray(rng.random((3, 1, 1, t // 64, t // 64)) < 0.7)
        q, k, v = (random(rng, (2, t, 2, 64), jnp.bfloat16) for _ in range(3))
        cot = random(rng, (2, t, 2, 64), jnp.float32)
        loss = lambda q, k, v, m: jnp.sum(jbs.attention(
            q, k, v, jbs.BlockMask.from_mask(m, 64), causal=True).astype(jnp.float32) * cot)
        grads = jax.grad(loss, argnums=(0, 1, 2))
        poison(platform)
        got = jax.jit(jax.vmap(grads, in_axes=(None, None, None, 0)))(q, k, v, masks)
        for i in range(3):
            want = jax.jit(grads)(q, k, v, masks[i])
            for g, w in zip(got, want):
                w = np.asarray(w.astype(jnp.float32), np.float64)
                assert np.abs(w).max() > 0
                assert rel_err(g[i], w) < 1e-2, (t, i)


def test_attention_vmap_keeps_one_kv_length_per_batch_entry():
    """vmap over q of a batch of one with kv_lengths unmapped: the primitive still gets one
    length per (folded) batch entry, as the kernels read `kv_lengths[b]`."""
    layout = jbs.layouts.causal(128, 64)
    q = jnp.ones((3, 1, 128, 2, 64), jnp.bfloat16)  # vmapped: 3 x B=1
    k = jnp.ones((1, 128, 2, 64), jnp.bfloat16)
    f = lambda q: jbs.attention(q, k, k, layout, causal=True, kv_lengths=jnp.array([100]))
    jaxpr = jax.make_jaxpr(jax.vmap(f))(q).jaxpr
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "blocksparse_attention"]
    assert eqn.invars[0].aval.shape[0] == 3
    assert eqn.invars[3].aval.shape == (0,)  # sinks: the placeholder (none)
    assert eqn.invars[4].aval.shape == (3,)  # kv_lengths
