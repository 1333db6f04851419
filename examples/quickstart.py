"""Quickstart: fit a block-sparse linear layer with a jit-compiled training loop.

A teacher matrix with a random block-sparse layout generates data; a student with the same
layout learns it by gradient descent through `jax_blocksparse.matmul` (forward, dX and dW
all block-sparse). Runs on the CPU (pure-JAX path) or an NVIDIA GPU (CUDA kernels).

    python examples/quickstart.py                  # small, CPU-friendly default
    python examples/quickstart.py --features 4096 --block-size 64 --batch 4096
"""

import argparse
import time

import jax
import jax.numpy as jnp

import jax_blocksparse as jbs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    for flag in ("features", "block_size", "batch", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0; got {args.lr}")

    layout = jbs.layouts.random(args.features, args.features, args.block_size,
                                args.density, seed=0)
    print(f"backend: {jax.default_backend()}, CUDA kernels: {jbs.cuda_available()}")
    print(f"layout: {layout}")
    k_teacher, k_student, k_data = jax.random.split(jax.random.key(0), 3)
    shape = (layout.nnz, args.block_size, args.block_size)
    fan_in = layout.mask.sum(0).max() * args.block_size
    teacher = jax.random.normal(k_teacher, shape) / jnp.sqrt(fan_in)
    student = jnp.zeros(shape)

    def loss_fn(w, x):
        return jnp.mean((jbs.matmul(x, w, layout) - jbs.matmul(x, teacher, layout)) ** 2)

    @jax.jit
    def step(w, key):
        x = jax.random.normal(key, (args.batch, args.features))
        loss, grad = jax.value_and_grad(loss_fn)(w, x)
        # the loss is a mean over batch x features: undo the 2/features of its gradient
        return w - args.lr * grad * args.features / 2, loss

    keys = jax.random.split(k_data, args.steps)
    student, loss = step(student, keys[0])  # compile
    first = float(loss)
    start = time.perf_counter()
    for i in range(1, args.steps):
        student, loss = step(student, keys[i])
        if i % max(args.steps // 5, 1) == 0:
            print(f"step {i:5d}  loss {float(loss):.6f}")
    loss.block_until_ready()
    per_step = (time.perf_counter() - start) / max(args.steps - 1, 1)
    error = jnp.linalg.norm(student - teacher) / jnp.linalg.norm(teacher)
    print(f"loss {first:.4f} -> {float(loss):.6f}; relative weight error {float(error):.4f}; "
          f"{per_step * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
