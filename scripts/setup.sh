#!/usr/bin/env bash
# Installs everything Burrow needs on a fresh Debian 12 host (idempotent), from Debian
# packages only, plus the Rust musl target for the static agent when rustup can add it.
set -euo pipefail

PKGS=(runc python3 curl btrfs-progs mmdebstrap nftables iproute2 util-linux tar protobuf-compiler musl-tools docker-registry skopeo
      busybox-static ca-certificates pkg-config debian-archive-keyring dpkg-dev git lxcfs e2fsprogs xz-utils lz4 zstd
      lxc)

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

# lxc is the peer `burrow bench --peers lxc` measures (docs/benchmarks.md); its containers there
# get no network or a veth linked to nothing. Debian's lxc-net would add an lxcbr0 bridge with
# dnsmasq and NAT rules to the host, which Burrow's tests must not see: it is stopped (while its
# config still says it runs, so that its stop removes the bridge) and kept off.
if [ -f /etc/default/lxc-net ]; then
  if [ -d /run/systemd/system ] && systemctl is-active --quiet lxc-net.service; then
    systemctl stop lxc-net.service
  fi
  if grep -q '^USE_LXC_BRIDGE=' /etc/default/lxc-net; then
    sed -i 's/^USE_LXC_BRIDGE=.*/USE_LXC_BRIDGE="false"/' /etc/default/lxc-net
  else
    echo 'USE_LXC_BRIDGE="false"' >> /etc/default/lxc-net
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --quiet lxc-net.service 2>/dev/null || true
  fi
fi

# The vm engine: QEMU from Debian 12. qemu-system-x86 7.2 Breaks a newer qemu-utils (e.g. one
# from bookworm-backports), so qemu-utils is moved to the same Debian 12 version in the same
# transaction. Then the guest kernel kit (scripts/guest-kit.sh: Debian's cloud kernel, unpacked,
# never installed on the host).
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed"; then
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  if [ -z "$qemu_version" ] || [ "$qemu_version" = "(none)" ]; then
    apt-get update -q
    qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  fi
  echo "==> installing qemu-system-x86 $qemu_version"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
    "qemu-system-x86=$qemu_version" "qemu-utils=$qemu_version"
fi
bash "$(dirname "$0")/guest-kit.sh"

# btrfs needs the kernel module; on most kernels it autoloads on first mount.
grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null || true

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl \
    || echo "==> musl target unavailable; the agent will be built with +crt-static on the gnu target"
fi
# A local Debian repository for the real-workload tests (crates/burrowd/tests/workloads.rs):
# the .debs of what agents install all day (wget, pip, node + npm) and libgbm1 (its file name
# holds `bm1_`), and the packages of the `dev` image (images/dev/Burrowfile, built offline by
# crates/burrowd/tests/dev_image.rs: build-essential, venv, ripgrep, jq, sudo, ...; about
# 92 MB more, 153 MB in all), with every dependency a bare system lacks, indexed for apt. The tests serve it
# from their fake internet; nothing is fetched while they run. Resolved with a private apt
# state (Debian's own sources, an empty dpkg status), so the host's own packages and extra
# repositories change nothing. Rebuilt only when the package list changes.
DEB_REPO=/var/cache/burrow/debian-repo
DEB_WANT="wget python3-pip nodejs npm libgbm1 build-essential python3-venv ripgrep jq sudo less openssh-client git vim-tiny ca-certificates"
if [ "$(cat "$DEB_REPO/.packages" 2>/dev/null)" != "$DEB_WANT" ]; then
  echo "==> downloading .debs for the workload tests: $DEB_WANT"
  work=$(mktemp -d)
  chmod 755 "$work"  # apt downloads as _apt
  mkdir -p "$work/sources" "$work/state/lists/partial" "$work/cache/archives/partial"
  : > "$work/status"
  cat > "$work/sources/debian.sources" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/sources"
               -o "Dir::State=$work/state" -o "Dir::State::status=$work/status" -o "Dir::Cache=$work/cache"
               -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
               -o APT::Install-Recommends=false -o APT::Architecture=amd64)
  apt-get "${apt_private[@]}" -q update
  # shellcheck disable=SC2086
  apt-get "${apt_private[@]}" -q -y --download-only install $DEB_WANT
  rm -rf "$DEB_REPO.new"
  mkdir -p "$DEB_REPO.new/pool/main" "$DEB_REPO.new/dists/bookworm/main/binary-amd64"
  mv "$work"/cache/archives/*.deb "$DEB_REPO.new/pool/main/"
  (cd "$DEB_REPO.new" && dpkg-scanpackages -m pool/main /dev/null 2>/dev/null > dists/bookworm/main/binary-amd64/Packages)
  gzip -9kn "$DEB_REPO.new/dists/bookworm/main/binary-amd64/Packages"
  (
    cd "$DEB_REPO.new/dists/bookworm"
    echo "Origin: burrow-tests"
    echo "Suite: bookworm"
    echo "Codename: bookworm"
    echo "Architectures: amd64"
    echo "Components: main"
    echo "Date: $(date -Ru)"
    echo "SHA256:"
    for f in main/binary-amd64/Packages main/binary-amd64/Packages.gz; do
      echo " $(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"
    done
  ) > "$DEB_REPO.new/Release.tmp"
  mv "$DEB_REPO.new/Release.tmp" "$DEB_REPO.new/dists/bookworm/Release"
  echo "$DEB_WANT" > "$DEB_REPO.new/.packages"
  rm -rf "$DEB_REPO" "$work"
  mv "$DEB_REPO.new" "$DEB_REPO"
fi

echo "==> host ready"
