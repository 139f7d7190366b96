/**
 * The entry point: `await Burrow.connect()` finds the daemon the way the `burrow` CLI does
 * (`BURROW_SOCKET`, else `BURROW_URL` + `BURROW_TOKEN`, else `/run/burrow/burrowd.sock`).
 */
import { randomBytes } from "node:crypto";
import { Transport, type Target } from "./transport.js";
import { Sandbox } from "./sandbox.js";
import { NotFoundError } from "./errors.js";
import { attenuateToken, inspectToken, caveatTexts } from "./macaroon.js";
import type { Caveats, CreateOptions, CreateSecretOptions, Image, ListOptions, SandboxInfo, Secret, VersionInfo } from "./types.js";

/** The daemon's default unix socket (as the CLI's). */
export const DEFAULT_SOCKET = "/run/burrow/burrowd.sock";

export interface ConnectOptions {
  /** A unix socket path (no token needed; root only). */
  socket?: string;
  /** `http://host:port` (needs `token`). */
  url?: string;
  token?: string;
}

function targetFrom(opts: ConnectOptions): Target {
  const env = (k: string) => {
    const v = process.env[k];
    return v && v.trim() ? v.trim() : undefined;
  };
  if (opts.socket) return { kind: "unix", socket: opts.socket };
  if (opts.url) return { kind: "tcp", url: opts.url, token: opts.token ?? env("BURROW_TOKEN") };
  const sock = env("BURROW_SOCKET");
  if (sock) return { kind: "unix", socket: sock };
  const url = env("BURROW_URL");
  if (url) return { kind: "tcp", url, token: opts.token ?? env("BURROW_TOKEN") };
  return { kind: "unix", socket: DEFAULT_SOCKET };
}

function createBody(name: string, o: CreateOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { name };
  const map: [keyof CreateOptions, string][] = [
    ["image", "image"],
    ["engine", "engine"],
    ["from", "from"],
    ["cpus", "cpus"],
    ["memoryMb", "memory_mb"],
    ["diskGb", "disk_gb"],
    ["pids", "pids"],
    ["env", "env"],
    ["labels", "labels"],
    ["idleTimeoutS", "idle_timeout_s"],
    ["coldAfterS", "cold_after_s"],
    ["urlAuth", "url_auth"],
    ["restart", "restart"],
  ];
  for (const [k, w] of map) if (o[k] !== undefined) body[w] = o[k];
  return body;
}

/** Images: `base`, templates made from checkpoints, builds and imports. */
export class Images {
  #t: Transport;
  /** @internal */
  constructor(t: Transport) {
    this.#t = t;
  }
  async list(): Promise<Image[]> {
    return (await this.#t.json<{ images: Image[] }>("GET", "/v1/images")).images;
  }
  /** A template from a sandbox's checkpoint (or its current state). */
  create(name: string, from: { sandbox: string; checkpoint?: string }): Promise<Image> {
    return this.#t.json<Image>("POST", "/v1/images", { json: { name, from } });
  }
  async delete(name: string): Promise<void> {
    await this.#t.json("DELETE", `/v1/images/${encodeURIComponent(name)}`);
  }
}

/** Secrets for the credential proxy; values are sealed on arrival and never returned. */
export class Secrets {
  #t: Transport;
  /** @internal */
  constructor(t: Transport) {
    this.#t = t;
  }
  create(opts: CreateSecretOptions): Promise<Secret> {
    const body: Record<string, unknown> = { name: opts.name, value: opts.value, hosts: opts.hosts };
    if (opts.inject) body["inject"] = opts.inject;
    return this.#t.json<Secret>("POST", "/v1/secrets", { json: body });
  }
  async list(): Promise<Secret[]> {
    return (await this.#t.json<{ secrets: Secret[] }>("GET", "/v1/secrets")).secrets;
  }
  get(name: string): Promise<Secret> {
    return this.#t.json<Secret>("GET", `/v1/secrets/${encodeURIComponent(name)}`);
  }
  async delete(name: string): Promise<void> {
    await this.#t.json("DELETE", `/v1/secrets/${encodeURIComponent(name)}`);
  }
}

/** API tokens (macaroons). */
export class Tokens {
  #t: Transport;
  /** @internal */
  constructor(t: Transport) {
    this.#t = t;
  }
  /** A new token with this client's caveats plus these. */
  create(caveats: Caveats = {}): Promise<{ token: string; caveats: string[] }> {
    const c: Record<string, unknown> = {};
    if (caveats.sandboxes) c["sandboxes"] = caveats.sandboxes;
    if (caveats.actions) c["actions"] = caveats.actions;
    if (caveats.expiresAt !== undefined) {
      c["expires_at"] = (caveats.expiresAt instanceof Date ? caveats.expiresAt : new Date(caveats.expiresAt)).toISOString();
    }
    return this.#t.json("POST", "/v1/tokens", { json: { caveats: c } });
  }
  /** A narrower token, made offline (no request): the daemon enforces every caveat. */
  attenuate(token: string, caveats: Caveats): string {
    return attenuateToken(token, caveats);
  }
  /** A token's id and caveats as written (unverified). */
  inspect(token: string): { id: string; caveats: string[] } {
    return inspectToken(token);
  }
  /** The caveat texts `caveats` becomes. */
  caveatTexts(caveats: Caveats): string[] {
    return caveatTexts(caveats);
  }
}

/** A client of one burrowd. */
export class Burrow {
  /** @internal */
  readonly transport: Transport;
  readonly images: Images;
  readonly secrets: Secrets;
  readonly tokens: Tokens;
  /** `bw.sandboxes.create(…)` etc., for those who like a namespace. */
  readonly sandboxes: {
    create: Burrow["create"];
    get: Burrow["get"];
    list: Burrow["list"];
    delete: Burrow["delete"];
  };

