/**
 * A TCP connection to a port inside a sandbox, carried by a WebSocket
 * (`GET /v1/sandboxes/{name}/proxy/{port}`), as a Node `Duplex`. Binary messages carry the
 * bytes both ways; an empty binary message is EOF of its sender's direction (half-close); a
 * close frame ends the connection.
 */
import { Duplex } from "node:stream";
import type WebSocket from "ws";

export class PortConnection extends Duplex {
  #ws: WebSocket;
  #sentEof = false;
  #gotEof = false;

  /** @internal */
  constructor(ws: WebSocket) {
    super({ allowHalfOpen: true });
    this.#ws = ws;
    ws.on("message", (data: Buffer) => {
      if (data.length === 0) {
        this.#gotEof = true;
        this.push(null);
        this.#maybeClose();
        return;
      }
      if (!this.push(data)) ws.pause();
    });
    ws.on("close", () => {
      if (!this.#gotEof) {
        this.#gotEof = true;
        this.push(null);
      }
    });
    ws.on("error", (e) => this.destroy(e));
  }

  #maybeClose(): void {
    if (this.#sentEof && this.#gotEof) this.#ws.close();
  }

  override _read(): void {
    this.#ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.#ws.send(chunk, { binary: true }, cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.#ws.send(Buffer.alloc(0), { binary: true }, (e) => {
      this.#sentEof = true;
      this.#maybeClose();
      cb(e);
    });
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    this.#ws.close();
    cb(err);
  }
}
