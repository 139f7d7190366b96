#!/usr/bin/env python3
"""A small fake internet for Burrow's network tests, run inside a network namespace the test
made (never on a real network): a DNS server answering A queries from a fixed table, and
HTTP (80) and HTTPS (443) echo servers that answer every request with what arrived (method,
host, path, headers) as JSON and log it, so a test can see exactly what a sandbox sent
through the credential proxy. Prints READY once every socket listens.

Some names serve real content instead of an echo, for the real-workload tests:
- `--static NAME=DIR`: files under DIR (a Debian repository, a PEP 503 simple index, an npm
  registry). A directory answers with its `index.html` or `index.json`; in a `.json` file
  `@BASE@` becomes this request's `scheme://host[/r/RUN]`, so absolute URLs (an npm tarball)
  point back at the same run.
- `--git NAME=DIR`: git smart HTTP over the bare repositories in DIR (`git http-backend`).
  Fetching is anonymous; pushing needs `Authorization` equal to one `--git-auth` (else 401).
On both, a path may start with `/r/RUN/`: the prefix is stripped and RUN logged, so a test
can tell its own requests from those of tests running beside it. Every request is logged
with the status it got.

Usage: fake_internet.py --cert C --key K --log FILE [--static NAME=DIR] [--git NAME=DIR
       --git-auth VALUE...] name=ip [name=ip ...]
"""
import argparse
import json
import mimetypes
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def dns_server(table):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 53))

    def serve():
        while True:
            data, peer = s.recvfrom(4096)
            try:
                reply = answer(data, table)
            except Exception:  # malformed query: ignore it
                continue
            s.sendto(reply, peer)

    threading.Thread(target=serve, daemon=True).start()


def answer(q, table):
    ident, flags, qd = struct.unpack(">HHH", q[:6])
    i, labels = 12, []
    while q[i]:
        n = q[i]
        labels.append(q[i + 1:i + 1 + n].decode().lower())
        i += 1 + n
    qtype, _qclass = struct.unpack(">HH", q[i + 1:i + 5])
    question = q[12:i + 5]
    name = ".".join(labels)
    ip = table.get(name)
    if ip is None:
        return struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
    if qtype != 1:
        return struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0) + question  # no AAAA etc.
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    return struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + rr


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_file = None
    scheme = "http"
    static = {}
    git = {}
    git_auth = []

    def handle_any(self):
        name = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        if name in self.static or name in self.git:
            return self.serve(name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {
            "scheme": self.scheme,
            "method": self.command,
            "host": self.headers.get("Host"),
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "local": self.connection.getsockname()[0],
        }
        with LOCK, open(self.log_file, "a") as f:
            f.write(json.dumps(seen) + "\n")
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    def log_message(self, *args):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def serve(self, name):
        body = self.read_body()
        raw_path, _, query = self.path.partition("?")
        run, path = None, raw_path
        if path.startswith("/r/"):
            run, _, rest = path[3:].partition("/")
            path = "/" + rest
        base = "%s://%s%s" % (self.scheme, self.headers.get("Host"), "/r/" + run if run else "")
        if name in self.git:
            status, headers, out = self.git_backend(self.git[name], path, query, body)
        else:
            status, headers, out = self.static_file(self.static[name], path, base)
        with LOCK, open(self.log_file, "a") as f:
            f.write(json.dumps({
                "scheme": self.scheme, "method": self.command, "host": self.headers.get("Host"),
                "path": raw_path, "query": query, "run": run, "status": status,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "local": self.connection.getsockname()[0],
            }) + "\n")
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def static_file(self, root, path, base):
        parts = [p for p in urllib.parse.unquote(path).split("/") if p]
        if any(p in (".", "..") for p in parts):
            return 400, [], b"bad path\n"
        full = os.path.join(root, *parts)
        if os.path.isdir(full):
            for index in ("index.html", "index.json"):
                if os.path.isfile(os.path.join(full, index)):
                    full = os.path.join(full, index)
                    break
        if not os.path.isfile(full):
            return 404, [("Content-Type", "text/plain")], b"not found\n"
        with open(full, "rb") as f:
            out = f.read()
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if full.endswith(".json"):
            out = out.replace(b"@BASE@", base.encode())
            ctype = "application/json"
        return 200, [("Content-Type", ctype)], out

    def git_backend(self, root, path, query, body):
        push = "service=git-receive-pack" in query or path.endswith("/git-receive-pack")
        authorized = self.headers.get("Authorization") in self.git_auth
        if push and not authorized:
            return 401, [("WWW-Authenticate", 'Basic realm="git"')], b"push needs a credential\n"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
        }
        if authorized:
            env["REMOTE_USER"] = "burrow"
        for h in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(h):
                env["HTTP_" + h.upper().replace("-", "_")] = self.headers[h]
        r = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        head, _, out = r.stdout.partition(b"\r\n\r\n")
        if not _:
            return 500, [], r.stdout + r.stderr
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            else:
                headers.append((k, v.strip()))
        return status, headers, out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--static", action="append", default=[])
    p.add_argument("--git", action="append", default=[])
    p.add_argument("--git-auth", action="append", default=[])
    p.add_argument("entries", nargs="*")
    a = p.parse_args()
    table = dict(e.split("=", 1) for e in a.entries)
    dns_server(table)
    Echo.log_file = a.log
    Echo.static = dict(e.split("=", 1) for e in a.static)
    Echo.git = dict(e.split("=", 1) for e in a.git)
    Echo.git_auth = a.git_auth

    class Http(Echo):
        scheme = "http"

    class Https(Echo):
        scheme = "https"

    http = ThreadingHTTPServer(("0.0.0.0", 80), Http)
    https = ThreadingHTTPServer(("0.0.0.0", 443), Https)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    https.socket = ctx.wrap_socket(https.socket, server_side=True)
    for srv in (http, https):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raw.bind(("0.0.0.0", 7000))
    raw.listen(64)

    def tcp_echo():
        # Plain TCP on 7000: logs the connection and says hello.
        while True:
            conn, peer = raw.accept()
            with LOCK, open(a.log, "a") as f:
                f.write(json.dumps({"scheme": "tcp", "local": conn.getsockname()[0]}) + "\n")
            try:
                conn.sendall(b"HELLO\n")
            finally:
                conn.close()

    threading.Thread(target=tcp_echo, daemon=True).start()
    print("READY", flush=True)
    # Runs until the test kills it (or its stdin closes).
    sys.stdin.read()


if __name__ == "__main__":
    main()
