"""Block masks as benchmarks/attention_harness.cu reads them (`--mask FILE`: a first line
"Rq Rk", with " causal" for a causal pattern, then Rq lines of Rk characters 0 / 1),
written to /tmp/harness_mask_NAME.txt (the files of an earlier run removed first), from
the block masks of an npz that `attention_patterns.py` saved (those without document ids;
causal where the name ends in "_causal") or from the patterns' layout generators at S
8192, block 128 (below).

    python3 benchmarks/harness_masks.py --npz FILE.npz
    python3 benchmarks/harness_masks.py local local4096 strided fixed bigbird
"""
import argparse
import glob
import os

import numpy as np

import jax_blocksparse as jbs

L = jbs.layouts
PATTERNS = {"local": lambda: (L.local(8192, 128, 1024), True),
            "local4096": lambda: (L.local(8192, 128, 4096), True),
            "strided": lambda: (L.strided(8192, 128, 1024), True),
            "fixed": lambda: (L.fixed(8192, 128, 512), True),
            "bigbird": lambda: (L.bigbird(8192, 128, seed=1), False)}


def write(name, mask, causal):
    with open(f"/tmp/harness_mask_{name}.txt", "w") as f:
        f.write(f"{mask.shape[0]} {mask.shape[1]}" + (" causal" if causal else "") + "\n")
        f.writelines("".join("1" if x else "0" for x in row) + "\n" for row in mask)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", help="attention_patterns.py's saved masks")
    parser.add_argument("patterns", nargs="*", help=", ".join(PATTERNS))
    args = parser.parse_args()
    for name in args.patterns:
        if name not in PATTERNS:
            parser.error(f"no pattern {name!r}: {', '.join(PATTERNS)}")
    for stale in glob.glob("/tmp/harness_mask_*.txt"):
        os.remove(stale)
    if args.npz:
        z = np.load(args.npz)
        for name, m in z.items():
            if m.dtype == bool and m.ndim == 2 and name + "_docs" not in z.files:
                write(name, m, name.endswith("_causal"))
    for name in args.patterns:
        layout, causal = PATTERNS[name]()
        write(name, np.asarray(layout.mask).reshape(-1, *layout.mask.shape[-2:])[0], causal)


if __name__ == "__main__":
    main()
