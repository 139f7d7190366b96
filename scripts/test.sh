#!/usr/bin/env bash
# Sets up the host, builds, checks formatting, and runs every test job (the test binaries,
# the doc-tests, clippy, the SDK, MCP and OpenAPI suites) in lanes side by side: see
# scripts/test-jobs.sh and docs/testing.md. Exit status is the suite's.
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
status=0
bash scripts/test-jobs.sh || status=$?
# Where CI has always kept the whole output.
cp "${BURROW_TEST_LOGS:-/tmp/burrow-test}/all.log" /tmp/burrow-test.log 2>/dev/null || true
bash scripts/cleanup-test-leftovers.sh || true
exit $status
