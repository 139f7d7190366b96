// Run untrusted code and return its output: a fresh sandbox without network, small limits,
// a timeout, and always deleted afterwards.
import { Burrow, TimeoutError, randomName } from "@burrow/sdk";

/** Runs `code` (Python) in a throwaway sandbox and returns what it printed. */
export async function runUntrusted(bw, code, { timeoutMs = 10_000 } = {}) {
  const sb = await bw.create(randomName("untrusted"), { memoryMb: 256, cpus: 0.5, pids: 64, idleTimeoutS: 0 });
  try {
    await sb.setNetworkPolicy({ mode: "none" }); // nothing leaves the sandbox
    await sb.files.write("/work/main.py", code);
    const r = await sb.run(["python3", "/work/main.py"], { cwd: "/work", user: "nobody", timeoutMs });
    return { ok: r.exitCode === 0, exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    if (e instanceof TimeoutError) return { ok: false, exitCode: null, stdout: e.stdout, stderr: "timed out" };
    throw e;
  } finally {
    await sb.delete();
  }
}

const bw = await Burrow.connect();
try {
  const good = await runUntrusted(bw, "print(sum(range(101)))");
  console.log("sum:", good.stdout.trim(), good.ok ? "(ok)" : "");

  const net = await runUntrusted(bw, "import urllib.request\nurllib.request.urlopen('http://198.18.0.1/', timeout=2)");
  console.log("network:", net.ok ? "reachable?!" : "blocked", `(exit ${net.exitCode})`);

  const slow = await runUntrusted(bw, "print('working', flush=True)\nwhile True: pass", { timeoutMs: 1000 });
  console.log("infinite loop:", slow.stderr, "after printing", JSON.stringify(slow.stdout));
} finally {
  await bw.close();
}
