// Fork five sandboxes from one prepared state, run a different attempt in each, keep the
// winner and delete the rest.
import { Burrow, randomName } from "@burrow/sdk";

const bw = await Burrow.connect();
const base = await bw.create(randomName("fork-base"));
const forks = [];
try {
  // The shared preparation, done once.
  await base.files.write("/srv/score.py", "import sys\nx = int(sys.argv[1])\nprint(-(x - 3) ** 2 + 10)\n");
  const ready = await base.checkpoint("prepared");

  for (let i = 0; i < 5; i++) forks.push(await base.fork(`${base.name}-try${i}`, { checkpoint: ready }));
  const scores = await Promise.all(
    forks.map(async (sb, i) => {
      const r = await sb.run(["python3", "/srv/score.py", String(i)], { check: true });
      await sb.files.write("/srv/attempt.txt", `attempt ${i}\n`);
      return { sb, score: Number(r.stdout) };
    }),
  );
  scores.sort((a, b) => b.score - a.score);
  const [winner, ...losers] = scores;
  for (const l of losers) await l.sb.delete();
  console.log(`winner: ${winner.sb.name} with score ${winner.score}:`, (await winner.sb.files.readText("/srv/attempt.txt")).trim());
  console.log("left:", (await bw.list({ prefix: base.name })).map((s) => s.name).join(", "));
} finally {
  for (const sb of forks) await sb.delete().catch(() => undefined);
  await base.delete();
  await bw.close();
}
