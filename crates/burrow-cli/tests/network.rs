//! `burrow policy`, `burrow secret` and `burrow token` end to end against a real daemon:
//! rules in command-line order, secrets that only ever show as placeholders, tokens created
//! on the server and narrowed offline, then used over TCP. No traffic leaves the host.

use std::process::{Command, Output, Stdio};

use burrow_testkit::cli::{burrow, ok};
use burrow_testkit::{shared, unique_name};

/// The CLI over TCP with `token` instead of the unix socket.
fn burrow_tcp(token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .env_remove("BURROW_SOCKET")
        .env("BURROW_URL", format!("http://{}", shared().addr()))
        .env("BURROW_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn fails(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn policy_rules_keep_their_order_and_bad_ones_are_named() {
    let name = unique_name("clipol");
    ok(&["create", &name]);
    let out = ok(&[
        "policy",
        "set",
        &name,
        "--mode",
        "policy",
        "--allow",
        "*.github.com",
        "--deny",
        "evil.github.com",
        "--allow",
        "pypi.org",
        "--deny",
        "*",
    ]);
    assert!(out.contains("network policy"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["policy", "show", &name, "--json"])).unwrap();
    let rules: Vec<(String, String)> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["domain"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("allow", "*.github.com"),
        ("deny", "evil.github.com"),
        ("allow", "pypi.org"),
        ("deny", "*"),
    ];
    assert_eq!(rules, want.map(|(a, d)| (a.to_owned(), d.to_owned())).to_vec());
    let err = fails(
        &burrow(&[
            "policy",
            "set",
            &name,
            "--mode",
            "policy",
            "--allow",
            "bad domain!",
        ])
        .output()
        .unwrap(),
    );
    assert!(err.contains("bad domain!"), "{err}");
    ok(&["rm", &name]);
}

#[test]
fn secrets_show_as_placeholders_only() {
    let name = unique_name("clisec");
    let secret = unique_name("tok");
    let value = "s3cr3t-value-never-shown-0123";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{value}\n")).unwrap();
    ok(&["create", &name]);
    let out = ok(&[
        "secret",
        "add",
        &secret,
        "--value-file",
        file.path().to_str().unwrap(),
        "--host",
        "api.github.com",
        "--header",
        "Authorization",
        "--format",
        "token %s",
    ]);
    assert!(!out.contains(value), "{out}");
    ok(&["secret", "attach", &name, &secret, "--env", "GITHUB_TOKEN"]);
    let listed = ok(&["secret", "ls", "--json"]);
    assert!(listed.contains(&secret) && !listed.contains(value), "{listed}");
    assert!(ok(&["secret", "ls"]).contains(&format!("{name}(GITHUB_TOKEN)")));
    let env = ok(&["exec", &name, "--", "printenv", "GITHUB_TOKEN"]);
    assert!(env.trim().starts_with("bm1_"), "{env}");
    assert!(!env.contains(value));
    // Without --value-file or --value-stdin the value is refused (never on the command line).
    let err = fails(&burrow(&["secret", "add", "x", "--host", "a.b"]).output().unwrap());
    assert!(err.contains("--value-file"), "{err}");
    ok(&["secret", "detach", &name, &secret]);
    assert!(ok(&["exec", &name, "--", "sh", "-c", "echo ${GITHUB_TOKEN:-unset}"]).contains("unset"));
    ok(&["secret", "rm", &secret]);
    ok(&["rm", &name]);
}

#[test]
fn tokens_are_created_narrowed_offline_and_enforced() {
    let (mine, other) = (unique_name("clitok"), unique_name("clitok-o"));
    ok(&["create", &mine]);
    ok(&["create", &other]);
    let token = ok(&[
        "token",
        "create",
        "--sandbox",
        &mine,
        "--actions",
        "exec,files",
        "--expires",
        "1h",
    ]);
    let token = token.trim();
    assert!(token.starts_with("bm1_"), "{token}");
    // Narrowed without the server: the caveats grow.
    let narrow = ok(&["token", "attenuate", token, "--expires", "10m"]);
    let narrow = narrow.trim();
    let shown = ok(&["token", "inspect", narrow]);
    assert!(
        shown.contains(&format!("sandboxes={mine}")) && shown.contains("actions=exec,files"),
        "{shown}"
    );
    assert_eq!(shown.matches("expires=").count(), 2, "{shown}");
    // It runs commands in its sandbox...
    let o = burrow_tcp(narrow, &["exec", &mine, "--", "echo", "hi"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hi");
    // Listing shows its sandbox only.
    let o = burrow_tcp(narrow, &["ls", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains(&mine) && !listed.contains(&other), "{listed}");
    // ...and nothing else: another sandbox, another action, each refused with the caveat named.
    let err = fails(&burrow_tcp(narrow, &["exec", &other, "--", "true"]));
    assert!(err.contains("sandboxes="), "{err}");
    let err = fails(&burrow_tcp(narrow, &["rm", &mine]));
    assert!(err.contains("actions="), "{err}");
    // Expired, and not a token at all.
    let expired = ok(&["token", "attenuate", token, "--expires", "0s"]);
    let err = fails(&burrow_tcp(expired.trim(), &["exec", &mine, "--", "true"]));
    assert!(err.contains("expire"), "{err}");
    let err = fails(&burrow_tcp("nonsense", &["ls"]));
    assert!(err.contains("invalid token"), "{err}");
    ok(&["rm", &mine]);
    ok(&["rm", &other]);
}
