//! Macaroons: bearer tokens whose holder can narrow them offline, never widen them.
//!
//! A macaroon is an identifier, a list of caveats and a signature chained with HMAC-SHA256:
//! `sig₀ = HMAC(root_key, id)`, `sigᵢ = HMAC(sigᵢ₋₁, caveatᵢ)`. Anyone holding a macaroon can
//! append a caveat and compute the next signature ([`Macaroon::attenuate`]); only the holder
//! of the root key can check the chain ([`Macaroon::verify`]). Every caveat must hold for a
//! request ([`Caveats::check`]); an unknown caveat never holds, so older verifiers fail closed.
//!
//! Burrow uses them twice: API tokens (the admin token is the root macaroon, caveats on
//! sandboxes, actions and expiry) and secret placeholders handed to sandboxes (caveats on
//! the sandbox, the secret, hosts, methods, path prefix and expiry).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Every encoded macaroon starts with this, so it is recognisable in a header or a log.
pub const PREFIX: &str = "bm1_";

/// Largest encoded macaroon accepted (a guard against hostile input).
pub const MAX_ENCODED_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a Burrow token (it should start with {PREFIX})")]
    Prefix,
    #[error("token is longer than {MAX_ENCODED_LEN} bytes")]
    TooLong,
    #[error("token does not parse: {0}")]
    Parse(String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token caveat {0:?} is not understood")]
    UnknownCaveat(String),
}

/// One restriction. Its text form (`name=value`) is what the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caveat {
    /// The request must be for one of these sandboxes (by name or id).
    Sandboxes(Vec<String>),
    /// The request must be one of these actions (see the daemon's action list).
    Actions(Vec<String>),
    /// Valid until this unix time (seconds).
    ExpiresAt(i64),
    /// A secret placeholder: for this secret only.
    Secret(String),
    /// The destination host must match one of these patterns (`*.example.com` or exact).
    Hosts(Vec<String>),
    /// The HTTP method must be one of these.
    Methods(Vec<String>),
    /// The request path must start with this.
    PathPrefix(String),
}

impl Caveat {
    /// The caveat's name as it appears in its text form and in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Caveat::Sandboxes(_) => "sandboxes",
            Caveat::Actions(_) => "actions",
            Caveat::ExpiresAt(_) => "expires",
            Caveat::Secret(_) => "secret",
            Caveat::Hosts(_) => "hosts",
            Caveat::Methods(_) => "methods",
            Caveat::PathPrefix(_) => "path_prefix",
        }
    }

    fn parse(text: &str) -> Result<Caveat, Error> {
        let unknown = || Error::UnknownCaveat(text.to_owned());
        let (name, value) = text.split_once('=').ok_or_else(unknown)?;
        let list = || {
            value
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        Ok(match name {
            "sandboxes" => Caveat::Sandboxes(list()),
            "actions" => Caveat::Actions(list()),
            "expires" => Caveat::ExpiresAt(value.parse().map_err(|_| unknown())?),
            "secret" => Caveat::Secret(value.to_owned()),
            "hosts" => Caveat::Hosts(list()),
            "methods" => Caveat::Methods(list()),
            "path_prefix" => Caveat::PathPrefix(value.to_owned()),
            _ => return Err(unknown()),
        })
    }
}

impl fmt::Display for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Caveat::Sandboxes(v) | Caveat::Actions(v) | Caveat::Hosts(v) | Caveat::Methods(v) => {
                write!(f, "{name}={}", v.join(","))
            }
            Caveat::ExpiresAt(t) => write!(f, "{name}={t}"),
            Caveat::Secret(s) | Caveat::PathPrefix(s) => write!(f, "{name}={s}"),
        }
    }
}

/// What a request is, for checking caveats against. A caveat about a field the request does
/// not have fails: a token limited to sandbox `dev` cannot list every sandbox.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Unix time in seconds.
    pub now: i64,
    /// The sandbox's name and id.
    pub sandbox: Option<(&'a str, &'a str)>,
    pub action: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub host: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
}

/// A caveat that did not hold, named for the caller (API 403 bodies quote it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token caveat '{caveat}' does not allow this request: {reason}")]
pub struct Denied {
    pub caveat: String,
    pub reason: String,
}

/// The verified caveats of a macaroon.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caveats(pub Vec<Caveat>);

