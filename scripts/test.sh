#!/bin/sh
# Checks the include graph of src/ (scripts/check-includes.py), then builds
# kumod twice (release, then ASan+UBSan) and runs the whole test suite
# (cmocka unit tests and pytest end-to-end tests) against each build.
set -eu
cd "$(dirname "$0")/.."
# The include graph of src/ first: no cycles, no include up the layers.
/usr/bin/python3 scripts/check-includes.py
jobs=$(nproc)
status=0
for variant in release asan; do
  dir=build-test-$variant
  if [ $variant = asan ]; then
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=Debug -DKUMOD_SANITIZE=ON >/dev/null
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  else
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build $dir -j"$jobs"
  echo "=== test suite: $variant build"
  if ! ctest --test-dir $dir --output-on-failure -j"$jobs"; then
    status=1
  fi
done
exit $status
