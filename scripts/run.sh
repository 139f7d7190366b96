#!/usr/bin/env bash
# Quick start: set up the host, build, start burrowd with its embedded defaults, create a
# burrow from the base image and run a command in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh release
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

install -D -m 0755 "$target_dir/release/burrowd" /usr/local/bin/burrowd
install -D -m 0755 "$target_dir/release/burrow" /usr/local/bin/burrow
install -D -m 0755 "$target_dir/release/burrow-agent" /usr/local/lib/burrow/burrow-agent

mkdir -p /var/log/burrow
if ! burrow version >/dev/null 2>&1; then
  echo "==> starting burrowd (log: /var/log/burrow/burrowd.log)"
  nohup /usr/local/bin/burrowd --agent-bin /usr/local/lib/burrow/burrow-agent \
    >>/var/log/burrow/burrowd.log 2>&1 </dev/null &
  for _ in $(seq 1 600); do
    burrow version >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
burrow version
echo "==> waiting for the base image (built once per host with mmdebstrap; ~1 min the first time)"
burrow images --wait base

name=demo-$(date +%s)
start=$(date +%s%N)
burrow create "$name"
burrow exec "$name" -- python3 -c 'import platform; print("hello from", platform.node(), "- 6*7 =", 6*7)'
end=$(date +%s%N)
echo "==> create + first exec took $(( (end - start) / 1000000 )) ms (including two CLI process starts)"
burrow ls
echo "==> try: burrow exec -t -i $name -- bash    |    burrow rm $name"
