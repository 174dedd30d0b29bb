#!/usr/bin/env bash
# Development build: compile both modules into build-dev/ and link them into the source
# package, so `PYTHONPATH=python pytest` runs against the working tree without reinstalling.
set -euo pipefail
cd "$(dirname "$0")"
BUILD_DIR=${BUILD_DIR:-build-dev}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
for f in "$BUILD_DIR"/_cpu*.so "$BUILD_DIR"/_cuda*.so "$BUILD_DIR"/_build_info.py; do
  [ -e "$f" ] && ln -sf "$(realpath "$f")" python/lowrank_hpc/
done
