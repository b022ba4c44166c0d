#!/usr/bin/env bash
# One device call: build in place with CUDA, run the CUDA tests, optionally profile, then benchmark.
# Logs and bench.json land under $OUT.   PYTEST_ARGS, BENCH_ARGS: extra arguments;
# SANITIZE=1: compute-sanitizer memcheck on the CUDA tests, and racecheck (shared-memory hazards inside
# one barrier interval: the one class of bug the CPU emulator cannot see) on small cases;
# PROFILE=1: Nsight Compute stall profile.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
FORCE_CUDA=1 python3 setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -x tests/test_ops_cuda.py tests/test_ops_aeppt.py tests/test_ops_select.py ${PYTEST_ARGS:-} 2>&1 \
  | tee "$OUT/tests.log" | tail -5 || exit 1
if [ "${SANITIZE:-0}" = 1 ]; then
  compute-sanitizer --tool memcheck python3 -m pytest -q -x tests/test_ops_cuda.py -k "100-4097 or selection" \
    2>&1 | tail -15 | tee "$OUT/sanitizer.log"
  compute-sanitizer --tool racecheck python3 -m pytest -q -x tests/test_ops_cuda.py -k "10-100 or selection" \
    2>&1 | tail -15 | tee "$OUT/racecheck.log"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  timeout 120 ncu -k regex:aeppt_kernel -c 1 --section WarpStateStats --section SourceCounters --section SpeedOfLight \
    python3 bench/profile_aeppt.py > "$OUT/ncu.txt" 2>&1
fi
python3 bench/bench_aeppt_cuda.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -28
