#!/usr/bin/env bash
# Start a private Docker engine for the end-to-end tests (its own socket and data root, vfs
# storage, no iptables, no bridge: containers use the host network). Idempotent. Prints DOCKER_HOST.
set -euo pipefail
SOCK=/var/run/gpu-preflight-docker.sock
ROOT=/var/lib/gpu-preflight-docker
export DOCKER_HOST="unix://$SOCK"
if ! command -v dockerd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p "$ROOT"
  nohup dockerd --host "$DOCKER_HOST" --data-root "$ROOT" --exec-root /var/run/gpu-preflight-docker \
    --pidfile /var/run/gpu-preflight-docker.pid --storage-driver=vfs --iptables=false --ip6tables=false \
    --bridge=none >/var/log/gpu-preflight-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -20 /var/log/gpu-preflight-dockerd.log >&2; exit 1; }
fi
echo "$DOCKER_HOST"
