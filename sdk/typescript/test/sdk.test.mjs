// The SDK against a real burrowd that this file starts (test/daemon.mjs): every method, the
// streaming path under 1,000 fast commands, a large upload/download checked by hash, and the
// API's errors as typed errors. Nothing is mocked.
import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, readdirSync, lstatSync, rmSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { Readable } from "node:stream";
import { request as httpRequest } from "node:http";
import { Daemon } from "./daemon.mjs";
import { extractUntrusted } from "../dist/files.js";
import { execFileSync } from "node:child_process";
import { createReadStream, existsSync } from "node:fs";
import {
  Burrow,
  Sandbox,
  CommandResult,
  BurrowError,
  NotFoundError,
  ConflictError,
  InvalidRequestError,
  AuthenticationError,
  PermissionDeniedError,
  ConnectionError,
  GoneError,
  TimeoutError,
  CommandError,
  attenuateToken,
  inspectToken,
} from "../dist/index.js";

let d;
let bw;

before(async () => {
  d = await Daemon.start();
  bw = await Burrow.connect({ socket: d.socket });
});

after(async () => {
  await bw?.close();
  await d?.stop();
});

/** A fresh sandbox for one test, deleted afterwards. */
async function withSb(name, fn, opts = {}) {
  const sb = await bw.create(name, opts);
  try {
    return await fn(sb);
  } finally {
    await sb.delete().catch(() => undefined);
  }
}

const sha256 = (b) => createHash("sha256").update(b).digest("hex");

describe("connect", () => {
  test("unix socket from BURROW_SOCKET, TCP from BURROW_URL + BURROW_TOKEN", async () => {
    const saved = { ...process.env };
    try {
      process.env.BURROW_SOCKET = d.socket;
      process.env.BURROW_URL = "http://127.0.0.1:1"; // must lose to BURROW_SOCKET
      const viaSocket = await Burrow.connect();
      assert.equal(viaSocket.target.kind, "unix");
      assert.ok((await viaSocket.version()).version);
      await viaSocket.close();

      delete process.env.BURROW_SOCKET;
      process.env.BURROW_URL = d.url;
      process.env.BURROW_TOKEN = d.token;
      const viaTcp = await Burrow.connect();
      assert.equal(viaTcp.target.kind, "tcp");
      await withSb("tcp-1", async () => {
        const sb = await viaTcp.get("tcp-1");
        assert.equal(sb.status, "running");
        const r = await sb.run(["echo", "over tcp"]);
        assert.equal(r.stdout, "over tcp\n");
        // The WebSocket path carries the token too.
        const p = await sb.spawn(["sh", "-c", "echo streamed; exit 3"]);
        const exit = await p.wait();
        assert.deepEqual([exit.exitCode, exit.stdout], [3, "streamed\n"]);
      });
      await viaTcp.close();
    } finally {
      process.env = saved;
    }
  });

  test("TCP without a token is AuthenticationError; a wrong socket is ConnectionError", async () => {
    const noToken = await Burrow.connect({ url: d.url, token: "" });
    await assert.rejects(noToken.list(), (e) => e instanceof AuthenticationError && e.status === 401);
    await noToken.close();
    const badToken = await Burrow.connect({ url: d.url, token: "bm1_nonsense" });
    await assert.rejects(badToken.list(), AuthenticationError);
    await badToken.close();
    await assert.rejects(Burrow.connect({ socket: join(d.dir, "nope.sock") }), (e) => e instanceof ConnectionError && e.code === "connection");
  });
});

