#!/usr/bin/env bash
# Final device call: build, CUDA tests, a source-level stall profile of the fused kernel, and the full
# benchmark table from one run. Everything lands under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
FORCE_CUDA=1 python3 setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m pytest -q -x tests/test_ops_cuda.py tests/test_ops_aeppt.py tests/test_ops_select.py -k cuda 2>&1 | tee "$OUT/tests.log" | tail -3 || exit 1
timeout 120 ncu -k regex:aeppt_kernel -c 1 --section WarpStateStats --section SourceCounters --section SpeedOfLight \
  python3 bench/profile_aeppt.py > "$OUT/ncu.txt" 2>&1
grep -E "Duration|Mem Busy|Issue Slots|Warp Cycles Per Issued|stall|Stall" "$OUT/ncu.txt" | head -20
python3 bench/bench_aeppt_cuda.py --batches 256 4096 65536 --compile-batches 4096 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -28
