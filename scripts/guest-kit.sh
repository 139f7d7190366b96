#!/usr/bin/env bash
# Installs the vm engine's guest kernel kit into /usr/local/lib/burrow/guest (idempotent):
#   vmlinuz          the bzImage of Debian's linux-image-cloud-amd64
#   vmlinux          the same kernel uncompressed (ELF): QEMU boots it through its PVH entry,
#                    skipping the decompression (about 0.5 s under TCG); optional
#   kernel.release   its release (e.g. 6.1.0-57-cloud-amd64)
#   modules/*.ko     only the modules the guest needs that are not built in, decompressed
#   modules/load.order  those modules, one file name a line, dependencies first
# The kernel package is downloaded (apt-get download) and unpacked into a temporary
# directory; it is never installed on the host. Skipped when the candidate release is
# already installed. Run as root (called by setup.sh).
set -euo pipefail

GUEST_DIR=${BURROW_GUEST_DIR:-/usr/local/lib/burrow/guest}
# What the agent as guest init needs: virtio-mmio transport (microvm), the root disk, the
# agent channel (virtio-serial), the network and ext4 for the root; when the kernel has
# them, the VM generation id (a forked/restored guest reseeds its RNG) and virtio-rng.
WANT_MODULES=(virtio_mmio virtio_blk virtio_net virtio_console ext4)
OPTIONAL_MODULES=(vmgenid virtio_rng)

meta=linux-image-cloud-amd64
pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -q
  pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "guest-kit: cannot resolve $meta to a kernel package" >&2; exit 1; }
release=${pkg#linux-image-}

if [ "$(cat "$GUEST_DIR/kernel.release" 2>/dev/null)" = "$release" ] \
   && [ -s "$GUEST_DIR/vmlinuz" ] && [ -s "$GUEST_DIR/modules/load.order" ] \
   && { [ -s "$GUEST_DIR/vmlinux" ] || [ -e "$GUEST_DIR/vmlinux.none" ]; }; then
  echo "==> guest kernel $release already installed in $GUEST_DIR"
  exit 0
fi

echo "==> installing guest kernel $release into $GUEST_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work" # apt downloads as _apt
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg")
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/root"

moddir="$work/root/lib/modules/$release"
[ -d "$moddir" ] || { echo "guest-kit: $pkg has no lib/modules/$release" >&2; exit 1; }
vmlinuz="$work/root/boot/vmlinuz-$release"
[ -f "$vmlinuz" ] || { echo "guest-kit: $pkg has no boot/vmlinuz-$release" >&2; exit 1; }
# The package ships no modules.dep (its postinst runs depmod, and the host need not have
# kmod), so dependencies come from each module's own .modinfo section (`depends=a,b`).
declare -A path_of=()
while IFS= read -r f; do
  n=${f##*/}; n=${n%%.ko*}; path_of[${n//-/_}]=$f
done < <(cd "$moddir" && find kernel -name '*.ko*')
modinfo_depends() { # path -> dependency names, space separated
  local f="$moddir/$1"
  case "$f" in
    *.xz) xz -dc "$f" ;; *.zst) zstd -qdc "$f" ;; *.gz) gzip -dc "$f" ;; *) cat "$f" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -1 | tr ',' ' '
}
builtin() { grep -qE "/(${1}|${1//_/-})\.ko\$" "$moddir/modules.builtin"; }
declare -A seen=()
order=()
visit() { # module name (with _), depth first so dependencies come first
  local name=${1//-/_} dep
  [ -n "${seen[$name]:-}" ] && return
  seen[$name]=1
  for dep in $(modinfo_depends "${path_of[$name]}"); do
    visit "$dep"
  done
  order+=("${path_of[$name]}")
}
for m in "${WANT_MODULES[@]}" "${OPTIONAL_MODULES[@]}"; do
  if [ -n "${path_of[$m]:-}" ]; then
    visit "$m"
  elif builtin "$m"; then
    echo "    $m: built in"
  elif [[ " ${OPTIONAL_MODULES[*]} " == *" $m "* ]]; then
    echo "    $m: not in this kernel (optional)"
  else
    echo "guest-kit: module $m is neither a module nor built into $release" >&2
    exit 1
  fi
done

new="$GUEST_DIR.new"
rm -rf "$new"
mkdir -p "$new/modules"
install -m 0644 "$vmlinuz" "$new/vmlinuz"
: > "$new/modules/load.order"
for path in "${order[@]}"; do
  base=${path##*/}
  case "$base" in
    *.ko.xz) xz -dc "$moddir/$path" > "$new/modules/${base%.xz}"; base=${base%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$path" > "$new/modules/${base%.zst}"; base=${base%.zst} ;;
    *.ko.gz) gzip -dc "$moddir/$path" > "$new/modules/${base%.gz}"; base=${base%.gz} ;;
    *.ko) cp "$moddir/$path" "$new/modules/$base" ;;
  esac
  echo "$base" >> "$new/modules/load.order"
  echo "    module $base"
done
# The uncompressed kernel, cut out of the bzImage the way the kernel's
# scripts/extract-vmlinux does (the payload starts at its compressor's magic).
extract_vmlinux() {
  local magic tool off
  for pair in '\x02\x21\x4c\x18:lz4 -dc' '\x28\xb5\x2f\xfd:zstd -qdc' '\xfd\x37\x7a\x58\x5a\x00:xz -dc' '\x1f\x8b\x08:gzip -dc'; do
    magic=${pair%%:*}; tool=${pair#*:}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -aboP "$magic" "$vmlinuz" | cut -d: -f1); do
      # shellcheck disable=SC2086
      tail -c +$((off + 1)) "$vmlinuz" | $tool > "$new/vmlinux.tmp" 2>/dev/null || true
      if [ "$(head -c 4 "$new/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        mv "$new/vmlinux.tmp" "$new/vmlinux"
        return 0
      fi
    done
  done
  rm -f "$new/vmlinux.tmp"
  return 1
}
if extract_vmlinux; then
  echo "    vmlinux: uncompressed kernel for PVH boot"
else
  echo "    vmlinux: could not extract the uncompressed kernel (QEMU will boot vmlinuz)"
  : > "$new/vmlinux.none"
fi
echo "$release" > "$new/kernel.release"
rm -rf "$GUEST_DIR.old"
[ -e "$GUEST_DIR" ] && mv "$GUEST_DIR" "$GUEST_DIR.old"
mv "$new" "$GUEST_DIR"
rm -rf "$GUEST_DIR.old"
echo "==> guest kernel $release installed"
