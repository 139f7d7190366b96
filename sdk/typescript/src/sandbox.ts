/**
 * A sandbox handle: lifecycle verbs, commands (`run`, `spawn`), sessions, files, checkpoints,
 * forks, services, its URL, network policy and secrets. Cheap to make: `bw.sandbox(name)`
 * sends nothing; methods talk to the daemon when called.
 */
import { fetch as undiciFetch, Headers, type RequestInit as UndiciRequestInit, type Response as UndiciResponse } from "undici";
import type { Transport } from "./transport.js";
import { Burrow, randomName, type ConnectOptions } from "./client.js";
import { ExecSession, MAX_QUERY_BYTES, type SpawnOptions } from "./exec.js";
import { Files } from "./files.js";
import { PortConnection } from "./relay.js";
import { queryString } from "./transport.js";
import { BurrowError, CommandError, RateLimitError, TimeoutError } from "./errors.js";
import { setTimeout as sleepTimer } from "node:timers/promises";
import type {
  Checkpoint,
  CreateOptions,
  NetworkPolicy,
  RestoreResult,
  SandboxEvent,
  SandboxInfo,
  Secret,
  Service,
  ServiceSpec,
  SessionInfo,
  UpdateOptions,
} from "./types.js";

/** A command: an argv array, or a shell string run with `/bin/sh -c`. */
export type Cmd = string | readonly string[];

export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Standard input (text as UTF-8, or bytes). */
  stdin?: string | Uint8Array;
  /** Kill the command after this many milliseconds and throw {@link TimeoutError}. */
  timeoutMs?: number;
  /** Aborting kills the command; `AbortSignal.timeout(ms)` throws {@link TimeoutError}. */
  signal?: AbortSignal;
  /** Throw {@link CommandError} (with stdout and stderr) when it exits non-zero. */
  check?: boolean;
  /** Cap on each of stdout and stderr in bytes (the server's default is 16 MiB). */
  maxOutputBytes?: number;
  /**
   * Called with output as it arrives (E2B's callbacks); the result still has all of it. With
   * either one the command runs over the streaming exec instead of the one-shot one.
   */
  onStdout?: (text: string, data: Uint8Array) => void;
  onStderr?: (text: string, data: Uint8Array) => void;
}

/** What a finished command printed and how it ended. */
export class CommandResult {
  readonly exitCode: number;
  /** The signal that ended it, if one did (`KILL` after a timeout). */
  readonly signal: string | undefined;
  /** Output as text (invalid UTF-8 replaced; see `stdoutBytes`). */
  readonly stdout: string;
  readonly stderr: string;
  readonly stdoutTruncated: boolean;
  readonly stderrTruncated: boolean;
  readonly timedOut: boolean;
  readonly durationMs: number;
  #b64: { out: string | undefined; err: string | undefined };

  /** @internal */
  constructor(r: ExecResultWire) {
    this.exitCode = r.exit_code;
    this.signal = r.signal;
    this.stdout = r.stdout;
    this.stderr = r.stderr;
    this.stdoutTruncated = r.stdout_truncated ?? false;
    this.stderrTruncated = r.stderr_truncated ?? false;
    this.timedOut = r.timed_out;
    this.durationMs = r.duration_ms;
    this.#b64 = { out: r.stdout_b64, err: r.stderr_b64 };
  }

  /** stdout exactly as written (binary-safe). */
  get stdoutBytes(): Uint8Array {
    return this.#b64.out !== undefined ? Buffer.from(this.#b64.out, "base64") : Buffer.from(this.stdout, "utf8");
  }

  get stderrBytes(): Uint8Array {
    return this.#b64.err !== undefined ? Buffer.from(this.#b64.err, "base64") : Buffer.from(this.stderr, "utf8");
  }

  /** True when it exited 0. */
  get ok(): boolean {
    return this.exitCode === 0 && !this.signal;
  }
}

