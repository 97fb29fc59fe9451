#!/bin/sh
# Builds the libFuzzer targets (tests/fuzz/fuzz_*.c; clang, ASan+UBSan) in
# build-fuzz and runs each for a short fixed time from its checked-in seed
# corpus (tests/fuzz/corpus/<target>, copied: the checked-in files are never
# changed). Prints each target's executions per second and fails when a
# target crashes, trips a sanitizer or a property check; the input that did
# it is kept under build-fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   (default 20 s per target, all)
#
# A longer run, and how to reproduce a crash: tests/fuzz/README.md.
set -eu
cd "$(dirname "$0")/.."
secs=${1:-20}
[ $# -gt 0 ] && shift
cc=${KUMOD_FUZZ_CC:-clang}
cxx=${KUMOD_FUZZ_CXX:-clang++}
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKUMOD_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$(nproc)"

if [ $# -gt 0 ]; then
  targets="$*"
else
  targets=$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/kumod-fuzz-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
# halt_on_error: a UBSan report is a failure like an ASan one
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1}
# issue 25's defects 4 and 6 are fixed: their harnesses check everywhere.
# (fuzz_meta keeps its guard: an envelope that is not UTF-8 is refused at
# every way in, so message_meta_to_json only repairs it, lossily.)
export FUZZ_STRICT=${FUZZ_STRICT:-1}
export FUZZ_QUEUE_NAME_STRICT=${FUZZ_QUEUE_NAME_STRICT:-1}
status=0
summary=""
for t in $targets; do
  bin=build-fuzz/$t
  [ -x "$bin" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  mkdir -p "$work/$t" "build-fuzz/artifacts/$t"
  [ -d "tests/fuzz/corpus/$t" ] && cp "tests/fuzz/corpus/$t"/* "$work/$t/"
  dict=""
  case $t in
    fuzz_smtp_session|fuzz_smtp_data) dict=-dict=tests/fuzz/dict/smtp.dict ;;
    fuzz_http_*) dict=-dict=tests/fuzz/dict/http.dict ;;
  esac
  log=build-fuzz/artifacts/$t/last-run.log
  echo "=== $t: ${secs}s"
  # -timeout: one input running 30 s is a stall; -max_len: the network
  # targets take sessions of a few KB (their seeds are shorter)
  if "$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=16384 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/artifacts/$t/" $dict \
      "$work/$t" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E 'property failed|ERROR: |runtime error|SUMMARY|^kumod: |Test unit written|#[0-9]+ 0x' "$log" \
      | head -40 >&2 || true
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  line=$(printf '%-20s %-6s %10s execs %8s execs/s  %s' "$t" "$result" "${execs:-?}" \
    "${rate:-?}" "$cov")
  echo "$line"
  summary="$summary$line
"
done
echo "=== fuzzing summary (${secs}s per target)"
printf '%s' "$summary"
exit $status
