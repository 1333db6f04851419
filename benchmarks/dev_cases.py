"""Each case of the Hopper attention tests in its own process with a time limit: which
case passes, fails or hangs (a device call's first look at new kernels, where one hung
kernel would otherwise stall the whole pytest run).

    python benchmarks/dev_cases.py [--match d96,d256] [--timeout 40] [--dtypes bf16]

Cases: `CASES`, `DOC_CASES` and `FINE_CASES` (block sizes 16, 32) of
tests/test_gpu_attention_sm90.py (o, lse and dq against float64, as the tests check them:
`check` and `check_docs`), run under the environment as it is.
"""

import argparse
import os
import subprocess
import sys
import time

TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", default="", help="comma-separated substrings of case names")
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds per case")
    parser.add_argument("--dtypes", default="bf16")
    args = parser.parse_args()
    sys.path.insert(0, TESTS)
    import test_gpu_attention_sm90 as t

    patterns = [p for p in args.match.split(",") if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (TESTS, os.environ.get("PYTHONPATH")) if p))
    for runner, table in (("run_cases", t.CASES), ("run_doc_cases", t.DOC_CASES),
                          ("run_fine_cases", t.FINE_CASES)):
        for name in table:
            if patterns and not any(p in name for p in patterns):
                continue
            cases = [(name, d) for d in args.dtypes.split(",")]
            code = f"import test_gpu_attention_sm90 as t; t.{runner}({cases!r})"
            start = time.perf_counter()
            try:
                run = subprocess.run([sys.executable, "-c", code], env=env, cwd=TESTS,
                                     capture_output=True, text=True, timeout=args.timeout)
                status = "ok" if run.returncode == 0 else "FAILED " + \
                    " | ".join(run.stderr.strip().splitlines()[-2:])[-300:]
            except subprocess.TimeoutExpired:
                status = f"HUNG (> {args.timeout:.0f} s)"
            print(f"{name:45s} {time.perf_counter() - start:6.1f} s  {status}", flush=True)


if __name__ == "__main__":
    main()