interface ExecResultWire {
  exit_code: number;
  signal?: string;
  stdout: string;
  stderr: string;
  stdout_b64?: string;
  stderr_b64?: string;
  stdout_truncated?: boolean;
  stderr_truncated?: boolean;
  timed_out: boolean;
  duration_ms: number;
}

export function argv(cmd: Cmd): string[] {
  return typeof cmd === "string" ? ["/bin/sh", "-c", cmd] : [...cmd];
}

/** Waits `ms`, or rejects with the signal's reason when it aborts first. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return sleepTimer(ms, undefined, signal ? { signal } : undefined).catch((e: unknown) => {
    throw signal?.aborted ? signal.reason : e;
  });
}

function isTimeoutReason(reason: unknown): boolean {
  return (reason as { name?: string } | undefined)?.name === "TimeoutError";
}

/** Sessions: every exec is one; they may outlive their connection and be attached again. */
export class Sessions {
  #sb: Sandbox;
  /** @internal */
  constructor(sb: Sandbox) {
    this.#sb = sb;
  }

  /** Running and recently finished sessions, oldest first. */
  async list(): Promise<SessionInfo[]> {
    const r = await this.#sb.transport.json<{ sessions: SessionInfo[] }>("GET", `${this.#sb.path}/sessions`);
    return r.sessions;
  }

  /** Attaches to a running session: buffered output is replayed first (see `replay`), then live output. */
  async attach(id: string, opts: Pick<SpawnOptions, "onStdout" | "onStderr" | "signal"> = {}): Promise<ExecSession> {
    const { ws, opened } = this.#sb.transport.openWebSocket(`${this.#sb.path}/sessions/${encodeURIComponent(id)}/attach`);
    return ExecSession.open(ws, opened, opts, undefined, true);
  }

  /** Sends a signal (default KILL) to the session's process group. */
  async kill(id: string, signal?: string): Promise<void> {
    await this.#sb.transport.json("POST", `${this.#sb.path}/sessions/${encodeURIComponent(id)}/kill`, {
      json: signal === undefined ? {} : { signal },
    });
  }
}

/** Checkpoints of one sandbox (`v0`, `v1`, …): whole-disk snapshots, taken live. */
export class Checkpoints {
  #sb: Sandbox;
  /** @internal */
  constructor(sb: Sandbox) {
    this.#sb = sb;
  }

  /** Takes a checkpoint (same as `sb.checkpoint()`). */
  create(comment?: string, opts: { memory?: boolean } = {}): Promise<Checkpoint> {
    const body: Record<string, unknown> = {};
    if (comment !== undefined) body["comment"] = comment;
    if (opts.memory !== undefined) body["memory"] = opts.memory;
    return this.#sb.transport.json<Checkpoint>("POST", `${this.#sb.path}/checkpoints`, { json: body });
  }

  /** Oldest first. */
  async list(): Promise<Checkpoint[]> {
    const r = await this.#sb.transport.json<{ checkpoints: Checkpoint[] }>("GET", `${this.#sb.path}/checkpoints`);
    return r.checkpoints;
  }

  get(id: string): Promise<Checkpoint> {
    return this.#sb.transport.json<Checkpoint>("GET", `${this.#sb.path}/checkpoints/${encodeURIComponent(id)}`);
  }

  async delete(id: string): Promise<void> {
    await this.#sb.transport.json("DELETE", `${this.#sb.path}/checkpoints/${encodeURIComponent(id)}`);
  }

  /** Restores a checkpoint (same as `sb.restore()`); the replaced state is saved first. */
  restore(id: string | Checkpoint): Promise<RestoreResult> {
    const cid = typeof id === "string" ? id : id.id;
    return this.#sb.transport.json<RestoreResult>("POST", `${this.#sb.path}/checkpoints/${encodeURIComponent(cid)}/restore`);
  }
}

