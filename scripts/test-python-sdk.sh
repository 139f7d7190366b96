#!/usr/bin/env bash
# The Python SDK (sdk/python): a venv with the SDK and its pinned test dependencies, then
# mypy --strict and the tests, which start a real burrowd (root; binaries from BURROW_BIN_DIR,
# else $CARGO_TARGET_DIR/debug, else /var/cache/burrow/target/debug). Exit status is non-zero
# when either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${BURROW_PYSDK_VENV:-/var/cache/burrow/venv-pysdk}
python=${PYTHON:-python3}

echo "==> python SDK: venv $venv"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r sdk/python/requirements-test.txt
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e sdk/python

# A missing prerequisite (root, burrowd) fails rather than skips.
export BURROW_TEST_STRICT=${BURROW_TEST_STRICT:-1}
cd sdk/python
echo "==> python SDK: mypy --strict"
"$venv/bin/python" -m mypy --strict src tests bench.py ../../examples/python
echo "==> python SDK: pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 tests
