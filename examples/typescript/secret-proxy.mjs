// A secret used through the credential proxy: the sandbox holds only a placeholder, and
// burrowd's proxy puts the real value in the request to the secret's host, and nowhere else.
//
// It needs an HTTPS host the sandbox can reach: EXAMPLE_SECRET_HOST (the SDK's docs test
// serves one on a fake internet in a network namespace it makes; never the real internet).
import { Burrow, randomName } from "@burrow/sdk";

const host = process.env.EXAMPLE_SECRET_HOST;
if (!host) {
  console.error("set EXAMPLE_SECRET_HOST to an HTTPS host your sandboxes may reach (e.g. an echo server of your own)");
  process.exit(2);
}
const value = process.env.EXAMPLE_SECRET_VALUE ?? "example-real-api-key";

const bw = await Burrow.connect();
const secret = randomName("api-key");
const sb = await bw.create(randomName("secret"));
try {
  await bw.secrets.create({ name: secret, value, hosts: [host] }); // sealed at once, never returned
  await sb.secrets.attach(secret, { env: "API_KEY" });

  const seen = (await sb.run("echo $API_KEY")).stdout.trim();
  console.log("inside, API_KEY is a placeholder:", seen.slice(0, 12) + "…", seen.includes(value) ? "(LEAKED!)" : "(not the value)");

  // The proxy swaps the placeholder for the value on its way to the secret's host.
  const r = await sb.run(`curl -sS --max-time 10 -H "Authorization: Bearer $API_KEY" https://${host}/whoami`);
  console.log("the host answered:", r.exitCode === 0 ? r.stdout.trim().slice(0, 200) : r.stderr.trim());

  // Anywhere else, the placeholder is refused (and the value never sent).
  const other = await sb.run(`curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $API_KEY" https://other.${host}/`);
  console.log("to another host:", other.stdout || other.stderr.trim());
} finally {
  await sb.delete();
  await bw.secrets.delete(secret).catch(() => undefined);
  await bw.close();
}
