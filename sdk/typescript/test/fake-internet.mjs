// The fake internet of the repository's network tests (crates/burrowd/tests/support/
// fake_internet.py), for the docs test's credential-proxy example: a network namespace made
// here, with a veth to the host (198.18.N.1 host side), a DNS server on 198.18.N.2 and HTTPS
// echo servers from 198.18.N.10 that log every request. The daemon may only forward to
// 198.18.0.0/15 and resolves through this DNS only: nothing reaches a real network.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), "../../../crates/burrowd/tests/support/fake_internet.py");

function freeNet() {
  const used = execFileSync("ip", ["-o", "-4", "addr", "show"], { encoding: "utf8" });
  const start = process.pid % 50;
  for (let i = 0; i < 50; i++) {
    const n = 200 + ((start + i) % 50);
    if (!used.includes(` 198.18.${n}.`)) return n;
  }
  throw new Error("no free /24 in 198.18.200.0-198.18.249.0");
}

export class FakeInternet {
  static async start(names) {
    const f = new FakeInternet();
    f.net = freeNet();
    // bwt-/bwti prefixes: scripts/cleanup-test-leftovers.sh removes what a killed run left.
    f.ns = `bwt-tsinet-${f.net}`;
    f.hostIf = `bwtits${f.net}`;
    f.names = names;
    f.dir = mkdtempSync("/var/tmp/burrow-test-tssdk-inet-");
    const ip = (...a) => execFileSync("ip", a, { stdio: ["ignore", "ignore", "pipe"] });
    try { ip("netns", "del", f.ns); } catch { /* none left */ }
    try { ip("link", "del", f.hostIf); } catch { /* none left */ }
    ip("netns", "add", f.ns);
    ip("link", "add", f.hostIf, "type", "veth", "peer", "name", "eth0", "netns", f.ns);
    ip("addr", "add", `198.18.${f.net}.1/24`, "dev", f.hostIf);
    ip("link", "set", f.hostIf, "up");
    ip("-n", f.ns, "addr", "add", `198.18.${f.net}.2/24`, "dev", "eth0");
    names.forEach((_, i) => ip("-n", f.ns, "addr", "add", `198.18.${f.net}.${10 + i}/24`, "dev", "eth0"));
    ip("-n", f.ns, "link", "set", "eth0", "up");
    ip("-n", f.ns, "link", "set", "lo", "up");
    ip("-n", f.ns, "route", "add", "default", "via", `198.18.${f.net}.1`);

    // A test CA and one certificate for every name (openssl, EC P-256).
    const o = (...a) => execFileSync("openssl", a, { cwd: f.dir, stdio: ["ignore", "ignore", "pipe"] });
    o("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
      "-days", "2", "-subj", "/CN=fake internet test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
    o("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem", "-out", "leaf.csr", "-subj", `/CN=${names[0]}`);
    writeFileSync(join(f.dir, "leaf.ext"), `subjectAltName=${names.map((n) => `DNS:${n}`).join(",")}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
    o("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext");
    f.caPem = join(f.dir, "ca.pem");
    f.log = join(f.dir, "requests.log");
    writeFileSync(f.log, "");
    f.child = spawn("ip", ["netns", "exec", f.ns, "python3", SCRIPT, "--cert", join(f.dir, "cert.pem"), "--key", join(f.dir, "key.pem"), "--log", f.log,
      ...names.map((n, i) => `${n}=198.18.${f.net}.${10 + i}`)], { stdio: ["pipe", "pipe", "inherit"] });
    const line = await new Promise((resolve, reject) => {
      const rl = createInterface({ input: f.child.stdout });
      rl.once("line", resolve);
      f.child.once("exit", (c) => reject(new Error(`fake internet exited (${c}) before READY`)));
    });
    process.once("exit", () => f.stop());
    if (line.trim() !== "READY") throw new Error(`fake internet did not start: ${line}`);
    return f;
  }

  /** burrowd arguments that make it resolve through this DNS and trust this CA. */
  daemonArgs() {
    return ["--dns-upstream", `198.18.${this.net}.2:53`, "--egress-ca", this.caPem];
  }

  /** Every request the servers received. */
  requests() {
    return readFileSync(this.log, "utf8").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    this.child.kill();
    try { execFileSync("ip", ["link", "del", this.hostIf], { stdio: "ignore" }); } catch { /* gone with the namespace */ }
    try { execFileSync("ip", ["netns", "del", this.ns], { stdio: "ignore" }); } catch { /* already gone */ }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
