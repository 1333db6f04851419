"""Developer timing of the fused block-sparse attention kernels (FFI targets, called directly).

Run on a GPU machine after `pip install .`:

    python3 benchmarks/dev_attention.py

B=2, H=16, S=8192, D=128, local causal window 1024, block 128, bf16: useful TFLOP/s of the
forward and forward+backward, next to cuDNN (dense causal, and its own 1024-token sliding
window, each credited with its own allowed pairs). JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=1 times
the alternative forward tile (cuda/attention/fa2.cuh). The correctness checks that
lived here are in the test suite: tests/test_gpu_attention.py (run with `pytest -m gpu`).

Forward variants side by side (the switch is read once per process: one subprocess each):

    python3 benchmarks/dev_attention.py --fwd-variants 0,2,3

times the forward alone under each value of JAX_BLOCKSPARSE_ATTN_FWD_VARIANT (2: the
Hopper FA3-design kernel, cuda/attention/fwd_sm90.cu; 3: the same without ping-pong) on
the issue-18 layouts (local W1024, strided 1024, fixed 1024, bigbird, causal; B=2 H=16
S=8192 D=128 block 128 bf16; `--head-dim 96` or `256` for the Hopper forward's other head
dims, with variants 2 and 3 only), then a table of useful TFLOP/s and the ratio of each
variant to the first; `--fwd-only` is that timing in this process (the variant it gets
from the environment), plus cuDNN dense causal. `--persistent-ab` times the forward the
same way with JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=0 and =1 (the persistent form of the
Hopper forward; the variant from the environment, default 2 on Hopper): columns p0, p1 and
p1/p0. `--block-size 16` or `32` times masks of
those block sizes (the Hopper forward runs them on 128 x 128 tiles: variants 2 and 3, any
of its head dims).

Backward variants side by side:

    python3 benchmarks/dev_attention.py --bwd-variants 0,2,4

times forward+backward (and the backward alone) on the same layouts under each value of
JAX_BLOCKSPARSE_ATTN_BWD_VARIANT (2: the Hopper FA3-design backward,
cuda/attention/bwd_sm90.cu; 3: the same without the overlap inside a warpgroup; 4: the
one-pass Hopper backward with its deterministic dQ sums, cuda/attention/bwd_sm90_onepass.cu),
one subprocess each, then a table of useful TFLOP/s (backward
= 2.5 x the forward's FLOPs, forward+backward 3.5 x) and the ratio of each variant to the
first. The forward is the one JAX_BLOCKSPARSE_ATTN_FWD_VARIANT picks (default 0; set it to
2 for both Hopper kernels); `--bwd-only` is that timing in this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

import jax_blocksparse  # noqa: F401  (registers the FFI targets)
from jax_blocksparse import _cuda, layouts
from jax_blocksparse.attention_metadata import (FINE_BLOCKS, TILE, attention_metadata,
                                                key_tiles, line_stats, tile_metadata)


# --------------------------------------------------------------------------- kernels
def _meta_ops(meta):
    qm, km = meta.by_query, meta.by_key
    qops = [jnp.asarray(x) for x in (qm.counts, qm.partial, qm.lists, qm.order)]
    kops = [jnp.asarray(x) for x in (km.counts, km.partial, km.lists, km.order)]
    return qops, kops


def make_fns(layout, causal, scale, q_shape, k_shape, dtype):
    """Block sizes 16 and 32: the forward and the backward take the lists of 128 x 128
    tiles and their bits (the Hopper kernels only), the backward also their transpose by
    key tile (`key_tiles`) with its bits; other block sizes: placeholder bits."""
    b, tq, hq, d = q_shape
    tk = k_shape[1]
    meta = attention_metadata(layout, causal, tq, tk)
    qops, kops = _meta_ops(meta)
    attrs = dict(block_size=np.int32(layout.block_size), causal=bool(causal),
                 scale=np.float32(scale))
    fwd_qops, bits = qops, jnp.zeros((1, 1, 1, 2), jnp.int32)  # bits: a placeholder
    key_bits = bits
    fwd_block = layout.block_size
    if layout.block_size in FINE_BLOCKS:
        tiles = tile_metadata(layout, causal, tq, tk)
        by_key = key_tiles(np, tiles, -(-tk // TILE))
        fwd_qops = qops = [jnp.asarray(x) for x in tiles.lists]
        kops = [jnp.asarray(x) for x in by_key.lists]
        bits, key_bits, fwd_block = jnp.asarray(tiles.bits), jnp.asarray(by_key.bits), TILE
    fwd_call = jax.ffi.ffi_call(
        "jax_blocksparse_attention_fwd",
        (jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct((b, hq, tq), jnp.float32)))
    tq_pad = -(-tq // fwd_block) * fwd_block
    onepass = _cuda.onepass_backward(dtype, d, layout.block_size)  # backward variant 4
    slots = _cuda.onepass_dq_slots(line_stats(layout, causal, tq, tk))
    accum_shape, sem_shape = (_cuda.onepass_workspace_shapes(b, hq, tq, d, slots) if onepass
                              else ((0,), (0,)))
    bwd_call = jax.ffi.ffi_call(  # results dq, dk, dv and the workspaces (cuda/attention.h)
        "jax_blocksparse_attention_bwd",
        (jax.ShapeDtypeStruct(q_shape, dtype), jax.ShapeDtypeStruct(k_shape, dtype),
         jax.ShapeDtypeStruct(k_shape, dtype),
         jax.ShapeDtypeStruct((b, hq, 2, tq_pad), jnp.float32),
         jax.ShapeDtypeStruct(accum_shape, jnp.float32),
         jax.ShapeDtypeStruct(sem_shape, jnp.int32)))

    # both also take q_positions [1] and segment ids (placeholders: attributes off)
    qpos, ids = jnp.zeros((1,), jnp.int32), jnp.zeros((1, 1), jnp.int32)
    no_sinks = jnp.zeros((0,), jnp.float32)  # the forward's sinks operand: [0], none
    bwd_attrs = dict(attrs, segments=False, positioned=False, block_size=np.int32(fwd_block),
                     mask_block=np.int32(layout.block_size))
    fwd_attrs = bwd_attrs
    no_cap = dict(softcap=np.float32(0.0))  # no logit soft cap
    bwd_attrs, fwd_attrs = dict(bwd_attrs, **no_cap), dict(fwd_attrs, **no_cap)
    # the forward's head sections as `attention` asks for them (_cuda.forward_head_sections)
    fwd_attrs["head_sections"] = _cuda.forward_head_sections(line_stats(layout, causal, tq, tk))

    @jax.jit
    def fwd(q, k, v, kvl):
        return fwd_call(q, k, v, no_sinks, kvl, qpos, *fwd_qops, ids, ids, bits, **fwd_attrs)

    @jax.jit
    def bwd(q, k, v, o, lse, do, dlse, kvl):
        dq, dk, dv, *_ = bwd_call(q, k, v, o, lse, do, dlse, kvl, qpos, *qops, *kops, ids, ids,
                                 bits, key_bits, **bwd_attrs)
        return dq, dk, dv

    @jax.jit
    def fwd_bwd(q, k, v, do, dlse, kvl):
        o, lse = fwd_call(q, k, v, no_sinks, kvl, qpos, *fwd_qops, ids, ids, bits, **fwd_attrs)
        dq, dk, dv, *_ = bwd_call(q, k, v, o, lse, do, dlse, kvl, qpos, *qops, *kops, ids, ids,
                                 bits, key_bits, **bwd_attrs)
        return o, lse, dq, dk, dv

    return meta, fwd, bwd, fwd_bwd


# ----------------------------------------------------------------------------- timing
def useful_pairs(meta, bs, tq, tk, hq):
    kind = meta.kind  # [Hm, Rq, Rk]
    off = tk - tq
    i = np.arange(bs)[:, None]
    j = np.arange(bs)[None, :]
    total = 0
    for h, r, c in zip(*np.nonzero(kind)):
        if kind[h, r, c] == 2:
            total += bs * bs
        else:
            total += int(((c * bs + j) <= (r * bs + i) + off).sum())
    return total * (hq if kind.shape[0] == 1 else 1)


def bench(fn, *args, iters=20):
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t0) / iters)
    return float(np.median(ts))


def run_timing(rng):
    B, H, S, D, bs = 2, 16, 8192, 128, 128
    layout = layouts.local(S, bs, 1024)
    dtype = jnp.bfloat16
    scale = 1.0 / np.sqrt(D)
    shape = (B, S, H, D)
    meta, fwd, bwd, fwd_bwd = make_fns(layout, True, scale, shape, shape, dtype)
    rnd = lambda: jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    q, k, v, do = rnd(), rnd(), rnd(), rnd()
    dlse = jnp.zeros((B, H, S), jnp.float32)
    kv = jnp.full((B,), S, jnp.int32)
    pairs = useful_pairs(meta, bs, S, S, H) * B
    visited = int((meta.kind > 0).sum()) * bs * bs * (H if meta.kind.shape[0] == 1 else 1) * B
    fl_f = 4 * D * pairs
    t_f = bench(fwd, q, k, v, kv)
    t_fb = bench(fwd_bwd, q, k, v, do, dlse, kv)
    print(f"blocksparse local causal window 1024: fwd {t_f*1e3:.3f} ms "
          f"{fl_f/t_f/1e12:.1f} TFLOP/s useful ({4*D*visited/t_f/1e12:.1f} executed); "
          f"fwd+bwd {t_fb*1e3:.3f} ms {3.5*fl_f/t_fb/1e12:.1f} TFLOP/s useful", flush=True)
    o, lse = fwd(q, k, v, kv)
    t_b = bench(lambda *a: bwd(*a), q, k, v, o, lse, do, dlse, kv)
    print(f"  bwd alone {t_b*1e3:.3f} ms {2.5*fl_f/t_b/1e12:.1f} TFLOP/s useful", flush=True)

    # cuDNN: dense causal (useful pairs = causal triangle), and the same local window.
    def cudnn_fn(window):
        def f(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                implementation="cudnn",
                                                local_window_size=window)
        fj = jax.jit(f)

        def fb(q, k, v, do):
            o, vjp = jax.vjp(f, q, k, v)
            return o, vjp(do)
        return fj, jax.jit(fb)

    causal_pairs = B * H * S * (S + 1) // 2
    window_pairs = B * H * int(np.minimum(np.arange(S) + 1, 1024).sum())  # keys i-1023..i
    for label, window, pr in (("dense causal", None, causal_pairs),
                              ("window (1023,0)", (1023, 0), window_pairs)):
        try:
            cf, cfb = cudnn_fn(window)
            tc = bench(cf, q, k, v)
            tcb = bench(cfb, q, k, v, do)
            print(f"cudnn {label}: fwd {tc*1e3:.3f} ms {4*D*pr/tc/1e12:.1f} TFLOP/s; "
                  f"fwd+bwd {tcb*1e3:.3f} ms {3.5*4*D*pr/tcb/1e12:.1f} TFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"cudnn {label}: unavailable ({type(e).__name__}: {str(e)[:200]})")


FWD_LAYOUTS = {  # issue 18's patterns: (layout, causal)
    "local": (lambda s, bs: layouts.local(s, bs, 1024), True),
    "strided": (lambda s, bs: layouts.strided(s, bs, 1024), True),
    "fixed": (lambda s, bs: layouts.fixed(s, bs, 1024), True),
    "bigbird": (lambda s, bs: layouts.bigbird(s, bs), False),
    "causal": (lambda s, bs: layouts.causal(s, bs), True),
}


def run_forward(rng, names, cudnn=True, bs=128, D=128):
    """Forward alone on each layout: one line `fwd <layout> <ms> <useful TFLOP/s>` each."""
    B, H, S = 2, 16, 8192
    dtype = jnp.bfloat16
    scale = 1.0 / np.sqrt(D)
    shape = (B, S, H, D)
    rnd = lambda: jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    q, k, v = rnd(), rnd(), rnd()
    kv = jnp.full((B,), S, jnp.int32)
    variant = os.environ.get("JAX_BLOCKSPARSE_ATTN_FWD_VARIANT", "") or "default"
    if os.environ.get("JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT", "0") not in ("", "0"):
        variant += "+persistent"
    for name in names:
        make, causal = FWD_LAYOUTS[name]
        layout = make(S, bs)
        meta, fwd, _, _ = make_fns(layout, causal, scale, shape, shape, dtype)
        pairs = useful_pairs(meta, bs, S, S, H) * B
        t = bench(fwd, q, k, v, kv)
        print(f"fwd {name} variant={variant} {t*1e3:.3f} ms "
              f"{4*D*pairs/t/1e12:.1f} TFLOP/s useful", flush=True)
    if cudnn:
        f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, scale=scale, implementation="cudnn"))
        try:
            t = bench(f, q, k, v)
            print(f"fwd cudnn_dense_causal {t*1e3:.3f} ms "
                  f"{4*D*B*H*S*(S+1)//2/t/1e12:.1f} TFLOP/s", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"cudnn dense causal: unavailable ({type(e).__name__}: {str(e)[:200]})")


def run_backward(rng, names):
    """Forward+backward and the backward alone on each layout: one line
    `bwd <layout> variant=<v> fwd+bwd <ms> <TFLOP/s> bwd <ms> <TFLOP/s>` each (useful
    TFLOP/s: backward 2.5 x the forward's 4 D FLOPs per allowed pair, forward+backward
    3.5 x), a cotangent on lse too."""
    B, H, S, D, bs = 2, 16, 8192, 128, 128
    dtype = jnp.bfloat16
    scale = 1.0 / np.sqrt(D)
    shape = (B, S, H, D)
    rnd = lambda: jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    q, k, v, do = rnd(), rnd(), rnd(), rnd()
    dlse = jnp.asarray(rng.standard_normal((B, H, S)).astype(np.float32))
    kv = jnp.full((B,), S, jnp.int32)
    variant = os.environ.get("JAX_BLOCKSPARSE_ATTN_BWD_VARIANT", "0") or "0"
    for name in names:
        make, causal = FWD_LAYOUTS[name]
        layout = make(S, bs)
        meta, fwd, bwd, fwd_bwd = make_fns(layout, causal, scale, shape, shape, dtype)
        fl = 4 * D * useful_pairs(meta, bs, S, S, H) * B
        t_fb = bench(fwd_bwd, q, k, v, do, dlse, kv)
        o, lse = fwd(q, k, v, kv)
        t_b = bench(bwd, q, k, v, o, lse, do, dlse, kv)
        print(f"bwd {name} variant={variant} fwd+bwd {t_fb*1e3:.3f} ms "
              f"{3.5*fl/t_fb/1e12:.1f} TFLOP/s bwd {t_b*1e3:.3f} ms {2.5*fl/t_b/1e12:.1f} "
              "TFLOP/s useful", flush=True)


def compare_bwd_variants(variants, names):
    """Runs `--bwd-only` under each backward variant (a subprocess each) and prints the
    useful TFLOP/s of forward+backward and of the backward alone side by side."""
    results = {}
    for var in variants:
        env = dict(os.environ, JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=var)
        env.pop("JAX_BLOCKSPARSE_DEBUG", None)
        cmd = [sys.executable, os.path.abspath(__file__), "--bwd-only", "--layouts",
               ",".join(names)]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode != 0:
            print(f"bwd variant {var} failed (exit {r.returncode}):\n{r.stderr[-3000:]}",
                  flush=True)
        for line in r.stdout.splitlines():
            w = line.split()
            if len(w) >= 13 and w[0] == "bwd" and w[2].startswith("variant="):
                results[(var, w[1])] = (float(w[6]), float(w[11]))
    for i, what in enumerate(("fwd+bwd", "bwd")):
        print(f"{what + ' TF':>12} " + " ".join(f"{'v' + v:>8}" for v in variants) +
              "".join(f" {'v' + v + '/v' + variants[0]:>8}" for v in variants[1:]))
        for name in names:
            row = [results.get((v, name), (None, None))[i] for v in variants]
            cells = " ".join(f"{x:8.1f}" if x else f"{'-':>8}" for x in row)
            ratios = "".join(f" {x / row[0]:8.2f}" if x and row[0] else f" {'-':>8}"
                             for x in row[1:])
            print(f"{name:>12} {cells}{ratios}", flush=True)


def compare_variants(variants, names, bs=128, d=128, switch="JAX_BLOCKSPARSE_ATTN_FWD_VARIANT",
                     label="v"):
    """Runs `--fwd-only` under each value of a forward switch (a subprocess each: the
    switches are read once per process) and prints the TFLOP/s side by side, with the
    ratio of each value's to the first's; columns `label` + value."""
    results = {}
    for i, var in enumerate(variants):
        env = dict(os.environ, **{switch: var})
        env.pop("JAX_BLOCKSPARSE_DEBUG", None)
        cmd = [sys.executable, os.path.abspath(__file__), "--fwd-only", "--layouts",
               ",".join(names), "--block-size", str(bs), "--head-dim", str(d)] + (
                   [] if i == 0 else ["--no-cudnn"])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode != 0:
            print(f"{switch}={var} failed (exit {r.returncode}):\n{r.stderr[-3000:]}", flush=True)
        for line in r.stdout.splitlines():
            w = line.split()
            if len(w) >= 6 and w[0] == "fwd" and w[2].startswith("variant="):
                results[(var, w[1])] = float(w[5])
    print(f"{'layout':>8} " + " ".join(f"{label + v + ' TF':>9}" for v in variants) +
          "".join(f" {label + v + '/' + label + variants[0]:>8}" for v in variants[1:]))
    for name in names:
        row = [results.get((v, name)) for v in variants]
        cells = " ".join(f"{x:9.1f}" if x else f"{'-':>9}" for x in row)
        ratios = "".join(f" {x / row[0]:8.2f}" if x and row[0] else f" {'-':>8}"
                         for x in row[1:])
        print(f"{name:>8} {cells}{ratios}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fwd-variants", help="e.g. 0,2: the forward under each variant")
    parser.add_argument("--fwd-only", action="store_true")
    parser.add_argument("--persistent-ab", action="store_true",
                        help="the forward with JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=0 and =1 "
                        "(the variant from the environment: default 2 on Hopper)")
    parser.add_argument("--bwd-variants", help="e.g. 0,2,4: forward+backward under each "
                        "JAX_BLOCKSPARSE_ATTN_BWD_VARIANT")
    parser.add_argument("--bwd-only", action="store_true")
    parser.add_argument("--layouts", default=",".join(FWD_LAYOUTS))
    parser.add_argument("--no-cudnn", action="store_true")
    parser.add_argument("--block-size", type=int, default=128,
                        help="block size of the --fwd-only / --fwd-variants layouts (64, 128; "
                        "16, 32: the Hopper forward only, variants 2 and 3)")
    parser.add_argument("--head-dim", type=int, default=128,
                        help="head dim of --fwd-only / --fwd-variants (64, 128; 96 and 256: "
                        "variants 2 and 3 only, the Hopper forward)")
    args = parser.parse_args()
    names = args.layouts.split(",")
    if args.fwd_variants:
        compare_variants(args.fwd_variants.split(","), names, args.block_size, args.head_dim)
        return
    if args.persistent_ab:
        compare_variants(["0", "1"], names, args.block_size, args.head_dim,
                         switch="JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT", label="p")
        return
    if args.bwd_variants:
        compare_bwd_variants(args.bwd_variants.split(","), names)
        return
    print(jax.devices(), flush=True)
    if args.fwd_only:
        run_forward(np.random.default_rng(0), names, cudnn=not args.no_cudnn,
                    bs=args.block_size, D=args.head_dim)
        return
    if args.bwd_only:
        run_backward(np.random.default_rng(0), names)
        return
    run_timing(np.random.default_rng(0))


if __name__ == "__main__":
    main()
