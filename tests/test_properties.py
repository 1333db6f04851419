"""Property tests: any small layout (empty rows, columns, whole matrix), any free size,
any transposition, batched or not, against the float64 reference. On the CPU float32 at
precision=HIGHEST; on a GPU every dtype variant (bf16, f16, f32 as TF32, f32 HIGHEST) at
every block size, with free sizes of 1 to 300 (rows that fit no tile or vector width)."""

import functools

import jax
import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import jax_blocksparse as jbs
from reference import VARIANTS, rel_err
from test_matmul import make_case, run

masks = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1),
                  st.floats(0.0, 1.0)).map(
    lambda t: np.random.default_rng(t[2]).random((t[0], t[1])) < t[3])
cases = dict(mask=masks, op=st.sampled_from(["sdd", "dsd", "dds"]), t1=st.booleans(),
             t2=st.booleans(), lead=st.sampled_from([(), (2,)]),
             rng_seed=st.integers(0, 2**31 - 1))


def check(platform, variant, mask, bs, free, op, t1, t2, lead, rng_seed):
    layout = jbs.Layout(mask, bs)
    dtype, precision, tol = VARIANTS[variant]
    with jax.default_device(jax.devices(platform)[0]):
        fn, args, ref = make_case(op, (t1, t2), dtype, layout, np.random.default_rng(rng_seed),
                                  lead=lead, free=free)
        out = run(platform, functools.partial(fn, precision=precision), *args)
    assert out.dtype == dtype
    assert rel_err(out, ref) < tol


@seed(20261123)
@settings(max_examples=30, deadline=None, database=None)
@given(bs=st.sampled_from([16, 32]), free=st.integers(1, 40), **cases)
def test_ops_match_reference(bs, free, **case):
    check("cpu", "f32hi", bs=bs, free=free, **case)


@pytest.mark.gpu
@seed(20261124)
@settings(max_examples=60, deadline=None, database=None)
@given(variant=st.sampled_from(sorted(VARIANTS)), bs=st.sampled_from([16, 32, 64, 128]),
       free=st.integers(1, 300), **cases)
def test_ops_match_reference_gpu(variant, bs, free, **case):
    check("gpu", variant, bs=bs, free=free, **case)
