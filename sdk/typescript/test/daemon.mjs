// A real burrowd for the tests, started the way crates/burrow-testkit's `Daemon::spawn` starts
// one: a temporary data dir under /var/tmp (mode 0711), its own unix socket, a TCP port on
// loopback, a /24 of its own, forwarding only to 198.18.0.0/15 and DNS to a dead port, so
// nothing a test does can reach a real network. SIGTERM at the end (the daemon is --ephemeral:
// it removes its sandboxes and pool).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, chmodSync, readFileSync, existsSync, openSync, rmSync } from "node:fs";
import { join } from "node:path";
import { request } from "node:http";

export function binDir() {
  if (process.env.BURROW_BIN_DIR) return process.env.BURROW_BIN_DIR;
  if (process.env.CARGO_TARGET_DIR) return join(process.env.CARGO_TARGET_DIR, "debug");
  return "/var/cache/burrow/target/debug";
}

/** A /24 in 10.188.0.0/16 that no interface of the host has an address in. */
function freeSubnet() {
  const used = execFileSync("ip", ["-o", "-4", "addr", "show"], { encoding: "utf8" });
  const start = process.pid % 256;
  for (let i = 0; i < 256; i++) {
    const n = (start + i) % 256;
    if (!used.includes(` 10.188.${n}.`)) return `10.188.${n}.0/24`;
  }
  throw new Error("no free /24 in 10.188.0.0/16");
}

function healthz(socketPath) {
  return new Promise((resolve) => {
    const req = request({ socketPath, path: "/healthz", timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on("error", () => resolve(false));
    req.on("timeout", () => { req.destroy(); resolve(false); });
    req.end();
  });
}

export class Daemon {
  /** Starts burrowd and waits until it answers /healthz on its socket. */
  static async start(extraArgs = []) {
    const bin = join(binDir(), "burrowd");
    if (!existsSync(bin)) {
      throw new Error(`no burrowd at ${bin}: set BURROW_BIN_DIR (or build it: scripts/build.sh debug)`);
    }
    // The burrow-test- prefix: scripts/cleanup-test-leftovers.sh removes what a killed run left.
    const dir = mkdtempSync("/var/tmp/burrow-test-tssdk-");
    chmodSync(dir, 0o711);
    const d = new Daemon();
    d.dir = dir;
    d.dataDir = join(dir, "data");
    d.socket = join(dir, "burrowd.sock");
    d.logPath = join(dir, "burrowd.log");
    d.subnet = freeSubnet();
    const log = openSync(d.logPath, "a");
    d.child = spawn(bin, [
      "--data-dir", d.dataDir,
      "--socket", d.socket,
      "--listen", "127.0.0.1:0",
      "--pool-size-gb", "16",
      "--ephemeral",
      "--subnet", d.subnet,
      "--uplink-only", "198.18.0.0/15",
      // DNS to a port where nothing listens, unless the test brings its own resolver.
      ...(extraArgs.includes("--dns-upstream") ? [] : ["--dns-upstream", "127.0.0.1:9"]),
      ...extraArgs,
    ], {
      stdio: ["ignore", log, log],
      env: { ...process.env, BURROW_LOG: "info,burrow=debug", BURROW_LXCFS_DIR: join(dir, "lxcfs") },
    });
    d.exited = new Promise((resolve) => d.child.once("exit", (code, sig) => resolve({ code, sig })));
    // Whatever ends this process, the daemon gets SIGTERM (it then cleans up by itself).
    const onExit = () => d.child.kill("SIGTERM");
    process.once("exit", onExit);
    d.exited.then(() => process.removeListener("exit", onExit));
    let gone = null;
    d.exited.then((r) => { gone = r; });
    // The very first daemon on a host builds the base image: up to 10 minutes.
    const deadline = Date.now() + 600_000;
    for (;;) {
      if (gone) {
        const log = d.logTail();
        await d.stop();
        throw new Error(`burrowd exited during start (${JSON.stringify(gone)}); log:\n${log}`);
      }
      if (await healthz(d.socket)) break;
      if (Date.now() > deadline) {
        const log = d.logTail();
        await d.stop();
        throw new Error(`burrowd did not become ready; log:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    d.addr = readFileSync(join(d.dataDir, "burrowd.addr"), "utf8").trim();
    d.token = readFileSync(join(d.dataDir, "admin.token"), "utf8").trim();
    d.url = `http://${d.addr}`;
    return d;
  }

  logTail(lines = 120) {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }

  /** SIGTERM and wait: the ephemeral daemon destroys its sandboxes and pool. */
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
