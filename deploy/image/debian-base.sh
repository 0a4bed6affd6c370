#!/usr/bin/env bash
# Make the Dockerfile's base image (debian:bookworm-slim) locally from Debian packages,
# for machines that reach Debian's mirror but no image registry. Elsewhere the Dockerfile
# pulls the public image and this script is not needed.
#   deploy/image/debian-base.sh [TAG]    (needs mmdebstrap and podman; run as root)
# Like the official slim image: the minbase variant without manuals, docs and locales.
set -euo pipefail
tag="${1:-docker.io/library/debian:bookworm-slim}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tar="$(mktemp --suffix=.tar)"
trap 'rm -f "$tar"' EXIT
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --aptopt='Acquire::Languages "none"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$tar" "$mirror"
podman import --quiet --change 'CMD ["bash"]' "$tar" "$tag" >/dev/null
echo "$tag"
