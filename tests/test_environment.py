"""Environment switches: JAX_BLOCKSPARSE_DEBUG (one line per kernel launch, =2 timed) and
JAX_BLOCKSPARSE_DISABLE_CUDA (the pure-JAX path, for A/B checks). Each runs in a subprocess,
since both are read when the package loads."""

import os
import subprocess
import sys
import textwrap

import pytest

import jax_blocksparse as jbs

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, jax_blocksparse as jbs
    layout = jbs.layouts.local(256, 64, 100)
    q = jnp.ones((1, 256, 2, 64), jnp.bfloat16)
    w_layout = jbs.layouts.random(64, 128, 32, 0.5)
    f = jax.jit(lambda q: jbs.attention(q, q, q, layout, causal=True))
    g = jax.jit(lambda x, w: jbs.matmul(x, w, w_layout))
    f(q).block_until_ready()
    g(jnp.ones((8, 64), jnp.bfloat16), jnp.ones((w_layout.nnz, 32, 32), jnp.bfloat16)).block_until_ready()
    print("cuda_available", jbs.cuda_available())
    print("custom_call" in f.lower(q).compile().as_text())
""")


def run(**env):
    # the test process already holds most of the GPU's memory: allocate on demand
    package_root = os.path.dirname(os.path.dirname(jbs.__file__))  # the package under test
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONPATH=os.pathsep.join(
        [package_root, os.environ.get("PYTHONPATH", "")]), **env)
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.gpu
def test_debug_prints_each_launch():
    out = run(JAX_BLOCKSPARSE_DEBUG="1").stderr
    assert "[jax_blocksparse] attention_fwd q[1,256,2,64]" in out and "kernel=" in out
    assert "[jax_blocksparse] dds" in out
    timed = run(JAX_BLOCKSPARSE_DEBUG="2").stderr
    assert " ms" in timed or "CUDA graph" in timed


def test_disable_cuda_forces_the_pure_jax_path():
    result = run(JAX_BLOCKSPARSE_DISABLE_CUDA="1")
    assert "cuda_available False" in result.stdout
    assert result.stdout.strip().endswith("False")  # no custom call in the program
    assert "[jax_blocksparse]" not in result.stderr


@pytest.mark.parametrize("level", ["1", "2"])
def test_debug_names_the_pure_jax_path_on_every_platform(level):
    """Without the kernels (a CPU, or CUDA disabled on a GPU) the switch still says which
    path each op ran, and why, when the program is compiled."""
    err = run(JAX_BLOCKSPARSE_DEBUG=level, JAX_BLOCKSPARSE_DISABLE_CUDA="1").stderr
    for op in ("attention", "dds"):
        lines = [line for line in err.splitlines()
                 if line.startswith(f"[jax_blocksparse] {op} ")]
        assert lines and all("pure-JAX path (" in line for line in lines), err[-2000:]
