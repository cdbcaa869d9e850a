#!/usr/bin/env bash
# Builds the libFuzzer harnesses with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs each for SECONDS (default 600). Needs clang (with libclang-rt) and
# libnghttp2-dev: see fuzz/README.md. New inputs go to a scratch corpus under
# FUZZ_OUT (default /tmp/guardian-fuzz); fuzz/corpus/* stays the seed.
#   fuzz/run.sh [SECONDS] [decode|server|glob|lease|both|all]
# both: decode and server at once; all: decode, server, glob and lease at once.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
which=${2:-both}
out=${FUZZ_OUT:-/tmp/guardian-fuzz}
mkdir -p "$out"
san="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wall -Wno-unused-function -Werror"
build() {
  case "$1" in
    decode) clang $san fuzz/fuzz_decode.c src/guardian/_dataplane/pb.c -o "$out/fuzz_decode" ;;
    # shellcheck disable=SC2046
    server) clang $san fuzz/fuzz_server.c $(pkg-config --cflags --libs libnghttp2) -o "$out/fuzz_server" ;;
    glob) clang $san fuzz/fuzz_glob.c -o "$out/fuzz_glob" ;;
    lease) clang $san fuzz/fuzz_lease.c -o "$out/fuzz_lease" ;;
  esac
}
run() {
  mkdir -p "$out/corpus-$1"
  # the whole output goes to $out/NAME.log; printed: the closing lines (the last
  # "DONE" status line has the corpus size, then runs, seconds and stats) and any finding
  "$out/fuzz_$1" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/$1-" \
    "$out/corpus-$1" "fuzz/corpus/$1" >"$out/$1.log" 2>&1 || true
  grep -a 'DONE  *cov\|^Done \|^stat::\|ERROR\|SUMMARY\|runtime error\|Test unit written\|deadly signal' \
    "$out/$1.log" | sed "s/^/[$1] /"
  ! grep -aq '^==[0-9]*==ERROR\|^SUMMARY: \|deadly signal\|Test unit written' "$out/$1.log"
}
case "$which" in
  both) targets=(decode server) ;;
  all) targets=(decode server glob lease) ;;
  decode|server|glob|lease) targets=("$which") ;;
  *) echo "usage: $0 [SECONDS] [decode|server|glob|lease|both|all]" >&2; exit 2 ;;
esac
for t in "${targets[@]}"; do build "$t"; done
pids=()
for t in "${targets[@]}"; do run "$t" & pids+=($!); done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
