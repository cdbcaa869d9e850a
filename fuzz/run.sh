#!/usr/bin/env bash
# Builds the libFuzzer harnesses with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs each for SECONDS (default 600). Needs clang (with libclang-rt) and
# libnghttp2-dev. New inputs go to a scratch corpus; fuzz/corpus/* stays the seed.
#   fuzz/run.sh [SECONDS] [decode|server|both]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
which=${2:-both}
out=${FUZZ_OUT:-/tmp/guardian-fuzz}
mkdir -p "$out"
san="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wall -Wno-unused-function -Werror"
clang $san fuzz/fuzz_decode.c src/guardian/_dataplane/pb.c -o "$out/fuzz_decode"
# shellcheck disable=SC2046
clang $san fuzz/fuzz_server.c $(pkg-config --cflags --libs libnghttp2) -o "$out/fuzz_server"
run() {
  mkdir -p "$out/corpus-$1"
  "$out/fuzz_$1" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/$1-" \
    "$out/corpus-$1" "fuzz/corpus/$1"
}
case "$which" in
  both) run decode & run server; wait ;;
  *) run "$which" ;;
esac