impl Caveats {
    /// Checks every caveat against `req`; the first that fails is named.
    pub fn check(&self, req: &Request<'_>) -> Result<(), Denied> {
        for c in &self.0 {
            let deny = |reason: String| Denied {
                caveat: c.to_string(),
                reason,
            };
            match c {
                Caveat::ExpiresAt(t) if req.now >= *t => {
                    return Err(deny(format!("it expired at unix time {t}")));
                }
                Caveat::ExpiresAt(_) => {}
                Caveat::Sandboxes(allowed) => match req.sandbox {
                    Some((name, id)) if allowed.iter().any(|a| a == name || a == id) => {}
                    Some((name, _)) => return Err(deny(format!("sandbox '{name}' is not in the list"))),
                    None => return Err(deny("the request is not for a single sandbox".into())),
                },
                Caveat::Actions(allowed) => match req.action {
                    Some(a) if allowed.iter().any(|x| x == a) => {}
                    Some(a) => return Err(deny(format!("action '{a}' is not in the list"))),
                    None => return Err(deny("the request has no action".into())),
                },
                Caveat::Secret(s) => match req.secret {
                    Some(x) if x == s => {}
                    _ => return Err(deny(format!("it is only for secret '{s}'"))),
                },
                Caveat::Hosts(patterns) => match req.host {
                    Some(h) if patterns.iter().any(|p| host_matches(p, h)) => {}
                    Some(h) => return Err(deny(format!("host '{h}' is not allowed"))),
                    None => return Err(deny("the request names no host".into())),
                },
                Caveat::Methods(ms) => match req.method {
                    Some(m) if ms.iter().any(|x| x.eq_ignore_ascii_case(m)) => {}
                    Some(m) => return Err(deny(format!("method {m} is not allowed"))),
                    None => return Err(deny("the request has no method".into())),
                },
                Caveat::PathPrefix(p) => match req.path {
                    Some(path) if path.starts_with(p.as_str()) => {}
                    Some(path) => return Err(deny(format!("path '{path}' is outside '{p}'"))),
                    None => return Err(deny("the request has no path".into())),
                },
            }
        }
        Ok(())
    }

    /// The earliest expiry among the caveats, if any.
    pub fn expires_at(&self) -> Option<i64> {
        self.0
            .iter()
            .filter_map(|c| match c {
                Caveat::ExpiresAt(t) => Some(*t),
                _ => None,
            })
            .min()
    }
}

/// `*.example.com` matches any name below example.com (not example.com itself); `*` matches
/// everything; anything else matches itself, case-insensitively, ignoring a trailing dot.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    /// Identifier.
    i: String,
    /// Caveats, in order.
    c: Vec<String>,
    /// Signature, base64url.
    s: String,
}

/// A macaroon. Its caveats are not trusted until [`Macaroon::verify`] has checked them.
#[derive(Clone, PartialEq, Eq)]
pub struct Macaroon {
    id: String,
    caveats: Vec<String>,
    sig: [u8; 32],
}

impl fmt::Debug for Macaroon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signature is the bearer secret: never print it.
        f.debug_struct("Macaroon")
            .field("id", &self.id)
            .field("caveats", &self.caveats)
            .finish_non_exhaustive()
    }
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

impl Macaroon {
    /// A new macaroon under `root_key`, with `id` (which should be unique) and caveats.
    pub fn mint(root_key: &[u8], id: &str, caveats: &[Caveat]) -> Macaroon {
        let mut m = Macaroon {
            id: id.to_owned(),
            caveats: Vec::new(),
            sig: mac(root_key, id.as_bytes()),
        };
        for c in caveats {
            m = m.attenuate(c);
        }
        m
    }

