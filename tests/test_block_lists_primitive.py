"""`lists_primitive.block_lists_p` (the block lists of attention metadata inside `jit`)
equals numpy's `block_lists` bit for bit: under jit and vmap, at odd shapes (one line, one
entry, widths that truncate, all absent / full / partial, several leading axes, empty
operands); `jax.grad` through attention with a traced `BlockMask` still traces; on a GPU
(the `gpu` marker) the CUDA kernel gives the same arrays, the same on two runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import lists_primitive as lp
from jax_blocksparse.attention_metadata import block_lists


def _kinds(rng, shape, p=(0.5, 0.25, 0.25)):
    return rng.choice(np.arange(3, dtype=np.int8), size=shape, p=p)


def _cases():
    rng = np.random.default_rng(1803)
    yield _kinds(rng, (1, 1, 1)), 1
    yield _kinds(rng, (3, 1, 9)), 4            # one line
    yield _kinds(rng, (2, 7, 1)), 1            # one entry per line
    yield _kinds(rng, (2, 5, 3)), 3
    yield _kinds(rng, (4, 9, 40)), 5           # truncation: lines list more than the width
    yield _kinds(rng, (2, 33, 600)), 700       # several chunks, wider than other
    yield _kinds(rng, (2, 33, 600)), 11
    yield np.zeros((2, 6, 13), np.int8), 4     # all absent
    yield np.full((2, 6, 13), 2, np.int8), 5   # all full (ties in order everywhere)
    yield np.ones((2, 6, 13), np.int8), 13     # all partial
    yield _kinds(rng, (2, 3, 6, 10)), 6        # leading axes of rank 2
    yield _kinds(rng, (3, 17, 16), (0.1, 0.1, 0.8)), 16
    yield _kinds(rng, (2, 40, 35)), 0          # width 0
    yield rng.integers(-128, 128, (2, 9, 70)).astype(np.int8), 40  # any int8 kind
    yield np.zeros((0, 4, 5), np.int8), 3      # empty operands
    yield np.zeros((2, 0, 5), np.int8), 3
    yield np.zeros((2, 4, 0), np.int8), 3


CASES = list(_cases())
IDS = [f"{k.shape}-w{w}" for k, w in CASES]


def expected(kind, width):
    """numpy's `block_lists` (which takes widths up to `other`: wider lines are padded with
    absent entries, as the primitive defines them)."""
    if width > kind.shape[-1]:
        kind = np.pad(kind, [(0, 0)] * (kind.ndim - 1) + [(0, width - kind.shape[-1])])
    return block_lists(np, kind, width)


def assert_same(got, want):
    for g, w, name in zip(got, want, ("counts", "partial", "lists", "order")):
        g = np.asarray(g)
        assert g.dtype == np.int32 and g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("kind,width", CASES, ids=IDS)
def test_primitive_under_jit_equals_numpy(kind, width):
    want = expected(kind, width)
    f = jax.jit(lambda k: block_lists(jnp, k, width))
    assert_same(f(kind), want)
    assert "jax_blocksparse_block_lists" in str(jax.make_jaxpr(f)(kind))


@pytest.mark.parametrize("kind,width", [c for c in CASES if c[0].shape[0] > 1],
                         ids=[i for c, i in zip(CASES, IDS) if c[0].shape[0] > 1])
def test_primitive_under_vmap_equals_numpy(kind, width):
    want = expected(kind, width)
    for axis in range(kind.ndim - 2):
        f = jax.jit(jax.vmap(lambda k: block_lists(jnp, k, width), in_axes=axis))
        got = f(kind)
        assert_same(got, [np.moveaxis(w, axis, 0) for w in want])
    if kind.ndim >= 4:
        nested = jax.vmap(jax.vmap(lambda k: block_lists(jnp, k, width)))(kind)
        assert_same(nested, want)


def test_errors_and_other_dtypes():
    with pytest.raises(ValueError, match="lines, other"):
        lp.block_lists(jnp.zeros((4,), jnp.int8), 2)
    with pytest.raises(ValueError, match="width"):
        lp.block_lists(jnp.zeros((2, 4), jnp.int8), -1)
    with pytest.raises(ValueError, match="int8"):
        lp.block_lists_p.bind(jnp.zeros((2, 4), jnp.int8), width=2)
    kind = _kinds(np.random.default_rng(7), (3, 8)).astype(np.int32)  # the jax.numpy code
    assert_same(lp.block_lists(kind, 5), expected(kind, 5))


def test_grad_through_attention_with_a_traced_block_mask():
    rng = np.random.default_rng(5)
    b, t, h, d, bs = 1, 128, 2, 16, 32
    q, k, v = (jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.float32) for _ in range(3))
    block = rng.random((b, h, t // bs, t // bs)) < 0.5
    block[..., np.arange(t // bs), np.arange(t // bs)] = True

    def loss(q, k, v, block):
        return jnp.sum(jbs.attention(q, k, v, jbs.BlockMask.from_mask(block, bs),
                                     causal=True) ** 2)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, jnp.asarray(block))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert "jax_blocksparse_block_lists" in str(jax.make_jaxpr(jax.grad(loss))(q, k, v, block))


# ------------------------------------------------------------------------------ GPU
GPU_CASES = CASES + [
    (_kinds(np.random.default_rng(11), (2, 4096, 512)), 7),       # truncation, long lines
    (_kinds(np.random.default_rng(12), (1, 4096, 512), (0.9, 0.05, 0.05)), 512),
    (_kinds(np.random.default_rng(13), (1, 8192, 8192), (0.98, 0.01, 0.01)), 8192),
    (_kinds(np.random.default_rng(14), (3, 100, 1000)), 1000),     # other not a multiple of 16
    # entries per lane (cuda/attention/lists.cu: 2 up to 64 entries a line, 4 to 128, 8 to
    # 256, else 16), vector loads or not, 16 lines a CTA or fewer
    (_kinds(np.random.default_rng(15), (1, 64, 64)), 64),
    (_kinds(np.random.default_rng(16), (2, 37, 128)), 128),
    (_kinds(np.random.default_rng(17), (2, 21, 250)), 9),
    (np.random.default_rng(18).integers(-3, 6, (2, 5, 700)).astype(np.int8), 650),
]


@pytest.mark.gpu
@pytest.mark.parametrize("kind,width", GPU_CASES,
                         ids=[f"{k.shape}-w{w}" for k, w in GPU_CASES])
def test_gpu_kernel_equals_numpy_and_is_deterministic(kind, width):
    gpu = jax.devices("gpu")[0]
    f = jax.jit(lambda k: block_lists(jnp, k, width))
    x = jax.device_put(kind, gpu)
    if kind.size:
        text = f.lower(x).as_text()
        assert "jax_blocksparse_block_lists" in text  # the kernel's custom call
    want = expected(kind, width)
    first = [np.asarray(o) for o in f(x)]
    assert_same(first, want)
    assert_same(f(x), first)  # bitwise the same on a second run
    if kind.ndim == 3 and kind.shape[0] > 1:
        assert_same(jax.jit(jax.vmap(lambda k: block_lists(jnp, k, width)))(x), want)


def test_cuda_lowering_is_one_custom_call(monkeypatch):
    """Lowered for "cuda" (the rule `_cuda.py` registers where the extension is built,
    installed here for the test): one custom call on `[N, lines, other]` with `width`;
    empty operands take the jax.numpy code (no launch)."""
    from jax._src.interpreters import mlir
    from jax_blocksparse import _cuda
    from jax_blocksparse import _jax_internals as jint
    rules = mlir._platform_specific_lowerings
    monkeypatch.setitem(rules, "cuda", type(rules["cuda"])(rules["cuda"]))  # restored after
    jint.register_lowering_rule(lp.block_lists_p, _cuda._block_lists_lowering, "cuda")
    f = jax.jit(lambda k: block_lists(jnp, k, 5))

    def text(kind):
        return f.trace(kind).lower(lowering_platforms=("cuda",)).as_text()
    got = text(np.zeros((2, 3, 8, 16), np.int8))
    assert got.count("custom_call @jax_blocksparse_block_lists") == 1
    assert "width = 5" in got and "tensor<6x8x16xi8>" in got
    assert "sort" not in got
    assert "jax_blocksparse_block_lists" not in text(np.zeros((0, 8, 16), np.int8))


@pytest.mark.gpu
def test_gpu_kernel_names_the_shared_memory_limit():
    """Lines past one CTA's shared memory fail when the program runs, naming the limit."""
    gpu = jax.devices("gpu")[0]
    kind = jax.device_put(np.zeros((1, 70000, 1), np.int8), gpu)
    with pytest.raises(Exception, match="shared memory"):
        jax.block_until_ready(jax.jit(lambda k: block_lists(jnp, k, 1))(kind))
