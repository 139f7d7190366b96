/**
 * `@burrow/sdk`: persistent, isolated sandboxes from TypeScript and JavaScript.
 *
 * ```ts
 * import { Burrow } from "@burrow/sdk";
 * const bw = await Burrow.connect();
 * const sb = await bw.create("job-1");
 * const r = await sb.run(["python3", "-c", "print(6*7)"]);
 * ```
 */
export { Burrow, DEFAULT_SOCKET, Images, Secrets, Tokens, randomName, type ConnectOptions } from "./client.js";
export {
  Sandbox,
  CommandResult,
  Sessions,
  Checkpoints,
  Services,
  SandboxSecrets,
  type Cmd,
  type RunOptions,
} from "./sandbox.js";
export { ExecSession, type ExecEvent, type ExecExit, type SpawnOptions } from "./exec.js";
export { Files, type FileData, type WriteOptions } from "./files.js";
export { PortConnection } from "./relay.js";
export { attenuateToken, inspectToken } from "./macaroon.js";
export type { Target } from "./transport.js";
export * from "./errors.js";
export type * from "./types.js";
