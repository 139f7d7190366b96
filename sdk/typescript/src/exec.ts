/**
 * Streaming exec over the WebSocket (`GET …/exec`, `…/sessions/{id}/attach`).
 *
 * Binary frames are `[stream byte][payload]`: 0 stdin and 4 stdin EOF (to the server),
 * 1 stdout and 2 stderr (from it). Text frames are JSON: `session` first, `exit` last (always,
 * before a normal close), `error`, `replay` on attach; `resize`, `signal` and `start` from the
 * client. A connection that ends without the exit frame is a {@link ProtocolError}, never a
 * silent success.
 */
import type WebSocket from "ws";
import { ProtocolError, TimeoutError, errorFromResponse } from "./errors.js";

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const STDIN_EOF = 4;

/** Something a running command produced. */
export type ExecEvent =
  | { type: "stdout"; data: Uint8Array; text: string }
  | { type: "stderr"; data: Uint8Array; text: string }
  /** The session cannot go on (an exit event still follows when the status is known); `text` is the message. */
  | { type: "error"; code: string; message: string; text: string }
  | { type: "exit"; exitCode: number; signal: string | undefined; reason: string | undefined };

/** The end of a command: its status and the output that was not consumed by an iterator. */
export interface ExecExit {
  exitCode: number;
  /** The signal that ended it (`KILL`, `TERM`, …), if one did. */
  signal: string | undefined;
  /** Why the sandbox ended it (stop, restore, delete), when it did. */
  reason: string | undefined;
  stdout: string;
  stderr: string;
}

export interface SpawnOptions {
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** Run under a pseudo-terminal (all output arrives as stdout). */
  tty?: boolean;
  /** Terminal size (TTY). */
  cols?: number;
  rows?: number;
  /** Keep stdin open for {@link ExecSession.write}; default true. When false the process gets an empty stdin. */
  stdin?: boolean;
  /** Seconds the process may outlive the connection (default: 0, or 300 with a TTY). */
  detachTimeoutS?: number;
  /** Called with each chunk of stdout / stderr as it arrives (in addition to the iterator). */
  onStdout?: (text: string, data: Uint8Array) => void;
  onStderr?: (text: string, data: Uint8Array) => void;
  /** Aborting kills the process (KILL) and closes the connection; iterating or waiting then
   * throws the abort's reason (a {@link TimeoutError} for `AbortSignal.timeout()`). */
  signal?: AbortSignal;
}

/** The longest URL query the SDK sends; a longer command goes in a `start` frame. */
export const MAX_QUERY_BYTES = 4096;

type Waiter = { resolve: (v: IteratorResult<ExecEvent>) => void; reject: (e: unknown) => void };

/**
 * A running command (a session). Iterate it (`for await (const ev of p)`) for its output and
 * exit, or `await p.wait()`; write to its stdin, signal it, resize its terminal.
 */
export class ExecSession implements AsyncIterable<ExecEvent> {
  /** The session id (`s-…`): list, attach and kill it through `sb.sessions`. */
  id = "";
  /** Its process id inside the sandbox. */
  pid: number | undefined;
  tty = false;
  /** On attach: how many buffered bytes are replayed first and how many older ones were dropped. */
  replay: { replayBytes: number; droppedBytes: number } | undefined;

  #ws: WebSocket;
  #queue: ExecEvent[] = [];
  #waiters: Waiter[] = [];
  #failure: unknown;
  #done = false;
  #exit: ExecExit | undefined;
  #exitWaiters: { resolve: (e: ExecExit) => void; reject: (e: unknown) => void }[] = [];
  #iterating = false;
  #paused = false;
  #dec = { out: new TextDecoder(), err: new TextDecoder() };
  #opts: SpawnOptions;
  #started: Promise<void>;
  #failStart: (e: unknown) => void = () => undefined;
  /** Set when the spawn's signal aborted: every later wait or read throws it. */
  #aborted: unknown;
  /** Aborting the spawn's signal kills the process and drops the connection. */
  #onAbort = (): void => {
    if (this.#exit || this.#aborted) return; // finished before: nothing to abort
    const reason: unknown = this.#opts.signal?.reason;
    this.#aborted =
      (reason as { name?: string } | undefined)?.name === "TimeoutError"
        ? new TimeoutError("the command ran past its signal's timeout and was killed", { cause: reason })
        : reason; // as fetch does: the abort's reason
    this.#failStart(this.#aborted);
    this.#fail(this.#aborted);
    void this.kill("KILL").catch(() => undefined);
    this.#ws.close();
  };

