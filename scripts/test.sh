#!/bin/sh
# Checks the include graph of src/ (scripts/check-includes.py), then
# builds kumod three times and runs the test suite against each build:
#   release      every test (cmocka unit tests, Lua scripts, pytest end-to-end)
#   asan         the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   tsan         the end-to-end modules that drive reactors, spool, logger and
#                the admin API side by side, under ThreadSanitizer
#                (reviewed suppressions: tests/tsan/suppressions.txt)
# Pass variant names to run only those (e.g. ./scripts/test.sh release).
set -eu
cd "$(dirname "$0")/.."
# The include graph of src/ first: no cycles, no include up the layers.
/usr/bin/python3 scripts/check-includes.py
jobs=$(nproc)
status=0
variants=${*:-release asan tsan}
TSAN_MODULES='e2e/(test_foundation|test_http|test_hardening|test_queues|test_durability)$'
for variant in $variants; do
  dir=build-test-$variant
  filter=""
  case $variant in
  asan)
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=Debug -DKUMOD_SANITIZE=ON >/dev/null
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    cmake --build $dir -j"$jobs"
    ;;
  tsan)
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKUMOD_TSAN=ON >/dev/null
    # the harness fails a test whose kumod printed a TSan warning
    export TSAN_OPTIONS="suppressions=$(pwd)/tests/tsan/suppressions.txt:halt_on_error=0:second_deadlock_stack=1"
    cmake --build $dir -j"$jobs" --target kumod kcli
    filter=$TSAN_MODULES
    ;;
  release)
    cmake -S . -B $dir -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build $dir -j"$jobs"
    ;;
  *)
    echo "unknown variant $variant" >&2
    exit 2
    ;;
  esac
  echo "=== test suite: $variant build"
  if ! ctest --test-dir $dir --output-on-failure -j"$jobs" ${filter:+-R "$filter"}; then
    status=1
  fi
done
exit $status
