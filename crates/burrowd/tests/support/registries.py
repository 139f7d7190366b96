#!/usr/bin/env python3
"""Builds what the real-workload tests serve from the fake internet (`fake_internet.py
--static/--git`), offline, from the standard library only:
- DIR/pypi: a PEP 503 simple index with one pure-Python wheel, `wl-hello` 1.0;
- DIR/npm: an npm registry layout with two packages (packuments at `/NAME` with the
  tarball's sha1 and sha512 integrity): `wl-hello` 1.0.0, a library, and `fake-agent` 1.0.0,
  a command that calls its API host with a key from the environment;
- DIR/git/wl.git: a bare repository with one commit on `main` (a README and 2 MiB of random
  bytes, so a clone is more than one buffer), pushes allowed.
Prints a JSON summary (the files' digests) on stdout.

Usage: registries.py DIR
"""
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wheel(path):
    files = {
        "wl_hello/__init__.py": b'def hello():\n    return "hello from the wl-hello wheel"\n',
        "wl_hello-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: wl-hello\nVersion: 1.0\n",
        "wl_hello-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: burrow-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        "wl_hello-1.0.dist-info/top_level.txt": b"wl_hello\n",
    }
    record = "".join(
        "%s,sha256=%s,%d\n" % (name, b64(hashlib.sha256(data).digest()), len(data))
        for name, data in files.items()
    )
    record += "wl_hello-1.0.dist-info/RECORD,,\n"
    files["wl_hello-1.0.dist-info/RECORD"] = record.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)


def pypi(root):
    os.makedirs(os.path.join(root, "simple", "wl-hello"))
    os.makedirs(os.path.join(root, "packages"))
    whl = os.path.join(root, "packages", "wl_hello-1.0-py3-none-any.whl")
    wheel(whl)
    digest = hashlib.sha256(open(whl, "rb").read()).hexdigest()
    with open(os.path.join(root, "simple", "index.html"), "w") as f:
        f.write('<!DOCTYPE html><html><body><a href="wl-hello/">wl-hello</a></body></html>\n')
    with open(os.path.join(root, "simple", "wl-hello", "index.html"), "w") as f:
        # Relative, so it stays under the run's /r/RUN/ prefix.
        f.write(
            '<!DOCTYPE html><html><body><a href="../../packages/wl_hello-1.0-py3-none-any.whl'
            '#sha256=%s">wl_hello-1.0-py3-none-any.whl</a></body></html>\n' % digest
        )
    return {"wheel_sha256": digest}


def npm_package(root, name, version, files, manifest=None):
    """One package in the registry layout: its tarball (`files` under `package/`, with a
    package.json from `manifest`) and its packument at `/NAME` (sha1 and sha512 integrity).
    Returns the tarball's sha1."""
    pkg = os.path.join(root, name)
    os.makedirs(os.path.join(pkg, "-"))
    meta = dict({"name": name, "version": version, "license": "MIT"}, **(manifest or {}))
    members = {"package/package.json": json.dumps(meta).encode()}
    members.update({"package/" + k: v for k, v in files.items()})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            t.addfile(info, io.BytesIO(data))
    tgz = buf.getvalue()
    tgz_name = "%s-%s.tgz" % (name, version)
    with open(os.path.join(pkg, "-", tgz_name), "wb") as f:
        f.write(tgz)
    shasum = hashlib.sha1(tgz).hexdigest()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    packument = {
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {
            version: dict(meta, dist={
                "tarball": "@BASE@/%s/-/%s" % (name, tgz_name),
                "shasum": shasum,
                "integrity": integrity,
            })
        },
    }
    with open(os.path.join(pkg, "index.json"), "w") as f:
        json.dump(packument, f)
    return shasum


# A stand-in for a coding agent (`npm install -g fake-agent`, tests/dev_image.rs): its one
# command sends its prompt to its API (`AGENT_API_BASE`, default https://api.agent.test) with
# the key from `$AGENT_API_KEY` in `x-api-key`, the way real agents do (Node's https, which
# ignores the proxy variables: the burrow's redirect of tcp/443 catches it), and prints the
# answer, or the status and body of a refusal with exit code 1.
FAKE_AGENT = b"""#!/usr/bin/env node
const https = require("https");
const base = new URL(process.env.AGENT_API_BASE || "https://api.agent.test");
const body = JSON.stringify({ prompt: process.argv.slice(2).join(" ") });
const req = https.request(new URL("/v1/messages", base), {
  method: "POST",
  headers: {
    "x-api-key": process.env.AGENT_API_KEY || "",
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
  },
}, (res) => {
  let out = "";
  res.setEncoding("utf8");
  res.on("data", (d) => (out += d));
  res.on("end", () => {
    if (res.statusCode !== 200) {
      console.log("fake-agent: " + res.statusCode + " " + out.trim());
      process.exit(1);
    }
    console.log(out);
  });
});
req.on("error", (e) => {
  console.log("fake-agent: " + e.message);
  process.exit(1);
});
req.end(body);
"""


def npm(root):
    shasum = npm_package(
        root, "wl-hello", "1.0.0",
        {"index.js": b'module.exports = () => "hello from the wl-hello tarball";\n'},
        {"main": "index.js"},
    )
    npm_package(root, "fake-agent", "1.0.0", {"cli.js": FAKE_AGENT},
                {"bin": {"fake-agent": "cli.js"}})
    return {"tgz_sha1": shasum}


def git(root):
    bare = os.path.join(root, "wl.git")
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=root,
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@test", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@test")
    run = lambda *a, cwd=None: subprocess.run(a, cwd=cwd, env=env, check=True, capture_output=True)
    run("git", "init", "-q", "--bare", "-b", "main", bare)
    run("git", "-C", bare, "config", "http.receivepack", "true")
    with tempfile.TemporaryDirectory() as work:
        run("git", "init", "-q", "-b", "main", work)
        with open(os.path.join(work, "README"), "w") as f:
            f.write("the wl repository\n")
        with open(os.path.join(work, "data.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
        run("git", "add", "README", "data.bin", cwd=work)
        run("git", "commit", "-q", "-m", "first", cwd=work)
        run("git", "push", "-q", bare, "main", cwd=work)
    return {}


def main():
    root = sys.argv[1]
    out = {}
    out.update(pypi(os.path.join(root, "pypi")))
    out.update(npm(os.path.join(root, "npm")))
    out.update(git(os.path.join(root, "git")))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
