#!/usr/bin/env bash
# The MCP server's tests, driven by the official Python MCP SDK (PyPI `mcp`) over stdio
# (`burrow mcp`) and Streamable HTTP (`POST /mcp`), against a real burrowd the tests start.
# Builds nothing: uses $BURROW_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug
# (run `bash scripts/build.sh debug` first). Needs root (burrowd) and python3 with venv.
# Extra arguments go to pytest (e.g. -k scoped).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${BURROW_MCP_VENV:-/var/cache/burrow/venv-mcp}
req=tests/mcp/requirements.txt
bin_dir=${BURROW_BIN_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/debug}

for b in burrowd burrow burrow-agent; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "error: $bin_dir/$b is missing: run 'bash scripts/build.sh debug' (or set BURROW_BIN_DIR)" >&2
    exit 1
  fi
done

# The venv is reinstalled when the pinned requirements change.
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$req"
  echo "$want" > "$stamp"
fi

export BURROW_BIN_DIR=$bin_dir
echo "==> MCP tests (burrow binaries from $bin_dir)"
exec "$venv/bin/python" -m pytest tests/mcp -p no:cacheprovider -q "$@"
