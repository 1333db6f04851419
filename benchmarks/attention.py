"""Block-sparse attention benchmark (see jax_blocksparse/bench/attention.py).

    python benchmarks/attention.py          # B=2 H=16 S=8192 D=128: local W=1024 and causal
    python benchmarks/attention.py --full   # S 1024..16384, D 64/128, local/strided/bigbird/causal
"""

import argparse

from jax_blocksparse.bench import attention

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--full", action="store_true")
args = parser.parse_args()
attention.run(**(attention.FULL if args.full else attention.QUICK))
