//! Real work inside a sandbox just works: what ordinary tools send passes the proxy
//! unchanged. The fake internet (a DNS server and HTTP/HTTPS servers in a namespace this
//! test makes, shared with `network.rs` through `support/fake_internet.rs`) is all it
//! reaches: the daemon may only forward to 198.18.0.0/15 and resolves through the fake DNS
//! only.
//!
//! The real-workload suite: `apt-get update`/`install` from a Debian repository over HTTP and
//! HTTPS (real .debs, `scripts/setup.sh` caches them; libgbm1's file name holds `bm1_`),
//! `pip install` from a PEP 503 index and `npm install` from a registry over HTTPS, `git clone`
//! and `git push` over HTTPS, `curl` and `wget` over both. Each of `open` and `policy` mode,
//! with and without a secret attached (TLS intercepted, or tunnelled end to end), runs every
//! tool through the explicit proxy and through the transparent one. With the secret, the
//! proxy injects the registry credential where tools put it: npm's token and a git
//! `http.extraHeader` (a header), pip's index URL and git's remote URL (HTTP Basic). The tools
//! are installed once, with apt from the local repository, into one sandbox that the others
//! fork.

use std::path::Path;
use std::time::Instant;

use burrow_api::{CreateSandbox, ExecRequest, ExecResult, SandboxName};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::fixtures::{PATIENCE, poll, sh, sh_parts};
use burrow_testkit::{Daemon, unique_name};
use serde_json::{Value, json};
use sha2::Digest;

#[path = "support/fake_internet.rs"]
mod fake_internet;
use fake_internet::{DEB_REPO, Serve, attach_secret, create, registries};

const NAMES: &[&str] = &[
    "api.github.test",
    "deb.test",
    "deb.debian.test",
    "pypi.test",
    "npm.test",
    "git.test",
    "blocked.test",
];

/// The registry credential the proxy injects for git and npm (the sandbox holds only a
/// placeholder for it), and what the git server requires for a push.
const REAL: &str = "wl-REAL-registry-token-0123456789abcdef";

/// HTTP Basic with the real credential as the password: what a tool sends for
/// `https://USER:TOKEN@host/` once the proxy has put the value in.
fn basic(user: &str) -> String {
    use base64::Engine as _;
    let pair = format!("{user}:{REAL}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
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
                name: "pypi.test",
                root: dir.join("pypi"),
            },
            Serve::Static {
                name: "npm.test",
                root: dir.join("npm"),
            },
            Serve::Git {
                name: "git.test",
                root: dir.join("git"),
                auth: vec![format!("Bearer {REAL}"), basic("x-access-token")],
            },
        ]
    })
}

/// A Debian mirror path: the placeholder prefix `bm1_` inside a package's file name.
const DEB: &str = "/debian/pool/main/m/mesa/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb";

/// `curl` over plain HTTP from a sandbox (through the explicit proxy, or redirected tcp/80
/// when `direct`): prints the status, then the body.
fn curl_http(url: &str, direct: bool, extra: &str) -> String {
    let unset = if direct {
        "env -u HTTP_PROXY -u http_proxy "
    } else {
        ""
    };
    format!(
        "{unset}curl -sS -o /tmp/body -w '%{{http_code}}\\n' --connect-timeout 3 --max-time 10 {extra} '{url}' && cat /tmp/body"
    )
}

