#!/usr/bin/env bash
# Build the steelseg image with podman, from a Debian base made here (no registry is needed or used):
#   deploy/image/make-image.sh [onnx|torch] [TAG]      (make image)
# 1. steelseg-base:bookworm: `debootstrap --variant=minbase` (python3, venv, CA certificates) imported into podman,
#    once; the Dockerfile names it and the build never pulls (--pull=never).
# 2. the Dockerfile's target (onnx: ONNX Runtime and OpenVINO bundles, no PyTorch; torch: PyTorch bundles too),
#    vfs storage and chroot isolation (work inside containers and CI machines), the host's CA bundle mounted for pip.
# 3. a smoke run: --help, predict of the bundle given in SMOKE_BUNDLE on mounted images, serve answering /health.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${1:-onnx}
TAG=${2:-steelseg:$TARGET}
BASE=localhost/steelseg-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
for tool in podman debootstrap; do
  command -v $tool >/dev/null || { echo "error: $tool is not installed (apt-get install podman buildah debootstrap)" >&2; exit 2; }
done
if ! podman image exists $BASE; then
  root=$(mktemp -d /tmp/steelseg-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "base: debootstrap bookworm (minbase) into $root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - $BASE >/dev/null
fi
start=$(date +%s)
podman build --pull=never --target "$TARGET" --build-arg BASE=$BASE -v "$CA:/etc/ssl/certs/ca-certificates.crt:ro" \
  -t "$TAG" -f Dockerfile .
echo "built $TAG in $(( $(date +%s) - start )) s: $(podman image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

# ---- smoke run: --help, predict on mounted images (SMOKE_BUNDLE: an ONNX / OpenVINO bundle), serve's /health ----
RUN=(podman run --rm)
if ! "${RUN[@]}" "$TAG" --help >/dev/null 2>&1; then
  # nested or cgroup-v1 machines: crun cannot raise rlimits or use hybrid cgroups; runc with the host's limits can
  RUN=(podman run --rm --runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
  "${RUN[@]}" "$TAG" --help >/dev/null || { echo "error: $TAG does not run (podman run $TAG --help)" >&2; exit 1; }
  echo "note: ran with ${RUN[*]:3} (this machine's crun cannot set the container's rlimits)"
fi
echo "smoke: steelseg --help runs as $("${RUN[@]}" --entrypoint id "$TAG" -un 2>/dev/null)"
if [ -n "${SMOKE_BUNDLE:-}" ]; then
  work=$(mktemp -d /tmp/steelseg-smoke.XXXXXX)
  "${PY:-python3}" - "$work/images" <<'PY'
import sys, pathlib, numpy as np
from PIL import Image
out = pathlib.Path(sys.argv[1]); out.mkdir(parents=True)
rng = np.random.default_rng(0)
for k in range(3):
    Image.fromarray(rng.integers(0, 255, (256, 1600), np.uint8)).save(out / f"s{k}.png")
PY
  mkdir -p "$work/out" && chmod 777 "$work/out"
  "${RUN[@]}" -v "$(realpath "$SMOKE_BUNDLE")":/bundle:ro -v "$work/images":/images:ro -v "$work/out":/out "$TAG" \
    predict /bundle /images --out /out
  test -s "$work/out/submission.csv" || { echo "error: predict in the image wrote no submission" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cid=$("${RUN[@]:0:2}" -d "${RUN[@]:3}" --network host -v "$(realpath "$SMOKE_BUNDLE")":/bundle:ro "$TAG" \
        serve /bundle --host 127.0.0.1 --port "$port" 2>/dev/null)
  ok=""
  for _ in $(seq 1 90); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then ok=1; break; fi
    sleep 1
  done
  podman rm -f "$cid" >/dev/null 2>&1 || true
  rm -rf "$work"
  [ -n "$ok" ] || { echo "error: serve in the image never answered /health on port $port" >&2; exit 1; }
  echo "smoke: predict wrote a submission, serve answered /health from the host"
fi
