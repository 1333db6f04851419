"""On two GPUs (skipped with fewer): the LM example's `--mesh 2x1` and `--mesh 1x2`, and
`parallel_matmul` inside a partially manual `shard_map`, compile (what XLA's GPU partitioner
does is not what the CPU tests on 8 host devices exercise) and equal one device.

    python -m pytest -q -m gpu tests/test_gpu_multi.py   # on a machine with 2 GPUs
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_blocksparse as jbs
from jax_blocksparse.tensor_parallel import parallel_matmul, split_blocks, split_layout
from reference import TOLERANCE, rel_err
from test_examples import TINY, run


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


two_gpus = pytest.mark.skipif(len(_gpus()) < 2, reason="needs 2 GPUs")


def _validation(out):
    found = re.findall(r"step 3: validation ([0-9.]+) bits per byte", out)
    assert found, out[-2000:]
    return float(found[0])


@pytest.mark.gpu
@two_gpus
def test_lm_example_meshes_2x1_and_1x2_equal_one_gpu(tmp_path):
    """--mesh 2x1 (data parallel; the sparse MLPs through parallel_dense over a model axis
    of size 1) and --mesh 1x2 (the sparse MLPs split over 2 GPUs): 3 steps, the validation
    loss of one GPU."""
    args = (*TINY, "--batch", "8", "--heads", "2", "--steps", "3", "--eval-every", "3",
            "--no-checkpoint")
    one = _validation(run("sparse_transformer_lm.py", *args, cwd=tmp_path))
    for shape in ("2x1", "1x2"):
        out = run("sparse_transformer_lm.py", *args, "--mesh", shape, cwd=tmp_path)
        assert "CUDA kernels" in out
        assert abs(_validation(out) - one) < 0.01, (shape, out[-1000:])


def _close(got, want, dtype):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) < TOLERANCE[dtype], rel_err(a, b)


@pytest.mark.gpu
@two_gpus
def test_parallel_matmul_in_partially_manual_shard_map():
    """parallel_matmul in a shard_map manual over "model" only, on a (1, 2) mesh of the two
    GPUs (column and row splits), and the plain matmul in a shard_map manual over "data"
    only on a (2, 1) mesh: values and gradients of one GPU, through the CUDA kernels.
    float32: XLA's CPU compiler aborts on bf16 gradients through a partially manual
    shard_map, even of a plain `x @ w` (jax 0.10.2); the GPU's is untested with them."""
    rng = np.random.default_rng(0)
    dtype = jnp.float32
    layout = jbs.Layout(rng.random((8, 8)) < 0.5, 32)
    x = jnp.asarray(rng.standard_normal((64, 256)), dtype)
    w = jnp.asarray(rng.standard_normal((layout.nnz, 32, 32)) / 8, dtype)
    loss = lambda y: jnp.sum(jnp.sin(y.astype(jnp.float32)))
    want = jax.jit(jax.value_and_grad(lambda x, w: loss(jbs.matmul(x, w, layout)),
                                      argnums=(0, 1)))(x, w)
    gpus = np.array(_gpus()[:2])
    m = Mesh(gpus.reshape(1, 2), ("data", "model"))
    for by, x_spec, out_spec in (("columns", P(), P(None, "model")),
                                 ("rows", P(None, "model"), P())):
        split = split_layout(layout, 2, by)
        f = jax.shard_map(lambda x, s, split=split: parallel_matmul(x, s, split, "model"),
                          mesh=m, in_specs=(x_spec, P("model")), out_specs=out_spec,
                          axis_names={"model"})
        grad = jax.jit(jax.value_and_grad(
            lambda x, w, f=f, split=split: loss(f(x, split_blocks(w, split))), argnums=(0, 1)))
        xs = jax.device_put(x, NamedSharding(m, P("data")))
        assert "jax_blocksparse_dds" in grad.lower(xs, w).compile().as_text()
        _close(grad(xs, w), want, dtype)
    m = Mesh(gpus.reshape(2, 1), ("data", "model"))
    f = jax.shard_map(lambda x, w: jbs.matmul(x, w, layout), mesh=m,
                      in_specs=(P("data"), P()), out_specs=P("data"), axis_names={"data"})
    grad = jax.jit(jax.value_and_grad(lambda x, w: loss(f(x, w)), argnums=(0, 1)))
    _close(grad(jax.device_put(x, NamedSharding(m, P("data"))), w), want, dtype)
