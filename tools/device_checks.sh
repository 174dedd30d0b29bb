#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent machine (a fresh, offline CUDA image with
# python3, CuPy, torch, pytest, pybind11 and nvcc): build with CUDA for sm_90, run the gpu-marked
# tests with LOWRANK_HPC_REQUIRE_GPU=1, bench/bench_gpu.py, and compute-sanitizer memcheck on the
# kernel tests. Logs go to $OUT (default ./device-out), one file per stage.
#   STAGES=build,throws,tests,bench,sanitizer  TEST_ARGS="tests/test_coo_kernels.py"  BENCH_ARGS="--quick"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
STAGES=${STAGES:-build,throws,tests,bench,sanitizer}
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
BUILD_DIR=${BUILD_DIR:-build-gpu}
stage() { [[ ",$STAGES," == *",$1,"* ]]; }
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nvcc --version | tail -2
  $PY -c 'import sys, sysconfig, os; inc = sysconfig.get_paths()["include"]; print(sys.version.split()[0], inc, "Python.h" if os.path.exists(inc + "/Python.h") else "NO Python.h")'
  $PY -c 'import cupy, torch, numpy; print("cupy", cupy.__version__, "torch", torch.__version__, "numpy", numpy.__version__)'
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200; } 2>&1 | tee "$OUT/machine.txt"

if stage build; then
  stamp "build (CUDA sm_90, $JOBS jobs)"
  generator=(-G Ninja); command -v ninja >/dev/null || generator=()
  { cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DLOWRANK_HPC_CUDA=ON \
      -DLOWRANK_HPC_CUDA_ARCHS=90 -DPython_EXECUTABLE="$(command -v $PY)" \
      -Dpybind11_DIR="$($PY -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
    && cmake --build "$BUILD_DIR" -j "$JOBS"; } > "$OUT/build.log" 2>&1
  rc=$?
  tail -5 "$OUT/build.log"
  if [ $rc -ne 0 ]; then grep -m20 -B2 -A8 "error" "$OUT/build.log"; echo "BUILD FAILED rc=$rc"; exit 1; fi
  for f in "$BUILD_DIR"/_cpu*.so "$BUILD_DIR"/_cuda*.so "$BUILD_DIR"/_build_info.py; do
    [ -e "$f" ] && ln -sf "$(realpath "$f")" python/lowrank_hpc/
  done
fi
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
$PY -c 'import lowrank_hpc as lr, json; print(json.dumps(lr.info()["cuda"]), json.dumps(lr.info()["jax_ffi"]))' 2>&1 | tee -a "$OUT/machine.txt"
# lowrank_hpc.jax's CUDA FFI handlers (tests/test_jax_ffi.py's gpu test) need a jax with a GPU backend.
$PY -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1 | tee -a "$OUT/machine.txt"

if stage throws; then
  # 2026-12-04: a ValueError raised by the _cuda module's 16-bit sampled_product check (out of the
  # wrong dtype) killed the process with SIGSEGV on the lent machine (gcc 13.3 build), never here
  # (gcc 12, valgrind clean). Each case in its own process, with stand-in arrays (never read):
  # which dtypes, which check, and whether importing cupy or torch first matters.
  stamp "throws: binding checks of the _cuda module"
  for pre in none cupy torch; do for case in float16:out float32:out float16:V float32:count; do
    timeout 60 $PY - "$pre" "$case" > "$OUT/throw.txt" 2>&1 <<'PROBE'
import importlib, sys
pre, (dtype, check) = sys.argv[1], sys.argv[2].split(":")
if pre != "none":
    importlib.import_module(pre)
from lowrank_hpc import _cuda
class Stand:
    def __init__(self, typestr, *shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (256, False), "version": 3}
t, other = {"float16": ("<f2", "<f4"), "float32": ("<f4", "<f8")}[dtype]
i = lambda *s: Stand("<i8", *s)
try:
    if check == "count":
        _cuda.count_nonfinite(Stand(t, 4), Stand(other, 1), 0)
    else:
        V = Stand(other if check == "V" else t, 1, 5, 2)
        _cuda.sampled_product(Stand(t, 1, 4, 2), V, i(20), i(20), i(2), Stand(other if check == "out" else t, 20), i(1), 0)
    print("no error")
except Exception as error:
    print(type(error).__name__, str(error)[:70])
PROBE
    echo "$pre $case rc=$? $(tail -1 "$OUT/throw.txt")"
  done; done | tee "$OUT/throws.txt"
fi

if stage tests; then
  stamp "gpu tests"
  LOWRANK_HPC_REQUIRE_GPU=1 timeout "${TEST_TIMEOUT:-300}" $PY -m pytest -q -m gpu -p no:cacheprovider -p no:benchmark \
    -n "${TEST_WORKERS:-8}" --timeout 240 -rfE --tb=short --continue-on-collection-errors \
    ${TEST_ARGS:-tests} > "$OUT/gpu_tests.log" 2>&1
  echo "tests rc=$?"; tail -25 "$OUT/gpu_tests.log"
fi

if stage bench; then
  stamp "bench_gpu.py"
  timeout "${BENCH_TIMEOUT:-200}" $PY bench/bench_gpu.py ${BENCH_ARGS:-} > "$OUT/bench_gpu.md" 2> "$OUT/bench_gpu.err"
  echo "bench rc=$?"; cat "$OUT/bench_gpu.md"; tail -5 "$OUT/bench_gpu.err"
fi
if stage sanitizer; then
  stamp "compute-sanitizer memcheck"
  LOWRANK_HPC_REQUIRE_GPU=1 timeout "${SANITIZER_TIMEOUT:-150}" compute-sanitizer --tool memcheck \
    --error-exitcode 99 --print-limit 30 --target-processes all $PY -m pytest -q -x -m gpu -p no:cacheprovider -p no:benchmark \
    -k "float32" ${SANITIZER_TESTS:-tests/test_coo_kernels.py tests/test_maps.py tests/test_adafactor.py} \
    > "$OUT/sanitizer.log" 2>&1
  echo "sanitizer rc=$?"; grep -E "ERROR SUMMARY|Invalid|passed|failed" "$OUT/sanitizer.log" | tail -8
fi

stamp "done"
