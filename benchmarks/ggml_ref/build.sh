#!/usr/bin/env bash
# Build the ggml reference harness outside the repository: build.sh GGML_CHECKOUT OUT_DIR
# e.g. git clone https://github.com/ggml-org/ggml /tmp/ggml && benchmarks/ggml_ref/build.sh /tmp/ggml /tmp/ggmlref
set -euo pipefail
ggml=$1 out=$2 here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
cflags=(-O2 -D_GNU_SOURCE -I"$ggml/src" -I"$ggml/include")
gcc "${cflags[@]}" -std=c11 -c "$ggml/src/ggml-quants.c" -o "$out/ggml-quants.o"
gcc "${cflags[@]}" -c "$here/harness.c" -o "$out/harness.o"
gcc "${cflags[@]}" -c "$here/stubs.c" -o "$out/stubs.o"
gcc "$out/ggml-quants.o" "$out/harness.o" "$out/stubs.o" -lm -o "$out/harness"
echo "$out/harness"
