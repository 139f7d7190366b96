/**
 * Records as the API returns them (field names as in crates/burrow-api/openapi.yaml), and the
 * SDK's own option shapes (camelCase).
 */

export type SandboxStatus = "creating" | "running" | "sleeping" | "stopped" | "failed";
export type Engine = "container" | "vm";
export type UrlAuth = "private" | "public";

export interface SandboxConfig {
  cpus: number;
  memory_mb: number;
  disk_gb: number;
  pids: number;
  idle_timeout_s: number;
  cold_after_s: number;
  url_auth: UrlAuth;
  restart?: "on-failure" | "never";
}

/** A sandbox record (`GET /v1/sandboxes/{name}`). */
export interface SandboxInfo {
  id: string;
  name: string;
  status: SandboxStatus;
  engine: Engine;
  image: string;
  created_at: string;
  updated_at: string;
  last_active_at: string;
  url: string;
  config: SandboxConfig;
  env: Record<string, string>;
  labels: Record<string, string>;
  parent?: { sandbox: string; checkpoint?: string };
  failure_reason?: string;
  notice?: string;
  sleep?: "warm" | "memory" | "cold";
  engine_detail?: string;
  usage?: { memory_bytes?: number; pids?: number; oom_kills?: number; pids_limit?: number; disk_bytes?: number };
}

/** Options of a new sandbox (`POST /v1/sandboxes`). */
export interface CreateOptions {
  /** Image name; default `base`. */
  image?: string;
  engine?: Engine;
  /** Fork: a new sandbox from another's checkpoint, or its live state when `checkpoint` is absent. */
  from?: { sandbox: string; checkpoint?: string };
  cpus?: number;
  memoryMb?: number;
  diskGb?: number;
  pids?: number;
  env?: Record<string, string>;
  labels?: Record<string, string>;
  /** Seconds idle before a warm sleep; 0 = never. */
  idleTimeoutS?: number;
  coldAfterS?: number;
  urlAuth?: UrlAuth;
  restart?: "on-failure" | "never";
  signal?: AbortSignal;
}

/** What `PATCH /v1/sandboxes/{name}` may change (resources apply at the next start). */
export interface UpdateOptions {
  labels?: Record<string, string>;
  env?: Record<string, string>;
  idleTimeoutS?: number;
  coldAfterS?: number;
  urlAuth?: UrlAuth;
  restart?: "on-failure" | "never";
  cpus?: number;
  memoryMb?: number;
  diskGb?: number;
  pids?: number;
}

export interface ListOptions {
  prefix?: string;
  /** `{k: v}`: every label must match. */
  labels?: Record<string, string>;
  /** Page size (the SDK follows cursors until the end). */
  limit?: number;
}

export interface Checkpoint {
  id: string;
  comment: string;
  created_at: string;
  size_bytes: number;
  source: "api" | "inside" | "restore-backup";
  memory?: boolean;
}

export interface RestoreResult {
  restored: string;
  /** The checkpoint the replaced state was saved as. */
  backup: string;
}

export interface FileEntry {
  name: string;
  type: "file" | "dir" | "symlink" | "other";
  size: number;
  mode: number;
  mtime: string;
}

export interface SessionInfo {
  id: string;
  cmd: string[];
  tty: boolean;
  started_at: string;
  exited_at?: string;
  exit_code?: number;
  signal?: string;
  attached: boolean;
  pid?: number;
  detach_timeout_s?: number;
}

export type RestartPolicy = "always" | "on-failure" | "never";

export interface ServiceSpec {
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  /** The port its web app listens on (the sandbox's URL goes to the first service with one). */
  httpPort?: number;
  restart?: RestartPolicy;
  /** Services that must run before this one starts. */
  needs?: string[];
}

export interface Service {
  name: string;
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  http_port?: number;
  restart: RestartPolicy;
  needs: string[];
  status: "running" | "stopped" | "exited" | "backoff" | "failed" | "waiting";
  pid?: number;
  restarts: number;
  exit_code?: number;
  signal?: string;
  started_at?: string;
  error?: string;
}

export interface NetworkPolicy {
  mode: "none" | "policy" | "open";
  rules?: { domain: string; action: "allow" | "deny" }[];
}

export interface Secret {
  name: string;
  inject?: { header?: string; format?: string };
  hosts?: string[];
  created_at?: string;
  attached?: { sandbox: string; env: string }[];
}

export interface CreateSecretOptions {
  name: string;
  value: string;
  /** Hosts it may be sent to (`*.example.com` for names below it); at least one. */
  hosts: string[];
  /** Header to put it in (default `Authorization`) and its format (default `Bearer %s`). */
  inject?: { header?: string; format?: string };
}

export interface Image {
  name: string;
  status: "ready" | "building" | "failed";
  created_at: string;
  size_bytes: number;
  source: string;
  message?: string;
}

export interface VersionInfo {
  version: string;
  api: string;
  agent_protocol: number;
  engines: { kind: string; available: boolean; detail?: string }[];
  default_engine: string;
  pool: string;
  pool_space?: { size_bytes: number; used_bytes: number; free_bytes: number; reserve_bytes: number };
  lxcfs: boolean;
}

/** Restrictions of a token. */
export interface Caveats {
  /** Sandboxes (by name or id) the token may act on. */
  sandboxes?: string[];
  /** Actions: read, create, delete, config, lifecycle, exec, files, checkpoints, services,
   * policy, secrets, images, http, tunnel. */
  actions?: string[];
  /** When it stops working. */
  expiresAt?: Date | string;
}

/** One server-sent event of a sandbox (`GET /v1/sandboxes/{name}/events`). */
export interface SandboxEvent {
  id: string | undefined;
  /** The kind: created, started, stopped, checkpoint, restored, … */
  event: string;
  data: { seq?: number; time?: string; sandbox?: string; kind?: string; data?: unknown } & Record<string, unknown>;
}
