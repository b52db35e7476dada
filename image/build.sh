#!/usr/bin/env bash
# Builds the CPU image from the unmodified Dockerfile with podman, on a Debian machine that
# has no Docker engine and reaches no image registry (`make image`; `make image-test` checks it).
#   1. Debian's podman, runc, netavark/aardvark-dns (+ iptables, which netavark needs),
#      catatonit (kube play's pause image), debootstrap (kubectl comes with .venv).
#   2. The base, once per machine: debootstrap --variant=minbase bookworm + podman import,
#      then python-base.Containerfile: a stand-in for python:3.11-slim-bookworm.
#   3. podman build of the Dockerfile's default (CPU) target with PYTHON_IMAGE pointing at it.
#      pip in the build reaches PyPI through this machine's TLS proxy, so the machine's CA
#      bundle is mounted read-only over the base's own bundle during RUN steps only: nothing
#      of it stays in the image.
# Environment: IMAGE (tag to build, default localhost/vidtrain:test).
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="$PWD/image/containers.conf"
IMAGE=${IMAGE:-localhost/vidtrain:test}
MINBASE=localhost/vidtrain-bookworm-minbase:latest
BASE=localhost/vidtrain-python-base:3.11-bookworm
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "tools"
packages=()
for tool in podman:podman runc:runc debootstrap:debootstrap netavark:/usr/lib/podman/netavark \
            aardvark-dns:/usr/lib/podman/aardvark-dns iptables:iptables catatonit:catatonit; do
  command -v "${tool#*:}" >/dev/null || packages+=("${tool%%:*}")
done
if ((${#packages[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
podman --version

step "base image"
if ! podman image exists "$MINBASE"; then
  root=$(mktemp -d /var/tmp/vidtrain-minbase.XXXXXX)
  $SUDO debootstrap --variant=minbase bookworm "$root" >/dev/null
  $SUDO tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$MINBASE"
  $SUDO rm -rf "$root"
fi
if ! podman image exists "$BASE"; then
  podman build -q --build-arg MINBASE="$MINBASE" -f image/python-base.Containerfile -t "$BASE" image
fi

step "build $IMAGE"
start=$(date +%s)
podman build --layers --build-arg PYTHON_IMAGE="$BASE" -v "$CA_BUNDLE:$CA_BUNDLE:ro" -t "$IMAGE" .
echo "built in $(( $(date +%s) - start )) s; $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si)B"
