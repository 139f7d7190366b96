#!/usr/bin/env bash
# Sets up the host, builds, checks formatting and lints, and runs the whole test suite
# against real runc, btrfs and SQLite. Exit status is the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Reuse compiled dependencies between runs on the same machine.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/burrow/target}
export CARGO_TERM_COLOR=never
# Tests that find a prerequisite missing must fail, not skip.
export BURROW_TEST_STRICT=1

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> build"
bash scripts/build.sh debug
echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "==> tests"
status=0
cargo test --workspace --no-fail-fast -- --test-threads=4 2>&1 | tee /tmp/burrow-test.log || status=$?
# The SDKs, MCP and the API document, each against real daemons of this build.
suites=()
for suite in scripts/test-python-sdk.sh scripts/test-typescript-sdk.sh scripts/test-mcp.sh scripts/test-openapi.sh; do
  [ -f "$suite" ] || continue
  start=$SECONDS
  if bash "$suite"; then
    suites+=("$(printf '%8.1f s  %s: ok' $((SECONDS - start)) "$suite")")
  else
    suites+=("$(printf '%8.1f s  %s: FAILED' $((SECONDS - start)) "$suite")")
    status=1
  fi
done
bash scripts/cleanup-test-leftovers.sh || true
passed=$(grep -Eo '^test result: .*' /tmp/burrow-test.log | awk '{p+=$4; f+=$6} END {print p+0}')
failed=$(grep -Eo '^test result: .*' /tmp/burrow-test.log | awk '{p+=$4; f+=$6} END {print f+0}')
echo "$passed passed, $failed failed"
# The ten slowest test binaries and the total, so growth is seen.
times=$(awk '/^ *Running /{bin=$NF; sub(/^.*deps\//, "", bin); sub(/-[0-9a-f]+\)$/, "", bin); bin=bin " (" $2 ")"}
  /^ *Doc-tests /{bin="doc-tests " $2}
  /^test result:/{t=$NF; sub(/s$/, "", t); if (bin != "") printf "%8.1f s  %s\n", t, bin; bin=""}' /tmp/burrow-test.log)
echo "==> slowest test binaries"
echo "$times" | sort -rn | head -10
echo "$times" | awk '{s+=$1} END {printf "%8.1f s  total in test binaries\n", s}'
echo "==> other suites"
printf '%s\n' "${suites[@]}"
exit $status
