"""Benchmarks: `python -m jax_blocksparse.bench [--full] [--only matmul|attention]`."""
