"""Checks a built (or repaired) wheel's CUDA module: what it needs from the system at run time
and what device code it carries. Exits non-zero and says why when a check fails.

    python .ci/check_wheel.py dist/jax_blocksparse-*.whl [--archs 80,90a]

- Shared libraries needed (DT_NEEDED): glibc's, libgcc_s and nothing else (no libcuda, the
  driver being loaded at run time by the static CUDA runtime; no libcudart, no libstdc++,
  no jaxlib/XLA library), and no library vendored by `auditwheel repair` (`*.libs/`).
- Symbol versions: GLIBC 2.28 or older and GCC 7.0.0 or older (manylinux_2_28); none of
  GLIBCXX/CXXABI (libstdc++ is linked statically).
- Undefined symbols without a version: Python's C API only. (Linked against glibc 2.28's
  symbols, a function that glibc 2.28 lacks would stay undefined and unversioned, and fail
  to load on an older system; auditwheel does not see those.) No XLA/jaxlib symbol: the
  kernels reach XLA through the FFI's function table only.
- With --archs (and cuobjdump on the PATH): SASS for each listed architecture, PTX for the
  lowest (so that newer GPUs JIT-compile it).
Uses readelf and objdump (binutils).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ALLOWED_NEEDED = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
                  "libgcc_s.so.1", "ld-linux-x86-64.so.2"}
MAX_VERSION = {"GLIBC": (2, 28), "GCC": (7, 0, 0)}


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def check_module(path: str) -> list[str]:
    problems = []
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _run("readelf", "-d", path))
    problems += [f"needs {lib}" for lib in needed if lib not in ALLOWED_NEEDED]
    versions, unversioned = set(), []
    for line in _run("objdump", "-T", path).splitlines():
        fields = line.split()
        if "*UND*" not in fields:
            continue
        name, version = fields[-1], fields[-2].strip("()")
        if version == "Base":
            weak = " w " in line
            if not weak and not re.match(r"_?Py", name):
                unversioned.append(name)
        else:
            versions.add(version)
        if re.search(r"xla|jaxlib", name, re.IGNORECASE):
            problems.append(f"links the XLA/jaxlib symbol {name}")
    for version in sorted(versions):
        family, _, number = version.partition("_")
        if family not in MAX_VERSION or _version(number) > MAX_VERSION[family]:
            problems.append(f"needs the symbol version {version}")
    problems += [f"undefined symbol without a version (newer than glibc 2.28?): {name}"
                 for name in unversioned]
    print(f"{path}: needs {', '.join(needed)}; symbol versions {', '.join(sorted(versions))}")
    return problems


def check_device_code(path: str, archs: list[str]) -> list[str]:
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        print("no cuobjdump on the PATH: device code not checked")
        return []
    sass = set(re.findall(r"\.sm_(\w+)\.cubin", _run(cuobjdump, "--list-elf", path)))
    ptx = set(re.findall(r"\.sm_(\w+)\.ptx", _run(cuobjdump, "--list-ptx", path)))
    print(f"{path}: SASS for sm_{', sm_'.join(sorted(sass))}; "
          f"PTX for compute_{', compute_'.join(sorted(ptx))}")
    problems = [f"no SASS for sm_{arch}" for arch in archs if arch not in sass]
    lowest = min(archs, key=lambda arch: int(re.match(r"\d+", arch).group()))
    if lowest not in ptx:
        problems.append(f"no PTX for compute_{lowest}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel")
    parser.add_argument("--archs", default="", help="comma-separated, e.g. 80,90a")
    args = parser.parse_args()
    problems = []
    with zipfile.ZipFile(args.wheel) as wheel, tempfile.TemporaryDirectory() as tmp:
        names = wheel.namelist()
        problems += [f"vendors {name}" for name in names if ".libs/" in name]
        modules = [name for name in names if re.search(r"_jax_blocksparse_cuda.*\.so$", name)]
        if len(modules) != 1:
            problems.append(f"holds {len(modules)} CUDA modules, not 1")
        for name in modules:
            path = wheel.extract(name, tmp)
            problems += check_module(path)
            if args.archs:
                problems += check_device_code(path, args.archs.split(","))
    for problem in problems:
        print(f"{args.wheel}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.wheel}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