/// `apt-get install libgbm1` fetched `…/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb` over plain HTTP
/// and the proxy refused it ("secret placeholders are only replaced over HTTPS") because of the
/// four characters `bm1_`. Now the same fetch reaches the server, from a sandbox without
/// secrets and from one holding a secret; control: the latter's real placeholder in the same
/// request is still refused, and nothing reaches the server.
#[tokio::test]
async fn a_package_whose_name_holds_the_placeholder_prefix_downloads_over_plain_http() {
    let (inet, d) = world();
    let c = d.client();
    let plain = unique_name("wl");
    let holder = unique_name("wls");
    let secret = unique_name("gh");
    create(&c, &plain).await;
    create(&c, &holder).await;
    attach_secret(
        &c,
        &holder,
        &secret,
        "ghp_REALsecretVALUE0123456789",
        ("Authorization", "token %s"),
        &["api.github.test"],
        "GITHUB_TOKEN",
    )
    .await;
    let referer = format!("-H 'Referer: http://deb.test{DEB}'");
    for name in [&plain, &holder] {
        for direct in [false, true] {
            let (code, out, err) = sh_parts(
                &c,
                name,
                &curl_http(&format!("http://deb.test{DEB}"), direct, &referer),
            )
            .await;
            assert_eq!(code, 0, "{name} direct={direct}: {out}{err}");
            let (status, body) = out.split_once('\n').unwrap_or_else(|| panic!("{out}"));
            assert_eq!(status, "200", "{name} direct={direct}: {body}");
            // The echo server's answer: what reached it, unchanged.
            let seen: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!(seen["path"], DEB);
            assert_eq!(seen["headers"]["referer"], format!("http://deb.test{DEB}"));
        }
    }

    // Control: the holder's real placeholder over plain HTTP is refused, nothing sent. Only
    // this test's requests count (their paths under a prefix of its own): the others run
    // meanwhile. The echo server logs a request before it answers.
    let run = unique_name("refused");
    let mine = || {
        inet.requests()
            .into_iter()
            .filter(|e| {
                e["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&format!("/r/{run}/")))
            })
            .count()
    };
    for direct in [false, true] {
        let auth = "-H \"Authorization: token $GITHUB_TOKEN\"";
        let (code, out, err) = sh_parts(
            &c,
            &holder,
            &curl_http(&format!("http://deb.test/r/{run}{DEB}"), direct, auth),
        )
        .await;
        assert_eq!(code, 0, "direct={direct}: {out}{err}");
        assert_eq!(
            out.trim_end(),
            "403\nburrow proxy: secret placeholders are only replaced over HTTPS",
            "direct={direct}"
        );
    }
    assert_eq!(mine(), 0, "a refused request reached the server");
    // Control: a request that is not refused, under the same prefix, is seen.
    let (code, out, err) = sh_parts(
        &c,
        &plain,
        &curl_http(&format!("http://deb.test/r/{run}{DEB}"), true, ""),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(mine(), 1, "the control request was not seen: {out}");
    for name in [&plain, &holder] {
        c.delete_sandbox(name).await.unwrap();
    }
}

/// The facts of the cached repository a run checks against: libgbm1's pool path and SHA256
/// (from the Packages index). None (a skip) when `scripts/setup.sh` has not built it; a
/// failure under BURROW_TEST_STRICT=1.
struct Repo {
    gbm_path: String,
    gbm_sha256: String,
}

fn repo() -> Option<Repo> {
    let packages = Path::new(DEB_REPO).join("dists/bookworm/main/binary-amd64/Packages");
    let Ok(text) = std::fs::read_to_string(&packages) else {
        burrow_testkit::prerequisite(
            false,
            &format!("no Debian repository at {DEB_REPO} (scripts/setup.sh builds it)"),
        );
        return None;
    };
    let stanza = text
        .split("\n\n")
        .find(|s| s.starts_with("Package: libgbm1\n"))
        .expect("libgbm1 in the repository");
    let field = |k: &str| {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k}in libgbm1's stanza"))
            .to_owned()
    };
    let repo = Repo {
        gbm_path: field("Filename: "),
        gbm_sha256: field("SHA256: "),
    };
    assert!(repo.gbm_path.contains("bm1_"), "{}", repo.gbm_path);
    Some(repo)
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn run(c: &Client, name: &str, script: &str) -> ExecResult {
    c.exec(
        name,
        &ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout_s: Some(600.0),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("exec in {name}: {e}"))
}

/// Waits until the daemon's post-create install has put this sandbox's own CA into its system
/// trust store (wget reads only that store; the other tools follow `SSL_CERT_FILE` and friends).
async fn wait_for_ca_install(c: &Client, name: &str) {
    let probe = "grep -qF \"$(sed -n 2p /.burrow/host/ca.crt)\" /etc/ssl/certs/ca-certificates.crt";
    poll(
        &format!("the sandbox CA to be installed in {name}"),
        PATIENCE,
        || async move {
            let r = sh(c, name, probe).await;
            if r.exit_code == 0 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await
}

/// The requests of one run (the `/r/RUN/` prefix of its URLs), their paths without the prefix
/// and with `%2b` decoded.
fn requests_of(inet: &fake_internet::FakeInternet, run: &str) -> Vec<Value> {
    let prefix = format!("/r/{run}");
    inet.requests()
        .into_iter()
        .filter(|e| e["run"] == run)
        .map(|mut e| {
            let path = e["path"].as_str().unwrap();
            let path = path.strip_prefix(&prefix).unwrap_or(path);
            e["path"] = Value::String(path.replace("%2b", "+").replace("%2B", "+"));
            e
        })
        .collect()
}

/// The requests of `seen` for `method` and `path` from a client whose User-Agent starts with
/// `agent`.
fn hits<'a>(seen: &'a [Value], method: &str, path: &str, agent: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|e| {
            e["method"] == method
                && e["path"] == path
                && e["headers"]["user-agent"]
                    .as_str()
                    .is_some_and(|u| u.starts_with(agent))
        })
        .collect()
}

/// Asserts that `seen` holds a request for `path` from `agent` answered 200, and returns them.
fn served<'a>(seen: &'a [Value], method: &str, path: &str, agent: &str) -> Vec<&'a Value> {
    let h = hits(seen, method, path, agent);
    assert!(
        h.iter().any(|e| e["status"] == 200),
        "no 200 for {agent} {method} {path}; the run's requests: {seen:#?}"
    );
    h
}

