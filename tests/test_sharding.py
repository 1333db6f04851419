"""The ops under shard_map and under jit with sharded inputs, on 4 (virtual) CPU devices.

Runs in a subprocess: the number of CPU devices is fixed when jax starts.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jax_blocksparse as jbs
    try:
        shard_map = jax.shard_map
    except AttributeError:
        from jax.experimental.shard_map import shard_map
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    layout = jbs.layouts.random(64, 128, 16, 0.4, seed=0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 64)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((layout.nnz, 16, 16)), jnp.float32)
    f = lambda x, w: jbs.matmul(x, w, layout, precision="highest")
    want = f(x, w)
    got = jax.jit(shard_map(f, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data")))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # data-parallel gradient: the weight gradient is summed across shards
    def loss(w, x):
        return jax.lax.psum(jnp.sum(f(x, w) ** 2), "data")
    g = jax.jit(shard_map(jax.grad(loss), mesh=mesh, in_specs=(P(), P("data")),
                          out_specs=P()))(w, x)
    g_ref = jax.grad(lambda w: jnp.sum(f(x, w) ** 2))(w)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    np.testing.assert_allclose(jax.jit(f)(xs, w), want, rtol=1e-6, atol=1e-6)
    print("OK")
""")


def test_shard_map_and_sharded_jit():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
