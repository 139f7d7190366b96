#!/usr/bin/env bash
# Builds burrowd, burrow and the static burrow-agent. Usage: build.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
flag=(); [ "$profile" = release ] && flag=(--release)
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

cargo build "${flag[@]}" -p burrowd -p burrow-cli
# The agent is PID 1 inside every sandbox, whatever its libc: it must be static.
if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  cargo build "${flag[@]}" -p burrow-agent --target x86_64-unknown-linux-musl
  agent="$target_dir/x86_64-unknown-linux-musl/$profile/burrow-agent"
else
  RUSTFLAGS="-C target-feature=+crt-static" cargo build "${flag[@]}" -p burrow-agent \
    --target x86_64-unknown-linux-gnu
  agent="$target_dir/x86_64-unknown-linux-gnu/$profile/burrow-agent"
fi
# burrowd looks for the agent next to itself.
cp -f "$agent" "$target_dir/$profile/burrow-agent.tmp" && mv -f "$target_dir/$profile/burrow-agent.tmp" "$target_dir/$profile/burrow-agent"
if readelf -l "$target_dir/$profile/burrow-agent" 2>/dev/null | grep -q "Requesting program interpreter"; then
  echo "error: burrow-agent is not static" >&2; exit 1
fi
echo "==> built ($profile) in $target_dir/$profile"
