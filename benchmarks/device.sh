#!/usr/bin/env bash
# One call on the GPU machine: build for sm_90a, then the stages named as arguments.
#   bash benchmarks/device.sh test matmul attention peers patterns lm sanitize
#   (matmul_small: bs 16/32 under JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA 0 and 1;
#    matmul_sdd_runs: sdd at bs 16/32 under JAX_BLOCKSPARSE_MATMUL_SDD_RUNS 0 and 1;
#    matmul_group: dds/dsd at bs 16/32 under JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA 0, 1 and 128;
#    matmul_small_records: the same under JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS 0 and 1;
#    matmul_tf32: float32 (and bf16) at bs 64/128 under JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA 0 and 1;
#    matmul_tma: bf16 at bs 64/128 under JAX_BLOCKSPARSE_MATMUL_TMA 0 and 1 (MATMUL_ARGS: more);
#    matmul_sdd_split: the same under JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT 0 and 1 (dW: the sdd);
#    matmul_sdd_tma: bf16 at bs 64/128 under JAX_BLOCKSPARSE_MATMUL_SDD_TMA 0 and 1 (dW: the sdd);
#    matmul_profile: Nsight Compute on the bs-64 wgmma matmul at density 0.02;
#    attention_bwd_profile: the same on the Hopper backward's kernels, causal layout;
#    attention_harness, matmul_harness: the kernels called from C++ outside JAX (timing,
#      and ncu on PROFILE_KERNEL: ncu on JAX processes ended in host segfaults; with
#      PROFILE_SOURCE=1 any ncu stage adds the stall samples per SASS instruction);
#    attention_softcap_profile: the same on the Hopper forward without and with a soft cap;
#    metadata_profile: every kernel's device time in a forward with a Layout / a BlockMask;
#    lists_profile: Nsight Compute on that forward's block-lists kernel;
#    attention_variants: the attention forward under JAX_BLOCKSPARSE_ATTN_FWD_VARIANT 0, 2, 3;
#    attention_bwd_variants: forward+backward under JAX_BLOCKSPARSE_ATTN_BWD_VARIANT 0, 2, 4;
#    attention_variants64: 0 and 2 at block size 64;
#    attention_persistent: the Hopper forward with JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT 0 and 1;
#    attention_sinks: the cost of sinks and a logit soft cap;
#    matmul_dw: dW on the harness, the SDD TMA kernel and the default choice;
#    attention_cap_max: the soft cap's cost with and without the cap's bound as the maximum;
#    decode_harness: the decode kernel outside JAX, dense and a local window (ncu: PROFILE_KERNEL);
#    harness_sanitize: compute-sanitizer on the attention harness (small shapes; the backward);
#    harness_switches: the attention harness on the patterns' masks under kernel switches)
# On 2 GPUs: TEST_FILES=test_gpu_multi.py bash benchmarks/device.sh test multi_gpu
# The sanitizer tools can run side by side after one build (but then nearly every process
# ended in the host segfault under the sanitizer, RESULTS 2026-12-03 fourth session; one
# tool per call covers more: SANITIZE_TOOLS=memcheck bash benchmarks/device.sh sanitize):
#   bash benchmarks/device.sh && for t in memcheck racecheck synccheck; do
#     SKIP_BUILD=1 SANITIZE_TOOLS=$t bash benchmarks/device.sh sanitize & done; wait
# Logs go to $OUT (the device tool's output folder) or /tmp/out. peers.py (the shared peer
# baselines) is read from _device/peers.py, a git-ignored copy carried with the call.
set -o pipefail
repo=$PWD
out=${OUT:-/tmp/out}
mkdir -p "$out"
export JAX_BLOCKSPARSE_CUDA_ARCHS=${JAX_BLOCKSPARSE_CUDA_ARCHS:-90a} PYTHONUNBUFFERED=1
start=$(date +%s)
if [ -z "$SKIP_BUILD" ]; then  # SKIP_BUILD=1: a later call in the same command, already built
  if ! python3 -m pip install --no-build-isolation --no-deps -v . > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; exit 1
  fi
  echo "build: $(( $(date +%s) - start )) s"
fi
cd /tmp  # import the installed package, not the checkout

# compute-sanitizer's memcheck, racecheck and synccheck (SANITIZE_TOOLS to pick) over
# benchmarks/sanitize_workload.py, on this package's kernels only (their mangled names all
# hold the namespace jax_blocksparse; XLA's own kernels run unchecked). The workload runs
# once per kernel-selecting environment. One summary line per tool; full logs in
# $out/sanitize_<tool>.log. Needs a machine where compute-sanitizer runs (the H100s on
# Firecracker; gVisor refuses it).
# A CUDA tool's path: on the PATH, else the newest /usr/local/cuda*/bin (empty: none)
cuda_tool() { command -v "$1" || ls /usr/local/cuda*/bin/"$1" 2>/dev/null | head -1; }