/// The sandbox every run forks, made once: the test CA in its trust store (it stands in for
/// the public roots a real registry's certificate chains to; the daemon trusts it upstream
/// through `--egress-ca`), apt pointed at the local repository only, and wget, pip, node, npm
/// and libgbm1 installed by `apt-get` through the explicit proxy in `open` mode (run `base`).
async fn tools(c: &Client, repo: &Repo) -> &'static str {
    static TOOLS: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TOOLS
        .get_or_init(|| async {
            let (inet, _) = world();
            let name = unique_name("wlbase");
            c.create_sandbox(&CreateSandbox {
                name: SandboxName::parse(&name).unwrap(),
                idle_timeout_s: Some(3600),
                ..Default::default()
            })
            .await
            .unwrap();
            // update-ca-certificates rewrites the bundle: after the daemon's own write.
            wait_for_ca_install(c, &name).await;
            let ca = std::fs::read_to_string(&inet.ca_pem).unwrap();
            let script = format!(
                r#"set -e
cat > /usr/local/share/ca-certificates/fake-internet.crt <<'EOF'
{ca}EOF
update-ca-certificates >/dev/null 2>&1
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
echo 'deb [trusted=yes] http://deb.debian.test/r/base/debian bookworm main' > /etc/apt/sources.list.d/wl.list
# Every index fetched, no error or warning (apt-get update exits 0 on some failures).
apt-get update -q >/tmp/update.log 2>&1 || {{ cat /tmp/update.log; exit 1; }}
if grep -E '^(Err|W|E):' /tmp/update.log; then exit 1; fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-unsafe-io wget python3-pip nodejs npm libgbm1
apt-get clean
git config --global user.name wl
git config --global user.email wl@test
wget --version | head -1
python3 -m pip --version
echo "node $(node --version) npm $(npm --version)"
"#
            );
            let started = Instant::now();
            let r = run(c, &name, &script).await;
            assert_eq!(r.exit_code, 0, "installing the tools: {}{}", r.stdout, r.stderr);
            eprintln!(
                "tools installed in {name} in {:.0?}: {}",
                started.elapsed(),
                r.stdout.lines().rev().take(3).collect::<Vec<_>>().join("; ")
            );
            let seen = requests_of(inet, "base");
            served(&seen, "GET", &format!("/debian/{}", repo.gbm_path), "Debian APT");
            name
        })
        .await
}

