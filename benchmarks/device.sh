#!/usr/bin/env bash
# One call on the GPU machine: build for sm_90a, then the stages named as arguments.
#   bash benchmarks/device.sh test matmul attention peers lm
# Logs go to $OUT (the device tool's output folder) or /tmp/out. peers.py (the shared peer
# baselines) is read from _device/peers.py, a git-ignored copy carried with the call.
set -o pipefail
repo=$PWD
out=${OUT:-/tmp/out}
mkdir -p "$out"
export JAX_BLOCKSPARSE_CUDA_ARCHS=${JAX_BLOCKSPARSE_CUDA_ARCHS:-90a} PYTHONUNBUFFERED=1
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation --no-deps -v . > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
cd /tmp  # import the installed package, not the checkout
for stage in "$@"; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    test) (cd "$repo/tests" && python3 -m pytest -q -m gpu -p no:cacheprovider .) 2>&1 \
            | tee "$out/gpu_tests.log" | tail -25 ;;
    matmul) python3 "$repo/benchmarks/matmul.py" 2>&1 | tee "$out/matmul.log"
            python3 "$repo/benchmarks/matmul.py" --layout barabasi_albert --block-sizes 64,128 \
              2>&1 | tee -a "$out/matmul.log" ;;
    matmul_full) python3 "$repo/benchmarks/matmul.py" --full --reps 4 2>&1 \
                   | tee "$out/matmul_full.log" ;;
    attention_full) python3 "$repo/benchmarks/attention.py" --full 2>&1 \
                      | tee "$out/attention_full.log" ;;
    bench) python3 -m jax_blocksparse.bench --chart "$out/bench.png" 2>&1 | tee "$out/bench.log" ;;
    attention) python3 "$repo/benchmarks/attention.py" 2>&1 | tee "$out/attention.log" ;;
    peers) python3 "$repo/_device/peers.py" 2>&1 | tee "$out/peers.log" ;;
    lm) python3 "$repo/examples/sparse_transformer_lm.py" --compare --seq-len 8192 \
          --block-size 64 --stride 512 --d-model 1024 --heads 8 --layers 6 --batch 4 \
          --dtype bfloat16 2>&1 | tee "$out/lm.log" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