describe("sandboxes", () => {
  test("create, get, list by prefix and label, update, delete", async () => {
    const sb = await bw.create("crud-a", { labels: { team: "red" }, env: { GREETING: "hi" }, memoryMb: 512 });
    assert.ok(sb instanceof Sandbox);
    assert.equal(sb.status, "running");
    assert.equal(sb.info.config.memory_mb, 512);
    assert.match(sb.id, /^sb-/);
    const b = await bw.create("crud-b", { labels: { team: "blue" } });
    assert.equal((await sb.run("echo $GREETING")).stdout, "hi\n");

    const got = await bw.get("crud-a");
    assert.equal(got.info.labels.team, "red");
    assert.deepEqual((await bw.list({ prefix: "crud-" })).map((s) => s.name).sort(), ["crud-a", "crud-b"]);
    assert.deepEqual((await bw.list({ labels: { team: "blue" } })).map((s) => s.name), ["crud-b"]);
    // Paging: a page size of 1 still lists both.
    assert.equal((await bw.list({ prefix: "crud-", limit: 1 })).length, 2);

    const info = await sb.update({ labels: { team: "green" }, idleTimeoutS: 0 });
    assert.equal(info.labels.team, "green");
    assert.equal(info.config.idle_timeout_s, 0);

    await b.delete();
    await bw.sandboxes.delete("crud-a");
    await assert.rejects(bw.get("crud-a"), NotFoundError);
    assert.deepEqual(await bw.list({ prefix: "crud-" }), []);
  });

  test("errors: unknown sandbox, bad name, name taken", async () => {
    await assert.rejects(bw.get("no-such-sandbox"), (e) => e instanceof NotFoundError && e.code === "not_found" && e.status === 404 && /no-such-sandbox/.test(e.message));
    await assert.rejects(bw.sandbox("no-such-sandbox").run(["true"]), NotFoundError);
    await assert.rejects(bw.sandbox("no-such-sandbox").spawn(["true"]), NotFoundError);
    await assert.rejects(bw.create("Bad_Name"), (e) => e instanceof InvalidRequestError && e.code === "invalid" && e instanceof BurrowError);
    await withSb("taken", async () => {
      await assert.rejects(bw.create("taken"), (e) => e instanceof ConflictError && e.code === "name_taken" && e.status === 409);
    });
  });

  test("E2B-style Sandbox.create / Sandbox.connect / kill, and the bw.sandboxes namespace", async () => {
    const sb = await Sandbox.create({ socket: d.socket, name: "e2b-style", labels: { via: "static" } });
    assert.equal((await sb.commands.run("echo e2b")).stdout, "e2b\n");
    const p = await sb.commands.spawn(["echo", "spawned"]);
    assert.equal((await p.wait()).stdout, "spawned\n");
    const again = await Sandbox.connect("e2b-style", { socket: d.socket });
    assert.equal(again.info.labels.via, "static");
    await again.close();
    await sb.kill(); // deletes it and closes its own connection
    await assert.rejects(bw.get("e2b-style"), NotFoundError);
    const anon = await Sandbox.create({ socket: d.socket });
    assert.match(anon.name, /^sb-[0-9a-f]{8}$/);
    await anon.delete();

    const n = await bw.sandboxes.create("ns-1");
    assert.equal((await bw.sandboxes.get("ns-1")).id, n.id);
    assert.deepEqual((await bw.sandboxes.list({ prefix: "ns-" })).map((x) => x.name), ["ns-1"]);
    await bw.sandboxes.delete("ns-1");
  });

  test("withSandbox deletes afterwards, also when the body throws", async () => {
    const r = await bw.withSandbox("with-1", {}, async (sb) => (await sb.run("echo in")).stdout);
    assert.equal(r, "in\n");
    await assert.rejects(bw.get("with-1"), NotFoundError);
    await assert.rejects(bw.withSandbox("with-2", {}, async () => { throw new Error("boom"); }), /boom/);
    await assert.rejects(bw.get("with-2"), NotFoundError);
  });

  test("lifecycle: stop, start, restart, sleep, wake; a conflict is ConflictError", async () => {
    await withSb("life", async (sb) => {
      await sb.run("echo keep > /root/f");
      assert.equal((await sb.stop()).status, "stopped");
      await assert.rejects(sb.run(["true"]), (e) => e instanceof ConflictError);
      assert.equal((await sb.start()).status, "running");
      assert.equal((await sb.run("cat /root/f")).stdout, "keep\n");
      assert.equal((await sb.restart()).status, "running");
      assert.equal((await sb.sleep()).status, "sleeping");
      assert.equal((await sb.refresh()).status, "sleeping");
      assert.equal((await sb.wake()).status, "running");
      assert.equal((await sb.sleep({ mode: "cold" })).sleep, "cold");
      assert.equal((await sb.wake()).status, "running");
      await sb.stop();
      await assert.rejects(sb.sleep(), ConflictError);
    });
  });

  test("version and images", async () => {
    const v = await bw.version();
    assert.ok(v.engines.some((e) => e.kind === "container" && e.available));
    const images = await bw.images.list();
    assert.ok(images.some((i) => i.name === "base" && i.status === "ready"));
    await withSb("img-src", async (sb) => {
      await sb.run("echo baked > /etc/baked");
      const cp = await sb.checkpoint("for image");
      const img = await bw.images.create("tssdk-tpl", { sandbox: "img-src", checkpoint: cp.id });
      assert.equal(img.name, "tssdk-tpl");
      await withSb("from-tpl", async (t) => {
        assert.equal((await t.run("cat /etc/baked")).stdout, "baked\n");
        await assert.rejects(bw.images.delete("tssdk-tpl"), ConflictError);
      }, { image: "tssdk-tpl" });
      await bw.images.delete("tssdk-tpl");
      assert.ok(!(await bw.images.list()).some((i) => i.name === "tssdk-tpl"));
    });
  });
});

