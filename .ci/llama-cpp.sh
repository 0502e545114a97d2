#!/usr/bin/env bash
# Build llama-server and llama-fit-params (CPU, static) from the llama.cpp source that ships
# inside the llama-cpp-python sdist on PyPI, and cache them outside the repository.
# Prints the directory holding the binaries. Re-running with a warm cache costs nothing.
# Static except the system's libstdc++, libgomp and OpenSSL 3 (libssl3/libcrypto3; the Debian
# base gets them with curl). `-hf org/repo:QUANT` downloads work in this build: llama.cpp's
# downloader is the vendored cpp-httplib, always linked (common/CMakeLists.txt), HTTPS through
# LLAMA_OPENSSL (its default, spelled out here); LLAMA_CURL is a deprecated no-op in this
# llama.cpp (CMakeLists.txt llama_option_depr), so it is not passed.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${GPU_PREFLIGHT_CACHE:-/var/cache/gpu-preflight}/llama.cpp-${VERSION}"
BIN="$CACHE/bin"
if [[ -x "$BIN/llama-server" && -x "$BIN/llama-fit-params" ]]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$CACHE"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: \
  -d "$work" "llama-cpp-python==${VERSION}" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DLLAMA_OPENSSL=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$work/build" -j"$(nproc)" --target llama-server llama-fit-params >&2
# cpp-httplib links OpenSSL only when find_package found it; a build without it would download
# -hf repos over plain http only, so refuse it rather than cache it.
if ! ldd "$work/build/bin/llama-server" | grep -q 'libssl\.so'; then
  echo "llama-cpp: llama-server was built without OpenSSL (install libssl-dev)" >&2; exit 1
fi
mkdir -p "$BIN.tmp"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-fit-params" "$BIN.tmp/"
rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
echo "$BIN"
