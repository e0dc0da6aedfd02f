#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (for the serving benchmarks only: bench/batch.py) from the
# llama.cpp sources inside the llama-cpp-python source package on PyPI, at a pinned version,
# into the build cache. Nothing in the daemon or the tests needs it.
#
#   scripts/build-llama-server.sh [PYTHON]
#
# Output: $AUTOPILOTD_BUILD_CACHE/llama-server/<key>/llama-server (default cache
# ~/.cache/autopilotd), keyed by the package version and the compiler. Prints the binary's
# path. Cached: a no-op in well under a second; cold, 10-20 min on 2 cores.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
PYTHON="${1:-python3}"
CACHE="${AUTOPILOTD_BUILD_CACHE:-$HOME/.cache/autopilotd}"
log() { printf '[build-llama-server] %s\n' "$*" >&2; }

for tool in cmake c++; do
    command -v "$tool" >/dev/null || { log "$tool not found: install it first"; exit 1; }
done
cxx_id="$(c++ --version | head -1 | tr -c 'A-Za-z0-9.\n' '-' | cut -c1-40)"
KEY="llama-cpp-python-${LLAMA_CPP_PYTHON_VERSION}-${cxx_id}-$(uname -m)"
OUT="$CACHE/llama-server/$KEY"

if [[ -f "$OUT/.complete" ]]; then
    echo "$OUT/llama-server"
    exit 0
fi

log "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION's sources"
mkdir -p "$CACHE/llama-server"
tmp="$(mktemp -d "$CACHE/llama-server/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$tmp/src" \
    "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
tar -xzf "$tmp"/src/llama_cpp_python-*.tar.gz -C "$tmp/src"
llama="$(echo "$tmp"/src/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$llama" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >/dev/null
cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >/dev/null
mkdir -p "$tmp/out"
cp "$tmp/build/bin/llama-server" "$tmp/out/"
touch "$tmp/out/.complete"
rm -rf "$OUT"
mv "$tmp/out" "$OUT"
echo "$OUT/llama-server"
