// Docs test: every example in examples/typescript and every TypeScript/JavaScript block of
// sdk/typescript/README.md runs against a real burrowd (with a fake internet in a namespace
// of its own for the credential-proxy example), so a quick start cannot break silently.
// TypeScript blocks are type-checked with tsc first, then run.
import { test, before, after, describe } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import ts from "typescript";
import { Daemon } from "./daemon.mjs";
import { FakeInternet } from "./fake-internet.mjs";

const run = promisify(execFile);
const SDK = join(dirname(fileURLToPath(import.meta.url)), "..");
const EXAMPLES = join(SDK, "../../examples/typescript");
const TMP = join(SDK, ".docs-tmp");
const SECRET_HOST = "api.example.test";
const SECRET_VALUE = "docs-test-real-value-7f3a";

let d;
let inet;

before(async () => {
  inet = await FakeInternet.start([SECRET_HOST, `other.${SECRET_HOST}`]);
  d = await Daemon.start(inet.daemonArgs());
});

after(async () => {
  await d?.stop();
  inet?.stop();
});

/** Runs `node file` against the test daemon; returns stdout (fails the test on a non-zero exit). */
async function node(file, cwd, env = {}) {
  try {
    const r = await run(process.execPath, [file], {
      cwd,
      timeout: 120_000,
      env: { ...process.env, BURROW_SOCKET: d.socket, BURROW_URL: "", BURROW_TOKEN: "", ...env },
    });
    return r.stdout;
  } catch (e) {
    assert.fail(`${file} failed (${e.code ?? e.signal}):\nstdout:\n${e.stdout}\nstderr:\n${e.stderr}\ndaemon log:\n${d.logTail(40)}`);
  }
}

describe("examples/typescript", () => {
  before(() => {
    assert.ok(
      existsSync(join(EXAMPLES, "node_modules/@burrow/sdk/package.json")),
      "examples/typescript has no node_modules: run `npm ci` there (scripts/test-typescript-sdk.sh does)",
    );
  });

  test("every example has a test here", () => {
    const files = readdirSync(EXAMPLES).filter((f) => f.endsWith(".mjs")).sort();
    assert.deepEqual(files, ["agent-loop.mjs", "fork-five.mjs", "quickstart.mjs", "secret-proxy.mjs", "untrusted-code.mjs", "web-service.mjs"]);
  });

  test("quickstart", async () => {
    const out = await node("quickstart.mjs", EXAMPLES);
    assert.match(out, /python says 42 exit 0/);
    assert.match(out, /\[stdout\] tick 0/);
    assert.match(out, /exited with 0/);
    assert.match(out, /after rm: gone/);
    assert.match(out, /restored v0 \(the wrecked state is kept as v1\): back/);
    assert.match(out, /the twin has the file too: tick 0/);
  });

  test("untrusted code", async () => {
    const out = await node("untrusted-code.mjs", EXAMPLES);
    assert.match(out, /sum: 5050 \(ok\)/);
    assert.match(out, /network: blocked/);
    assert.match(out, /infinite loop: timed out after printing "working\\n"/);
  });

  test("agent loop: checkpoint, wreck, restore", async () => {
    const out = await node("agent-loop.mjs", EXAMPLES);
    assert.match(out, /step 1: broke the sandbox; restored v1/);
    assert.match(out, /final: v2/);
  });

  test("fork five, keep the winner", async () => {
    const out = await node("fork-five.mjs", EXAMPLES);
    assert.match(out, /winner: fork-base-[0-9a-f]+-try3 with score 10: attempt 3/);
    const left = out.match(/left: (.*)/)[1].split(", ");
    assert.equal(left.length, 2, out);
  });

  test("a web service by its URL", async () => {
    const out = await node("web-service.mjs", EXAMPLES);
    assert.match(out, /through the API: 200 <h1>hello from a burrow<\/h1>/);
    assert.match(out, /at http:\/\/web-[0-9a-f]+\.localhost:\d+\/: 200 <h1>hello from a burrow<\/h1>/);
  });

  test("a secret through the credential proxy", async () => {
    const out = await node("secret-proxy.mjs", EXAMPLES, { EXAMPLE_SECRET_HOST: SECRET_HOST, EXAMPLE_SECRET_VALUE: SECRET_VALUE });
    assert.match(out, /API_KEY is a placeholder: bm1_.*\(not the value\)/);
    assert.match(out, /the host answered: .*"path": "\/whoami"/);
    assert.ok(!out.includes(SECRET_VALUE), "the value came back into the sandbox");
    assert.match(out, /to another host: 403/);
    // The host itself got the real value, and only the one host did.
    const seen = inet.requests().filter((r) => r.path === "/whoami");
    assert.equal(seen.length, 1);
    assert.equal(seen[0].headers.authorization, `Bearer ${SECRET_VALUE}`);
    assert.ok(!inet.requests().some((r) => r.host === `other.${SECRET_HOST}` && JSON.stringify(r).includes(SECRET_VALUE)));
  });
});

describe("sdk/typescript/README.md", () => {
  const readme = readFileSync(join(SDK, "README.md"), "utf8");
  const blocks = [...readme.matchAll(/^```(ts|typescript|js|javascript|mjs)\n([\s\S]*?)^```/gm)].map((m, i) => ({
    n: i + 1,
    lang: m[1],
    code: m[2],
    line: readme.slice(0, m.index).split("\n").length,
  }));

  before(() => {
    rmSync(TMP, { recursive: true, force: true });
    mkdirSync(TMP, { recursive: true });
  });

  test("has code blocks", () => {
    assert.ok(blocks.length >= 6, `only ${blocks.length} blocks`);
  });

  test("TypeScript blocks type-check", async () => {
    const tsBlocks = blocks.filter((b) => b.lang.startsWith("t"));
    for (const b of tsBlocks) writeFileSync(join(TMP, `block-${b.n}.ts`), b.code);
    writeFileSync(
      join(TMP, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true, skipLibCheck: true, types: ["node"] },
        include: ["*.ts"],
      }),
    );
    try {
      await run(process.execPath, [join(SDK, "node_modules/typescript/bin/tsc"), "-p", join(TMP, "tsconfig.json")], { cwd: SDK });
    } catch (e) {
      assert.fail(`README TypeScript blocks do not type-check:\n${e.stdout}${e.stderr}`);
    }
  });

  for (const b of blocks) {
    test(`block ${b.n} (line ${b.line}) runs`, async () => {
      const js = b.lang.startsWith("t")
        ? ts.transpileModule(b.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText
        : b.code;
      // Inside the package, `import … from "@burrow/sdk"` resolves to this package itself.
      const file = join(TMP, `block-${b.n}.mjs`);
      writeFileSync(file, js);
      await node(file, SDK);
    });
  }
});
