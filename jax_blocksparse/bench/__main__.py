"""`python -m jax_blocksparse.bench`: the matmul and attention benchmarks (quick by default,
`--full` for the whole grid), printed as tables, and a PNG chart of TFLOP/s against
density next to dense XLA and cuDNN (`--chart PATH`, needs matplotlib)."""

import argparse
import json

from . import attention, matmul
from .chart import write_chart


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole grid (long)")
    parser.add_argument("--only", choices=["matmul", "attention"], default=None)
    parser.add_argument("--layout", default="random",
                        choices=["random", "barabasi_albert", "watts_strogatz"],
                        help="weight layout of the matmul benchmark")
    parser.add_argument("--chart", default="jax_blocksparse_bench.png")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    results = {}
    if args.only in (None, "matmul"):
        grid = matmul.FULL if args.full else matmul.QUICK
        results["matmul"] = matmul.run(**grid, layout_kind=args.layout)
    if args.only in (None, "attention"):
        grid = attention.FULL if args.full else attention.QUICK
        results["attention"] = attention.run(**grid)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    write_chart(args.chart, results)


if __name__ == "__main__":
    main()
