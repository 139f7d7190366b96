/**
 * Typed errors. Every error the daemon answers becomes a {@link BurrowError} (or a subclass
 * chosen by its HTTP status) carrying the API's `error.code` and `error.message`, so callers
 * can branch on `instanceof NotFoundError` or on `err.code === "name_taken"`.
 */

/** The base class: `code` is the API's `error.code` (or an SDK code for client-side errors). */
export class BurrowError extends Error {
  /** The API's `error.code`, e.g. `not_found`, `name_taken`, `invalid`; or an SDK code. */
  readonly code: string;
  /** The HTTP status of the answer, when there was one. */
  readonly status: number | undefined;
  /** The whole `error` object of the answer (e.g. `caveat` on a 403). */
  readonly details: Record<string, unknown> | undefined;

  constructor(message: string, opts: { code: string; status?: number; details?: Record<string, unknown>; cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = opts.code;
    this.status = opts.status;
    this.details = opts.details;
  }
}

/** 400, 413, 415, 422: the request was refused as it stands (bad name, bad path, bad value). */
export class InvalidRequestError extends BurrowError {}
/** 401: no token, or a token that does not parse or verify. */
export class AuthenticationError extends BurrowError {}
/** 403: the token's caveats do not allow this request (`caveat` names the one that failed). */
export class PermissionDeniedError extends BurrowError {
  get caveat(): string | undefined {
    const c = this.details?.["caveat"];
    return typeof c === "string" ? c : undefined;
  }
}
/** 404: no such sandbox, checkpoint, file, service, secret, session or image. */
export class NotFoundError extends BurrowError {}
/** 409: a state conflict (name taken, illegal transition, still in use). */
export class ConflictError extends BurrowError {}
/** 410: the session is gone. */
export class GoneError extends BurrowError {}
/** 429: a budget or limit is taken; `retryAfter` is the server's hint in seconds. */
export class RateLimitError extends BurrowError {
  retryAfter: number | undefined;
}
/** 507: the storage pool or the sandbox's disk is full. */
export class StorageFullError extends BurrowError {}
/** 502, 503: an engine, agent or app is unavailable. */
export class UnavailableError extends BurrowError {}
/** 500 and anything else unexpected from the server. */
export class ServerError extends BurrowError {}

/** The daemon could not be reached (no socket, connection refused, …). `code`: `connection`. */
export class ConnectionError extends BurrowError {}

/**
 * A command ran past its timeout (`timeoutMs`, or an `AbortSignal.timeout()` signal) and was
 * killed. `code`: `timeout`. Carries what it printed before.
 */
export class TimeoutError extends BurrowError {
  readonly stdout: string;
  readonly stderr: string;
  constructor(message: string, opts: { stdout?: string; stderr?: string; cause?: unknown } = {}) {
    super(message, { code: "timeout", cause: opts.cause });
    this.stdout = opts.stdout ?? "";
    this.stderr = opts.stderr ?? "";
  }
}

/** `run(…, { check: true })` and the command exited non-zero. `code`: `command_failed`. */
export class CommandError extends BurrowError {
  readonly exitCode: number;
  readonly signal: string | undefined;
  readonly stdout: string;
  readonly stderr: string;
  readonly cmd: string[];
  constructor(cmd: string[], r: { exitCode: number; signal?: string | undefined; stdout: string; stderr: string }) {
    const how = r.signal ? `was killed by SIG${r.signal}` : `exited with status ${r.exitCode}`;
    const tail = r.stderr.trim().split("\n").slice(-5).join("\n");
    super(`command ${JSON.stringify(cmd)} ${how}${tail ? `: ${tail}` : ""}`, { code: "command_failed" });
    this.cmd = cmd;
    this.exitCode = r.exitCode;
    this.signal = r.signal;
    this.stdout = r.stdout;
    this.stderr = r.stderr;
  }
}

/** The server broke the protocol, e.g. an exec stream closed before its exit frame. */
export class ProtocolError extends BurrowError {}

/** The error for an HTTP error answer, by status; `body` is the raw body (JSON envelope or text). */
export function errorFromResponse(status: number, body: string, headers?: Record<string, string | string[] | undefined>): BurrowError {
  let code = `http_${status}`;
  let message = body.trim() || `HTTP ${status}`;
  let details: Record<string, unknown> | undefined;
  try {
    const parsed = JSON.parse(body) as { error?: Record<string, unknown> };
    if (parsed && typeof parsed.error === "object" && parsed.error !== null) {
      details = parsed.error;
      if (typeof details["code"] === "string") code = details["code"];
      if (typeof details["message"] === "string") message = details["message"];
    }
  } catch {
    // Not JSON (an ingress error page): keep the text.
  }
  const opts = { code, status, details };
  let err: BurrowError;
  switch (status) {
    case 400:
    case 413:
    case 415:
    case 422:
      err = new InvalidRequestError(message, opts);
      break;
    case 401:
      err = new AuthenticationError(message, opts);
      break;
    case 403:
      err = new PermissionDeniedError(message, opts);
      break;
    case 404:
      err = new NotFoundError(message, opts);
      break;
    case 409:
      err = new ConflictError(message, opts);
      break;
    case 410:
      err = new GoneError(message, opts);
      break;
    case 429: {
      const e = new RateLimitError(message, opts);
      const ra = headers?.["retry-after"];
      const n = Number(Array.isArray(ra) ? ra[0] : ra);
      e.retryAfter = Number.isFinite(n) ? n : undefined;
      err = e;
      break;
    }
    case 502:
    case 503:
      err = new UnavailableError(message, opts);
      break;
    case 507:
      err = new StorageFullError(message, opts);
      break;
    default:
      err = new ServerError(message, opts);
  }
  return err;
}