/// A file of the bare repository (`rev:path`).
fn git_show(bare: &Path, object: &str) -> Vec<u8> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["show", object])
        .output()
        .unwrap();
    assert!(out.status.success(), "git show {object}");
    out.stdout
}

/// Whether the bare repository has branch `name`.
fn git_ref(bare: &Path, name: &str) -> bool {
    std::process::Command::new("git")
        .arg("--git-dir")
        .arg(bare)
        .args(["rev-parse", "-q", "--verify", &format!("refs/heads/{name}")])
        .output()
        .unwrap()
        .status
        .success()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Open,
    Policy,
}

/// The script of one run: every tool once, against URLs under `/r/RUN/`. Without a secret the
/// sandbox's TLS is end to end (the proxy tunnels it), so the tools are pointed at the system
/// store, which holds the test CA; with one, they keep the daemon's variables (its bundle with
/// the sandbox CA that signs the intercepted connections).
fn script(run: &str, transparent: bool, secret: bool, repo: &Repo) -> String {
    let proxy = if transparent {
        // Tools that ignore the proxy variables: tcp/80 and 443 are redirected to the proxy.
        "unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy"
    } else {
        ""
    };
    let trust = if secret {
        ""
    } else {
        "s=/etc/ssl/certs/ca-certificates.crt\n\
         export SSL_CERT_FILE=$s REQUESTS_CA_BUNDLE=$s CURL_CA_BUNDLE=$s GIT_SSL_CAINFO=$s \
         NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/fake-internet.crt"
    };
    // The credential: the placeholder in a header the proxy replaces ($WL_TOKEN is expanded by
    // the sandbox's shell, or by npm from `${WL_TOKEN}` in .npmrc).
    let auth = if secret {
        "-c http.extraHeader=\"Authorization: Bearer $WL_TOKEN\""
    } else {
        ""
    };
    // A private index's token in pip's URL: sent as HTTP Basic.
    let pip_user = if secret { "__token__:$WL_TOKEN@" } else { "" };
    let npm_auth = if secret {
        format!("echo \"//npm.test/r/{run}/:_authToken=\\${{WL_TOKEN}}\" >> .npmrc")
    } else {
        String::new()
    };
    let push = if secret {
        format!(
            "git {auth} push -q origin HEAD:refs/heads/{run}\n\
             echo pushed\n\
             # The placeholder in the URL: git sends it as HTTP Basic (like a credential helper's).\n\
             git push -q \"https://x-access-token:$WL_TOKEN@git.test/r/{run}/wl.git\" HEAD:refs/heads/{run}-basic\n\
             echo pushed-basic\n\
             # Control: a wrong credential is refused by the server.\n\
             if git -c http.extraHeader='Authorization: Bearer wrong' push -q origin HEAD:refs/heads/{run}-wrong 2>/dev/null; then\n\
             echo 'a wrong credential was accepted'; exit 1; fi\n\
             echo push-wrong refused"
        )
    } else {
        format!(
            "# Control: without a credential the server refuses the push.\n\
             if git push -q origin HEAD:refs/heads/{run} 2>/dev/null; then\n\
             echo 'a push without a credential was accepted'; exit 1; fi\n\
             echo push-anon refused"
        )
    };
    let gbm = repo.gbm_path.replace('+', "%2b");
    format!(
        r#"set -e
cd "$(mktemp -d)"
export GIT_TERMINAL_PROMPT=0 DEBIAN_FRONTEND=noninteractive
{proxy}
{trust}
B=/r/{run}
echo '== apt'
echo "deb [trusted=yes] http://deb.debian.test$B/debian bookworm main" > /etc/apt/sources.list.d/wl.list
apt-get update -q >apt.log 2>&1 || {{ cat apt.log; exit 1; }}
if grep -E '^(Err|W|E):' apt.log; then exit 1; fi
apt-get clean  # so the .deb is fetched again
apt-get install -y -q --reinstall -o Dpkg::Options::=--force-unsafe-io libgbm1 >>apt.log 2>&1 || {{ cat apt.log; exit 1; }}
# The same repository over HTTPS (apt reads the system trust store only).
echo "deb [trusted=yes] https://deb.debian.test$B/debian bookworm main" > /etc/apt/sources.list.d/wl.list
apt-get update -q >apt.log 2>&1 || {{ cat apt.log; exit 1; }}
if grep -E '^(Err|W|E):' apt.log; then exit 1; fi
apt-get download -q libgbm1 >>apt.log 2>&1 || {{ cat apt.log; exit 1; }}
echo "apt-https $(cat libgbm1_*.deb | sha256sum | cut -d' ' -f1)"
echo '== curl'
curl -sSf -o gbm.deb "http://deb.debian.test$B/debian/{gbm}"
echo "curl-deb $(sha256sum < gbm.deb | cut -d' ' -f1)"
curl -sSf -o whl "https://pypi.test$B/packages/wl_hello-1.0-py3-none-any.whl"
echo "curl-whl $(sha256sum < whl | cut -d' ' -f1)"
echo "curl-issuer $(curl -sS -o /dev/null -w '%{{certs}}' "https://pypi.test$B/simple/" | grep -m1 '^Issuer:')"
echo '== wget'
wget -q -O tgz "https://npm.test$B/wl-hello/-/wl-hello-1.0.0.tgz"
echo "wget-tgz $(sha256sum < tgz | cut -d' ' -f1)"
wget -q -O rel "http://deb.debian.test$B/debian/dists/bookworm/Release"
echo "wget-release $(sha256sum < rel | cut -d' ' -f1)"
echo '== pip'
python3 -m pip install -q --no-cache-dir --disable-pip-version-check --index-url "https://{pip_user}pypi.test$B/simple/" --target pylib wl-hello
echo "pip $(PYTHONPATH=pylib python3 -c 'import wl_hello; print(wl_hello.hello())')"
echo '== npm'
echo "registry=https://npm.test$B/" > .npmrc
{npm_auth}
npm install --no-audit --no-fund --no-update-notifier --cache ./npm-cache wl-hello >npm.log 2>&1 || {{ cat npm.log; exit 1; }}
echo "npm $(node -e 'console.log(require("wl-hello")())')"
echo '== git'
git {auth} clone -q "https://git.test$B/wl.git" repo
echo "git-clone $(cat repo/README) $(sha256sum < repo/data.bin | cut -d' ' -f1)"
cd repo
echo {run} > run
# More than git's 1 MiB post buffer: the push streams a chunked body.
head -c 3000000 /dev/urandom > big
echo "big $(sha256sum < big | cut -d' ' -f1)"
git add run big
git commit -qm "from {run}"
{push}
cd ..
echo '== what the sandbox holds'
cat .npmrc repo/.git/config
env
"#
    )
}

