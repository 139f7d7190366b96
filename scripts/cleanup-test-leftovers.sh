#!/usr/bin/env bash
# Removes what a crashed or killed test run may have left behind: test daemons, their runc
# containers, mounts (their lxcfs too, which then exits) and loop devices. Touches only /var/tmp/burrow-test-* data dirs.
set -uo pipefail
pkill -TERM -f 'burrowd --data-dir /var/tmp/burrow-test-' 2>/dev/null || true
# QEMU of their VMs (each names its sandbox with `-name burrow-sb-…`; its run dir is theirs).
for pid in $(pgrep -f '^qemu-system-x86_64 -name burrow-sb-' 2>/dev/null); do
  grep -qz '/var/tmp/burrow-test-' "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
done
for root in /var/tmp/burrow-test-*/data/runc; do
  [ -d "$root" ] || continue
  for id in $(runc --root "$root" list -q 2>/dev/null); do
    runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
  done
done
for m in $(awk '$2 ~ /^\/var\/tmp\/burrow-test-/ {print $2}' /proc/mounts | sort -r); do
  umount -l "$m" 2>/dev/null || true
done
for l in $(losetup -nO NAME,BACK-FILE 2>/dev/null | awk '$2 ~ /burrow-test-/ {print $1}'); do
  losetup -d "$l" 2>/dev/null || true
done
rm -rf /var/tmp/burrow-test-* 2>/dev/null || true
# Fake-internet namespaces of the network tests (deleting one removes both ends of its veth).
for ns in $(ls /run/netns 2>/dev/null | grep '^bwt-'); do
  ip netns del "$ns" 2>/dev/null || true
done
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^bwti'); do
  ip link del "$l" 2>/dev/null || true
done
