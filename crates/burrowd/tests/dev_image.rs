//! The `dev` image shipped in the repository (`images/dev/Burrowfile`) builds with the real
//! CLI, as the README says (`burrow images build dev -f images/dev/Burrowfile images/dev`),
//! and a burrow made from it has its tools and its `dev` user. Then the recipe for coding
//! agents, end to end: `npm install -g` of an agent as `dev`, its API key a sealed secret
//! that the proxy injects for the agent's API host only (`burrow secret add … --header
//! x-api-key`, `burrow secret attach`), so the key never enters the burrow.
//!
//! Offline: the build's steps run in sandboxes of a daemon that only reaches the fake internet
//! (`support/fake_internet.rs`), which serves the Debian repository `scripts/setup.sh` caches
//! (its `DEB_WANT` holds the image's packages), an npm registry with `fake-agent`
//! (`support/registries.py`), and echo servers standing for the agent's API and another host.
//! The only change to the Burrowfile is its `FROM` line: `FROM base` becomes `FROM` a small
//! image whose apt sources name that repository (`mirror_image`), since the build's apt steps
//! use whatever sources the image they start from has.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burrow_testkit::{Daemon, unique_name};
use serde_json::Value;

#[path = "support/fake_internet.rs"]
mod fake_internet;
use fake_internet::{DEB_REPO, Serve, registries};

/// `api.agent.test` stands for the agent's API (api.anthropic.com, api.openai.com);
/// `other.test` for any other host the agent could be pointed at.
const NAMES: &[&str] = &["deb.debian.test", "npm.test", "api.agent.test", "other.test"];

/// The agent's API key: only the proxy ever holds it.
const KEY: &str = "sk-agent-REAL-key-0123456789abcdef";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn world() -> &'static (fake_internet::FakeInternet, Daemon) {
    fake_internet::world_serving(NAMES, || {
        let dir = registries();
        vec![
            Serve::Static {
                name: "deb.debian.test",
                root: dir.join("deb"),
            },
            Serve::Static {
                name: "npm.test",
                root: dir.join("npm"),
            },
        ]
    })
}

/// Whether the cached repository holds every package the Burrowfile installs (None: a skip,
/// a failure under BURROW_TEST_STRICT=1).
fn repo_ready() -> Option<()> {
    let packages = Path::new(DEB_REPO).join("dists/bookworm/main/binary-amd64/Packages");
    let text = std::fs::read_to_string(&packages).unwrap_or_default();
    let missing: Vec<&str> = [
        "build-essential",
        "python3-venv",
        "nodejs",
        "npm",
        "ripgrep",
        "jq",
        "sudo",
        "openssh-client",
    ]
    .into_iter()
    .filter(|p| !text.contains(&format!("Package: {p}\n")))
    .collect();
    if missing.is_empty() {
        return Some(());
    }
    burrow_testkit::prerequisite(
        false,
        &format!("the Debian repository at {DEB_REPO} lacks {missing:?} (scripts/setup.sh builds it)"),
    );
    None
}

