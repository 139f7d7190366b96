//! Real work inside a sandbox just works: what ordinary tools send passes the proxy
//! unchanged. The fake internet (a DNS server and HTTP/HTTPS echo servers in a namespace this
//! test makes, shared with `network.rs` through `support/fake_internet.rs`) is all it
//! reaches: the daemon may only forward to 198.18.0.0/15 and resolves through the fake DNS
//! only.

use burrow_testkit::burrow_client::Method;
use burrow_testkit::{Daemon, unique_name};
use serde_json::{Value, json};

#[path = "support/fake_internet.rs"]
mod fake_internet;
use fake_internet::{create, sh};

const NAMES: &[&str] = &["api.github.test", "deb.test"];

fn world() -> &'static (fake_internet::FakeInternet, Daemon) {
    fake_internet::world(NAMES)
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
    let _: Value = c
        .request_json(
            Method::POST,
            "/v1/secrets",
            Some(&json!({"name": secret, "value": "ghp_REALsecretVALUE0123456789",
                         "inject": {"header": "Authorization", "format": "token %s"},
                         "hosts": ["api.github.test"]})),
        )
        .await
        .unwrap();
    let _: Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{holder}/secrets/{secret}"),
            Some(&json!({"env": "GITHUB_TOKEN"})),
        )
        .await
        .unwrap();
    let referer = format!("-H 'Referer: http://deb.test{DEB}'");
    for name in [&plain, &holder] {
        for direct in [false, true] {
            let (code, out, err) = sh(
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

    // Control: the holder's real placeholder over plain HTTP is refused, nothing sent.
    let before = inet.requests().len();
    for direct in [false, true] {
        let auth = "-H \"Authorization: token $GITHUB_TOKEN\"";
        let (code, out, err) = sh(
            &c,
            &holder,
            &curl_http(&format!("http://deb.test{DEB}"), direct, auth),
        )
        .await;
        assert_eq!(code, 0, "direct={direct}: {out}{err}");
        assert_eq!(
            out.trim_end(),
            "403\nburrow proxy: secret placeholders are only replaced over HTTPS",
            "direct={direct}"
        );
    }
    assert_eq!(
        inet.requests().len(),
        before,
        "a refused request reached the server"
    );
    for name in [&plain, &holder] {
        c.delete_sandbox(name).await.unwrap();
    }
}