/** Services supervised inside the sandbox (restarted by policy, started on every boot). */
export class Services {
  #sb: Sandbox;
  /** @internal */
  constructor(sb: Sandbox) {
    this.#sb = sb;
  }

  #p(name: string): string {
    return `${this.#sb.path}/services/${encodeURIComponent(name)}`;
  }

  /** Defines or replaces a service; it starts at once. */
  put(name: string, spec: ServiceSpec): Promise<Service> {
    const body: Record<string, unknown> = { cmd: spec.cmd };
    if (spec.env) body["env"] = spec.env;
    if (spec.cwd) body["cwd"] = spec.cwd;
    if (spec.user) body["user"] = spec.user;
    if (spec.httpPort !== undefined) body["http_port"] = spec.httpPort;
    if (spec.restart) body["restart"] = spec.restart;
    if (spec.needs) body["needs"] = spec.needs;
    return this.#sb.transport.json<Service>("PUT", this.#p(name), { json: body });
  }

  async list(): Promise<Service[]> {
    const r = await this.#sb.transport.json<{ services: Service[] }>("GET", `${this.#sb.path}/services`);
    return r.services;
  }

  get(name: string): Promise<Service> {
    return this.#sb.transport.json<Service>("GET", this.#p(name));
  }

  start(name: string): Promise<Service> {
    return this.#sb.transport.json<Service>("POST", `${this.#p(name)}/start`);
  }

  stop(name: string): Promise<Service> {
    return this.#sb.transport.json<Service>("POST", `${this.#p(name)}/stop`);
  }

  async delete(name: string): Promise<void> {
    await this.#sb.transport.json("DELETE", this.#p(name));
  }

  /** The combined stdout/stderr the agent kept (the last 1 MiB), or its last `tail` lines. */
  async logs(name: string, opts: { tail?: number } = {}): Promise<string> {
    const r = await this.#sb.transport.ok("GET", `${this.#p(name)}/logs`, { query: { tail: opts.tail } });
    return r.body.text();
  }

  /** The log, then new output as it comes, until `signal` aborts or the iteration stops. */
  async *followLogs(name: string, opts: { tail?: number; signal?: AbortSignal } = {}): AsyncGenerator<string> {
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const r = await this.#sb.transport.ok("GET", `${this.#p(name)}/logs`, {
        query: { follow: true, tail: opts.tail },
        signal: ac.signal,
      });
      const dec = new TextDecoder();
      try {
        for await (const chunk of r.body) yield dec.decode(chunk as Uint8Array, { stream: true });
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      }
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      ac.abort();
    }
  }
}

/** Secrets attached to one sandbox: it sees a placeholder in an env variable, never the value. */
export class SandboxSecrets {
  #sb: Sandbox;
  /** @internal */
  constructor(sb: Sandbox) {
    this.#sb = sb;
  }

  /** Attaches secret `secret`: new processes see a placeholder in `env`. */
  attach(secret: string, opts: { env: string }): Promise<Secret> {
    return this.#sb.transport.json<Secret>("PUT", `${this.#sb.path}/secrets/${encodeURIComponent(secret)}`, { json: { env: opts.env } });
  }

  async detach(secret: string): Promise<void> {
    await this.#sb.transport.json("DELETE", `${this.#sb.path}/secrets/${encodeURIComponent(secret)}`);
  }
}

export class Sandbox {
  readonly name: string;
  /** The last record fetched (after create, get, a lifecycle verb or `refresh()`). */
  info: SandboxInfo | undefined;
  readonly files: Files;
  readonly sessions: Sessions;
  readonly checkpoints: Checkpoints;
  readonly services: Services;
  readonly secrets: SandboxSecrets;
  /** E2B-style alias: `sb.commands.run(…)`. */
  readonly commands: { run: Sandbox["run"]; spawn: Sandbox["spawn"] };
  /** @internal */
  readonly client: Burrow;
  /** @internal */
  readonly path: string;

  #ownsClient = false;

