"""The attention backward under each JAX_BLOCKSPARSE_ATTN_BWD_VARIANT against the first, at
benchmark sizes (the tests use small ones): max relative error of dq, dk, dv per variant.

    python benchmarks/dev_bwd_check.py [--variants 2,4] [--seqs 1024,8192]

B=2, H=16, D=128, bf16, block 128, local(1024) causal and bigbird; each variant runs in a
fresh process (the switch is read once) and writes its gradients to a temporary npz.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def grads(path, seq):
    import jax
    import jax.numpy as jnp
    import jax_blocksparse as jbs
    out = {}
    for name, layout, causal in (("local", jbs.layouts.local(seq, 128, 1024), True),
                                 ("bigbird", jbs.layouts.bigbird(seq, 128, seed=1), False)):
        rng = np.random.default_rng(seq)
        q, k, v, do = (jnp.asarray(rng.standard_normal((2, seq, 16, 128)), jnp.bfloat16)
                       for _ in range(4))
        f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal)
        step = jax.jit(lambda q, k, v: jax.vjp(f, q, k, v)[1](do))
        for what, g in zip(("dq", "dk", "dv"), step(q, k, v)):
            out[f"{name}_{what}"] = np.asarray(g.astype(jnp.float32))
    np.savez(path, **out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="2,4")
    parser.add_argument("--seqs", default="1024,8192")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return grads(args.child[0], int(args.child[1]))
    variants = args.variants.split(",")
    for seq in args.seqs.split(","):
        results = {}
        for var in variants:
            with tempfile.NamedTemporaryFile(suffix=".npz") as fh:
                env = dict(os.environ, JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=var)
                run = subprocess.run([sys.executable, __file__, "--child", fh.name, seq],
                                     env=env, capture_output=True, text=True)
                if run.returncode:
                    print(f"S {seq} variant {var}: exit {run.returncode} {run.stderr[-800:]}")
                    continue
                results[var] = dict(np.load(fh.name))
        base = results.get(variants[0])
        for var, got in results.items():
            if var == variants[0] or base is None:
                continue
            for key, ref in base.items():
                err = np.abs(got[key] - ref).max() / max(np.abs(ref).max(), 1e-30)
                print(f"S {seq} variant {var} vs {variants[0]} {key:12s} max rel err {err:.2e} "
                      f"norms {np.linalg.norm(got[key]):.4g} / {np.linalg.norm(ref):.4g}",
                      flush=True)


if __name__ == "__main__":
    main()
