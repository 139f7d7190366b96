// Exec round trip of `true` through the SDK vs the raw API, in the same run, interleaved so
// that both see the same daemon and machine state. Prints the medians and their ratio
// (target: SDK ≤ 1.2× raw).
//
//   node bench/exec-rtt.mjs [N]      uses BURROW_SOCKET when set, else starts its own burrowd
//                                    (test/daemon.mjs: root, BURROW_BIN_DIR)
import { request as httpRequest, Agent as HttpAgent } from "node:http";
import WebSocket from "ws";
import { Burrow } from "../dist/index.js";
import { Daemon } from "../test/daemon.mjs";

const N = Number(process.argv[2] ?? 500);
let daemon;
let socket = process.env.BURROW_SOCKET;
if (!socket) {
  daemon = await Daemon.start();
  socket = daemon.socket;
}
const name = `bench-${process.pid}`;
const bw = await Burrow.connect({ socket });
const sb = await bw.create(name);

// Raw one-shot exec: Node's own http client, keep-alive, over the same socket.
const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
const body = JSON.stringify({ cmd: ["true"] });
function rawExec() {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { socketPath: socket, agent, method: "POST", path: `/v1/sandboxes/${name}/exec`, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const r = JSON.parse(Buffer.concat(chunks).toString());
          r.exit_code === 0 ? resolve() : reject(new Error(JSON.stringify(r)));
        });
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

// Raw streaming exec: a bare ws client reading frames until the exit frame.
function rawSpawn() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws+unix://${socket}:/v1/sandboxes/${name}/exec?cmd=true&stdin=false`, { perMessageDeflate: false });
    ws.on("message", (d, bin) => {
      if (!bin && JSON.parse(d.toString()).type === "exit") {
        ws.close();
        resolve();
      }
    });
    ws.on("error", reject);
  });
}

const sdkExec = async () => {
  if ((await sb.run(["true"])).exitCode !== 0) throw new Error("exit");
};
const sdkSpawn = async () => {
  const p = await sb.spawn(["true"], { stdin: false });
  if ((await p.wait()).exitCode !== 0) throw new Error("exit");
};

async function time(fn) {
  const t = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};

const pairs = [
  ["exec (POST /exec)", rawExec, sdkExec],
  ["spawn (WebSocket)", rawSpawn, sdkSpawn],
];
const results = {};
try {
  for (const [label, raw, sdk] of pairs) {
    for (let i = 0; i < 20; i++) {
      await raw();
      await sdk();
    }
    const r = [];
    const s = [];
    for (let i = 0; i < N; i++) {
      // Alternate which goes first, so neither always follows the other.
      if (i % 2) {
        r.push(await time(raw));
        s.push(await time(sdk));
      } else {
        s.push(await time(sdk));
        r.push(await time(raw));
      }
    }
    results[label] = { raw_median_ms: median(r), sdk_median_ms: median(s), ratio: median(s) / median(r) };
  }
} finally {
  await sb.delete();
  await bw.close();
  agent.destroy();
  await daemon?.stop();
}
console.log(`exec round trip of \`true\`, ${N} runs each, medians:`);
for (const [label, v] of Object.entries(results)) {
  console.log(`  ${label.padEnd(18)} raw ${v.raw_median_ms.toFixed(2)} ms   sdk ${v.sdk_median_ms.toFixed(2)} ms   sdk/raw ${v.ratio.toFixed(2)}x`);
}
console.log(JSON.stringify(results));
