#!/usr/bin/env bash
# The TypeScript SDK (sdk/typescript): install its packages from the lockfile, build and
# type-check it with tsc, then run its tests and the docs test (every example in
# examples/typescript and every TS/JS block of its README) against real burrowd daemons the
# tests start. Needs root, Node >= 20 and npm, and the built binaries: BURROW_BIN_DIR, else
# $CARGO_TARGET_DIR/debug, else /var/cache/burrow/target/debug. Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk="$root/sdk/typescript"
examples="$root/examples/typescript"

fail() {
  echo "test-typescript-sdk: $*" >&2
  exit 1
}

command -v node >/dev/null || fail "node is not installed (Node >= 20 is needed)"
command -v npm >/dev/null || fail "npm is not installed"
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || fail "Node $(node --version) is too old: the SDK needs Node >= 20"
[ "$(id -u)" -eq 0 ] || fail "the tests start burrowd, which needs root"

bin_dir="${BURROW_BIN_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug}}"
bin_dir="${bin_dir:-/var/cache/burrow/target/debug}"
[ -x "$bin_dir/burrowd" ] || fail "no burrowd in $bin_dir: build it (bash scripts/build.sh debug) or set BURROW_BIN_DIR"
export BURROW_BIN_DIR="$bin_dir"

# npm's cache next to the other caches of the build, so CI reuses it between runs.
export npm_config_cache="${npm_config_cache:-/var/cache/burrow/npm}"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
mkdir -p "$npm_config_cache"

echo "== npm ci (sdk/typescript)"
(cd "$sdk" && npm ci --prefer-offline)
echo "== tsc: build and type check (strict)"
(cd "$sdk" && npm run --silent build)
echo "== npm ci (examples/typescript)"
(cd "$examples" && npm ci --prefer-offline)
echo "== tsc: the examples type-check against the SDK's .d.ts"
(cd "$sdk" && npm run --silent typecheck)

echo "== tests against real daemons (burrowd from $BURROW_BIN_DIR)"
cd "$sdk"
node --test --test-concurrency=1 test/*.test.mjs
