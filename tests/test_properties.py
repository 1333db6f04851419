"""Property tests: any small layout (empty rows, columns, whole matrix), any free size,
any transposition, against the float64 reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_blocksparse as jbs
from reference import TOLERANCE_HIGHEST, dds64, dsd64, rel_err, sdd64

masks = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1),
                  st.floats(0.0, 1.0)).map(
    lambda t: np.random.default_rng(t[2]).random((t[0], t[1])) < t[3])


@settings(max_examples=30, deadline=None)
@given(mask=masks, bs=st.sampled_from([16, 32]), free=st.integers(1, 40),
       op=st.sampled_from(["sdd", "dsd", "dds"]), t1=st.booleans(), t2=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_ops_match_reference(mask, bs, free, op, t1, t2, seed):
    layout = jbs.Layout(mask, bs)
    rng = np.random.default_rng(seed)
    p, q = layout.shape

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    def dense(rows, cols, t):
        return arr(cols, rows) if t else arr(rows, cols)

    blocks = arr(layout.nnz, bs, bs)
    if op == "sdd":
        args, ref = (dense(p, free, t1), dense(free, q, t2)), sdd64
        fn = functools.partial(jbs.sdd, trans_a=t1, trans_b=t2)
    elif op == "dsd":
        args, ref = (blocks, dense(p if t1 else q, free, t2)), dsd64
        fn = functools.partial(jbs.dsd, trans_s=t1, trans_b=t2)
    else:
        args, ref = (dense(free, q if t2 else p, t1), blocks), dds64
        fn = functools.partial(jbs.dds, trans_a=t1, trans_w=t2)
    out = jax.jit(functools.partial(fn, layout=layout, precision="highest"))(*args)
    assert rel_err(out, ref(*args, layout, t1, t2)) < TOLERANCE_HIGHEST
