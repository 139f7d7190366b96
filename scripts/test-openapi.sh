#!/usr/bin/env bash
# The OpenAPI document against a validator and against a real burrowd:
#   1. openapi-spec-validator on crates/burrow-api/openapi.yaml;
#   2. a fresh ephemeral burrowd (container engine, its own data dir, socket, subnet; TCP on a
#      free loopback port), fuzzed by schemathesis through its served /openapi.yaml over TCP
#      with its admin token, default checks, a bounded number of examples per operation.
# Exits non-zero on any failure. Pinned tools: tests/openapi/requirements.txt, installed in a
# venv (default /var/cache/burrow/venv-openapi, rebuilt when the requirements change).
# Binaries: $BURROW_BIN_DIR, else $CARGO_TARGET_DIR/debug (scripts/build.sh debug).
# Knobs: OPENAPI_MAX_EXAMPLES (default 50), OPENAPI_SEED (default fixed: reproducible runs),
# OPENAPI_LOCAL_SPEC=1 (fuzz with the document in the tree instead of the one the daemon was
# built with: for editing it without a rebuild); arguments are passed on to `st run`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin_dir=${BURROW_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/debug}
venv=${BURROW_OPENAPI_VENV:-/var/cache/burrow/venv-openapi}
req=$root/tests/openapi/requirements.txt
spec=$root/crates/burrow-api/openapi.yaml
max_examples=${OPENAPI_MAX_EXAMPLES:-50}
seed=${OPENAPI_SEED:-20261205}

# --- tools -----------------------------------------------------------------------------
stamp=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
  echo "==> venv $venv (pinned: $req)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-virtualenv -r "$req"
  echo "$stamp" > "$venv/.requirements.sha256"
fi

# --- 1. the document is valid OpenAPI ----------------------------------------------------
echo "==> openapi-spec-validator"
"$venv/bin/openapi-spec-validator" "$spec"

# --- 2. a daemon of our own ----------------------------------------------------------------
[ -x "$bin_dir/burrowd" ] || { echo "error: no burrowd in $bin_dir (run scripts/build.sh debug)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/burrow-openapi-XXXXXX)
chmod 711 "$work" # the sandboxes' root (an unprivileged host uid) traverses to its tree
pid=
cleanup() {
  local rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" # ephemeral: destroys its sandboxes, releases its pool, removes its data dir
    wait "$pid" || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$work/burrowd.log" ]; then
    echo "---- burrowd log (last 40 lines) ----" >&2
    tail -n 40 "$work/burrowd.log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# A /24 no interface of this host has an address in (test daemons use 10.100-187.x).
subnet=
in_use=$(ip -o -4 addr show)
for third in $(seq 0 255); do
  if ! grep -q " inet 10\.99\.$third\." <<<"$in_use"; then subnet=10.99.$third.0/24; break; fi
done
[ -n "$subnet" ] || { echo "error: no free /24 in 10.99.0.0/16" >&2; exit 1; }

echo "==> burrowd ($bin_dir/burrowd, subnet $subnet)"
# Sandbox traffic may only go to 198.18.0.0/15 (nothing there) and DNS to a dead port: nothing
# a fuzzed request does reaches a real network. The vm engine is off: creates stay quick.
BURROW_LOG=info BURROW_LXCFS_DIR="$work/lxcfs" "$bin_dir/burrowd" \
  --data-dir "$work/data" --socket "$work/burrowd.sock" --listen 127.0.0.1:0 \
  --pool-size-gb 16 --ephemeral --subnet "$subnet" --uplink-only 198.18.0.0/15 \
  --dns-upstream 127.0.0.1:9 --vm off --default-engine container \
  </dev/null >"$work/burrowd.log" 2>&1 &
pid=$!
# burrowd.addr is written when TCP is bound; /healthz answers once the API serves (the very
# first daemon on a host builds the base image first: up to minutes).
addr=
for _ in $(seq 1 6000); do
  kill -0 "$pid" 2>/dev/null || { echo "error: burrowd exited during start" >&2; exit 1; }
  if [ -z "$addr" ] && [ -s "$work/data/burrowd.addr" ]; then addr=$(cat "$work/data/burrowd.addr"); fi
  if [ -n "$addr" ] && curl -fsS -o /dev/null "http://$addr/healthz" 2>/dev/null; then break; fi
  sleep 0.1
done
curl -fsS -o /dev/null "http://$addr/healthz" || { echo "error: burrowd did not become ready" >&2; exit 1; }
token=$(cat "$work/data/admin.token")
# The sandbox schemathesis.toml points the in-sandbox operations at.
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  -d '{"name": "st-fixture", "memory_mb": 256}' "http://$addr/v1/sandboxes"

# --- 3. schemathesis against the served document ------------------------------------------
echo "==> schemathesis (max $max_examples examples per operation, seed $seed) against http://$addr"
cd "$work" # its report dir and example database stay in the work dir
start=$SECONDS
# One worker: with two, hypothesis describing its strategies runs ast.parse in two threads,
# which CPython 3.11 can fail with "AST constructor recursion depth mismatch".
location=("http://$addr/openapi.yaml")
[ "${OPENAPI_LOCAL_SPEC:-0}" = 1 ] && location=("$spec" --url "http://$addr")
PYTHONPATH="$root/tests/openapi" "$venv/bin/st" --config-file "$root/tests/openapi/schemathesis.toml" \
  run "${location[@]}" \
  --header "Authorization: Bearer $token" \
  --max-examples "$max_examples" --seed "$seed" --workers 1 \
  --generation-database none --no-color \
  "$@"
echo "==> schemathesis passed in $((SECONDS - start)) s"