sanitize() {
  local cs tool run envset log status=0
  cs=$(cuda_tool compute-sanitizer)
  if [ -z "$cs" ]; then echo "sanitize: compute-sanitizer not found"; return 1; fi
  # the attention workload in three processes (--slice): long runs under the sanitizer
  # have ended in a host segfault in XLA's code at random points
  local runs=("- matmul decode" "- attention --slice 0/3" "- attention --slice 1/3"
              "- attention --slice 2/3" "JAX_BLOCKSPARSE_NO_WGMMA=1 matmul"
              "JAX_BLOCKSPARSE_SIMPLE_KERNELS=1 matmul"
              "JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=1 matmul"
              "JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 matmul"
              "JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1 matmul"
              "JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 matmul"
              "JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 matmul"
              "JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=128 matmul"
              "JAX_BLOCKSPARSE_MATMUL_TMA=0 matmul"
              "JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1 matmul"
              "JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1 matmul"
              "JAX_BLOCKSPARSE_DECODE_PACKED=0 decode"
              "JAX_BLOCKSPARSE_DECODE_PACKED=64 decode" "JAX_BLOCKSPARSE_DECODE_PACKED=128 decode"
              "JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=1 attention"
              "JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=0 attention"
              "JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1 attention"
              "JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=0 attention"
              "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=3 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=3,JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN=1 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=2 attention"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT=0 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT_CTAS=3 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=4 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=8 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0,JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA=0 attention --slice 0/3"
              "JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT_CTAS=3 attention"
              "JAX_BLOCKSPARSE_DECODE_SHARED_TILES=1,JAX_BLOCKSPARSE_DECODE_PACKED=0 decode")
  # SANITIZE_RUNS="- decode;JAX_BLOCKSPARSE_NO_WGMMA=1 matmul": other runs, ';' between
  # (several settings of one run: ',' between)
  # (a part's cases in slices: "- attention --slice 0/2;- attention --slice 1/2")
  [ -n "$SANITIZE_RUNS" ] && IFS=';' read -ra runs <<< "$SANITIZE_RUNS"
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
    log="$out/sanitize_$tool.log"
    : > "$log"
    local failed=0
    for run in "${runs[@]}"; do
      set -- $run
      envset=$1
      shift
      [ "$envset" = - ] && envset=JAX_BLOCKSPARSE_DEBUG=1
      # A run that dies of a host segfault under the sanitizer (seen at random points of
      # long runs, in XLA's host code, never without the sanitizer) is retried once.
      local try rc
      # the run's environment, the same for the tool run and warm_cache's (cache keys)
      local run_env=(env XLA_PYTHON_CLIENT_ALLOCATOR=platform
                     XLA_FLAGS="--xla_gpu_autotune_level=0 ${TOOL_XLA_FLAGS---xla_gpu_enable_command_buffer=}"
                     JAX_BLOCKSPARSE_DEBUG=1 ${envset//,/ })
      for try in 1 2; do
        echo "### $tool: $envset sanitize_workload.py $* (try $try)" >> "$log"
        "${run_env[@]}" "$cs" --tool "$tool" --kernel-name kns=jax_blocksparse \
            --error-exitcode 1 python3 "$repo/benchmarks/sanitize_workload.py" "$@" >> "$log" 2>&1
        rc=$?
        [ $rc = 139 ] || break
        echo "### segfault (exit 139)" >> "$log"
        [ $try = 1 ] && warm_cache "${run_env[@]}" \
            python3 "$repo/benchmarks/sanitize_workload.py" "$@" >> "$log"
      done
      [ $rc = 0 ] || failed=$((failed + 1))
    done
    [ "$failed" = 0 ] || status=1
    # "ERROR SUMMARY: N errors"; racecheck: "RACECHECK SUMMARY: N hazards displayed (E errors,
    # W warnings)"; launches: the JAX_BLOCKSPARSE_DEBUG lines of the kernels that ran
    python3 - "$log" "$tool" "$failed" "${#runs[@]}" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
tool, failed, runs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
errors = sum(int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", text))
hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed "
                     r"\((\d+) errors?, (\d+) warnings?\)", text)
summaries = len(re.findall(r"(ERROR|RACECHECK) SUMMARY", text))
kernels = sorted(set(re.findall(r"^\[jax_blocksparse\] (\w+) .*kernel=(.*)$", text, re.M)))
launches = len(re.findall(r"^\[jax_blocksparse\] .*kernel=", text, re.M))
line = f"{tool}: {errors} errors"
if hazards:
    total = [sum(int(h[i]) for h in hazards) for i in range(3)]
    line = f"{tool}: {total[0]} hazards ({total[1]} errors, {total[2]} warnings)"
line += (f"; {runs - failed}/{runs} runs exited 0, {summaries} summaries; {launches} launches of "
         f"{len(kernels)} (op, kernel): " + ", ".join(f"{op} {k}" for op, k in kernels))
print(line)
PY
  done
  return $status
}

# TOOL_XLA_FLAGS: more XLA flags for the processes the sanitizer and Nsight Compute run.
# Both have ended in host segfaults in XLA's code (RESULTS 2026-12-05: every sanitizer
# process, and ncu on the backward, whose custom calls XLA may run inside command buffers,
# i.e. CUDA graphs: our FFI handlers say kCmdBufferCompatible). Default: command buffers
# off; TOOL_XLA_FLAGS= (empty) restores XLA's default.
# Nsight Compute on the second launch (and PROFILE_COUNT - 1 more) of the kernels whose
# mangled names match KERNEL (a regex) in the command after LOG (its output: $out/LOG).
# --clock-control none: the card's clocks stay as they are (ncu's default would lock them; the device README's METHOD.md).
profile() {
  local kernel=$1 log=$2 ncu try
  shift 2
  ncu=$(cuda_tool ncu)
  local flags="${XLA_FLAGS:-} ${TOOL_XLA_FLAGS---xla_gpu_enable_command_buffer=}"
  for try in 1 2; do
    XLA_FLAGS="$flags" \
    timeout "${PROFILE_TIMEOUT:-240}" "$ncu" --clock-control none --kernel-name-base mangled \
      --kernel-name "regex:$kernel" --launch-skip 1 --launch-count "${PROFILE_COUNT:-1}" \
      --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis \
      --section ComputeWorkloadAnalysis \
      ${PROFILE_SOURCE:+--section SourceCounters --export "/tmp/$log.ncu-rep" --force-overwrite} \
      "$@" 2>&1 | tee "$out/$log"
    grep -q "error code (11)\|error code (139)\|Segmentation fault" "$out/$log" || break
    [ $try = 1 ] && warm_cache env XLA_FLAGS="$flags" "$@"
  done
  [ -n "${PROFILE_SOURCE:-}" ] && source_stalls "/tmp/$log.ncu-rep" "$out/${log%.log}_sass.csv"
}

# PROFILE_SOURCE=1: the profiled launch's warp-stall samples per SASS instruction (ncu's
# source page), as CSV, and its 40 most sampled instructions printed (addresses match
# `cuobjdump -sass` of the same binary, e.g. a HARNESS_PREBUILT harness)
source_stalls() {
  "$(cuda_tool ncu)" --import "$1" --page source --print-source sass --csv > "$2" 2>&1
  python3 - "$2" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((i for i, r in enumerate(rows) if any("Sampling" in c for c in r)), None)
if head is None:
    sys.exit(print("source_stalls: no sampling columns in", sys.argv[1]))
names = rows[head]
col = next(i for i, c in enumerate(names) if "Sampling" in c and "All" in c)
num = lambda r: float(r[col].replace(",", "") or 0) if len(r) > col else 0.0
body = [r for r in rows[head + 1:] if len(r) > col]
total = sum(map(num, body)) or 1.0
print(f"{names[col]}: {total:.0f} samples; the 40 most sampled instructions")
for r in sorted(body, key=num, reverse=True)[:40]:
    print(f"{100 * num(r) / total:5.1f}%  " + "  ".join(c for c in r[:3]))
PY
}

# After a host segfault under a tool: the command (with the tool run's environment, so that
# the cache keys match) once outside it with JAX's persistent compilation cache on, every
# executable cached, and the cache left on (exported) for the retry, whose process then
# loads its executables instead of compiling them under the tool (the segfaults were seen
# at random points of XLA's host code; whether compilation is where is what the retry
# tells).
warm_cache() {
  export JAX_COMPILATION_CACHE_DIR=/tmp/jbs_tool_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
         JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
  echo "### segfault under the tool: warming $JAX_COMPILATION_CACHE_DIR, then once more"
  timeout "${PROFILE_TIMEOUT:-240}" "$@" > "$out/warm_cache.log" 2>&1
}

# A kernel harness (benchmarks/NAME.cu: the launchers called from C++ outside JAX) as
# /tmp/NAME, built against this call's package build (its static kernel library); or, under
# HARNESS_PREBUILT=1 (with SKIP_BUILD=1: no package build on the device, about 90 s saved),
# the binary _device/NAME carried with the call, built beforehand on a machine without a GPU
# from the same commit's CI build (its static library holds the sm_90a code), then stripped:
#   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I cuda benchmarks/NAME.cu \
#     CLONE/build/cp311-cp311-linux_x86_64/libjax_blocksparse_kernels.a -o _device/NAME
# (15-29 MB each: carry only those the call runs, the tree and carry share 64 MiB)
harness_build() {
  if [ -n "${HARNESS_PREBUILT:-}" ]; then
    cp "$repo/_device/$1" "/tmp/$1" || { echo "no prebuilt _device/$1"; return 1; }
    return 0
  fi
  nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -I "$repo/cuda" \
    "$repo/benchmarks/$1.cu" "$repo"/build/*/libjax_blocksparse_kernels.a -o "/tmp/$1"
}

# benchmarks/matmul.py with the arguments after SWITCH, under SWITCH=0 and then SWITCH=1
matmul_ab() {
  local switch=$1 t
  shift
  for t in 0 1; do
    echo "$switch=$t"
    env "$switch=$t" python3 "$repo/benchmarks/matmul.py" "$@"
  done
}

for stage in "$@"; do
  echo "=== $stage ($(date +%T))"
  case $stage in
    # TEST_VERBOSITY=-v: one line per test as it ends (a stage cut by a time limit still
    # names its failures; -q prints them only in the summary at the end)
    # XLA's own autotuning off (its choice of gemm kernels, not ours: each test's processes
    # compile their programs afresh); the 30 slowest tests listed at the end.
    # TEST_CACHE=1: JAX's persistent compilation cache shared by the tests' processes (the
    # C++ kernel switches act when a call runs; a switch that changes the lowering changes
    # the program, which the cache keys apart); TEST_K: pytest's -k expression
    test) [ -n "$TEST_CACHE" ] && export JAX_COMPILATION_CACHE_DIR=/tmp/jbs_test_cache \
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
          (cd "$repo/tests" && XLA_PYTHON_CLIENT_PREALLOCATE=false \
             XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" python3 -m pytest \
             ${TEST_VERBOSITY:--q} -m gpu --durations 30 \
             -n ${TEST_WORKERS:-6} --timeout 300 -rf -p no:cacheprovider ${TEST_K:+-k "$TEST_K"} \
             ${TEST_FILES:-.}) 2>&1 \
            | tee "$out/gpu_tests.log" | tail -25 ;;
    matmul) python3 "$repo/benchmarks/matmul.py" 2>&1 | tee "$out/matmul.log"
            python3 "$repo/benchmarks/matmul.py" --layout barabasi_albert --block-sizes 64,128 \
              2>&1 | tee -a "$out/matmul.log" ;;
    # dds, its dx and dsd at bs 16/32 under JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=0, =1, =128
    # (wgmma_small.cuh, the default, against wgmma_group.cuh at 256 / 128 columns; issue 20)
    matmul_group) python3 "$repo/benchmarks/dev_kernels.py" --group-wgmma 2>&1 \
                    | tee "$out/matmul_group.log" ;;
    # the same under JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 and =1 (wgmma_small.cuh merging
    # its lines' lists in every thread, or reading the host-merged group records)
    matmul_small_records) python3 "$repo/benchmarks/dev_kernels.py" --small-records 2>&1 \
                            | tee "$out/matmul_small_records.log" ;;
    # dds, its dx and dsd at bs 16/32 under JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 and =1
    matmul_small) python3 "$repo/benchmarks/dev_kernels.py" --small-wgmma 2>&1 \
                    | tee "$out/matmul_small.log" ;;
    # sdd and x^T dy at bs 16/32 under JAX_BLOCKSPARSE_MATMUL_SDD_RUNS 0 and 1 (issue 20)
    matmul_sdd_runs) python3 "$repo/benchmarks/dev_kernels.py" --sdd-runs 2>&1 \
                       | tee "$out/matmul_sdd_runs.log" ;;
    # float32 at block sizes 64/128 on mma.sync (TF32) and under
    # JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1 (the wgmma kernel), bf16 beside them (issue 20)
    matmul_tf32) matmul_ab JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA --dtypes bfloat16,float32 \
                   --block-sizes 64,128 2>&1 | tee "$out/matmul_tf32.log" ;;
    # dds/dsd at bs 64/128 on the persistent TMA kernel (wgmma_tma.cuh) against the default
    matmul_tma) matmul_ab JAX_BLOCKSPARSE_MATMUL_TMA --dtypes bfloat16 --block-sizes 64,128 \
                  ${MATMUL_ARGS:-} 2>&1 | tee "$out/matmul_tma.log" ;;
    matmul_sdd_split) matmul_ab JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT --dtypes bfloat16 \
                        --block-sizes 64,128 ${MATMUL_ARGS:-} 2>&1 \
                        | tee "$out/matmul_sdd_split.log" ;;
    matmul_sdd_tma) matmul_ab JAX_BLOCKSPARSE_MATMUL_SDD_TMA --dtypes bfloat16 \
                        --block-sizes 64,128 ${MATMUL_ARGS:-} 2>&1 \
                        | tee "$out/matmul_sdd_tma.log" ;;
    matmul_full) python3 "$repo/benchmarks/matmul.py" --full --reps 4 2>&1 \
                   | tee "$out/matmul_full.log" ;;
    attention_full) python3 "$repo/benchmarks/attention.py" --full 2>&1 \
                      | tee "$out/attention_full.log" ;;
    bench) python3 -m jax_blocksparse.bench --chart "$out/bench.png" 2>&1 | tee "$out/bench.log" ;;
    attention) python3 "$repo/benchmarks/attention.py" 2>&1 | tee "$out/attention.log" ;;
    # the forward under variants 0 (FA2, default), 2 and 3 (Hopper FA3 design), side by side
    attention_variants) python3 "$repo/benchmarks/dev_attention.py" --fwd-variants 0,2,3 2>&1 \
                          | tee "$out/attention_variants.log" ;;
    # forward+backward (and the backward alone) under backward variants 0 (FA2, default), 2
    # (Hopper FA3 design, two kernels) and 4 (one pass, deterministic dQ sums); the forward:
    # JAX_BLOCKSPARSE_ATTN_FWD_VARIANT (default 0)
    attention_bwd_variants) python3 "$repo/benchmarks/dev_attention.py" --bwd-variants 0,2,4 \
                              2>&1 | tee "$out/attention_bwd_variants.log" ;;
    # the same at block size 64 (variants 2 and 3 run one kernel there)
    attention_variants64) python3 "$repo/benchmarks/dev_attention.py" --fwd-variants 0,2 \
                            --block-size 64 2>&1 | tee "$out/attention_variants64.log" ;;
    # the Hopper forward (variant 2 unless JAX_BLOCKSPARSE_ATTN_FWD_VARIANT says otherwise)
    # plain and persistent (JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT 0 / 1) at block 128 and 64,
    # then the six patterns (packed documents among them) beside cuDNN, plain and persistent
    attention_persistent)
      { python3 "$repo/benchmarks/dev_attention.py" --persistent-ab
        python3 "$repo/benchmarks/dev_attention.py" --persistent-ab --block-size 64
        python3 "$repo/benchmarks/attention_patterns.py" --variants 2,2p; } 2>&1 \
        | tee "$out/attention_persistent.log" ;;
    # the cost of attention sinks and a soft cap (issue 21): the default forward, then the
    # FA2 forward (variant 0) for every row
    attention_sinks)
      for run in "" JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=0 JAX_BLOCKSPARSE_ATTN_FWD_VARIANT=0; do
        echo "== ${run:-default}"
        env $run python3 "$repo/benchmarks/attention_sinks.py"
      done 2>&1 | tee "$out/attention_sinks.log" ;;
    # each Hopper attention test case in its own process with a time limit (which one
    # hangs): CASES_MATCH="d96,d256" CASES_TIMEOUT=30 CASES_DTYPES=bf16
    cases) python3 "$repo/benchmarks/dev_cases.py" --match "${CASES_MATCH:-}" \
             --timeout "${CASES_TIMEOUT:-40}" --dtypes "${CASES_DTYPES:-bf16}" 2>&1 \
             | tee -a "$out/cases.log" ;;
    decode) python3 "$repo/benchmarks/decode.py" ${DECODE_ARGS:-} 2>&1 | tee "$out/decode.log" ;;
    # the decode rows again from a build whose rings at head dims 96/128 hold
    # DECODE_STAGES (T caches) and DECODE_STAGES_FP8 (fp8) 16-key stages per warp (defaults
    # 3 and 4, as cuda/attention/decode.cu; e.g. DECODE_STAGES=2: 3 CTAs per SM at D 128);
    # rebuilds everything (about 90 s), and the next stage of the call uses that build: put
    # it last
    decode_stages)
      (cd "$repo" && CMAKE_ARGS="-DCMAKE_CUDA_FLAGS='-DJBS_DECODE_STAGES_D128=${DECODE_STAGES:-3} -DJBS_DECODE_STAGES_FP8_D128=${DECODE_STAGES_FP8:-4}'" \
         python3 -m pip install --no-build-isolation --no-deps -v . > "$out/build_stages.log" 2>&1) ||
        { tail -20 "$out/build_stages.log"; continue; }
      echo "decode rings: ${DECODE_STAGES:-3} stages (fp8 ${DECODE_STAGES_FP8:-4})"
      python3 "$repo/benchmarks/decode.py" ${DECODE_ARGS:-} 2>&1 | tee "$out/decode_stages.log" ;;
    # Nsight Compute on one decode kernel launch of one decode.py row (PROFILE_CASE, a row
    # name's text; PROFILE_KERNEL, a regex of the mangled kernel name). The whole decode.py
    # under ncu ran past 330 s (RESULTS 2026-12-03 fifth session): one row only, 2 reps.
    decode_profile) profile "${PROFILE_KERNEL:-DecodePartial.*fp8_e4m3}" decode_profile.log \
                      python3 "$repo/benchmarks/decode.py" \
                      --only "${PROFILE_CASE:-fp8 e4m3 cache}" --reps 2 ;;
    # the same on the matmul's wgmma kernel at density 0.02 (issue 20: what bounds the low
    # densities); PROFILE_KERNEL, PROFILE_ARGS (matmul.py's) to pick others
    matmul_profile) profile "${PROFILE_KERNEL:-WgKernel}" matmul_profile.log \
                      python3 "$repo/benchmarks/matmul.py" \
                      ${PROFILE_ARGS:---block-sizes 64 --densities 0.02 --dtypes bfloat16} \
                      --reps 2 ;;
    # the attention kernels outside JAX (benchmarks/attention_harness.cu, linked against
    # this build's static kernel library; ncu on JAX processes ended in host segfaults):
    # timing (HARNESS_ARGS: its arguments, e.g. "--mask causal --phase bwd"), then Nsight
    # Compute on PROFILE_KERNEL's launches (PROFILE_COUNT, default 2) when it is set;
    # HARNESS_MASKS=FILE.npz (attention_patterns.py's) also times each pattern of it
    attention_harness)
      harness_build attention_harness || exit 1
      /tmp/attention_harness ${HARNESS_ARGS:-} 2>&1 | tee "$out/attention_harness.log"
      if [ -n "${HARNESS_MASKS:-}" ]; then
        python3 "$repo/benchmarks/harness_masks.py" --npz "$HARNESS_MASKS" || exit 1
        for mask in /tmp/harness_mask_*.txt; do
          /tmp/attention_harness --mask "$mask" ${HARNESS_ARGS:-} 2>&1 \
            | tee -a "$out/attention_harness.log"
        done
      fi
      [ -n "${PROFILE_KERNEL:-}" ] && PROFILE_COUNT=${PROFILE_COUNT:-2} \
        profile "$PROFILE_KERNEL" attention_harness_ncu.log /tmp/attention_harness \
        ${HARNESS_ARGS:-} --reps 2 ;;
    # issue 20's dW on the harness: the SDD TMA kernel (JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1)
    # and the default choice, at block sizes 128 and 64, densities 0.1 and 0.02
    matmul_dw)
      harness_build matmul_harness || exit 1
      for bs in 128 64; do
        for d in 0.1 0.02; do
          for tma in 1 ""; do
            echo "== bs $bs density $d JAX_BLOCKSPARSE_MATMUL_SDD_TMA=$tma"
            JAX_BLOCKSPARSE_MATMUL_SDD_TMA=$tma /tmp/matmul_harness --block $bs --density $d \
              --op dw --reps 20
          done
        done
      done 2>&1 | tee "$out/matmul_dw.log" ;;
    # issue 21 on the attention harness: the Hopper forward (causal, then all blocks; S
    # 8192, D 128, bf16) without a cap, then with a cap of 30 under
    # JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX 0 and 1 (the cap's bound as the rows' maximum), the
    # capped outputs of the two compared
    attention_cap_max)
      harness_build attention_harness || exit 1
      for mask in causal dense; do
        for run in 0:0 30:0 30:1; do
          cap=${run%:*} on=${run#*:}
          echo "== $mask cap=$cap JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=$on"
          JAX_BLOCKSPARSE_ATTN_FWD_CAP_MAX=$on /tmp/attention_harness --mask $mask --phase fwd \
            --softcap $cap --reps 30 --dump "/tmp/cap_${mask}_${cap}_$on.bin"
        done
      done 2>&1 | tee "$out/attention_cap_max.log"
      python3 -c "
import numpy as np
load = lambda p: (np.fromfile(p, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(float)
for mask in ('causal', 'dense'):
    a, b = load(f'/tmp/cap_{mask}_30_0.bin'), load(f'/tmp/cap_{mask}_30_1.bin')
    print(f'{mask} cap 30: cap-max finite {np.isfinite(b).all()}, max |diff| '
          f'{np.abs(a - b).max():.3g}, relative {np.linalg.norm(a - b) / np.linalg.norm(a):.3g}')
" 2>&1 | tee -a "$out/attention_cap_max.log" ;;
    # issue 22's decode kernel outside JAX (benchmarks/decode_harness.cu): the dense causal
    # cache and the local window of 4096 (B 8, Hq 64, Hkv 8, D 128, 32k, bf16; % of a copy
    # of the dense cache's size), then Nsight Compute on PROFILE_KERNEL's launches (e.g.
    # DecodePartialKernel, DecodeCombineKernel) of the local window
    decode_harness)
      harness_build decode_harness || exit 1
      for w in 0 4096; do /tmp/decode_harness --window $w ${HARNESS_ARGS:-}; done 2>&1 \
        | tee "$out/decode_harness.log"
      [ -n "${PROFILE_KERNEL:-}" ] && PROFILE_COUNT=${PROFILE_COUNT:-2} \
        profile "$PROFILE_KERNEL" decode_harness_ncu.log /tmp/decode_harness --window 4096 \
        ${HARNESS_ARGS:-} --reps 2 ;;
    # compute-sanitizer (SANITIZE_TOOLS, default all three) on the attention kernels outside
    # JAX (the harness: JAX processes have ended in host segfaults under the tools), small
    # shapes (S 1024, B 2, H 2), the backward phase under the environment's switches (e.g.
    # JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=4): the causal layout and an 8 x 8 mask of the
    # diagonal, a global key column and a global query row (the one-pass kernel's second
    # dQ slot), at head dims 128 and 64; HARNESS_PHASE=fwd / both for the others;
    # SANITIZE_HARNESS_ARGS more harness arguments (e.g. "--softcap 5")
    # the attention harness (S 8192, B 2, H 16, D 128, bf16, block 128) on the patterns'
    # masks, written here from the layout generators (benchmarks/harness_masks.py: local
    # 1024 and 4096, strided, fixed causal; bigbird; HARNESS_PATTERNS to pick), and causal,
    # once per setting of HARNESS_SWITCHES (';' between settings, ',' between one setting's
    # variables, "-" for none), HARNESS_ARGS after (default "--phase bwd --reps 20"): e.g.
    #   HARNESS_SWITCHES="-;JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0" bash benchmarks/device.sh \
    #     harness_switches
    harness_switches)
      harness_build attention_harness || exit 1
      python3 "$repo/benchmarks/harness_masks.py" \
        ${HARNESS_PATTERNS:-local local4096 strided fixed bigbird} || exit 1
      IFS=';' read -ra settings <<< "${HARNESS_SWITCHES:--}"
      for mask in /tmp/harness_mask_*.txt causal; do
        for setting in "${settings[@]}"; do
          envset=${setting//,/ }
          [ "$envset" = - ] && envset=
          echo "== $(basename "$mask" .txt) ${envset:-defaults}"
          env $envset timeout 60 /tmp/attention_harness --mask "$mask" \
            ${HARNESS_ARGS:---phase bwd --reps 20} | tail -1
        done
      done 2>&1 | tee "$out/harness_switches.log" ;;
    harness_sanitize)
      harness_build attention_harness || exit 1
      cs=$(cuda_tool compute-sanitizer)
      python3 -c "print('8 8'); [print(''.join('1' if r == c or 0 in (r, c) else '0'
                                      for c in range(8))) for r in range(8)]" \
        > /tmp/mask_global8.txt
      for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
        for mask in causal /tmp/mask_global8.txt; do
          for d in 128 64; do
            echo "### $tool --mask $mask --dim $d"
            timeout "${PROFILE_TIMEOUT:-60}" "$cs" --tool "$tool" --kernel-name kns=jax_blocksparse \
              --error-exitcode 1 /tmp/attention_harness --mask "$mask" --dim $d --seq 1024 \
              --batch 2 --heads 2 --reps 1 --phase "${HARNESS_PHASE:-bwd}" \
              ${SANITIZE_HARNESS_ARGS:-} 2>&1 \
              | grep -E "SUMMARY|harness|Error|Read|Write" | head -12
            echo "exit ${PIPESTATUS[0]}"
          done
        done
      done 2>&1 | tee "$out/harness_sanitize.log" ;;
    # the matmul kernels outside JAX (benchmarks/matmul_harness.cu): timing (HARNESS_ARGS,
    # e.g. "--block 128 --op fwd"), then Nsight Compute on PROFILE_KERNEL when it is set
    matmul_harness)
      harness_build matmul_harness || exit 1
      /tmp/matmul_harness ${HARNESS_ARGS:-} 2>&1 | tee "$out/matmul_harness.log"
      [ -n "${PROFILE_KERNEL:-}" ] && PROFILE_COUNT=${PROFILE_COUNT:-1} \
        profile "$PROFILE_KERNEL" matmul_harness_ncu.log /tmp/matmul_harness \
        ${HARNESS_ARGS:-} --reps 2 ;;
    # Nsight Compute on the Hopper backward (issue 19: what bounds the causal forward+backward
    # against cuDNN): a dK/dV and a dQ launch of the default variant on the causal layout;
    # JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=4 PROFILE_KERNEL=OnePassKernel PROFILE_COUNT=1 for
    # the one-pass kernel
    attention_bwd_profile) PROFILE_COUNT=${PROFILE_COUNT:-2} \
        profile "${PROFILE_KERNEL:-DqKernel|DkvKernel}" attention_bwd_profile.log \
        python3 "$repo/benchmarks/dev_attention.py" --bwd-only --layouts causal ;;
    # the same on the Hopper forward with and without a soft cap (issue 21: which pipe
    # bounds the cap, MUFU or the issue slots): one FwdKernel launch of each row
    attention_softcap_profile)
      for option in plain softcap; do
        profile "${PROFILE_KERNEL:-FwdKernel}" "attention_profile_$option.log" \
          python3 "$repo/benchmarks/attention_sinks.py" --profile $option
      done ;;
    # the device time of every kernel (XLA's too) of one pattern's forward with the Layout
    # and with a traced BlockMask (issue 18 item 3: what the BlockMask's lists cost),
    # Nsight Compute's summary per kernel name; METADATA_PATTERN (default local)
    metadata_profile)
      XLA_FLAGS="${XLA_FLAGS:-} ${TOOL_XLA_FLAGS---xla_gpu_enable_command_buffer=}" \
      timeout "${PROFILE_TIMEOUT:-240}" "$(cuda_tool ncu)" --clock-control none \
        --metrics gpu__time_duration.sum --print-summary per-kernel \
        python3 "$repo/benchmarks/attention_patterns.py" \
        --metadata-trace "${METADATA_PATTERN:-local}" 2>&1 | tee "$out/metadata_profile.log" ;;
    # Nsight Compute's sections on one launch of the block-lists kernel of that forward
    # (a traced BlockMask's lists: issue 18 item 3)
    lists_profile) profile "${PROFILE_KERNEL:-BlockListsKernel}" lists_profile.log \
        python3 "$repo/benchmarks/attention_patterns.py" \
        --metadata-trace "${METADATA_PATTERN:-local}" ;;
    peers) python3 "$repo/_device/peers.py" 2>&1 | tee "$out/peers.log" ;;
    # the six patterns beside FlexAttention (same masks) and cuDNN; PATTERN_ARGS e.g.
    # "--backward --variants 0,2 --metadata"
    patterns) python3 "$repo/benchmarks/attention_patterns.py" --peers "$repo/_device/peers.py" \
                ${PATTERN_ARGS:---backward} 2>&1 | tee "$out/patterns.log" ;;
    # the README's GPU configuration; LM_ARGS=--packed: on packed documents (issue 19)
    lm) python3 "$repo/examples/sparse_transformer_lm.py" --compare --seq-len 8192 \
          --block-size 64 --stride 512 --d-model 1024 --heads 8 --layers 6 --batch 4 \
          --dtype bfloat16 ${LM_ARGS:-} 2>&1 | tee "$out/lm.log" ;;
    multi_gpu) python3 "$repo/benchmarks/multi_gpu.py" 2>&1 | tee "$out/multi_gpu.log" ;;
    sanitize) sanitize ;;
    *) echo "unknown stage $stage" ;;
  esac
done
