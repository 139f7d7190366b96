// A web service reached by its URL: a supervised service with an HTTP port, then the
// sandbox's URL (http://NAME.localhost:7440/) and the same app through the API.
import { request } from "node:http";
import { Burrow, randomName } from "@burrow/sdk";

const bw = await Burrow.connect();
// url_auth "public": the URL needs no token (the default, "private", wants one with action http).
const sb = await bw.create(randomName("web"), { urlAuth: "public" });
try {
  await sb.files.write("/srv/www/index.html", "<h1>hello from a burrow</h1>\n");
  await sb.services.put("web", { cmd: ["python3", "-m", "http.server", "8080"], cwd: "/srv/www", httpPort: 8080 });

  await sb.waitForPort(8080); // the service is up once its port accepts connections

  // Through the API (works over the unix socket too).
  const res = await sb.fetch("/");
  console.log("through the API:", res.status, (await res.text()).trim());

  // By its URL, as a browser would open it (browsers resolve *.localhost to loopback).
  const url = new URL(sb.url);
  const body = await new Promise((resolve, reject) => {
    const req = request(url, { lookup: (_h, o, cb) => (o.all ? cb(null, [{ address: "127.0.0.1", family: 4 }]) : cb(null, "127.0.0.1", 4)) }, (r) => {
      let b = "";
      r.setEncoding("utf8").on("data", (c) => (b += c)).on("end", () => resolve(`${r.statusCode} ${b.trim()}`));
    });
    req.on("error", reject).end();
  });
  console.log(`at ${sb.url}:`, body);
} finally {
  await sb.delete();
  await bw.close();
}
