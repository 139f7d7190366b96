//! Secret placeholders in request headers: checked and replaced by the real value, or the
//! request is refused. Pure decisions over a [`Directory`]; no I/O.
//!
//! A placeholder is a token of a macaroon's shape that parses and verifies under the
//! placeholder key (see `super::placeholders`); text that merely contains the prefix, or a
//! token that does not verify, is none and passes untouched. A header value holding a
//! placeholder is forwarded only after every placeholder in it names an existing secret
//! attached to this sandbox, passes its caveats for this exact request, targets one of the
//! secret's own hosts and sits in the secret's header. Anything else refuses the whole
//! request, so a placeholder never reaches a third party. A sandbox holding no secret has
//! nothing inspected.
//!
//! A placeholder inside an HTTP Basic pair (`Basic base64(user:PLACEHOLDER)`, what git sends
//! for a token in the URL or from a credential helper) is checked the same way; there the value
//! takes the placeholder's place in the pair, which is encoded again (the secret's format
//! describes a header of its own and does not apply).

use base64::Engine as _;
use burrow_macaroon::{Caveat, Request, host_matches};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use super::{basic_pair, holds_placeholder, placeholders};
use crate::{Directory, SandboxView, SecretValue};

/// The request a placeholder is checked against.
pub(super) struct Target<'a> {
    pub view: &'a SandboxView,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Unix time, seconds.
    pub now: i64,
}

/// A secret swapped into the request.
pub(super) struct Injected {
    pub secret: String,
    pub value: String,
}

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        f.debug_struct("Injected")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Why a placeholder was refused; `secret` when it got as far as naming one.
#[derive(Debug)]
pub(super) struct Refused {
    pub secret: Option<String>,
    pub reason: String,
}

/// Replaces every placeholder in `headers`, or refuses the request. Returns what was injected.
pub(super) fn apply(
    dir: &dyn Directory,
    target: &Target<'_>,
    headers: &mut HeaderMap,
) -> Result<Vec<Injected>, Refused> {
    if dir.attached_secrets(&target.view.id).is_empty() {
        return Ok(Vec::new());
    }
    let key = dir.placeholder_key();
    let holds = |v: &HeaderValue| holds_placeholder(&key, v.as_bytes());
    if !headers.values().any(holds) {
        return Ok(Vec::new());
    }
    let mut injected = Vec::new();
    let old = std::mem::take(headers);
    let mut current: Option<HeaderName> = None;
    for (name, value) in old {
        if let Some(name) = name {
            current = Some(name);
        }
        let name = current.clone().expect("a header map's first entry has a name");
        let value = if holds(&value) {
            let (value, secret) = replace(dir, &key, target, &name, &value)?;
            injected.push(secret);
            value
        } else {
            value
        };
        headers.append(name, value);
    }
    Ok(injected)
}

