/**
 * Files of one sandbox (`…/files`, `…/files/list`, `…/files/rename`, `…/files/archive`).
 * Paths are absolute and resolve inside the sandbox exactly as a process there sees them.
 */
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { mkdir } from "node:fs/promises";
import * as tar from "tar";
import type { Transport } from "./transport.js";
import type { FileEntry } from "./types.js";
import { NotFoundError, ProtocolError } from "./errors.js";

export type FileData = string | Uint8Array | Readable | AsyncIterable<Uint8Array>;

export interface WriteOptions {
  /** Permission bits, e.g. `0o755` (default: kept for an existing file, 0644 for a new one). */
  mode?: number;
  /** Create missing parent directories (default true). */
  mkdir?: boolean;
  signal?: AbortSignal;
}

/** An empty tar archive: two zero blocks. */
const EMPTY_TAR = new Uint8Array(1024);

export class Files {
  #t: Transport;
  #base: string;

  /** @internal */
  constructor(t: Transport, base: string) {
    this.#t = t;
    this.#base = base;
  }

  /** The file's bytes. */
  async read(path: string, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const r = await this.#t.ok("GET", `${this.#base}/files`, { query: { path }, signal: opts.signal });
    return new Uint8Array(await r.body.arrayBuffer());
  }

  /** The file as UTF-8 text. */
  async readText(path: string, opts: { signal?: AbortSignal } = {}): Promise<string> {
    const r = await this.#t.ok("GET", `${this.#base}/files`, { query: { path }, signal: opts.signal });
    return r.body.text();
  }

  /** The file as a stream (for large files). */
  async readStream(path: string, opts: { signal?: AbortSignal } = {}): Promise<Readable> {
    const r = await this.#t.ok("GET", `${this.#base}/files`, { query: { path }, signal: opts.signal });
    return r.body;
  }

  /** Writes a file atomically (a failed upload leaves nothing). Text is written as UTF-8. */
  async write(path: string, data: FileData, opts: WriteOptions = {}): Promise<void> {
    const r = await this.#t.ok("PUT", `${this.#base}/files`, {
      query: { path, mode: opts.mode === undefined ? undefined : opts.mode.toString(8).padStart(4, "0"), mkdir: opts.mkdir ?? true },
      body: data,
      contentType: "application/octet-stream",
      signal: opts.signal,
    });
    await r.body.dump();
  }

  /** A directory's entries (lstat'ed, sorted by name). */
  async list(path: string): Promise<FileEntry[]> {
    const r = await this.#t.json<{ entries: FileEntry[] }>("GET", `${this.#base}/files/list`, { query: { path } });
    return r.entries;
  }

  /** Whether something exists at `path` (a dangling symlink counts). */
  async exists(path: string): Promise<boolean> {
    const stripped = path.replace(/\/+$/, "");
    if (stripped === "") return true;
    const at = stripped.lastIndexOf("/");
    const parent = at <= 0 ? "/" : stripped.slice(0, at);
    try {
      const entries = await this.list(parent);
      return entries.some((e) => e.name === stripped.slice(at + 1));
    } catch (e) {
      if (e instanceof NotFoundError) return false;
      throw e;
    }
  }

  /** Removes a file, symlink or empty directory; a whole tree with `recursive`. */
  async remove(path: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await this.#t.json("DELETE", `${this.#base}/files`, { query: { path, recursive: opts.recursive ?? false } });
  }

  /** Renames (moves) a path, as rename(2). */
  async rename(from: string, to: string): Promise<void> {
    await this.#t.json("POST", `${this.#base}/files/rename`, { json: { from, to } });
  }

  /** Creates a directory and its missing parents. */
  async makeDir(path: string): Promise<void> {
    await this.uploadTar(path, EMPTY_TAR);
  }

  /** Extracts a tar archive into the directory `path` (created when missing). */
  async uploadTar(path: string, archive: FileData, opts: { mkdir?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const r = await this.#t.ok("PUT", `${this.#base}/files/archive`, {
      query: { path, mkdir: opts.mkdir ?? true },
      body: archive,
      contentType: "application/x-tar",
      signal: opts.signal,
    });
    await r.body.dump();
  }

  /** A tar stream of a file or directory tree; entries are named after the path's last component. */
  async downloadTar(path: string, opts: { signal?: AbortSignal } = {}): Promise<Readable> {
    const r = await this.#t.ok("GET", `${this.#base}/files/archive`, { query: { path }, signal: opts.signal });
    return r.body;
  }

  /** Copies the local directory `localDir`'s contents into the sandbox's directory `path`. */
  async uploadDir(localDir: string, path: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const archive = tar.c({ cwd: localDir, portable: true, noDirRecurse: false }, ["."]);
    await this.uploadTar(path, Readable.from(archive as AsyncIterable<Uint8Array>), opts);
  }

  /**
   * Copies the sandbox's directory `path`'s contents into the local directory `localDir`
   * (created when missing). The archive comes from an untrusted sandbox, so it is unpacked
   * defensively: nothing is written outside `localDir` (no `..`, no absolute names, never
   * through a symlink), only files, directories, symlinks and hard links (to files inside) are made, owners are not kept
   * and setuid, setgid and sticky bits are dropped (an absolute symlink target is made
   * relative). Entries refused for these reasons fail the copy with a ProtocolError
   * (`unsafe_archive`) after the rest was unpacked.
   */
  async downloadDir(path: string, localDir: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const body = await this.downloadTar(path, opts);
    await extractUntrusted(body, localDir, `the archive of ${path}`);
  }

}

/**
 * Unpacks a tar stream that an untrusted sandbox produced into `localDir` (created when
 * missing), dropping its first path component (the archived directory's own name). Nothing
 * is written outside `localDir`: node-tar refuses `..` names, strips absolute ones and never
 * writes through a symlink. Only files, directories, symlinks and hard links are made; owners
 * are not kept; setuid, setgid and sticky bits are dropped. Entries refused for these reasons
 * fail the call (ProtocolError `unsafe_archive`) after the rest was unpacked.
 * @internal Exported for the SDK's tests.
 */
export async function extractUntrusted(archive: Readable, localDir: string, what: string): Promise<void> {
  await mkdir(localDir, { recursive: true });
  const refused: string[] = [];
  const extract = tar.x({
    cwd: localDir,
    strip: 1,
    preserveOwner: false,
    preservePaths: false,
    // Informational notes (an absolute symlink target made relative) are fine; anything
    // node-tar refused (a `..` name, a path through a symlink) fails the copy afterwards.
    onwarn: (code, message) => {
      if (code !== "TAR_ENTRY_INFO") refused.push(`${code}: ${String(message)}`);
    },
    filter: (_p, entry) => {
      const e = entry as tar.ReadEntry;
      // Hard links are kept (node-tar refuses targets outside `localDir`); FIFOs and
      // devices are skipped.
      if (e.type !== "File" && e.type !== "Directory" && e.type !== "SymbolicLink" && e.type !== "Link") return false;
      if (typeof e.mode === "number") e.mode &= 0o777;
      return true;
    },
  });
  await pipeline(archive, extract);
  if (refused.length > 0) {
    throw new ProtocolError(`${what} had entries that were not unpacked: ${refused.join("; ")}`, { code: "unsafe_archive" });
  }
}
