// An agent loop with a safety net: checkpoint before each step, let a step wreck the disk,
// notice, restore, and carry on from the good state.
import { Burrow, randomName } from "@burrow/sdk";

const bw = await Burrow.connect();
const sb = await bw.create(randomName("agent"));
try {
  const steps = [
    "mkdir -p /srv/app && echo 'print(\"v1\")' > /srv/app/main.py",
    "rm -rf /usr/lib/python3* /srv/app", // a bad step: it wrecks the disk
    "echo 'print(\"v2\")' > /srv/app/main.py",
  ];
  const healthy = async () => (await sb.run(["python3", "/srv/app/main.py"])).exitCode === 0;

  for (const [i, step] of steps.entries()) {
    const cp = await sb.checkpoint(`before step ${i}`);
    await sb.run(step);
    if (i === 0 || (await healthy())) {
      console.log(`step ${i}: ok`);
      continue;
    }
    const { backup } = await sb.restore(cp);
    console.log(`step ${i}: broke the sandbox; restored ${cp.id} (the wreck is kept as ${backup})`);
  }
  console.log("final:", (await sb.run(["python3", "/srv/app/main.py"], { check: true })).stdout.trim());
  console.log("checkpoints:", (await sb.checkpoints.list()).map((c) => `${c.id}(${c.source})`).join(" "));
} finally {
  await sb.delete();
  await bw.close();
}
