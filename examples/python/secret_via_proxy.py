"""A secret used through the credential proxy.

The sandbox never holds the secret: its environment has a placeholder (a macaroon bound to
this sandbox, this secret and the secret's hosts). burrowd's egress proxy swaps in the real
value on HTTPS requests to those hosts only, and masks it in what comes back.

    UPSTREAM=https://api.github.com/user SECRET_VALUE="$GITHUB_TOKEN" python3 secret_via_proxy.py

(The SDK's tests point UPSTREAM and ELSEWHERE at a fake upstream in a network namespace.)
"""

import json
import os
import shlex
import uuid
from urllib.parse import urlsplit

from burrow import Burrow

upstream = os.environ.get("UPSTREAM", "https://api.github.com/user")
elsewhere = os.environ.get("ELSEWHERE", "https://example.com/")  # a host the secret is not for
value = os.environ["SECRET_VALUE"]
host = urlsplit(upstream).hostname or ""

with Burrow() as bw:
    secret = bw.secrets.create(f"api-{uuid.uuid4().hex[:6]}", value, hosts=[host],
                               header="Authorization", format="token %s")
    try:
        with bw.create("secret-demo") as sb:
            sb.attach_secret(secret.name, "API_TOKEN")
            placeholder = sb.run('printf %s "$API_TOKEN"').stdout
            print("inside, API_TOKEN is a placeholder:", placeholder[:12] + "…", value not in placeholder)
            r = sb.run(f'curl -sS --max-time 10 -H "Authorization: token $API_TOKEN" {shlex.quote(upstream)}',
                       check=True)
            print("the upstream answered:", r.stdout[:300])
            print("the value never reached the sandbox:", value not in r.stdout)
            # The same placeholder sent anywhere else is refused by the proxy.
            other = sb.run('curl -s -o /dev/null -w "%{http_code}" --max-time 10 '
                           '-H "Authorization: token $API_TOKEN" ' + shlex.quote(elsewhere))
            print("to another host:", other.stdout or f"refused (exit {other.exit_code})")
    finally:
        bw.secrets.delete(secret.name)
    print(json.dumps({"secret": secret.name, "hosts": secret.hosts}))