  /**
   * E2B-style: connects (as `Burrow.connect(opts)`) and creates a sandbox named `name` (a
   * random `sb-…` name by default). The sandbox owns that connection: `delete()` or
   * `close()` closes it.
   */
  static async create(opts: CreateOptions & ConnectOptions & { name?: string } = {}): Promise<Sandbox> {
    const { socket, url, token, name, ...rest } = opts;
    const bw = await Burrow.connect({ socket, url, token });
    try {
      const sb = await bw.create(name ?? randomName("sb"), rest);
      sb.#ownsClient = true;
      return sb;
    } catch (e) {
      await bw.close();
      throw e;
    }
  }

  /** E2B-style: connects and gets the existing sandbox `name` (it owns that connection). */
  static async connect(name: string, opts: ConnectOptions = {}): Promise<Sandbox> {
    const bw = await Burrow.connect(opts);
    try {
      const sb = await bw.get(name);
      sb.#ownsClient = true;
      return sb;
    } catch (e) {
      await bw.close();
      throw e;
    }
  }

  /** Closes the connection this sandbox made itself (`Sandbox.create/connect`); else nothing. */
  async close(): Promise<void> {
    if (this.#ownsClient) await this.client.close();
  }

  /** @internal Use `bw.sandbox(name)`, `bw.get(name)` or `bw.create(name)`. */
  constructor(client: Burrow, name: string, info?: SandboxInfo) {
    this.client = client;
    this.name = name;
    this.info = info;
    this.path = `/v1/sandboxes/${encodeURIComponent(name)}`;
    this.files = new Files(client.transport, this.path);
    this.sessions = new Sessions(this);
    this.checkpoints = new Checkpoints(this);
    this.services = new Services(this);
    this.secrets = new SandboxSecrets(this);
    this.commands = { run: this.run.bind(this), spawn: this.spawn.bind(this) };
  }

  /** @internal */
  get transport(): Transport {
    return this.client.transport;
  }

  get id(): string | undefined {
    return this.info?.id;
  }

  get status(): SandboxInfo["status"] | undefined {
    return this.info?.status;
  }

  /** Its web URL (`http://{name}.{base_domain}:{port}/`), reaching the service with an HTTP port. */
  get url(): string | undefined {
    return this.info?.url;
  }

  async #set(p: Promise<SandboxInfo>): Promise<SandboxInfo> {
    this.info = await p;
    return this.info;
  }

  /** Fetches the record again. */
  refresh(): Promise<SandboxInfo> {
    return this.#set(this.transport.json<SandboxInfo>("GET", this.path));
  }

  /** Changes labels, env, idle timeout, URL auth or resources (resources apply at the next start). */
  update(opts: UpdateOptions): Promise<SandboxInfo> {
    const body: Record<string, unknown> = {};
    const map: [keyof UpdateOptions, string][] = [
      ["labels", "labels"],
      ["env", "env"],
      ["idleTimeoutS", "idle_timeout_s"],
      ["coldAfterS", "cold_after_s"],
      ["urlAuth", "url_auth"],
      ["restart", "restart"],
      ["cpus", "cpus"],
      ["memoryMb", "memory_mb"],
      ["diskGb", "disk_gb"],
      ["pids", "pids"],
    ];
    for (const [k, w] of map) if (opts[k] !== undefined) body[w] = opts[k];
    return this.#set(this.transport.json<SandboxInfo>("PATCH", this.path, { json: body }));
  }

