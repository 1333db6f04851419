"""Block-sparse matmul benchmark (see jax_blocksparse/bench/matmul.py).

    python benchmarks/matmul.py            # bf16, density 0.1, block sizes 16..128, 8192^3
    python benchmarks/matmul.py --full     # 3 dtypes x 4 block sizes x 5 densities x 2 shapes
    python benchmarks/matmul.py --layout barabasi_albert   # load balance (power-law rows)
"""

import argparse

from jax_blocksparse.bench import matmul

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true")
parser.add_argument("--layout", default="random",
                    choices=["random", "barabasi_albert", "watts_strogatz"])
parser.add_argument("--block-sizes", default=None, help="comma list, e.g. 64,128")
parser.add_argument("--dtypes", default=None, help="comma list, e.g. bfloat16,float32")
parser.add_argument("--densities", default=None, help="comma list, e.g. 0.02,0.1")
parser.add_argument("--reps", type=int, default=10, help="back-to-back calls per timing")
args = parser.parse_args()
grid = dict(matmul.FULL if args.full else matmul.QUICK)
if args.block_sizes:
    grid["block_sizes"] = [int(b) for b in args.block_sizes.split(",")]
if args.dtypes:
    grid["dtypes"] = args.dtypes.split(",")
if args.densities:
    grid["densities"] = [float(d) for d in args.densities.split(",")]
matmul.run(**grid, layout_kind=args.layout, reps=args.reps)
