/**
 * The wire: HTTP through undici (its Agent connects to a unix socket with `connect.socketPath`,
 * or to TCP), WebSockets through `ws` (which speaks `ws+unix:` for unix sockets). Nothing here
 * knows what a sandbox is; it sends requests and maps error answers to typed errors.
 */
import { Agent, type Dispatcher } from "undici";
import WebSocket from "ws";
import type { Readable } from "node:stream";
import { ConnectionError, errorFromResponse, BurrowError } from "./errors.js";

/** Where the daemon is. */
export type Target = { kind: "unix"; socket: string } | { kind: "tcp"; url: string; token: string | undefined };

export type Query = Record<string, string | number | boolean | undefined | null | (string | number)[]>;

export interface RequestOptions {
  query?: Query;
  /** A JSON body (sent with `Content-Type: application/json`). */
  json?: unknown;
  /** A raw body. */
  body?: string | Uint8Array | Readable | AsyncIterable<Uint8Array>;
  contentType?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData["body"];
}

const UA = "burrow-sdk-typescript/0.1.0";

export function queryString(q: Query | undefined): string {
  if (!q) return "";
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined || v === null) continue;
    if (Array.isArray(v)) for (const x of v) p.append(k, String(x));
    else p.append(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : "";
}

export class Transport {
  readonly target: Target;
  readonly agent: Agent;
  /** The HTTP origin requests are sent to (`http://burrow` over a unix socket). */
  readonly origin: string;
  #auth: string | undefined;

  constructor(target: Target) {
    this.target = target;
    if (target.kind === "unix") {
      this.agent = new Agent({ connect: { socketPath: target.socket }, keepAliveTimeout: 4_000 });
      this.origin = "http://burrow";
    } else {
      let u: URL;
      try {
        u = new URL(target.url);
      } catch {
        throw new ConnectionError(`BURROW_URL '${target.url}' is not a URL, e.g. http://127.0.0.1:7440`, { code: "config" });
      }
      if (u.protocol !== "http:") {
        throw new ConnectionError(`BURROW_URL '${target.url}' must start with http://, e.g. http://127.0.0.1:7440`, { code: "config" });
      }
      this.agent = new Agent({ keepAliveTimeout: 4_000 });
      this.origin = u.origin;
    }
    this.#auth = target.kind === "tcp" && target.token ? `Bearer ${target.token}` : undefined;
  }

  /** Where this transport connects, for messages. */
  describe(): string {
    return this.target.kind === "unix" ? `unix socket ${this.target.socket}` : this.origin;
  }

  headers(extra?: Record<string, string>): Record<string, string> {
    const h: Record<string, string> = { "user-agent": UA, ...extra };
    if (this.#auth) h["authorization"] = this.#auth;
    return h;
  }

  connectError(e: unknown): BurrowError {
    const code = (e as { code?: string })?.code;
    const hint =
      this.target.kind === "unix"
        ? "is burrowd running? Set BURROW_SOCKET=/path/to/burrowd.sock, or BURROW_URL=http://host:7440 and BURROW_TOKEN=<token>"
        : "is burrowd listening there?";
    return new ConnectionError(`cannot reach burrowd at ${this.describe()} (${code ?? String(e)}): ${hint}`, {
      code: "connection",
      cause: e,
    });
  }

  /** Sends a request; any status is returned (the caller checks it). */
  async raw(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions = {}): Promise<RawResponse> {
    const headers = this.headers(opts.headers);
    let body: Dispatcher.DispatchOptions["body"] = null;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["content-type"] = "application/json";
    } else if (opts.body !== undefined) {
      body = opts.body as Dispatcher.DispatchOptions["body"];
      if (opts.contentType) headers["content-type"] = opts.contentType;
    }
    try {
      const r = await this.agent.request({
        origin: this.origin,
        path: path + queryString(opts.query),
        method,
        headers,
        body,
        signal: opts.signal ?? null,
      });
      return { status: r.statusCode, headers: r.headers, body: r.body };
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      const code = (e as { code?: string })?.code;
      if (code && /^(ENOENT|ECONNREFUSED|EACCES|EHOSTUNREACH|ETIMEDOUT|UND_ERR_CONNECT_TIMEOUT)$/.test(code)) {
        throw this.connectError(e);
      }
      if (code && /^(ECONNRESET|EPIPE|UND_ERR_SOCKET|UND_ERR_CLOSED)$/.test(code)) {
        throw new ConnectionError(`the connection to burrowd at ${this.describe()} was lost during ${method} ${path} (${code})`, {
          code: "connection_lost",
          cause: e,
        });
      }
      throw e;
    }
  }

  /** Sends a request and throws the typed error of a non-2xx answer; returns the response. */
  async ok(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions = {}): Promise<RawResponse> {
    const r = await this.raw(method, path, opts);
    if (r.status >= 200 && r.status < 300) return r;
    const text = await r.body.text();
    throw errorFromResponse(r.status, text, r.headers);
  }

  /** A JSON answer (`undefined` for 204). */
  async json<T>(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions = {}): Promise<T> {
    const r = await this.ok(method, path, opts);
    if (r.status === 204) {
      await r.body.dump();
      return undefined as T;
    }
    return (await r.body.json()) as T;
  }

  /**
   * Starts opening a WebSocket to `path`. The socket is returned at once so that the caller
   * attaches its listeners before any frame can arrive (the first frames may come in the same
   * read as the upgrade answer); `opened` settles with the handshake, a refused upgrade being
   * the server's typed error.
   */
  openWebSocket(path: string, query?: Query): { ws: WebSocket; opened: Promise<void> } {
    const pathQ = path + queryString(query);
    const url =
      this.target.kind === "unix" ? `ws+unix://${this.target.socket}:${pathQ}` : `${this.origin.replace(/^http/, "ws")}${pathQ}`;
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      headers: this.headers(),
      maxPayload: 256 * 1024 * 1024,
    });
    const opened = new Promise<void>((resolve, reject) => {
      let settled = false;
      ws.once("open", () => {
        settled = true;
        resolve();
      });
      ws.once("unexpected-response", (req, res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          settled = true;
          reject(errorFromResponse(res.statusCode ?? 0, Buffer.concat(chunks).toString("utf8"), res.headers));
          req.destroy();
        });
        res.on("error", () => undefined);
      });
      ws.on("error", (e) => {
        if (settled) return;
        settled = true;
        const code = (e as { code?: string }).code;
        reject(code && /^(ENOENT|ECONNREFUSED|EACCES)$/.test(code) ? this.connectError(e) : e);
      });
    });
    // Whoever awaits `opened` sees the failure; this only keeps it from being unhandled.
    opened.catch(() => undefined);
    return { ws, opened };
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
