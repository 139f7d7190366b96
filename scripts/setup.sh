#!/usr/bin/env bash
# Installs everything Burrow needs on a fresh Debian 12 host (idempotent), from Debian
# packages only, plus the Rust musl target for the static agent when rustup can add it.
set -euo pipefail

PKGS=(runc python3 curl btrfs-progs mmdebstrap nftables iproute2 util-linux tar protobuf-compiler musl-tools docker-registry skopeo
      busybox-static ca-certificates pkg-config debian-archive-keyring lxcfs)

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh must run as root (burrowd manages namespaces, cgroups and btrfs)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# btrfs needs the kernel module; on most kernels it autoloads on first mount.
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl \
    || echo "==> musl target unavailable; the agent will be built with +crt-static on the gnu target"
fi
echo "==> host ready"