fn replace(
    dir: &dyn Directory,
    key: &[u8],
    target: &Target<'_>,
    header: &HeaderName,
    value: &HeaderValue,
) -> Result<(HeaderValue, Injected), Refused> {
    let text = value.to_str().map_err(|_| Refused {
        secret: None,
        reason: format!("header {header} holds a placeholder among bytes that are not text"),
    })?;
    let (secret, replaced) = if placeholders(key, text.as_bytes()).next().is_some() {
        let secret = resolve(dir, key, target, header, text)?;
        let replaced = secret.format.replace("%s", &secret.value);
        (secret, replaced)
    } else {
        // Only an HTTP Basic pair holding one gets here (`apply` checked).
        let pair = basic_pair(text.as_bytes())
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or_else(|| Refused {
                secret: None,
                reason: format!("header {header} holds a malformed placeholder"),
            })?;
        let secret = resolve(dir, key, target, header, &pair)?;
        let mut plain = pair.clone();
        for (token, _) in placeholders(key, pair.as_bytes()) {
            plain = plain.replace(token, &secret.value);
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
        (secret, format!("Basic {encoded}"))
    };
    let mut replaced = HeaderValue::from_str(&replaced).map_err(|_| Refused {
        secret: Some(secret.name.clone()),
        reason: format!(
            "secret '{}' cannot be written into a header (its value or format holds control characters)",
            secret.name
        ),
    })?;
    replaced.set_sensitive(true);
    Ok((
        replaced,
        Injected {
            secret: secret.name,
            value: secret.value,
        },
    ))
}

/// The secret every placeholder in `text` (a header value, or the pair of an HTTP Basic one)
/// stands for, once each passes its caveats for this request and the secret may go to this
/// host in this header.
fn resolve(
    dir: &dyn Directory,
    key: &[u8],
    target: &Target<'_>,
    header: &HeaderName,
    text: &str,
) -> Result<SecretValue, Refused> {
    let refuse = |secret: Option<&str>, reason: String| Refused {
        secret: secret.map(str::to_owned),
        reason,
    };
    let mut secret_name: Option<String> = None;
    for (_, caveats) in placeholders(key, text.as_bytes()) {
        let name = caveats
            .0
            .iter()
            .find_map(|c| match c {
                Caveat::Secret(s) => Some(s.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                refuse(
                    None,
                    format!("the token in header {header} is not a secret placeholder"),
                )
            })?;
        if secret_name.as_ref().is_some_and(|n| *n != name) {
            return Err(refuse(
                Some(&name),
                format!("header {header} holds placeholders for different secrets"),
            ));
        }
        let request = Request {
            now: target.now,
            sandbox: Some((&target.view.name, &target.view.id)),
            action: None,
            secret: Some(&name),
            host: Some(target.host),
            method: Some(target.method),
            path: Some(target.path),
        };
        caveats
            .check(&request)
            .map_err(|d| refuse(Some(&name), d.to_string()))?;
        secret_name = Some(name);
    }
    let name =
        secret_name.ok_or_else(|| refuse(None, format!("header {header} holds a malformed placeholder")))?;
    let secret = dir
        .secret(&name)
        .ok_or_else(|| refuse(Some(&name), format!("secret '{name}' does not exist")))?;
    if !dir.attached_secrets(&target.view.id).contains(&name) {
        return Err(refuse(
            Some(&name),
            format!(
                "secret '{name}' is not attached to sandbox '{}'",
                target.view.name
            ),
        ));
    }
    if !secret.hosts.iter().any(|p| host_matches(p, target.host)) {
        return Err(refuse(
            Some(&name),
            format!(
                "secret '{name}' may only be sent to hosts {}, not '{}'",
                secret.hosts.join(","),
                target.host
            ),
        ));
    }
    if !header.as_str().eq_ignore_ascii_case(&secret.header) {
        return Err(refuse(
            Some(&name),
            format!("secret '{name}' goes in header {}, not {header}", secret.header),
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::time::Duration;

    use burrow_api::NetworkMode;
    use burrow_macaroon::Macaroon;

    use super::*;
    use crate::SecretValue;
    use crate::ca::SandboxCa;

    const KEY: &[u8] = b"placeholder-key-placeholder-key!";

    struct Dir;

    impl Directory for Dir {
        fn sandbox(&self, _: Ipv4Addr) -> Option<SandboxView> {
            None
        }
        fn placeholder_key(&self) -> Vec<u8> {
            KEY.to_vec()
        }
        fn secret(&self, name: &str) -> Option<SecretValue> {
            (name == "gh" || name == "loose").then(|| SecretValue {
                name: name.into(),
                value: "ghp_real".into(),
                header: "Authorization".into(),
                format: "token %s".into(),
                hosts: vec!["api.github.com".into()],
            })
        }
        fn attached_secrets(&self, _: &str) -> Vec<String> {
            vec!["gh".into()]
        }
        fn admit(&self, _: Ipv4Addr, _: Ipv4Addr, _: Duration) {}
        fn event(&self, _: &str, _: &str, _: serde_json::Value) {}
    }

    fn view() -> SandboxView {
        SandboxView {
            id: "sb-1".into(),
            name: "dev".into(),
            mode: NetworkMode::Policy,
            rules: vec![],
            ca: Arc::new(SandboxCa::generate("t").unwrap()),
        }
    }

    fn run(host: &str, header: &str, value: &str) -> Result<(HeaderMap, Vec<Injected>), Refused> {
        let view = view();
        let target = Target {
            view: &view,
            host,
            method: "GET",
            path: "/user",
            now: 1000,
        };
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert(
            HeaderName::from_bytes(header.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        let injected = apply(&Dir, &target, &mut headers)?;
        Ok((headers, injected))
    }

    fn placeholder(secret: &str, extra: &[Caveat]) -> String {
        let mut caveats = vec![Caveat::Secret(secret.into())];
        caveats.extend_from_slice(extra);
        Macaroon::mint(KEY, "secret-x", &caveats).encode()
    }

    #[test]
    fn replaces_a_valid_placeholder() {
        let (headers, injected) = run(
            "api.github.com",
            "authorization",
            &format!("token {}", placeholder("gh", &[])),
        )
        .unwrap();
        assert_eq!(headers["authorization"], "token ghp_real");
        assert_eq!(headers["accept"], "*/*");
        assert_eq!(injected[0].secret, "gh");
        // Nothing to do without a placeholder.
        let (headers, injected) = run("api.github.com", "authorization", "Bearer plain").unwrap();
        assert!(injected.is_empty());
        assert_eq!(headers["authorization"], "Bearer plain");
    }

    #[test]
    fn replaces_a_placeholder_inside_http_basic() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = format!(
            "Basic {}",
            b64(&format!("x-access-token:{}", placeholder("gh", &[])))
        );
        let (headers, injected) = run("api.github.com", "authorization", &basic).unwrap();
        // The value in the placeholder's place; the secret's format is for a header of its own.
        assert_eq!(
            headers["authorization"],
            format!("Basic {}", b64("x-access-token:ghp_real")).as_str()
        );
        assert_eq!(injected[0].secret, "gh");
        // The same checks as anywhere else.
        let err = run("evil.test", "authorization", &basic).unwrap_err();
        assert!(err.reason.contains("may only be sent to"), "{}", err.reason);
        let expired = placeholder("gh", &[Caveat::ExpiresAt(10)]);
        let err = run(
            "api.github.com",
            "authorization",
            &format!("Basic {}", b64(&format!("x:{expired}"))),
        )
        .unwrap_err();
        assert!(err.reason.contains("expires=10"), "{}", err.reason);
        // A pair without a placeholder passes untouched.
        let plain = format!("Basic {}", b64("user:libgbm1_22.3.6"));
        let (headers, injected) = run("api.github.com", "authorization", &plain).unwrap();
        assert!(injected.is_empty());
        assert_eq!(headers["authorization"], plain.as_str());
    }

    #[test]
    fn refuses_what_does_not_hold() {
        let gh = placeholder("gh", &[]);
        let err = run("evil.test", "authorization", &gh).unwrap_err();
        assert!(err.reason.contains("may only be sent to"), "{}", err.reason);
        let err = run("api.github.com", "x-token", &gh).unwrap_err();
        assert!(
            err.reason.contains("goes in header Authorization"),
            "{}",
            err.reason
        );
        let err = run("api.github.com", "authorization", &placeholder("loose", &[])).unwrap_err();
        assert!(err.reason.contains("not attached"), "{}", err.reason);
        let err = run("api.github.com", "authorization", &placeholder("gone", &[])).unwrap_err();
        assert_eq!(err.secret.as_deref(), Some("gone"));
        let expired = placeholder("gh", &[Caveat::ExpiresAt(10)]);
        let err = run("api.github.com", "authorization", &expired).unwrap_err();
        assert!(err.reason.contains("expires=10"), "{}", err.reason);
        let not_placeholder = Macaroon::mint(KEY, "token-1", &[]).encode();
        let err = run("api.github.com", "authorization", &not_placeholder).unwrap_err();
        assert!(err.reason.contains("not a secret placeholder"), "{}", err.reason);
    }

    #[test]
    fn what_is_no_placeholder_passes_untouched() {
        // None of these parses and verifies under the placeholder key: no secret is involved,
        // so the header goes on as it came.
        let forged = Macaroon::mint(b"another key", "x", &[Caveat::Secret("gh".into())]).encode();
        let gh = placeholder("gh", &[]);
        let mut garbled = gh.clone();
        garbled.truncate(gh.len() - 3);
        for value in [
            "token bm1_garbage".to_owned(),
            "https://deb.debian.org/pool/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb".to_owned(),
            format!("token {forged}"),
            format!("token {garbled}"),
        ] {
            let (headers, injected) = run("api.github.com", "authorization", &value).unwrap();
            assert!(injected.is_empty(), "{value}");
            assert_eq!(headers["authorization"], value.as_str());
        }
    }
}