/// Runs the real `burrow` CLI against the test daemon: (exit code, stdout, stderr).
async fn burrow(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = tokio::task::block_in_place(|| burrow_testkit::cli::run_on(d, args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `burrow exec [-u USER] NAME -- sh -c SCRIPT`, which must succeed: its stdout.
async fn exec_ok(d: &Daemon, name: &str, user: Option<&str>, script: &str) -> String {
    let mut args = vec!["exec"];
    if let Some(u) = user {
        args.extend(["-u", u]);
    }
    args.extend([name, "--", "sh", "-c", script]);
    let (code, out, err) = burrow(d, &args).await;
    assert_eq!(code, 0, "{script}\n{out}{err}");
    out
}

/// A value of `KEY: value` lines.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no '{key}' in {out}"))
}

/// A one-step image whose apt sources are the fake internet's Debian repository only, built
/// through the API like any other: it stands in for `base` with Debian's own mirrors.
async fn mirror_image(d: &Daemon) -> String {
    let ctx = tempfile::tempdir().unwrap();
    let file = ctx.path().join("Burrowfile");
    std::fs::write(
        &file,
        "FROM base\n\
         RUN rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* \\\n\
          && echo 'deb [trusted=yes] http://deb.debian.test/debian bookworm main' > /etc/apt/sources.list.d/test.list\n",
    )
    .unwrap();
    let name = unique_name("mirror");
    let (code, out, err) = burrow(
        d,
        &[
            "images",
            "build",
            &name,
            "-f",
            file.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "building the mirror image: {out}{err}");
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_image_builds_and_runs_a_coding_agent_whose_key_stays_outside() {
    if repo_ready().is_none() {
        return;
    }
    let (inet, d) = world();
    let started = Instant::now();

    // The Burrowfile as shipped, with only its FROM line pointed at the mirror image.
    let mirror = mirror_image(d).await;
    let shipped = std::fs::read_to_string(repo_root().join("images/dev/Burrowfile")).unwrap();
    assert_eq!(
        shipped.lines().filter(|l| *l == "FROM base").count(),
        1,
        "the shipped Burrowfile starts FROM base"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("Burrowfile");
    std::fs::write(
        &file,
        shipped.replace("\nFROM base\n", &format!("\nFROM {mirror}\n")),
    )
    .unwrap();
    let image = unique_name("dev");
    let context = repo_root().join("images/dev");
    let (code, out, err) = burrow(
        d,
        &[
            "images",
            "build",
            &image,
            "-f",
            file.to_str().unwrap(),
            context.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "building the dev image: {out}{err}");
    let images: Value = d.client().get_json("/v1/images").await.unwrap();
    let size = images["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == image.as_str())
        .map_or(0, |i| i["size_bytes"].as_u64().unwrap_or(0));
    eprintln!(
        "dev image built in {:.0?} ({} MB): {}",
        started.elapsed(),
        size >> 20,
        out.trim()
    );
    let apt: Vec<Value> = inet
        .requests()
        .into_iter()
        .filter(|e| e["host"] == "deb.debian.test" && e["status"] == 200)
        .collect();
    assert!(
        apt.iter()
            .any(|e| e["path"].as_str().unwrap().contains("/build-essential_")),
        "the build never fetched build-essential from the test repository"
    );

    let name = unique_name("dev");
    let (code, out, err) = burrow(d, &["create", &name, "--image", &image]).await;
    assert_eq!(code, 0, "{out}{err}");

    // The tools answer, as `dev` in its home.
    let tools = exec_ok(
        d,
        &name,
        Some("dev"),
        r#"set -e
echo "id: $(id -un) $(id -u) $(id -g)"
echo "pwd: $(pwd)"
printf '#include <stdio.h>\nint main(void) { puts("hello from cc"); return 0; }\n' > hello.c
cc -o hello hello.c
echo "cc: $(./hello)"
echo "make: $(make --version | head -1)"
echo "git: $(git --version)"
python3 -m venv /tmp/venv
echo "venv: $(/tmp/venv/bin/python -c 'import sys; print(sys.prefix)')"
echo "venv-pip: $(/tmp/venv/bin/pip --version | cut -d' ' -f1)"
echo "pip: $(python3 -m pip --version | cut -d' ' -f1)"
echo "node: $(node -e 'console.log(6 * 7)')"
echo "npm-prefix: $(npm config get prefix)"
echo needle > haystack
echo "rg: $(rg -c needle haystack)"
echo "jq: $(echo '{"a": {"b": 42}}' | jq .a.b)"
echo "vi: $(command -v vi)"
echo "ssh: $(ssh -V 2>&1 | cut -d_ -f1)"
echo "sudo: $(sudo -n id -u 2>&1)"
"#,
    )
    .await;
    for (key, want) in [
        ("id", "dev 1000 1000"),
        ("pwd", "/home/dev"),
        ("cc", "hello from cc"),
        ("venv", "/tmp/venv"),
        ("venv-pip", "pip"),
        ("pip", "pip"),
        ("node", "42"),
        ("npm-prefix", "/home/dev/.npm-global"),
        ("rg", "1"),
        ("jq", "42"),
        ("vi", "/usr/bin/vi"),
        ("ssh", "OpenSSH"),
    ] {
        assert_eq!(field(&tools, key), want, "{key}: {tools}");
    }
    assert!(field(&tools, "make").starts_with("GNU Make"), "{tools}");
    assert!(field(&tools, "git").starts_with("git version"), "{tools}");
    // `sudo` is set up (dev may run anything, no password) but cannot raise privileges: every
    // process of a burrow runs with no_new_privs (docs/threat-model.md), so setuid is inert,
    // the dev image's included. Root is `burrow exec` without `-u` (control: it is uid 0).
    assert!(
        field(&tools, "sudo").contains("\"no new privileges\" flag is set"),
        "{tools}"
    );
    let root = exec_ok(d, &name, None, "id -u; sudo -n -l -U dev | tail -1").await;
    assert_eq!(root, "0\n    (ALL) NOPASSWD: ALL\n", "{root}");

    // The agent's key: sealed, for its API host only, in the header the agent sends.
    let secret = unique_name("agentkey");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let (code, out, err) = burrow(
        d,
        &[
            "secret",
            "add",
            &secret,
            "--value-file",
            key_file.to_str().unwrap(),
            "--host",
            "api.agent.test",
            "--header",
            "x-api-key",
            "--format",
            "%s",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = burrow(d, &["secret", "attach", &name, &secret, "--env", "AGENT_API_KEY"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // A coding agent, installed as dev from the registry (`npm install -g`, no root).
    let install = exec_ok(
        d,
        &name,
        Some("dev"),
        "npm install -g --no-audit --no-fund --no-update-notifier --registry https://npm.test/ fake-agent 2>&1\n\
         command -v fake-agent\n\
         bash -lc 'command -v fake-agent'",
    )
    .await;
    // On PATH, for login shells too (they reset PATH; the image's profile.d restores it).
    let bin = "/home/dev/.npm-global/bin/fake-agent";
    let last: Vec<&str> = install.lines().rev().take(2).collect();
    assert_eq!(last, [bin, bin], "{install}");

    // The agent calls its API: the server got the real key, the agent saw none of it.
    let before = inet.requests().len();
    let answer = exec_ok(d, &name, Some("dev"), "fake-agent write a haiku").await;
    let seen: Vec<Value> = inet.requests()[before..]
        .iter()
        .filter(|e| e["host"] == "api.agent.test")
        .cloned()
        .collect();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["scheme"], "https");
    assert_eq!(seen[0]["path"], "/v1/messages");
    assert_eq!(seen[0]["headers"]["x-api-key"], KEY, "{seen:#?}");
    assert!(seen[0]["body"].as_str().unwrap().contains("write a haiku"));
    // The echo of the request arrived, with the key masked by the proxy's redaction.
    let echoed: Value = serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(echoed["path"], "/v1/messages");
    assert_eq!(echoed["headers"]["x-api-key"], "*".repeat(KEY.len()), "{answer}");
    assert!(!answer.contains(KEY), "{answer}");

    // Inside: only the placeholder, in dev's environment, and the key in no file a process
    // of the burrow could have written (searched as root).
    let env = exec_ok(d, &name, Some("dev"), "echo \"placeholder: $AGENT_API_KEY\"; env").await;
    assert!(field(&env, "placeholder").starts_with("bm1_"), "{env}");
    assert!(
        !env.contains(KEY),
        "the key is in the burrow's environment: {env}"
    );
    let files = exec_ok(
        d,
        &name,
        None,
        &format!("grep -rlsF -e {KEY} /home /root /etc /tmp /var/tmp /usr/local /.burrow || echo clean"),
    )
    .await;
    assert_eq!(files, "clean\n", "files inside hold the key");

    // Control: the same agent pointed at another host is refused by the proxy, naming the
    // host caveat, and nothing reaches that host.
    let before = inet.requests().len();
    let (code, out, err) = burrow(
        d,
        &[
            "exec",
            "-u",
            "dev",
            "-e",
            "AGENT_API_BASE=https://other.test",
            &name,
            "--",
            "fake-agent",
            "write a haiku",
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("fake-agent: 403"), "{out}{err}");
    assert!(out.contains("hosts"), "the refusal names the caveat: {out}");
    assert!(
        !inet.requests()[before..]
            .iter()
            .any(|e| e["host"].as_str().is_some_and(|h| h.starts_with("other.test"))),
        "a request with the placeholder reached another host"
    );
    eprintln!("dev image test done in {:.0?}", started.elapsed());

    let (code, out, err) = burrow(d, &["rm", &name]).await;
    assert_eq!(code, 0, "{out}{err}");
}
