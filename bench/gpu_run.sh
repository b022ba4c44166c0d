#!/usr/bin/env bash
# One device call: build in place with CUDA, run the CUDA tests, then benchmark; every step runs even if
# an earlier one failed (one call should bring back everything), and the exit status says whether all passed.
# Logs and JSON land under $OUT: at most 8 files come back from a device call, so this script writes 7
# (build.log, tests.log, bench.json, events.json, rank_order.json, sanitizer.log, ncu.txt), leaving room for
# the caller's log.
# PYTEST_ARGS, BENCH_ARGS: extra arguments;
# SANITIZE=1: compute-sanitizer memcheck on small CUDA cases, and racecheck (shared-memory hazards inside
# one barrier interval: the one class of bug the CPU emulator cannot see); PROFILE=1: Nsight Compute stalls.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
SECONDS=0
FORCE_CUDA=1 python3 setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "build: ${SECONDS} s"
# -rfE --tb=short: each failure named with its reason; a crashed xdist worker names the test it was running.
python3 -m pytest -q -rfE --tb=short tests/test_ops_cuda.py tests/test_ops_aeppt.py tests/test_ops_select.py \
  tests/test_ops_rank_order.py tests/test_ops_aeppt_events.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" \
  | grep -E "^(FAILED|ERROR)|crashed|passed|failed" || status=1
python3 -m pytest -q -rfE --tb=short -n 0 tests/test_input_perturbation.py -k cuda 2>&1 | tee -a "$OUT/tests.log" \
  | grep -E "^(FAILED|ERROR)|passed|failed" || status=1
echo "tests: ${SECONDS} s"
python3 bench/bench_aeppt_cuda.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 | tail -30 || status=1
python3 bench/bench_rank_order.py --device cuda --json "$OUT/rank_order.json" 2>&1 | tail -8 || status=1
# The event kernel (dense forward, backward only where masks changed) beside the dense one, cases (b) and (c).
python3 bench/bench_aeppt_events.py --device cuda --rounds 5 --out "$OUT/events.json" 2>&1 | tail -12 || status=1
echo "bench: ${SECONDS} s"
if [ "${SANITIZE:-0}" = 1 ]; then
  timeout 80 compute-sanitizer --tool memcheck python3 -m pytest -v -n 0 tests/test_ops_cuda.py \
    -k "100-4097 or selection or rank_order" 2>&1 | tail -12 | tee "$OUT/sanitizer.log"
  timeout 80 compute-sanitizer --tool racecheck python3 -m pytest -v -n 0 tests/test_ops_cuda.py \
    -k "10-100 or views" 2>&1 | tail -12 | tee -a "$OUT/sanitizer.log"
  echo "sanitizers: ${SECONDS} s"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  timeout 120 ncu -k regex:aeppt_kernel -c 1 --section WarpStateStats --section SourceCounters --section SpeedOfLight \
    python3 bench/profile_aeppt.py > "$OUT/ncu.txt" 2>&1
fi
exit $status
