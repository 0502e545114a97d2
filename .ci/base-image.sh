#!/usr/bin/env bash
# Build gpu-preflight-base:bookworm without a registry: a debootstrap Debian 12 root filesystem
# with python3, fio, a static llama-server and llama-fit-params (from .ci/llama-cpp.sh; the run's
# dry run of the planned command uses the latter), imported into the private
# engine. The rootfs tarball is cached outside the repo, keyed by this script's content.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
export DOCKER_HOST="$("$HERE/dockerd.sh")"
TAG=gpu-preflight-base:bookworm
CACHE="${GPU_PREFLIGHT_CACHE:-/var/cache/gpu-preflight}"
KEY="$(sha256sum "$0" | cut -c1-12)"
TARBALL="$CACHE/rootfs-bookworm-$KEY.tar"
if docker image inspect "$TAG" >/dev/null 2>&1 && [[ -f "$TARBALL" ]]; then echo "$TAG"; exit 0; fi
LLAMA_BIN="$("$HERE/llama-cpp.sh")"
if [[ ! -f "$TARBALL" ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,fio,ca-certificates,libgomp1,curl \
    bookworm "$work/rootfs" "$MIRROR" >&2
  mkdir -p "$work/rootfs/usr/local/lib/llama.cpp"
  cp "$LLAMA_BIN/llama-server" "$LLAMA_BIN/llama-fit-params" "$work/rootfs/usr/local/lib/llama.cpp/"
  ln -sf /usr/local/lib/llama.cpp/llama-server "$work/rootfs/usr/local/bin/llama-server"
  # Outbound HTTPS here is re-signed by a local CA: pip inside the image build needs it.
  cp /etc/ssl/certs/ca-certificates.crt "$work/rootfs/etc/ssl/certs/host-ca-bundle.crt"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  mkdir -p "$CACHE"
  tar -C "$work/rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-bundle.crt' \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$TAG" >&2
echo "$TAG"
