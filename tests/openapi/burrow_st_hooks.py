"""Schemathesis hooks for scripts/test-openapi.sh (loaded through `hooks` in schemathesis.toml).

Tar bodies (image build and import contexts, archive uploads) are sent as the raw bytes
schemathesis generates for `format: binary`, as it sends application/octet-stream.
"""

import schemathesis

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
