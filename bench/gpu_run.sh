#!/usr/bin/env bash
# One device call: build in place with CUDA, run the CUDA tests, then the benchmark. Logs under $OUT.
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$OUT/gpu.txt"
FORCE_CUDA=1 python3 setup.py build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
grep -E "registers|spill" "$OUT/build.log" | head -20
python3 -m pytest -q -x tests/test_ops_cuda.py tests/test_ops_aeppt.py tests/test_ops_select.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -25 || exit 1
if [ "${SANITIZE:-0}" = 1 ]; then
  compute-sanitizer --tool memcheck python3 -m pytest -q -x tests/test_ops_cuda.py -k "equals_cpu and 100-4097 or selection" 2>&1 | tail -15 | tee "$OUT/sanitizer.log"
fi
PYTHONPATH=$PWD python3 bench/bench_aeppt_cuda.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log" | tail -40