  #verb(verb: string, query?: Record<string, string>): Promise<SandboxInfo> {
    return this.#set(this.transport.json<SandboxInfo>("POST", `${this.path}/${verb}`, { query }));
  }

  start(): Promise<SandboxInfo> {
    return this.#verb("start");
  }
  /** Stops every process; the disk is kept. */
  stop(): Promise<SandboxInfo> {
    return this.#verb("stop");
  }
  restart(): Promise<SandboxInfo> {
    return this.#verb("restart");
  }
  /** Freezes every process (memory kept); `{mode: "cold"}` stops them (disk kept). */
  sleep(opts: { mode?: "warm" | "cold" } = {}): Promise<SandboxInfo> {
    return this.#verb("sleep", opts.mode ? { mode: opts.mode } : undefined);
  }
  wake(): Promise<SandboxInfo> {
    return this.#verb("wake");
  }

  /** Destroys the sandbox and its disk (its checkpoints too, unless a fork or image needs them). */
  async delete(): Promise<void> {
    try {
      await this.transport.json("DELETE", this.path);
    } finally {
      await this.close();
    }
  }

  /** E2B's name for {@link delete}. */
  kill(): Promise<void> {
    return this.delete();
  }

  /**
   * Runs a command to completion: `await sb.run(["python3", "-c", "print(6*7)"])` or
   * `await sb.run("ls | wc -l")` (a shell string). Resolves with its output and exit status
   * whatever the status, unless `check` is set.
   */
  async run(cmd: Cmd, opts: RunOptions = {}): Promise<CommandResult> {
    const args = argv(cmd);
    if (opts.onStdout || opts.onStderr) return this.#runStreaming(args, opts);
    const body: Record<string, unknown> = { cmd: args };
    if (opts.env) body["env"] = opts.env;
    if (opts.cwd) body["cwd"] = opts.cwd;
    if (opts.user) body["user"] = opts.user;
    if (typeof opts.stdin === "string") body["stdin"] = opts.stdin;
    else if (opts.stdin) body["stdin_b64"] = Buffer.from(opts.stdin).toString("base64");
    if (opts.timeoutMs !== undefined) body["timeout_s"] = opts.timeoutMs / 1000;
    if (opts.maxOutputBytes !== undefined) body["max_output_bytes"] = opts.maxOutputBytes;
    let wire: ExecResultWire;
    try {
      wire = await this.#execOnce(body, opts.signal);
    } catch (e) {
      if (opts.signal?.aborted && isTimeoutReason(opts.signal.reason)) {
        throw new TimeoutError(`command ${JSON.stringify(args)} timed out (its signal's timeout) and was killed`, { cause: opts.signal.reason });
      }
      throw e;
    }
    const r = new CommandResult(wire);
    if (r.timedOut) {
      throw new TimeoutError(`command ${JSON.stringify(args)} ran longer than ${opts.timeoutMs} ms and was killed`, {
        stdout: r.stdout,
        stderr: r.stderr,
      });
    }
    if (opts.check && !r.ok) throw new CommandError(args, r);
    return r;
  }

  /** `run` over the WebSocket exec, for output callbacks. Same result, errors and timeout. */
  async #runStreaming(args: string[], opts: RunOptions): Promise<CommandResult> {
    const started = Date.now();
    const ac = new AbortController();
    let timedOut = false;
    const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, opts.timeoutMs);
    const onAbort = () => ac.abort(opts.signal?.reason);
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    try {
      const p = await this.spawn(args, {
        env: opts.env,
        cwd: opts.cwd,
        user: opts.user,
        stdin: opts.stdin !== undefined,
        signal: ac.signal,
        onStdout: (text, data) => {
          out.push(Buffer.from(data));
          opts.onStdout?.(text, data);
        },
        onStderr: (text, data) => {
          err.push(Buffer.from(data));
          opts.onStderr?.(text, data);
        },
      });
      if (opts.stdin !== undefined) {
        await p.write(opts.stdin);
        await p.closeStdin();
      }
      const exit = await p.wait();
      const o = Buffer.concat(out);
      const e = Buffer.concat(err);
      const r = new CommandResult({
        exit_code: exit.exitCode,
        signal: exit.signal,
        stdout: o.toString("utf8"),
        stderr: e.toString("utf8"),
        stdout_b64: o.toString("base64"),
        stderr_b64: e.toString("base64"),
        timed_out: false,
        duration_ms: Date.now() - started,
      });
      if (opts.check && !r.ok) throw new CommandError(args, r);
      return r;
    } catch (e) {
      if (timedOut || (opts.signal?.aborted && isTimeoutReason(opts.signal.reason))) {
        throw new TimeoutError(`command ${JSON.stringify(args)} timed out and was killed`, {
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(err).toString("utf8"),
          cause: e,
        });
      }
      throw e;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * One `POST …/exec`. Dropping the connection kills the command, so aborting the request is
   * enough. When the daemon's output budget for one-shot execs is taken by other running
   * execs (429 `exec_budget_exhausted`: nothing was run) it is tried again, backing off from
   * 25 ms to the server's Retry-After, for up to a minute.
   */
  async #execOnce(body: Record<string, unknown>, signal: AbortSignal | undefined): Promise<ExecResultWire> {
    const giveUp = Date.now() + 60_000;
    for (let delay = 25; ; delay = delay * 2) {
      try {
        return await this.transport.json<ExecResultWire>("POST", `${this.path}/exec`, { json: body, signal });
      } catch (e) {
        if (!(e instanceof RateLimitError) || e.code !== "exec_budget_exhausted" || Date.now() > giveUp) throw e;
        const cap = (e.retryAfter ?? 1) * 1000;
        await sleep(Math.min(delay, cap) * (0.5 + Math.random()), signal);
      }
    }
  }

  /**
   * Starts a command and streams it: iterate the session for stdout / stderr / exit events,
   * write to its stdin, signal it, resize its terminal. Resolves once the process runs.
   */
  async spawn(cmd: Cmd, opts: SpawnOptions = {}): Promise<ExecSession> {
    const args = argv(cmd);
    const q: Record<string, string | number | boolean | string[] | undefined> = {
      cmd: args,
      tty: opts.tty ?? false,
      stdin: opts.stdin ?? true,
      cwd: opts.cwd,
      env: opts.env ? Object.entries(opts.env).map(([k, v]) => `${k}=${v}`) : undefined,
      cols: opts.cols,
      rows: opts.rows,
      user: opts.user,
      detach_timeout_s: opts.detachTimeoutS,
    };
    let start: unknown;
    if (queryString(q).length > MAX_QUERY_BYTES) {
      // Too long for a URL: the command travels in the first message instead.
      start = { type: "start", cmd: args, env: opts.env ?? {}, cwd: opts.cwd, user: opts.user };
      q["cmd"] = q["env"] = q["cwd"] = q["user"] = undefined;
    }
    const { ws, opened } = this.transport.openWebSocket(`${this.path}/exec`, q);
    return ExecSession.open(ws, opened, opts, start);
  }

  /** Takes a checkpoint of the whole disk (live: processes keep running). */
  checkpoint(comment?: string, opts: { memory?: boolean } = {}): Promise<Checkpoint> {
    return this.checkpoints.create(comment, opts);
  }

  /** Restores a checkpoint; the state it replaces is saved first as a new checkpoint (`backup`). */
  restore(checkpoint: string | Checkpoint): Promise<RestoreResult> {
    return this.checkpoints.restore(checkpoint);
  }

  /** A new sandbox from this one's live state, or from `checkpoint`. */
  fork(name: string, opts: CreateOptions & { checkpoint?: string | Checkpoint } = {}): Promise<Sandbox> {
    const { checkpoint, ...rest } = opts;
    const cp = checkpoint === undefined ? undefined : typeof checkpoint === "string" ? checkpoint : checkpoint.id;
    return this.client.create(name, { ...rest, from: cp === undefined ? { sandbox: this.name } : { sandbox: this.name, checkpoint: cp } });
  }

  /**
   * A TCP connection to `port` on the sandbox's loopback address, as a Node `Duplex` (over
   * the API's WebSocket relay; `end()` half-closes). Fails before any byte with the server's
   * error, e.g. UnavailableError `not_listening` when nothing listens there.
   */
  async openPort(port: number): Promise<PortConnection> {
    const { ws, opened } = this.transport.openWebSocket(`${this.path}/proxy/${port}`);
    const conn = new PortConnection(ws);
    await opened;
    return conn;
  }

  /**
   * Waits until something accepts TCP connections on `port` inside the sandbox (a service
   * just started), probing through the relay, for at most `timeoutMs` (default 30 s: then
   * TimeoutError).
   */
  async waitForPort(port: number, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
      try {
        const conn = await this.openPort(port);
        conn.destroy();
        return;
      } catch (e) {
        if (!(e instanceof BurrowError) || e.code !== "not_listening") throw e;
        if (Date.now() + delay > deadline) {
          throw new TimeoutError(`nothing listened on port ${port} of sandbox '${this.name}' within ${opts.timeoutMs ?? 30_000} ms`, { cause: e });
        }
        await sleep(delay, opts.signal);
      }
    }
  }

  /** The sandbox's network policy. */
  getNetworkPolicy(): Promise<NetworkPolicy> {
    return this.transport.json<NetworkPolicy>("GET", `${this.path}/policy/network`);
  }

  /** Replaces the network policy (a running sandbox is under it at once). */
  setNetworkPolicy(policy: NetworkPolicy): Promise<NetworkPolicy> {
    return this.transport.json<NetworkPolicy>("PUT", `${this.path}/policy/network`, { json: policy });
  }

  /**
   * An HTTP request to the sandbox's web app through the API (`/v1/sandboxes/{name}/http/…`),
   * over whichever transport this client uses. Returns a standard `Response`.
   */
  fetch(path: string, init: UndiciRequestInit = {}): Promise<UndiciResponse> {
    const p = path.startsWith("/") ? path : `/${path}`;
    const headers = new Headers(init.headers);
    for (const [k, v] of Object.entries(this.transport.headers())) if (!headers.has(k)) headers.set(k, v);
    return undiciFetch(`${this.transport.origin}${this.path}/http${p}`, {
      ...init,
      headers: Object.fromEntries(headers.entries()),
      dispatcher: this.transport.agent,
    });
  }

  /**
   * The sandbox's events (state changes, sessions, checkpoints, …) as they happen; `since: 0`
   * replays the remembered ones first. Ends when `signal` aborts or the iteration stops.
   */
  async *events(opts: { since?: number; signal?: AbortSignal } = {}): AsyncGenerator<SandboxEvent> {
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const r = await this.transport.ok("GET", `${this.path}/events`, {
        query: { since: opts.since },
        headers: { accept: "text/event-stream" },
        signal: ac.signal,
      });
      const dec = new TextDecoder();
      let buf = "";
      let ev: { id?: string; event?: string; data: string[] } = { data: [] };
      try {
        for await (const chunk of r.body) {
          buf += dec.decode(chunk as Uint8Array, { stream: true });
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl).replace(/\r$/, "");
            buf = buf.slice(nl + 1);
            if (line === "") {
              if (ev.data.length > 0 || ev.event) {
                let data: SandboxEvent["data"] = {};
                try {
                  data = JSON.parse(ev.data.join("\n")) as SandboxEvent["data"];
                } catch {
                  data = { raw: ev.data.join("\n") };
                }
                yield { id: ev.id, event: ev.event ?? "message", data };
              }
              ev = { data: [] };
              continue;
            }
            if (line.startsWith(":")) continue;
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "data") ev.data.push(value);
            else if (field === "event") ev.event = value;
            else if (field === "id") ev.id = value;
          }
        }
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      }
    } finally {
      opts.signal?.removeEventListener("abort", onAbort);
      ac.abort();
    }
  }

  /** @internal A readable description for errors. */
  toString(): string {
    return `Sandbox(${this.name})`;
  }
}