describe("run", () => {
  let sb;
  before(async () => {
    sb = await bw.create("run");
  });
  after(async () => {
    await sb.delete();
  });

  test("argv, shell string, env, cwd, user, stdin", async () => {
    const r = await sb.run(["python3", "-c", "print(6*7)"]);
    assert.ok(r instanceof CommandResult);
    assert.deepEqual([r.exitCode, r.stdout, r.stderr, r.ok, r.timedOut], [0, "42\n", "", true, false]);
    assert.equal((await sb.run("echo a | tr a b; echo e >&2; exit 4")).exitCode, 4);
    const sh = await sb.run("echo a | tr a b; echo e >&2");
    assert.deepEqual([sh.stdout, sh.stderr], ["b\n", "e\n"]);
    assert.equal((await sb.run("echo $A-$B", { env: { A: "1", B: "two" } })).stdout, "1-two\n");
    assert.equal((await sb.run(["pwd"], { cwd: "/tmp" })).stdout, "/tmp\n");
    assert.equal((await sb.run(["id", "-un"], { user: "nobody" })).stdout, "nobody\n");
    assert.equal((await sb.run(["id", "-un"])).stdout, "root\n");
    assert.equal((await sb.run(["cat"], { stdin: "from stdin" })).stdout, "from stdin");
    const bytes = new Uint8Array([0, 255, 1, 254, 10]);
    const bin = await sb.run(["cat"], { stdin: bytes });
    assert.deepEqual(Buffer.from(bin.stdoutBytes), Buffer.from(bytes));
    const binErr = await sb.run(["sh", "-c", "cat >&2"], { stdin: bytes });
    assert.deepEqual(Buffer.from(binErr.stderrBytes), Buffer.from(bytes));
    assert.equal(sb.commands.run, sb.commands.run); // the E2B-style alias exists
    assert.equal((await sb.commands.run("echo alias")).stdout, "alias\n");
  });

  test("output callbacks stream while run still returns everything", async () => {
    const seen = { out: "", err: "" };
    const r = await sb.run("echo one; echo two >&2; cat; printf '\\377'", {
      stdin: "in\n",
      onStdout: (t) => (seen.out += t),
      onStderr: (t) => (seen.err += t),
    });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stderr, "two\n");
    assert.deepEqual(Buffer.from(r.stdoutBytes), Buffer.from("one\nin\n\xff", "latin1"));
    assert.equal(seen.out.slice(0, 7), "one\nin\n");
    assert.equal(seen.err, "two\n");
    await assert.rejects(sb.run("exit 4", { onStdout: () => undefined, check: true }), (e) => e instanceof CommandError && e.exitCode === 4);
    await assert.rejects(sb.run("echo so far; sleep 30", { onStdout: () => undefined, timeoutMs: 300 }), (e) => e instanceof TimeoutError && e.stdout === "so far\n");
  });

  test("check throws CommandError with stdout and stderr", async () => {
    await assert.rejects(sb.run("echo out; echo bad >&2; exit 3", { check: true }), (e) => {
      assert.ok(e instanceof CommandError);
      assert.equal(e.code, "command_failed");
      assert.deepEqual([e.exitCode, e.stdout, e.stderr], [3, "out\n", "bad\n"]);
      assert.match(e.message, /status 3: bad/);
      return true;
    });
    assert.equal((await sb.run("true", { check: true })).exitCode, 0);
  });

  test("timeoutMs and AbortSignal.timeout throw TimeoutError and kill the command", async () => {
    await assert.rejects(sb.run("echo started; sleep 30", { timeoutMs: 300 }), (e) => {
      assert.ok(e instanceof TimeoutError);
      assert.equal(e.code, "timeout");
      assert.equal(e.stdout, "started\n");
      return true;
    });
    await assert.rejects(sb.run(["sh", "-c", "sleep 30; touch /tmp/survived"], { signal: AbortSignal.timeout(300) }), TimeoutError);
    // The aborted command was killed, not left running.
    const s = (await sb.sessions.list()).find((x) => x.cmd.includes("sleep 30; touch /tmp/survived"));
    for (let i = 0; i < 100 && s && !(await sb.sessions.list()).find((x) => x.id === s.id)?.exited_at; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const done = (await sb.sessions.list()).find((x) => x.id === s.id);
    assert.equal(done.signal, "KILL");
    // A plain abort is the signal's reason, as with fetch.
    const ac = new AbortController();
    const p = sb.run(["sleep", "30"], { signal: ac.signal });
    setImmediate(() => ac.abort());
    await assert.rejects(p, (e) => e.name === "AbortError");
  });

  test("1,000 fast commands through run, no lost exit", async () => {
    for (let i = 0; i < 1000; i++) {
      const r = await sb.run(["sh", "-c", `echo ${i}; exit ${i % 7}`]);
      assert.equal(r.exitCode, i % 7);
      assert.equal(r.stdout, `${i}\n`);
    }
  });
});

