#!/usr/bin/env python3
"""A small fake internet for Burrow's network tests, run inside a network namespace the test
made (never on a real network): a DNS server answering A queries from a fixed table, and
HTTP (80) and HTTPS (443) echo servers that answer every request with what arrived (method,
host, path, headers) as JSON and log it, so a test can see exactly what a sandbox sent
through the credential proxy. Prints READY once every socket listens.

Usage: fake_internet.py --cert C --key K --log FILE name=ip [name=ip ...]
"""
import argparse
import json
import socket
import ssl
import struct
import sys
import threading
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

    def handle_any(self):
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

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("entries", nargs="*")
    a = p.parse_args()
    table = dict(e.split("=", 1) for e in a.entries)
    dns_server(table)

    class Http(Echo):
        log_file = a.log
        scheme = "http"

    class Https(Echo):
        log_file = a.log
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
