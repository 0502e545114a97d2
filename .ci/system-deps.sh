#!/usr/bin/env bash
# Debian packages the storage and container tests need. Idempotent; a no-op when all are present.
set -euo pipefail
need=()
command -v fio >/dev/null || need+=(fio)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dockerd >/dev/null || need+=(docker.io)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v losetup >/dev/null || need+=(mount)
# `docker-compose config` (v1, Debian's package; needs no daemon) validates what `gpu-preflight compose` writes.
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
# Vulkan build of llama.cpp on Mesa's software driver (lavapipe), for .ci/llama-cpp-vulkan.sh.
# OpenSSL headers: without them llama.cpp's CMake (vendor/cpp-httplib, LLAMA_OPENSSL) silently
# builds a llama-server that cannot fetch `-hf` repos over https from the real Hub.
for pkg in libssl-dev mesa-vulkan-drivers libvulkan-dev glslc glslang-tools spirv-headers; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "system-deps: missing ${need[*]} and not root; install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
