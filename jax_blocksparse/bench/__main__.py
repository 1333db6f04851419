"""Benchmarks of block-sparse matmul and attention against dense XLA and cuDNN.

Quick by default (on a GPU: 8192^3 matmuls at density 0.1, attention at sequence length
8192; without a GPU, small sizes on the pure-JAX path, well under a minute); `--full` for
the whole grid. Prints the tables and writes a PNG chart of useful TFLOP/s against density
next to the dense baselines (`--chart PATH`, needs matplotlib).
"""

import argparse
import json

import jax

from . import attention, matmul
from .chart import write_chart


def parse_args(argv=None):
    """The command line of `python -m jax_blocksparse.bench` (`argv` defaults to sys.argv)."""
    parser = argparse.ArgumentParser(prog="python -m jax_blocksparse.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the whole grid (long; for a GPU)")
    parser.add_argument("--only", choices=["matmul", "attention"], default=None,
                        help="run one of the two benchmarks")
    parser.add_argument("--layout", default="random",
                        choices=["random", "barabasi_albert", "watts_strogatz"],
                        help="weight layout of the matmul benchmark")
    parser.add_argument("--chart", default="jax_blocksparse_bench.png",
                        help="where to write the chart (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmarks chosen by the command line; return the rows by benchmark."""
    args = parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    if not gpu and not args.full:
        print("no GPU: quick benchmark at small sizes on the pure-JAX path")
    results = {}
    if args.only in (None, "matmul"):
        grid = matmul.FULL if args.full else matmul.QUICK if gpu else matmul.QUICK_CPU
        results["matmul"] = matmul.run(**grid, layout_kind=args.layout)
    if args.only in (None, "attention"):
        grid = attention.FULL if args.full else attention.QUICK if gpu else attention.QUICK_CPU
        results["attention"] = attention.run(**grid)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    write_chart(args.chart, results)
    return results


if __name__ == "__main__":
    main()