  /** @internal */
  constructor(ws: WebSocket, opened: Promise<void>, opts: SpawnOptions, startFrame?: unknown, awaitReplay = false) {
    this.#ws = ws;
    this.#opts = opts;
    let gotSession!: () => void;
    let failStart!: (e: unknown) => void;
    this.#started = new Promise<void>((res, rej) => {
      gotSession = res;
      failStart = rej;
    });
    this.#failStart = failStart;
    let sessionSeen = false;
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        const stream = data[0];
        const payload = data.subarray(1);
        if (stream === STDOUT) {
          const text = this.#dec.out.decode(payload, { stream: true });
          this.#opts.onStdout?.(text, payload);
          this.#push({ type: "stdout", data: payload, text });
        } else if (stream === STDERR) {
          const text = this.#dec.err.decode(payload, { stream: true });
          this.#opts.onStderr?.(text, payload);
          this.#push({ type: "stderr", data: payload, text });
        }
        // Unknown streams are skipped, so a newer server can add some.
        return;
      }
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(data.toString("utf8")) as Record<string, unknown>;
      } catch {
        return;
      }
      switch (msg["type"]) {
        case "session":
          this.id = String(msg["id"]);
          this.pid = typeof msg["pid"] === "number" ? msg["pid"] : undefined;
          this.tty = msg["tty"] === true;
          sessionSeen = true;
          // An attach is ready once its replay notice (sent right after) is in too.
          if (!awaitReplay) gotSession();
          break;
        case "replay":
          this.replay = { replayBytes: Number(msg["replay_bytes"] ?? 0), droppedBytes: Number(msg["dropped_bytes"] ?? 0) };
          if (awaitReplay && sessionSeen) gotSession();
          break;
        case "error": {
          const code = String(msg["code"] ?? "error");
          const message = String(msg["message"] ?? "");
          if (!sessionSeen) {
            // The command could not start: the same error the one-shot exec would answer.
            const status = typeof msg["status"] === "number" ? msg["status"] : 500;
            failStart(errorFromResponse(status, JSON.stringify({ error: { code, message } })));
            return;
          }
          this.#push({ type: "error", code, message, text: message });
          break;
        }
        case "exit": {
          const exitCode = Number(msg["exit_code"]);
          const signal = typeof msg["signal"] === "string" ? msg["signal"] : undefined;
          const reason = typeof msg["reason"] === "string" ? msg["reason"] : undefined;
          this.#push({ type: "exit", exitCode, signal, reason });
          this.#finishExit({ exitCode, signal, reason, stdout: "", stderr: "" });
          break;
        }
        default:
          break;
      }
    });
    ws.on("close", () => {
      opts.signal?.removeEventListener("abort", this.#onAbort);
      if (this.#exit || this.#aborted) return;
      const e = new ProtocolError(
        this.#failure ? String(this.#failure) : "the exec connection closed before the command's exit frame",
        { code: "no_exit_frame", cause: this.#failure },
      );
      failStart(e);
      this.#fail(e);
    });
    ws.on("error", (e) => {
      this.#failure = e;
    });
    if (opts.signal) {
      if (opts.signal.aborted) this.#onAbort();
      else opts.signal.addEventListener("abort", this.#onAbort, { once: true });
    }
    opened.then(
      () => {
        if (startFrame !== undefined) ws.send(JSON.stringify(startFrame));
      },
      (e: unknown) => {
        // A refused upgrade: the server's error, not "closed before the exit frame".
        failStart(e);
        this.#fail(e);
      },
    );
  }

  /** Resolves once the server confirmed the session (its `session` frame). @internal */
  started(): Promise<void> {
    return this.#started;
  }

  /** @internal Opens a session: `ws` was just created, nothing has been read from it yet. */
  static async open(
    ws: WebSocket,
    opened: Promise<void>,
    opts: SpawnOptions,
    startFrame?: unknown,
    awaitReplay = false,
  ): Promise<ExecSession> {
    const s = new ExecSession(ws, opened, opts, startFrame, awaitReplay);
    try {
      await s.started();
    } catch (e) {
      ws.terminate();
      throw e;
    }
    return s;
  }

  #push(ev: ExecEvent): void {
    const w = this.#waiters.shift();
    if (w) {
      w.resolve({ value: ev, done: false });
      return;
    }
    this.#queue.push(ev);
    // Nobody reads: stop reading the socket until they do (TCP backpressure to the sandbox).
    if (this.#queue.length > 256 && !this.#paused) {
      this.#paused = true;
      this.#ws.pause();
    }
  }

  #finishExit(exit: ExecExit): void {
    this.#exit = exit;
    this.#done = true;
    for (const w of this.#exitWaiters.splice(0)) w.resolve(exit);
    // The server closes after the exit frame; close our side too so nothing lingers.
    this.#ws.close();
  }

  #fail(e: unknown): void {
    this.#done = true;
    for (const w of this.#waiters.splice(0)) w.reject(e);
    for (const w of this.#exitWaiters.splice(0)) w.reject(e);
    this.#failure = e;
  }

  #next(): Promise<IteratorResult<ExecEvent>> {
    if (this.#aborted) return Promise.reject(this.#aborted);
    const ev = this.#queue.shift();
    if (ev) {
      if (this.#paused && this.#queue.length < 64) {
        this.#paused = false;
        this.#ws.resume();
      }
      return Promise.resolve({ value: ev, done: false });
    }
    if (this.#done) {
      if (this.#exit) return Promise.resolve({ value: undefined, done: true });
      return Promise.reject(this.#failure);
    }
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  /** Output and exit events, in order; ends after the exit event. */
  [Symbol.asyncIterator](): AsyncIterator<ExecEvent> {
    this.#iterating = true;
    let finished = false;
    return {
      next: async () => {
        if (finished) return { value: undefined, done: true };
        const r = await this.#next();
        if (r.done || r.value.type === "exit") {
          finished = true;
          this.#iterating = false;
        }
        return r;
      },
      return: async () => {
        finished = true;
        this.#iterating = false;
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * Waits for the exit. When nobody iterates, the output read meanwhile is collected into
   * `stdout` / `stderr` of the result; events already taken by an iterator are not repeated.
   */
  async wait(): Promise<ExecExit> {
    if (this.#aborted) throw this.#aborted;
    if (this.#iterating) {
      if (this.#exit) return this.#exit;
      return new Promise((resolve, reject) => this.#exitWaiters.push({ resolve, reject }));
    }
    const out: string[] = [];
    const err: string[] = [];
    for (;;) {
      const r = await this.#next();
      if (r.done) break;
      const ev = r.value;
      if (ev.type === "stdout") out.push(ev.text);
      else if (ev.type === "stderr") err.push(ev.text);
      else if (ev.type === "exit") break;
    }
    const exit = this.#exit!;
    return { ...exit, stdout: out.join("") + this.#dec.out.decode(), stderr: err.join("") + this.#dec.err.decode() };
  }

  /** The exit status once known (after the exit event). */
  get exitCode(): number | undefined {
    return this.#exit?.exitCode;
  }

  #send(data: Buffer | string): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.#ws.readyState !== this.#ws.OPEN) {
        reject(new ProtocolError("the session's connection is closed", { code: "closed" }));
        return;
      }
      this.#ws.send(data, (e) => (e ? reject(e) : resolve()));
    });
  }

  /** Writes to the process's stdin (or terminal). */
  write(data: string | Uint8Array): Promise<void> {
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    if (bytes.length === 0) return Promise.resolve();
    const frame = Buffer.allocUnsafe(bytes.length + 1);
    frame[0] = STDIN;
    frame.set(bytes, 1);
    return this.#send(frame);
  }

  /** Closes the process's stdin (EOF). */
  closeStdin(): Promise<void> {
    return this.#send(Buffer.from([STDIN_EOF]));
  }

  /** Tells the process its terminal's new size. */
  resize(cols: number, rows: number): Promise<void> {
    return this.#send(JSON.stringify({ type: "resize", cols, rows }));
  }

  /** Sends a signal (`TERM`, `SIGINT`, `9`, …) to the process. */
  signal(signal: string): Promise<void> {
    return this.#send(JSON.stringify({ type: "signal", signal }));
  }

  /** Sends a signal, KILL by default (E2B's `handle.kill()`). */
  kill(signal = "KILL"): Promise<void> {
    return this.signal(signal);
  }

  /** Drops the connection: the process is killed unless it may outlive it (`detachTimeoutS`, TTY). */
  close(): void {
    this.#ws.close();
  }
}