/// Every tool through the explicit and the transparent proxy, in one sandbox forked from the
/// tools sandbox, in `mode`, with or without a secret attached.
async fn tools_work(mode: Mode, secret: bool) {
    let Some(repo) = repo() else { return };
    let (inet, d) = world();
    let c = d.client();
    let base = tools(&c, &repo).await;
    let name = unique_name("wl");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&name).unwrap(),
        from: Some(burrow_api::ForkSource {
            sandbox: SandboxName::parse(base).unwrap(),
            checkpoint: None,
            memory: false,
        }),
        idle_timeout_s: Some(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    if mode == Mode::Policy {
        let rules: Vec<Value> = ["deb.debian.test", "pypi.test", "npm.test", "git.test"]
            .iter()
            .map(|d| json!({"domain": d, "action": "allow"}))
            .collect();
        let _: Value = c
            .request_json(
                Method::PUT,
                &format!("/v1/sandboxes/{name}/policy/network"),
                Some(&json!({"mode": "policy", "rules": rules})),
            )
            .await
            .unwrap();
    }
    let mut placeholder = None;
    if secret {
        let s = unique_name("reg");
        attach_secret(
            &c,
            &name,
            &s,
            REAL,
            ("Authorization", "Bearer %s"),
            &["git.test", "npm.test", "pypi.test"],
            "WL_TOKEN",
        )
        .await;
        let (code, out, err) = sh_parts(&c, &name, "printenv WL_TOKEN").await;
        assert_eq!(code, 0, "{err}");
        let p = out.trim().to_owned();
        assert!(p.starts_with("bm1_") && !p.contains(REAL), "{p}");
        placeholder = Some(p);
    }
    wait_for_ca_install(&c, &name).await;

    let wheel = std::fs::read(registries().join("pypi/packages/wl_hello-1.0-py3-none-any.whl")).unwrap();
    let tgz = std::fs::read(registries().join("npm/wl-hello/-/wl-hello-1.0.0.tgz")).unwrap();
    let release = std::fs::read(Path::new(DEB_REPO).join("dists/bookworm/Release")).unwrap();
    let bare = registries().join("git/wl.git");
    let data = git_show(&bare, "main:data.bin");
    for transparent in [false, true] {
        let what = format!("{mode:?} secret={secret} transparent={transparent}");
        let run_id = format!("{name}-{}", if transparent { "t" } else { "e" });
        let started = Instant::now();
        let r = run(&c, &name, &script(&run_id, transparent, secret, &repo)).await;
        let elapsed = started.elapsed();
        let out = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(r.exit_code, 0, "{what}: {out}");
        // What the tools got is what the servers hold, byte for byte.
        for line in [
            format!("apt-https {}", repo.gbm_sha256),
            format!("curl-deb {}", repo.gbm_sha256),
            format!("curl-whl {}", sha256_hex(&wheel)),
            format!("wget-tgz {}", sha256_hex(&tgz)),
            format!("wget-release {}", sha256_hex(&release)),
            "pip hello from the wl-hello wheel".into(),
            "npm hello from the wl-hello tarball".into(),
            format!("git-clone the wl repository {}", sha256_hex(&data)),
            if secret {
                "push-wrong refused".into()
            } else {
                "push-anon refused".into()
            },
        ] {
            assert!(
                r.stdout.lines().any(|l| l == line),
                "{what}: no '{line}' in {out}"
            );
        }
        // Intercepted (the sandbox CA, `O=Burrow`) exactly when a secret is attached;
        // otherwise the server's own certificate arrives through the tunnel.
        let issuer = r.stdout.lines().find(|l| l.starts_with("curl-issuer ")).unwrap();
        eprintln!("{what}: {elapsed:.0?}, {issuer}");
        assert_eq!(issuer.contains("Burrow"), secret, "{what}: {issuer}");
        assert_eq!(
            issuer.contains("fake internet test CA"),
            !secret,
            "{what}: {issuer}"
        );
        // The sandbox never holds the real value (its env, .npmrc, git config, any output).
        assert!(
            !out.contains(REAL),
            "{what}: the real credential is visible inside: {out}"
        );

        let seen = requests_of(inet, &run_id);
        let gbm = format!("/debian/{}", repo.gbm_path);
        served(&seen, "GET", "/debian/dists/bookworm/Release", "Debian APT");
        served(&seen, "GET", &gbm, "Debian APT");
        served(&seen, "GET", &gbm, "curl/");
        assert!(
            hits(&seen, "GET", &gbm, "Debian APT")
                .iter()
                .any(|e| e["scheme"] == "https" && e["status"] == 200),
            "{what}: apt never fetched over HTTPS: {seen:#?}"
        );
        served(&seen, "GET", "/packages/wl_hello-1.0-py3-none-any.whl", "curl/");
        served(&seen, "GET", "/wl-hello/-/wl-hello-1.0.0.tgz", "Wget/");
        served(&seen, "GET", "/debian/dists/bookworm/Release", "Wget/");
        let mut pip = served(&seen, "GET", "/simple/wl-hello/", "pip/");
        pip.extend(served(
            &seen,
            "GET",
            "/packages/wl_hello-1.0-py3-none-any.whl",
            "pip/",
        ));
        let mut npm = served(&seen, "GET", "/wl-hello", "npm/");
        npm.extend(served(&seen, "GET", "/wl-hello/-/wl-hello-1.0.0.tgz", "npm/"));
        served(&seen, "GET", "/wl.git/info/refs", "git/");
        served(&seen, "POST", "/wl.git/git-upload-pack", "git/");
        let auth = |e: &Value| e["headers"]["authorization"].as_str().map(str::to_owned);
        let pushed = std::process::Command::new("git")
            .args(["--git-dir"])
            .arg(&bare)
            .args(["log", "-1", "--format=%s", &format!("refs/heads/{run_id}"), "--"])
            .output()
            .unwrap();
        assert!(
            !git_ref(&bare, &format!("{run_id}-wrong")),
            "{what}: a push with a wrong credential landed"
        );
        if secret {
            // The proxy swapped the placeholder for the real credential, on npm's requests
            // and git's (clone and push): the push landed in the bare repository.
            for e in &npm {
                assert_eq!(auth(e), Some(format!("Bearer {REAL}")), "{what}: {e}");
            }
            for e in &pip {
                assert_eq!(auth(e), Some(basic("__token__")), "{what}: {e}");
            }
            let push = served(&seen, "POST", "/wl.git/git-receive-pack", "git/");
            for e in hits(&seen, "POST", "/wl.git/git-upload-pack", "git/") {
                assert_eq!(auth(e), Some(format!("Bearer {REAL}")), "{what}: {e}");
            }
            for e in &push {
                let a = auth(e);
                assert!(
                    a == Some(format!("Bearer {REAL}")) || a == Some(basic("x-access-token")),
                    "{what}: {e}"
                );
            }
            assert_eq!(
                String::from_utf8_lossy(&pushed.stdout).trim(),
                format!("from {run_id}"),
                "{what}: the push did not land: {}",
                String::from_utf8_lossy(&pushed.stderr)
            );
            let big = r.stdout.lines().find_map(|l| l.strip_prefix("big ")).unwrap();
            assert_eq!(
                sha256_hex(&git_show(&bare, &format!("{run_id}:big"))),
                big,
                "{what}: the pushed file differs"
            );
            // The same through HTTP Basic: the placeholder inside the encoded pair replaced.
            assert!(
                push.iter().any(|e| auth(e) == Some(basic("x-access-token"))),
                "{what}: no push with the credential as HTTP Basic: {seen:#?}"
            );
            assert!(
                git_ref(&bare, &format!("{run_id}-basic")),
                "{what}: the push through HTTP Basic did not land"
            );
            // Control: the wrong credential reached the server, which refused it.
            assert!(
                seen.iter()
                    .any(|e| e["status"] == 401 && auth(e).as_deref() == Some("Bearer wrong")),
                "{what}: {seen:#?}"
            );
        } else {
            for e in npm.iter().chain(&pip) {
                assert_eq!(auth(e), None, "{what}: {e}");
            }
            assert!(
                seen.iter().any(|e| e["status"] == 401
                    && e["query"] == "service=git-receive-pack"
                    && auth(e).is_none()),
                "{what}: the push without a credential never reached the server: {seen:#?}"
            );
            assert!(
                !pushed.status.success(),
                "{what}: a push without a credential landed"
            );
        }
        // No placeholder ever reached a server.
        if let Some(p) = &placeholder {
            assert!(
                !serde_json::to_string(&seen).unwrap().contains(p.as_str()),
                "{what}"
            );
        }
    }

    if mode == Mode::Policy {
        // Control: a name the rules do not allow is refused on both paths, and nothing
        // reaches it (the runs above reached the allowed ones from this sandbox).
        for transparent in [false, true] {
            let unset = if transparent {
                "unset HTTPS_PROXY https_proxy; "
            } else {
                ""
            };
            let (code, out, err) = sh_parts(
                &c,
                &name,
                &format!("{unset}curl -sS -o /dev/null --max-time 10 https://blocked.test/"),
            )
            .await;
            assert_ne!(code, 0, "transparent={transparent}: {out}{err}");
        }
        assert!(
            !inet
                .requests()
                .iter()
                .any(|e| e["host"].as_str().is_some_and(|h| h.starts_with("blocked.test"))),
            "a name outside the policy was reached"
        );
    }
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn tools_work_in_open_mode_without_a_secret() {
    tools_work(Mode::Open, false).await;
}

#[tokio::test]
async fn tools_work_in_open_mode_with_a_secret() {
    tools_work(Mode::Open, true).await;
}

#[tokio::test]
async fn tools_work_in_policy_mode_without_a_secret() {
    tools_work(Mode::Policy, false).await;
}

#[tokio::test]
async fn tools_work_in_policy_mode_with_a_secret() {
    tools_work(Mode::Policy, true).await;
}

/// A CA that the image or the user adds the Debian way (`update-ca-certificates`: a company
/// registry's) is trusted by curl, git and Python without flags, as on any machine: once
/// burrowd's own CA is in the image's store, the CA variables it sets point at that store.
/// Control: before the CA is added the same probes fail on the certificate. Then a secret is
/// attached (TLS intercepted with the sandbox's CA): the user's `update-ca-certificates` kept
/// that CA, and the probes still pass.
#[tokio::test]
async fn a_ca_added_with_update_ca_certificates_is_trusted_by_every_tool() {
    let (inet, d) = world();
    let c = d.client();
    let name = unique_name("corpca");
    create(&c, &name).await;
    wait_for_ca_install(&c, &name).await;
    let url = "https://api.github.test/corp";
    let probes = format!(
        "curl -sS -o /dev/null -w '%{{http_code}}\\n' {url} || echo curl-failed; \
         git ls-remote {url} >/dev/null 2>/tmp/git.err; grep -q 'certificate' /tmp/git.err && echo git-cert-failed || echo git-reached; \
         python3 -c 'import urllib.request as u; print(u.urlopen(\"{url}\").status)' 2>/dev/null || echo python-failed"
    );
    let out = run(&c, &name, &probes).await.stdout;
    assert_eq!(
        out, "000\ncurl-failed\ngit-cert-failed\npython-failed\n",
        "before the CA is added"
    );

    let ca = std::fs::read(&inet.ca_pem).unwrap();
    c.write_file_bytes(
        &name,
        "/usr/local/share/ca-certificates/corp.crt",
        Default::default(),
        ca,
    )
    .await
    .unwrap();
    let r = run(
        &c,
        &name,
        "update-ca-certificates >/dev/null 2>&1; echo $CURL_CA_BUNDLE",
    )
    .await;
    assert_eq!(r.stdout, "/etc/ssl/certs/ca-certificates.crt\n");
    let out = run(&c, &name, &probes).await.stdout;
    assert_eq!(out, "200\ngit-reached\n200\n", "with the CA added");

    // Interception: the sandbox's own CA is still trusted after the user's update.
    attach_secret(
        &c,
        &name,
        &unique_name("corp-secret"),
        "corp-REAL-value-0123456789",
        ("Authorization", "token %s"),
        &["api.github.test"],
        "CORP_TOKEN",
    )
    .await;
    let issuer = run(
        &c,
        &name,
        &format!("curl -sS -v -o /dev/null {url} 2>&1 | grep -i 'issuer:'"),
    )
    .await
    .stdout;
    assert!(!issuer.contains("fake internet test CA"), "intercepted: {issuer}");
    let out = run(&c, &name, &probes).await.stdout;
    assert_eq!(
        out, "200\ngit-reached\n200\n",
        "intercepted, after update-ca-certificates"
    );
    c.delete_sandbox(&name).await.unwrap();
}