describe("spawn and sessions", () => {
  let sb;
  before(async () => {
    sb = await bw.create("spawn");
  });
  after(async () => {
    await sb.delete();
  });

  test("events in order, stdin write and EOF, callbacks", async () => {
    const seen = [];
    const p = await sb.spawn(["sh", "-c", "echo first; read line; echo got:$line; cat >&2; exit 7"], {
      onStdout: (t) => seen.push(t),
    });
    assert.match(p.id, /^s-/);
    assert.ok(p.pid > 0);
    const events = [];
    const it = p[Symbol.asyncIterator]();
    const first = await it.next();
    assert.deepEqual([first.value.type, first.value.text], ["stdout", "first\n"]);
    await p.write("hello\n");
    await p.write(new Uint8Array([0x61, 0x62]));
    await p.closeStdin();
    for (let r = await it.next(); !r.done; r = await it.next()) events.push(r.value);
    const out = events.filter((e) => e.type === "stdout").map((e) => e.text).join("");
    const err = events.filter((e) => e.type === "stderr").map((e) => e.text).join("");
    assert.equal(out, "got:hello\n");
    assert.equal(err, "ab");
    assert.deepEqual(events.at(-1), { type: "exit", exitCode: 7, signal: undefined, reason: undefined });
    assert.equal(p.exitCode, 7);
    assert.equal(seen.join(""), "first\ngot:hello\n");
    // wait() after the iterator ended answers at once.
    assert.equal((await p.wait()).exitCode, 7);
  });

  test("signal, kill, TTY with resize, a command too long for a URL, abort", async () => {
    const p = await sb.spawn(["sh", "-c", "trap 'echo term; exit 9' TERM; echo ready; while :; do sleep 0.05; done"]);
    const it = p[Symbol.asyncIterator]();
    assert.equal((await it.next()).value.text, "ready\n");
    await p.signal("TERM");
    const rest = [];
    for (let r = await it.next(); !r.done; r = await it.next()) rest.push(r.value);
    assert.equal(rest.at(-1).exitCode, 9);
    assert.ok(rest.some((e) => e.type === "stdout" && e.text.includes("term")));

    const k = await sb.spawn(["sleep", "30"]);
    await k.kill();
    const kexit = await k.wait();
    assert.equal(kexit.signal, "KILL");

    const t = await sb.spawn(["sh", "-c", "stty size; read x; stty size; tty"], { tty: true, cols: 100, rows: 30 });
    assert.equal(t.tty, true);
    let text = "";
    const tit = t[Symbol.asyncIterator]();
    while (!text.includes("30 100")) text += (await tit.next()).value.text ?? "";
    await t.resize(132, 43);
    await t.write("\n");
    for (let r = await tit.next(); !r.done; r = await tit.next()) text += r.value.text ?? "";
    assert.match(text, /43 132/);
    assert.match(text, /\/dev\/pts\//);

    const long = "x".repeat(6000);
    const l = await sb.spawn(["sh", "-c", 'printf %s "$1" | wc -c; echo $LONGENV | wc -c', "sh", long], { env: { LONGENV: long } });
    assert.equal((await l.wait()).stdout, "6000\n6001\n");

    const ac = new AbortController();
    const a = await sb.spawn(["sleep", "30"], { signal: ac.signal });
    ac.abort();
    await assert.rejects(a.wait(), (e) => e.name === "AbortError");
    const t2 = await sb.spawn(["sleep", "30"], { signal: AbortSignal.timeout(200) });
    await assert.rejects(t2.wait(), (e) => e instanceof TimeoutError && e.code === "timeout");
    // Both were killed, not left running.
    for (const id of [a.id, t2.id]) {
      let s;
      for (let i = 0; i < 100; i++) {
        s = (await sb.sessions.list()).find((x) => x.id === id);
        if (s?.exited_at) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(s.signal, "KILL");
    }
  });

  test("concurrent commands keep their own output and exit", async () => {
    const runs = Array.from({ length: 40 }, (_, i) => sb.run(["sh", "-c", `echo r${i}; exit ${i % 3}`]));
    const spawns = Array.from({ length: 20 }, async (_, i) => (await sb.spawn(["sh", "-c", `echo s${i}; exit ${i % 4}`])).wait());
    const [r, s] = await Promise.all([Promise.all(runs), Promise.all(spawns)]);
    r.forEach((x, i) => assert.deepEqual([x.stdout, x.exitCode], [`r${i}\n`, i % 3]));
    s.forEach((x, i) => assert.deepEqual([x.stdout, x.exitCode], [`s${i}\n`, i % 4]));
  });

  test("1,000 fast commands through spawn, no lost exit", async () => {
    for (let i = 0; i < 1000; i++) {
      const p = await sb.spawn(["sh", "-c", `echo ${i}; exit ${i % 5}`]);
      const r = await p.wait();
      assert.equal(r.exitCode, i % 5, `command ${i}`);
      assert.equal(r.stdout, `${i}\n`, `command ${i}`);
    }
  });

  test("sessions: list, attach with replay, kill", async () => {
    const p = await sb.spawn(["sh", "-c", "echo one; echo two; sleep 60"], { detachTimeoutS: 60 });
    const it = p[Symbol.asyncIterator]();
    let got = "";
    while (got !== "one\ntwo\n") got += (await it.next()).value.text;
    p.close();
    let info;
    for (let i = 0; i < 100; i++) {
      info = (await sb.sessions.list()).find((s) => s.id === p.id);
      if (info && !info.attached) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(info.attached, false);
    assert.equal(info.exited_at, undefined);

    const a = await sb.sessions.attach(p.id);
    assert.equal(a.id, p.id);
    assert.ok(a.replay.replayBytes >= 8);
    const ait = a[Symbol.asyncIterator]();
    let replayed = "";
    while (!replayed.includes("two\n")) replayed += (await ait.next()).value.text;
    assert.equal(replayed, "one\ntwo\n");
    await sb.sessions.kill(p.id, "TERM");
    const rest = [];
    for (let r = await ait.next(); !r.done; r = await ait.next()) rest.push(r.value);
    assert.equal(rest.at(-1).signal, "TERM");
    await assert.rejects(sb.sessions.attach("s-0000000000000000"), NotFoundError);
    // A finished session is gone: 410.
    await assert.rejects(sb.sessions.attach(p.id), (e) => e instanceof GoneError && e.code === "gone");
    await assert.rejects(sb.sessions.kill(p.id), GoneError);
  });
});

describe("files", () => {
  let sb;
  before(async () => {
    sb = await bw.create("files");
  });
  after(async () => {
    await sb.delete();
  });

  test("write and read bytes and text, mode, list, exists, rename, remove, makeDir", async () => {
    await sb.files.write("/srv/a/b.txt", "héllo");
    assert.equal(await sb.files.readText("/srv/a/b.txt"), "héllo");
    const bytes = new Uint8Array([0, 1, 2, 255]);
    await sb.files.write("/srv/a/bin", bytes, { mode: 0o750 });
    assert.deepEqual(await sb.files.read("/srv/a/bin"), bytes);
    const entries = await sb.files.list("/srv/a");
    assert.deepEqual(entries.map((e) => [e.name, e.type, e.size]), [["b.txt", "file", 6], ["bin", "file", 4]]);
    assert.equal(entries.find((e) => e.name === "bin").mode, 0o750);
    assert.equal((await sb.run("stat -c %a /srv/a/bin")).stdout, "750\n");
    assert.equal(await sb.files.exists("/srv/a/b.txt"), true);
    assert.equal(await sb.files.exists("/srv/a/nope"), false);
    assert.equal(await sb.files.exists("/nope/nope"), false);
    await sb.files.rename("/srv/a/b.txt", "/srv/a/c.txt");
    assert.equal(await sb.files.exists("/srv/a/b.txt"), false);
    assert.equal(await sb.files.readText("/srv/a/c.txt"), "héllo");
    const chunks = [];
    for await (const c of await sb.files.readStream("/srv/a/c.txt")) chunks.push(c);
    assert.equal(Buffer.concat(chunks).toString(), "héllo");
    await sb.files.makeDir("/srv/made/deep");
    assert.equal((await sb.files.list("/srv/made"))[0].type, "dir");
    await sb.files.remove("/srv/a/c.txt");
    await assert.rejects(sb.files.remove("/srv/a"), BurrowError); // not empty
    await sb.files.remove("/srv/a", { recursive: true });
    assert.equal(await sb.files.exists("/srv/a"), false);
    await assert.rejects(sb.files.read("/srv/a/bin"), (e) => e instanceof NotFoundError);
    await assert.rejects(sb.files.read("relative"), (e) => e instanceof InvalidRequestError && e.code === "bad_path");
  });

  test("a large upload and download checked by hash", async () => {
    const big = randomBytes(48 * 1024 * 1024);
    // Streamed up in 1 MiB chunks.
    async function* chunks() {
      for (let i = 0; i < big.length; i += 1 << 20) yield big.subarray(i, i + (1 << 20));
    }
    await sb.files.write("/root/big.bin", chunks());
    assert.equal((await sb.run("sha256sum /root/big.bin | cut -d' ' -f1")).stdout.trim(), sha256(big));
    const back = await sb.files.read("/root/big.bin");
    assert.equal(back.length, big.length);
    assert.equal(sha256(back), sha256(big));
  });

  test("directories up and down as tar, unpacked defensively", async () => {
    const src = mkdtempSync(join(tmpdir(), "tssdk-up-"));
    const dst = mkdtempSync(join(tmpdir(), "tssdk-down-"));
    try {
      mkdirSync(join(src, "sub/deeper"), { recursive: true });
      const payload = randomBytes(8 * 1024 * 1024);
      writeFileSync(join(src, "top.txt"), "top\n");
      writeFileSync(join(src, "sub/deeper/data.bin"), payload);
      await sb.files.uploadDir(src, "/srv/tree");
      assert.equal((await sb.run("cat /srv/tree/top.txt")).stdout, "top\n");
      assert.equal((await sb.run("sha256sum /srv/tree/sub/deeper/data.bin | cut -d' ' -f1")).stdout.trim(), sha256(payload));
      // Something hostile the sandbox adds: a setuid file and a symlink out of the tree.
      await sb.run("cp /bin/true /srv/tree/suid && chmod 4755 /srv/tree/suid && ln -s /etc/passwd /srv/tree/link && mkfifo /srv/tree/fifo && ln /srv/tree/top.txt /srv/tree/hard", { check: true });
      await sb.files.downloadDir("/srv/tree", dst);
      assert.deepEqual(readdirSync(dst).sort(), ["hard", "link", "sub", "suid", "top.txt"]); // no FIFO
      assert.equal(readFileSync(join(dst, "hard"), "utf8"), "top\n");
      assert.equal(readFileSync(join(dst, "top.txt"), "utf8"), "top\n");
      assert.equal(sha256(readFileSync(join(dst, "sub/deeper/data.bin"))), sha256(payload));
      assert.equal(lstatSync(join(dst, "suid")).mode & 0o7000, 0, "setuid bit dropped");
      assert.ok(lstatSync(join(dst, "link")).isSymbolicLink());
      const tarChunks = [];
      for await (const c of await sb.files.downloadTar("/srv/tree/top.txt")) tarChunks.push(c);
      assert.ok(Buffer.concat(tarChunks).includes(Buffer.from("top.txt")));
      await sb.files.uploadTar("/srv/again", Readable.from(tarChunks));
      assert.equal(await sb.files.readText("/srv/again/top.txt"), "top\n");
    } finally {
      rmSync(src, { recursive: true, force: true });
      rmSync(dst, { recursive: true, force: true });
    }
  });
});

describe("unpacking what a sandbox sends", () => {
  test("a hostile archive writes nothing outside the target and fails the copy", async () => {
    const root = mkdtempSync(join(tmpdir(), "tssdk-hostile-"));
    try {
      const outside = join(root, "outside");
      mkdirSync(outside);
      const dst = join(root, "dst");
      // Made with Python's tarfile, which writes whatever names it is given.
      execFileSync("python3", ["-c", `
import io, tarfile, sys
t = tarfile.open(sys.argv[1], "w")
def add(name, data=b"x", **kw):
    i = tarfile.TarInfo(name); i.size = len(data)
    for k, v in kw.items(): setattr(i, k, v)
    t.addfile(i, io.BytesIO(data))
d = tarfile.TarInfo("top"); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
add("top/ok.txt", b"fine")
add("top/../../escape.txt", b"escaped")
l = tarfile.TarInfo("top/link"); l.type = tarfile.SYMTYPE; l.linkname = sys.argv[2]; t.addfile(l)
add("top/link/pwned.txt", b"through the symlink")
add("top/suid", b"s", mode=0o4755)
t.close()
`, join(root, "evil.tar"), outside]);
      // (The positive control is "directories up and down" above: the same unpacking takes
      // the sandbox's own archive without complaint.)
      await assert.rejects(extractUntrusted(createReadStream(join(root, "evil.tar")), dst, "evil.tar"), (e) => e instanceof BurrowError && e.code === "unsafe_archive");
      assert.equal(readFileSync(join(dst, "ok.txt"), "utf8"), "fine");
      assert.equal(existsSync(join(root, "escape.txt")), false);
      assert.equal(existsSync(join(dst, "..", "escape.txt")), false);
      assert.deepEqual(readdirSync(outside), [], "nothing written through the symlink");
      assert.equal(lstatSync(join(dst, "suid")).mode & 0o7000, 0);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("checkpoints and forks", () => {
  test("checkpoint, list, get, restore (never destructive), delete, fork live and from a checkpoint", async () => {
    await withSb("cp", async (sb) => {
      await sb.files.write("/srv/state", "v0");
      const cp = await sb.checkpoint("clean");
      assert.equal(cp.id, "v0");
      assert.equal(cp.comment, "clean");
      await sb.run("rm -rf /srv; echo wrecked > /root/wreck");
      const r = await sb.restore(cp);
      assert.equal(r.restored, "v0");
      assert.equal(r.backup, "v1");
      assert.equal(await sb.files.readText("/srv/state"), "v0");
      assert.equal(await sb.files.exists("/root/wreck"), false);
      assert.deepEqual((await sb.checkpoints.list()).map((c) => [c.id, c.source]), [["v0", "api"], ["v1", "restore-backup"]]);
      assert.equal((await sb.checkpoints.get("v1")).source, "restore-backup");

      await sb.files.write("/srv/state", "live");
      const twin = await sb.fork("cp-live");
      const old = await sb.fork("cp-old", { checkpoint: "v0" });
      try {
        assert.equal(twin.info.parent.sandbox, "cp");
        assert.equal(await twin.files.readText("/srv/state"), "live");
        assert.equal(await old.files.readText("/srv/state"), "v0");
        assert.equal(old.info.parent.checkpoint, "v0");
      } finally {
        await twin.delete();
        await old.delete();
      }
      await sb.checkpoints.delete("v1");
      await assert.rejects(sb.checkpoints.get("v1"), NotFoundError);
      await assert.rejects(sb.restore("v9"), NotFoundError);
    });
  });
});

describe("services, url, events", () => {
  test("a web service: put, list, get, logs, reached through sb.fetch and its URL", async () => {
    await withSb("web", async (sb) => {
      await sb.files.write("/srv/www/index.html", "<h1>hello from web</h1>");
      const svc = await sb.services.put("app", { cmd: ["python3", "-m", "http.server", "8080"], cwd: "/srv/www", httpPort: 8080 });
      assert.equal(svc.name, "app");
      assert.deepEqual((await sb.services.list()).map((s) => s.name), ["app"]);
      await assert.rejects(sb.waitForPort(9, { timeoutMs: 100 }), TimeoutError); // nothing there
      await sb.waitForPort(8080);
      const res = await sb.fetch("/index.html");
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "<h1>hello from web</h1>");
      assert.equal((await sb.services.get("app")).status, "running");
      assert.match(await sb.services.logs("app"), /GET \/index.html/);

      // Its URL (http://web.localhost:PORT/) on the daemon's TCP listener, with a token.
      const url = new URL(sb.url);
      assert.equal(url.hostname, "web.localhost");
      const body = await new Promise((resolve, reject) => {
        const req = httpRequest(
          { host: "127.0.0.1", port: url.port, path: "/index.html", headers: { host: url.host, authorization: `Bearer ${d.token}` } },
          (r) => {
            let b = "";
            r.on("data", (c) => (b += c));
            r.on("end", () => resolve([r.statusCode, b]));
          },
        );
        req.on("error", reject);
        req.end();
      });
      assert.deepEqual(body, [200, "<h1>hello from web</h1>"]);

      // followLogs streams new lines.
      const ac = new AbortController();
      const follow = sb.services.followLogs("app", { signal: ac.signal });
      await (await sb.fetch("/followed")).arrayBuffer();
      let logged = "";
      for await (const chunk of follow) {
        logged += chunk;
        if (logged.includes("/followed")) ac.abort();
      }
      assert.match(logged, /GET \/followed/);

      // A raw TCP connection to the port, through the API's relay.
      const conn = await sb.openPort(8080);
      conn.end("GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n");
      let raw = "";
      for await (const c of conn) raw += c;
      assert.match(raw, /^HTTP\/1\.0 200/);
      assert.match(raw, /<h1>hello from web<\/h1>$/);
      await assert.rejects(sb.openPort(9), (e) => e instanceof BurrowError && e.code === "not_listening" && e.status === 502);

      assert.equal((await sb.services.stop("app")).status, "stopped");
      assert.equal((await sb.services.start("app")).name, "app");
      await sb.services.delete("app");
      await assert.rejects(sb.services.get("app"), NotFoundError);
    });
  });

  test("events replay and follow", async () => {
    await withSb("ev", async (sb) => {
      const ac = new AbortController();
      const kinds = [];
      const reader = (async () => {
        for await (const ev of sb.events({ since: 0, signal: ac.signal })) {
          kinds.push(ev.event);
          if (ev.event === "checkpoint") ac.abort();
        }
      })();
      await sb.checkpoint();
      await reader;
      assert.equal(kinds[0], "created");
      assert.ok(kinds.includes("checkpoint"));
    });
  });
});

describe("network policy, secrets, tokens", () => {
  test("network policy get and set; an invalid one is InvalidRequestError", async () => {
    await withSb("pol", async (sb) => {
      assert.deepEqual(await sb.getNetworkPolicy(), { mode: "open", rules: [] });
      const p = { mode: "policy", rules: [{ domain: "*.example.com", action: "allow" }, { domain: "*", action: "deny" }] };
      assert.deepEqual(await sb.setNetworkPolicy(p), p);
      assert.deepEqual(await sb.getNetworkPolicy(), p);
      await assert.rejects(sb.setNetworkPolicy({ mode: "bogus" }), InvalidRequestError);
    });
  });

  test("secrets: create, list, attach (the sandbox sees a placeholder), detach, delete", async () => {
    await withSb("sec", async (sb) => {
      const s = await bw.secrets.create({ name: "api-key", value: "s3cr3t-value", hosts: ["api.example.test"] });
      assert.equal(s.name, "api-key");
      assert.ok(!JSON.stringify(s).includes("s3cr3t-value"));
      assert.ok((await bw.secrets.list()).some((x) => x.name === "api-key"));
      await assert.rejects(bw.secrets.create({ name: "api-key", value: "x", hosts: ["a.test"] }), ConflictError);
      await sb.secrets.attach("api-key", { env: "API_KEY" });
      const seen = (await sb.run("echo $API_KEY")).stdout.trim();
      assert.match(seen, /^bm1_/);
      assert.ok(!seen.includes("s3cr3t-value"));
      assert.deepEqual(inspectToken(seen).caveats.filter((c) => c.startsWith("secret=")), ["secret=api-key"]);
      assert.deepEqual((await bw.secrets.get("api-key")).attached, [{ sandbox: "sec", env: "API_KEY" }]);
      await sb.secrets.detach("api-key");
      assert.equal((await sb.run("echo -n $API_KEY")).stdout, "");
      await bw.secrets.delete("api-key");
      await assert.rejects(bw.secrets.get("api-key"), NotFoundError);
    });
  });

  test("tokens: create with caveats, attenuate offline, inspect; the daemon enforces them", async () => {
    await withSb("tok-a", async (a) => {
      await withSb("tok-b", async () => {
        const { token } = await bw.tokens.create({ sandboxes: ["tok-a"], actions: ["read", "exec"], expiresAt: new Date(Date.now() + 3600_000) });
        assert.ok(inspectToken(token).caveats.includes("sandboxes=tok-a"));
        const scoped = await Burrow.connect({ url: d.url, token });
        assert.equal((await scoped.sandbox("tok-a").run("echo ok")).stdout, "ok\n");
        await assert.rejects(scoped.sandbox("tok-b").run("echo no"), (e) => e instanceof PermissionDeniedError && e.caveat === "sandboxes=tok-a");
        await assert.rejects(scoped.sandbox("tok-a").checkpoint(), PermissionDeniedError);
        await scoped.close();

        // Narrowed offline: read only. Exec is refused; reading the record still works.
        const readOnly = bw.tokens.attenuate(token, { actions: ["read"] });
        assert.deepEqual(inspectToken(readOnly).caveats.slice(-1), ["actions=read"]);
        assert.deepEqual(bw.tokens.inspect(readOnly), inspectToken(readOnly));
        assert.deepEqual(bw.tokens.caveatTexts({ sandboxes: ["x", "y"], actions: ["read"], expiresAt: "2030-01-01T00:00:00Z" }), [
          "sandboxes=x,y",
          "actions=read",
          "expires=1893456000",
        ]);
        assert.equal(attenuateToken(token, { actions: ["read"] }), readOnly);
        const ro = await Burrow.connect({ url: d.url, token: readOnly });
        assert.equal((await ro.get("tok-a")).name, "tok-a");
        await assert.rejects(ro.sandbox("tok-a").run("true"), (e) => e instanceof PermissionDeniedError && e.caveat === "actions=read");
        await ro.close();
        // Expired offline.
        const expired = bw.tokens.attenuate(d.token, { expiresAt: new Date(Date.now() - 1000) });
        const ex = await Burrow.connect({ url: d.url, token: expired });
        await assert.rejects(ex.list(), PermissionDeniedError);
        await ex.close();
        // A token whose signature was tampered with is 401.
        const w = JSON.parse(Buffer.from(readOnly.slice(4), "base64url"));
        w.c.pop();
        const widened = "bm1_" + Buffer.from(JSON.stringify(w)).toString("base64url");
        const wd = await Burrow.connect({ url: d.url, token: widened });
        await assert.rejects(wd.sandbox("tok-a").run("true"), AuthenticationError);
        await wd.close();
        assert.equal(typeof a.name, "string");
      });
    });
  });
});
