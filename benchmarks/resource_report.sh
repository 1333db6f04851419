#!/usr/bin/env bash
# The kernels' resource report without a GPU: compiles each cuda/**/*.cu for sm_90a as
# CMakeLists.txt does (-O3, JBS_WGMMA_BUILT) with -Xptxas -v and prints, per kernel
# instance (demangled), its spill bytes and ptxas's wgmma notes (C7510-C7519; C7512, C7514:
# the instance's wgmmas serialized, each waiting for the one before; C7519: a
# warpgroup.arrive injected before a wgmma that reads registers). Instances without either
# are counted, not listed.
#
#   bash benchmarks/resource_report.sh [FILE.cu ...]   (default: every kernel source)
set -euo pipefail
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -eq 0 ] && mapfile -t files < <(find cuda -name '*.cu' | sort)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "${files[@]}"; do
  nvcc -std=c++17 -O3 --expt-relaxed-constexpr -DJBS_WGMMA_BUILT=1 \
    -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -I cuda -I cuda/attention -I cuda/matmul \
    -c "$f" -o "$out/k.o" 2> "$out/log" || { cat "$out/log"; exit 1; }
  python3 - "$f" "$out/log" <<'EOF'
import re, subprocess, sys
source, log = sys.argv[1], open(sys.argv[2]).read()
def name(mangled):
    text = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip()
    return re.sub(r"jax_blocksparse::(attn::|matmul::)?(\w+::)?", "", text).split("(")[0]
spills, notes, current = {}, {}, None
for line in log.splitlines():
    if m := re.search(r"Compiling entry function '(\w+)'", line):
        current = m.group(1)
    elif (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)) and current:
        spills[current] = (int(m.group(1)), int(m.group(2)))
    elif m := re.search(r"\((C751\d)\).*function '(\w+)'", line):
        notes.setdefault(m.group(2), []).append(m.group(1))
flagged = sorted(k for k in spills if spills[k] != (0, 0) or k in notes)
print(f"{source}: {len(spills)} instances, {len(flagged)} with spills or wgmma notes")
for k in flagged:
    print(f"  spill {spills[k][0]}/{spills[k][1]} B  {' '.join(notes.get(k, []))}  {name(k)}")
EOF
done
