// Quick start: create a sandbox, run commands, use files, stream a command, checkpoint and
// restore, fork. Run: node examples/typescript/quickstart.mjs (burrowd running; see README).
import { Burrow, randomName } from "@burrow/sdk";

const bw = await Burrow.connect(); // BURROW_SOCKET, or BURROW_URL + BURROW_TOKEN, else the default socket
const name = randomName("quickstart");
const sb = await bw.create(name, { memoryMb: 512 });
let twin;
try {
  // Run to completion, like child_process.execFile: output and exit status.
  const r = await sb.run(["python3", "-c", "print(6*7)"]);
  console.log("python says", r.stdout.trim(), "exit", r.exitCode);

  // Files.
  await sb.files.write("/srv/a.py", "import sys\nfor i in range(3):\n    print('tick', i, flush=True)\nprint('done', file=sys.stderr)\n");
  console.log("files in /srv:", (await sb.files.list("/srv")).map((e) => e.name).join(", "));

  // Stream: output as it comes, then the exit.
  const p = await sb.spawn(["python3", "/srv/a.py"]);
  for await (const ev of p) {
    if (ev.type === "exit") console.log("exited with", ev.exitCode);
    else process.stdout.write(`[${ev.type}] ${ev.text}`);
  }

  // Checkpoint, wreck, restore: the restore itself is never destructive (it saves a backup).
  const cp = await sb.checkpoint("clean");
  await sb.run("rm -rf /srv");
  console.log("after rm:", (await sb.run("ls /srv")).exitCode !== 0 ? "gone" : "still there");
  const { backup } = await sb.restore(cp);
  console.log(`restored ${cp.id} (the wrecked state is kept as ${backup}):`, await sb.files.readText("/srv/a.py").then(() => "back"));

  // Fork: a new sandbox from the live state (or from a checkpoint: { checkpoint: cp }).
  twin = await sb.fork(`${name}-b`);
  console.log("the twin has the file too:", (await twin.run("python3 /srv/a.py")).stdout.split("\n")[0]);
} finally {
  await twin?.delete();
  await sb.delete();
  await bw.close();
}
