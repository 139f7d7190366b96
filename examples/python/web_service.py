"""A web service in a sandbox, reached by its URL.

The service is kept up by the sandbox's agent (restarted if it dies, started at every boot);
burrowd's ingress serves it at `sb.url` (`http://NAME.localhost:7440/`) and at
`/v1/sandboxes/NAME/http/…` on the API.

    python3 web_service.py
"""

from urllib.parse import urlsplit

import httpx

from burrow import Burrow

APP = """
import http.server, json, os
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "host": os.uname().nodename}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), App).serve_forever()
"""


def get_by_url(url: str) -> httpx.Response:
    """GET a sandbox URL. Names under `.localhost` are loopback (RFC 6761); not every resolver
    knows it, so connect to 127.0.0.1 and send the name as Host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host.endswith(".localhost"):
        return httpx.get(url.replace(host, "127.0.0.1", 1), headers={"host": parts.netloc})
    return httpx.get(url)


with Burrow() as bw, bw.create("web-demo", url_auth="public") as sb:
    sb.files.write("/srv/app.py", APP)
    sb.services.put("web", ["python3", "/srv/app.py"], http_port=8080)
    for _ in range(100):  # until the app listens
        if sb.fetch("/").status_code == 200:
            break
        sb.run(["sleep", "0.1"])
    print("service:", sb.services.get("web").status)
    print("url:", sb.url)
    r = get_by_url(sb.url + "hello")
    print("by URL:", r.status_code, r.json())
    print("through the API:", sb.fetch("/api/x").json())
