#!/usr/bin/env bash
# Build the images (operator, hub, mockslurm, proxy) with buildah, daemonless, as `make images`.
#
#   scripts/build-images.sh                  # from the pinned upstream base (docker/*.Dockerfile ARG)
#   BASE=local scripts/build-images.sh       # from a Debian base built here by debootstrap (no registry)
#   IMAGE_TAG=e2e OUT=/dir scripts/build-images.sh   # also write OUT/<image>.tar (docker-archive,
#                                                     # for `ctr -n k8s.io images import`)
#
# CA_BUNDLE (default: the host's bundle) is handed to each build as the secret "ca-bundle", so
# package downloads trust a proxy that intercepts TLS; it never ends up in an image. Rebuilds reuse
# buildah's layer cache; the local base is built once per package list.
# Needs buildah; BASE=local also debootstrap.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
tag=${IMAGE_TAG:-0.1.0}
base=${BASE:-upstream}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
images=(${IMAGES:-operator hub mockslurm proxy})
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[images] %s\n' "$*" >&2; }
command -v buildah >/dev/null || { log "buildah is not installed (apt-get install buildah)"; exit 1; }

# The local base: Debian bookworm minbase with the interpreter the Dockerfiles expect on PATH as
# `python` (python:3.11-slim-bookworm's role), nothing else.
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
build_local_base() {
  local hash name tarball
  hash=$(printf '%s' "$BASE_PACKAGES" | sha256sum | cut -c1-12)
  name="localhost/bbp-notebooks/base:bookworm-$hash"
  if buildah inspect --type image "$name" >/dev/null 2>&1; then
    printf '%s\n' "$name"
    return
  fi
  # The root file system is cached outside the repo (like the Go tools), the image made from it.
  tarball="${BBP_CACHE_DIR:-$HOME/.cache/bbp-notebooks}/base/bookworm-$hash.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
    local rootfs; rootfs=$(mktemp -d)
    log "debootstrap bookworm ($BASE_PACKAGES) -> $tarball"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" >&2
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    mkdir -p "$(dirname "$tarball")"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  local ctr; ctr=$(buildah from scratch)
  buildah add "$ctr" "$tarball" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  buildah commit --quiet "$ctr" "$name" >/dev/null
  buildah rm "$ctr" >/dev/null
  printf '%s\n' "$name"
}

build_args=()
if [[ "$base" == local ]]; then
  base_image=$(build_local_base)
  build_args+=(--build-arg "PYTHON_IMAGE=$base_image")
fi
secret=()
[[ -r "$ca_bundle" ]] && secret=(--secret "id=ca-bundle,src=$ca_bundle")

for image in "${images[@]}"; do
  start=$SECONDS
  log "building bbp-notebooks/$image:$tag"
  buildah bud --isolation chroot --layers --quiet "${build_args[@]}" "${secret[@]}" \
    --ignorefile "$root/docker/$image.Dockerfile.dockerignore" \
    --file "$root/docker/$image.Dockerfile" --tag "localhost/bbp-notebooks/$image:$tag" "$root" >&2
  if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    rm -f "$OUT/$image.tar"
    buildah push --quiet "localhost/bbp-notebooks/$image:$tag" \
      "docker-archive:$OUT/$image.tar:docker.io/bbp-notebooks/$image:$tag" >&2
  fi
  log "bbp-notebooks/$image:$tag in $((SECONDS - start)) s"
done