  /** @internal Use `await Burrow.connect()`. */
  constructor(transport: Transport) {
    this.transport = transport;
    this.images = new Images(transport);
    this.secrets = new Secrets(transport);
    this.tokens = new Tokens(transport);
    this.sandboxes = {
      create: this.create.bind(this),
      get: this.get.bind(this),
      list: this.list.bind(this),
      delete: this.delete.bind(this),
    };
  }

  /**
   * Connects to burrowd and checks that it answers: `opts`, else `BURROW_SOCKET`, else
   * `BURROW_URL` + `BURROW_TOKEN`, else the default socket.
   */
  static async connect(opts: ConnectOptions = {}): Promise<Burrow> {
    const bw = new Burrow(new Transport(targetFrom(opts)));
    try {
      const r = await bw.transport.ok("GET", "/healthz");
      await r.body.dump();
    } catch (e) {
      await bw.close();
      throw e;
    }
    return bw;
  }

  /** Where this client connects. */
  get target(): Target {
    return this.transport.target;
  }

  /** Creates a sandbox and waits until it runs. */
  async create(name: string, opts: CreateOptions = {}): Promise<Sandbox> {
    const info = await this.transport.json<SandboxInfo>("POST", "/v1/sandboxes", {
      json: createBody(name, opts),
      signal: opts.signal,
    });
    return new Sandbox(this, info.name, info);
  }

  /**
   * Creates a sandbox, runs `fn` with it and deletes it afterwards (also when `fn` throws),
   * unless `keep` is set.
   */
  async withSandbox<T>(name: string, opts: CreateOptions & { keep?: boolean }, fn: (sb: Sandbox) => Promise<T>): Promise<T> {
    const { keep, ...rest } = opts;
    const sb = await this.create(name, rest);
    try {
      return await fn(sb);
    } finally {
      if (!keep) await sb.delete().catch((e) => (e instanceof NotFoundError ? undefined : Promise.reject(e)));
    }
  }

  /** An existing sandbox (its record is fetched: NotFoundError when there is none). */
  async get(name: string): Promise<Sandbox> {
    const sb = new Sandbox(this, name);
    await sb.refresh();
    return sb;
  }

  /** A handle for sandbox `name` without asking the daemon anything. */
  sandbox(name: string): Sandbox {
    return new Sandbox(this, name);
  }

  /** Every sandbox (or those with `prefix` / `labels`), following the pages to the end. */
  async list(opts: ListOptions = {}): Promise<Sandbox[]> {
    const out: Sandbox[] = [];
    let cursor: string | undefined;
    const label = opts.labels ? Object.entries(opts.labels).map(([k, v]) => `${k}=${v}`) : undefined;
    do {
      const page = await this.transport.json<{ sandboxes: SandboxInfo[]; next_cursor?: string | null }>("GET", "/v1/sandboxes", {
        query: { prefix: opts.prefix, label, limit: opts.limit, cursor },
      });
      for (const info of page.sandboxes) out.push(new Sandbox(this, info.name, info));
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
    return out;
  }

  /** Destroys a sandbox and its disk. */
  async delete(name: string): Promise<void> {
    await this.transport.json("DELETE", `/v1/sandboxes/${encodeURIComponent(name)}`);
  }

  /** Daemon version, engines and storage pool. */
  version(): Promise<VersionInfo> {
    return this.transport.json<VersionInfo>("GET", "/v1/version");
  }

  /** Closes the client's connections. */
  async close(): Promise<void> {
    await this.transport.close();
  }
}

/** A random sandbox name, `prefix-xxxxxxxx`. */
export function randomName(prefix = "sb"): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}