    /// A random identifier with a readable prefix (`admin`, `token`, `secret`).
    pub fn random_id(kind: &str) -> String {
        let bytes: [u8; 12] = rand::random();
        format!("{kind}-{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The same macaroon with one more caveat; needs no key.
    pub fn attenuate(&self, caveat: &Caveat) -> Macaroon {
        let text = caveat.to_string();
        let sig = mac(&self.sig, text.as_bytes());
        let mut caveats = self.caveats.clone();
        caveats.push(text);
        Macaroon {
            id: self.id.clone(),
            caveats,
            sig,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The caveats as written, unverified (for display).
    pub fn caveat_texts(&self) -> &[String] {
        &self.caveats
    }

    /// Checks the signature chain under `root_key` and parses the caveats.
    pub fn verify(&self, root_key: &[u8]) -> Result<Caveats, Error> {
        let mut sig = mac(root_key, self.id.as_bytes());
        for c in &self.caveats {
            sig = mac(&sig, c.as_bytes());
        }
        let diff = sig.iter().zip(&self.sig).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(Error::Signature);
        }
        self.caveats
            .iter()
            .map(|c| Caveat::parse(c))
            .collect::<Result<_, _>>()
            .map(Caveats)
    }

    /// `bm1_` + base64url(JSON).
    pub fn encode(&self) -> String {
        let wire = Wire {
            i: self.id.clone(),
            c: self.caveats.clone(),
            s: URL_SAFE_NO_PAD.encode(self.sig),
        };
        let json = serde_json::to_vec(&wire).expect("plain struct serializes");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(text: &str) -> Result<Macaroon, Error> {
        let text = text.trim();
        if text.len() > MAX_ENCODED_LEN {
            return Err(Error::TooLong);
        }
        let body = text.strip_prefix(PREFIX).ok_or(Error::Prefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| Error::Parse(e.to_string()))?;
        let wire: Wire = serde_json::from_slice(&json).map_err(|e| Error::Parse(e.to_string()))?;
        let sig: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&wire.s)
            .map_err(|e| Error::Parse(e.to_string()))?
            .try_into()
            .map_err(|_| Error::Parse("signature is not 32 bytes".into()))?;
        // Parse caveats now so a malformed one is a parse error, not a later surprise.
        for c in &wire.c {
            Caveat::parse(c)?;
        }
        Ok(Macaroon {
            id: wire.i,
            caveats: wire.c,
            sig,
        })
    }

    /// Finds every candidate macaroon embedded in `bytes` (e.g. a header value such as
    /// `token bm1_…`, or a URL): [`PREFIX`], then base64url of a JSON object (so `eyJ`, the
    /// encoding of `{"`), then the rest of the base64url run, at most [`MAX_ENCODED_LEN`] long.
    /// A mere occurrence of the prefix (`libgbm1_22.3.6-1.deb`) is no candidate. A candidate is
    /// only text of the right shape: whether it is a token is for [`Macaroon::decode`] and
    /// [`Macaroon::verify`] to say.
    pub fn find_in(bytes: &[u8]) -> impl Iterator<Item = &str> {
        const SHAPE: &[u8] = b"bm1_eyJ";
        debug_assert!(SHAPE.starts_with(PREFIX.as_bytes()));
        let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        let mut at = 0;
        std::iter::from_fn(move || {
            while at + SHAPE.len() <= bytes.len() {
                let start = at;
                if &bytes[start..start + SHAPE.len()] != SHAPE {
                    at += 1;
                    continue;
                }
                let len = bytes[start..].iter().take_while(|&&b| is_b64(b)).count();
                at = start + len;
                if len > MAX_ENCODED_LEN {
                    continue;
                }
                // ASCII by construction.
                return std::str::from_utf8(&bytes[start..start + len]).ok();
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn req() -> Request<'static> {
        Request {
            now: 1000,
            sandbox: Some(("dev", "sb-1")),
            action: Some("exec"),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let m = Macaroon::mint(KEY, "token-1", &[Caveat::Sandboxes(vec!["dev".into()])]);
        let text = m.encode();
        assert!(text.starts_with(PREFIX));
        let back = Macaroon::decode(&text).unwrap();
        assert_eq!(back, m);
        let cav = back.verify(KEY).unwrap();
        assert_eq!(cav.0, vec![Caveat::Sandboxes(vec!["dev".into()])]);
        assert!(cav.check(&req()).is_ok());
    }

    #[test]
    fn wrong_key_or_tampering_fails() {
        let m = Macaroon::mint(KEY, "token-1", &[Caveat::Actions(vec!["read".into()])]);
        assert_eq!(m.verify(b"another key").unwrap_err(), Error::Signature);
        // Dropping a caveat (widening) breaks the chain.
        let mut widened = m.clone();
        widened.caveats.clear();
        assert_eq!(widened.verify(KEY).unwrap_err(), Error::Signature);
        // Editing one breaks it too.
        let mut edited = m.clone();
        edited.caveats[0] = "actions=read,exec".into();
        assert_eq!(edited.verify(KEY).unwrap_err(), Error::Signature);
    }

    #[test]
    fn attenuation_is_offline_and_only_narrows() {
        let root = Macaroon::mint(KEY, "admin-x", &[]);
        let narrowed = root
            .attenuate(&Caveat::Sandboxes(vec!["dev".into()]))
            .attenuate(&Caveat::ExpiresAt(2000));
        let cav = narrowed.verify(KEY).unwrap();
        assert!(cav.check(&req()).is_ok());
        let denied = cav.check(&Request { now: 2000, ..req() }).unwrap_err();
        assert_eq!(denied.caveat, "expires=2000");
        let denied = cav
            .check(&Request {
                sandbox: Some(("prod", "sb-2")),
                ..req()
            })
            .unwrap_err();
        assert_eq!(denied.caveat, "sandboxes=dev");
        let denied = cav
            .check(&Request {
                sandbox: None,
                ..req()
            })
            .unwrap_err();
        assert!(denied.reason.contains("single sandbox"));
    }

    #[test]
    fn placeholder_caveats() {
        let m = Macaroon::mint(
            KEY,
            "secret-1",
            &[
                Caveat::Secret("gh".into()),
                Caveat::Hosts(vec!["api.github.com".into(), "*.githubusercontent.com".into()]),
                Caveat::Methods(vec!["GET".into()]),
                Caveat::PathPrefix("/repos/".into()),
            ],
        );
        let cav = m.verify(KEY).unwrap();
        let ok = Request {
            now: 1,
            secret: Some("gh"),
            host: Some("API.github.com."),
            method: Some("get"),
            path: Some("/repos/x"),
            ..Default::default()
        };
        assert!(cav.check(&ok).is_ok());
        assert!(
            cav.check(&Request {
                host: Some("raw.githubusercontent.com"),
                ..ok.clone()
            })
            .is_ok()
        );
        assert_eq!(
            cav.check(&Request {
                host: Some("evil.com"),
                ..ok.clone()
            })
            .unwrap_err()
            .caveat,
            "hosts=api.github.com,*.githubusercontent.com"
        );
        assert_eq!(
            cav.check(&Request {
                method: Some("POST"),
                ..ok.clone()
            })
            .unwrap_err()
            .caveat,
            "methods=GET"
        );
        assert_eq!(
            cav.check(&Request {
                path: Some("/user"),
                ..ok.clone()
            })
            .unwrap_err()
            .caveat,
            "path_prefix=/repos/"
        );
        assert_eq!(
            cav.check(&Request {
                secret: Some("other"),
                ..ok
            })
            .unwrap_err()
            .caveat,
            "secret=gh"
        );
    }

    #[test]
    fn hostile_input_is_refused() {
        assert_eq!(Macaroon::decode("hello").unwrap_err(), Error::Prefix);
        assert!(matches!(
            Macaroon::decode("bm1_!!!").unwrap_err(),
            Error::Parse(_)
        ));
        assert_eq!(
            Macaroon::decode(&"bm1_".repeat(5000)).unwrap_err(),
            Error::TooLong
        );
        let wire = Wire {
            i: "x".into(),
            c: vec!["frobnicate=1".into()],
            s: URL_SAFE_NO_PAD.encode([0u8; 32]),
        };
        let text = format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap())
        );
        assert!(matches!(
            Macaroon::decode(&text).unwrap_err(),
            Error::UnknownCaveat(_)
        ));
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.github.com", "api.github.com"));
        assert!(!host_matches("*.github.com", "github.com"));
        assert!(!host_matches("*.github.com", "evilgithub.com"));
        assert!(host_matches("pypi.org", "PyPI.org"));
        assert!(host_matches("*", "anything"));
    }

    #[test]
    fn finds_embedded_tokens() {
        let m = Macaroon::mint(KEY, "secret-1", &[]).encode();
        let header = format!("token {m}");
        assert_eq!(
            Macaroon::find_in(header.as_bytes()).collect::<Vec<_>>(),
            vec![m.as_str()]
        );
        assert_eq!(Macaroon::find_in(b"Bearer nothing").count(), 0);
        // The prefix alone, as in a Debian package name, is no candidate.
        let deb = b"/pool/main/m/mesa/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb bm1_ bm1_x";
        assert_eq!(Macaroon::find_in(deb).count(), 0);
        // Two tokens, next to non-text bytes, each found whole.
        let two = [b"\xff".as_slice(), m.as_bytes(), b",\xfe", m.as_bytes()].concat();
        assert_eq!(
            Macaroon::find_in(&two).collect::<Vec<_>>(),
            vec![m.as_str(), m.as_str()]
        );
        // Longer than any token can be: not a candidate.
        let long = format!("bm1_eyJ{}", "A".repeat(MAX_ENCODED_LEN));
        assert_eq!(Macaroon::find_in(long.as_bytes()).count(), 0);
    }
}
