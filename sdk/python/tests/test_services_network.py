"""Services and the web URL, network policy, secrets, and tokens (created by the daemon and
attenuated offline, then used over TCP)."""

from __future__ import annotations

import datetime as dt

import pytest

from burrow import (Burrow, Conflict, Forbidden, InvalidRequest, NetworkRule, NotFound, Sandbox, Token,
                    Unauthorized, attenuate)

from conftest import unique
from daemon import Daemon

WEB = ["python3", "-c", """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("path=" + self.path).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): print("request", self.path, flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""]


def test_services_and_fetch(sb: Sandbox) -> None:
    svc = sb.services.put("web", WEB, http_port=8080, restart="always")
    assert svc.name == "web" and svc.http_port == 8080
    r = None
    for _ in range(200):  # bounded: until the server listens (the agent starts it at once)
        r = sb.fetch("/hello?x=1")
        if r.status_code == 200:
            break
        sb.run(["sleep", "0.05"])
    assert r is not None and r.status_code == 200 and r.text == "path=/hello?x=1"
    assert [s.name for s in sb.services.list()] == ["web"]
    got = sb.services.get("web")
    assert got.status == "running" and got.pid
    assert "request /hello?x=1" in sb.services.logs("web")
    assert sb.services.stop("web").status == "stopped"
    assert sb.fetch("/").status_code == 502  # nothing listens now
    assert sb.services.start("web").status in ("running", "waiting")
    sb.services.delete("web")
    with pytest.raises(NotFound):
        sb.services.get("web")
    with pytest.raises(InvalidRequest):
        sb.services.put("web", [])


def test_network_policy(sb: Sandbox) -> None:
    assert sb.network_policy().mode == "open"
    p = sb.set_network_policy("policy", [("*.example.test", "allow"), NetworkRule("*", "deny")])
    assert p.mode == "policy" and p.rules[0] == NetworkRule("*.example.test", "allow")
    assert sb.network_policy() == p
    with pytest.raises(InvalidRequest):
        sb.set_network_policy("sideways")
    assert sb.set_network_policy("open").mode == "open"


def test_secrets_attach_placeholder(bw: Burrow, sb: Sandbox) -> None:
    name = unique("sec")
    value = "REALsecretVALUE-0123456789"
    s = bw.secrets.create(name, value, ["api.example.test"], header="Authorization", format="token %s")
    assert s.name == name and s.hosts == ["api.example.test"] and value not in repr(s.raw)
    assert name in [x.name for x in bw.secrets.list()]
    assert bw.secrets.get(name).format == "token %s"
    with pytest.raises(Conflict):
        bw.secrets.create(name, value, ["api.example.test"])
    att = sb.attach_secret(name, "API_TOKEN")
    assert {"sandbox": sb.name, "env": "API_TOKEN"} in att.attached
    seen = sb.run('printf %s "$API_TOKEN"').stdout
    assert seen.startswith("bm1_") and value not in seen  # a placeholder, never the value
    assert f"secret={name}" in Token.parse(seen).caveats
    sb.detach_secret(name)
    assert sb.run('printf %s "${API_TOKEN:-unset}"').stdout == "unset"
    bw.secrets.delete(name)
    with pytest.raises(NotFound):
        bw.secrets.get(name)


def test_tokens_create_and_attenuate_offline(bw: Burrow, sb: Sandbox, daemon: Daemon) -> None:
    other = bw.create(unique("other"))
    try:
        scoped = bw.tokens.create(sandboxes=[sb.name], actions=["read", "exec"])
        assert Token.parse(scoped).caveats[-2:] == [f"sandboxes={sb.name}", "actions=read,exec"]
        with Burrow(url=daemon.url, token=scoped) as c:
            assert c.get(sb.name).run(["echo", "ok"]).stdout == "ok\n"
            with pytest.raises(Forbidden) as e:
                c.get(other.name)
            assert e.value.status == 403 and e.value.caveat == f"sandboxes={sb.name}"
            with pytest.raises(Forbidden):
                c.get(sb.name).files.read("/etc/hostname")  # `files` not granted
        # Narrowed offline: read only, then exec is refused while read still works.
        read_only = attenuate(scoped, actions=["read"])
        with Burrow(url=daemon.url, token=read_only) as c:
            assert c.get(sb.name).name == sb.name
            with pytest.raises(Forbidden) as e:
                c.get(sb.name).run(["true"])
            assert e.value.caveat == "actions=read"
        past = attenuate(daemon.token, expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
        with Burrow(url=daemon.url, token=past) as c:
            with pytest.raises(Forbidden) as e:
                c.get(sb.name)
            assert e.value.caveat is not None and e.value.caveat.startswith("expires=")
        soon = bw.tokens.create(expires_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        with Burrow(url=daemon.url, token=soon) as c:
            assert c.get(sb.name).name == sb.name
        # A forged widening (a caveat dropped) does not verify.
        t = Token.parse(read_only)
        forged = Token(t.id, t.caveats[:-1], t.signature).encode()
        with Burrow(url=daemon.url, token=forged) as c:
            with pytest.raises(Unauthorized):
                c.get(sb.name)
        with pytest.raises(ValueError):
            attenuate("not-a-token", actions=["read"])
    finally:
        other.delete()
