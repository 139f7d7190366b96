//! Image references: `[registry[:port]/]repository[:tag][@sha256:…]`, with Docker's defaults (`docker.io`,
//! `library/`, `latest`). Validation is strict because the pieces end up in URLs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::OciError;
use crate::digest::Sha256Digest;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What a reference points at inside a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOrDigest {
    /// A mutable tag such as `1.2` or `latest`.
    Tag(String),
    /// An immutable manifest digest, `sha256:<hex>`.
    Digest(String),
}

impl TagOrDigest {
    /// The string used in `/v2/<repo>/manifests/<this>`.
    pub fn as_str(&self) -> &str {
        match self {
            TagOrDigest::Tag(t) | TagOrDigest::Digest(t) => t,
        }
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host with optional port, e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `team/tool` or `library/debian`.
    pub repository: String,
    /// Tag or digest; when a reference has both, the digest wins (as with Docker).
    pub tag_or_digest: TagOrDigest,
}

impl Reference {
    /// Parses a reference such as `127.0.0.1:5000/team/tool:1`, `debian`, or `ghcr.io/o/r@sha256:…`.
    pub fn parse(reference: &str) -> Result<Self, OciError> {
        let err = |reason: &str| OciError::InvalidReference {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        if reference.is_empty() {
            return Err(err("empty"));
        }
        if reference.len() > 512 || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("too long or contains whitespace"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let d = Sha256Digest::parse(digest).map_err(|e| err(&e.to_string()))?;
                (rest, Some(d.to_string()))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(|r| err(&r))?;
        }

        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder)) if first.contains(['.', ':']) || first == "localhost" => {
                validate_registry(first).map_err(|r| err(&r))?;
                (first.to_owned(), remainder.to_owned())
            }
            Some(_) => (DOCKER_HUB.to_owned(), name.to_owned()),
            None => (DOCKER_HUB.to_owned(), format!("library/{name}")),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(|r| err(&r))?;

        let tag_or_digest = match (digest, tag) {
            (Some(d), _) => TagOrDigest::Digest(d),
            (None, Some(t)) => TagOrDigest::Tag(t.to_owned()),
            (None, None) => TagOrDigest::Tag("latest".into()),
        };
        Ok(Self {
            registry,
            repository,
            tag_or_digest,
        })
    }

    /// Host and port the registry API is served on (`docker.io` is served by `registry-1.docker.io`).
    pub fn api_authority(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine: `localhost`, `127.0.0.0/8` or `::1`.
    pub fn is_loopback(&self) -> bool {
        authority_is_loopback(&self.registry)
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match &self.tag_or_digest {
            TagOrDigest::Tag(t) => write!(f, ":{t}"),
            TagOrDigest::Digest(d) => write!(f, "@{d}"),
        }
    }
}

/// `host[:port]` (or `[v6]:port`) → whether the host is loopback.
pub(crate) fn authority_is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let ok = tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?} (letters, digits, '_', '.', '-'; at most 128)"
        ))
    }
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let bad = || format!("invalid registry host {registry:?}");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        (None, after.strip_prefix(':'))
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host
                .split('.')
                .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if !ok {
            return Err(bad());
        }
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("invalid port in registry {registry:?}"));
    }
    Ok(())
}

fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.len() > 255 {
        return Err("repository name longer than 255 characters".into());
    }
    if repository.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository {repository:?} must be lowercase"));
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = bytes.first().is_some_and(alnum)
            && bytes.last().is_some_and(alnum)
            && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.");
        if !ok {
            return Err(format!(
                "invalid repository path component {component:?} (lowercase letters and digits, separated by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_common_forms() {
        let r = parse("127.0.0.1:5000/team/tool:1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/tool");
        assert_eq!(r.tag_or_digest, TagOrDigest::Tag("1".into()));
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/tool:1");

        let r = parse("debian");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/debian")
        );
        assert_eq!(r.tag_or_digest.as_str(), "latest");
        assert_eq!(r.api_authority(), "registry-1.docker.io");
        assert!(!r.is_loopback());

        assert_eq!(parse("someuser/app:v2").repository, "someuser/app");
        assert_eq!(parse("localhost/app").registry, "localhost");
        assert!(parse("localhost:5000/app").is_loopback());
        assert!(parse("[::1]:5000/app").is_loopback());

        let digest = format!("sha256:{}", "0a".repeat(32));
        let r = parse(&format!("ghcr.io/o/r:tag@{digest}"));
        assert_eq!(r.tag_or_digest, TagOrDigest::Digest(digest.clone()));
        assert_eq!(r.to_string(), format!("ghcr.io/o/r@{digest}"));
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "Team/Tool",
            "host:5000/../etc",
            "host:5000/a//b",
            "a b",
            "repo:bad/tag",
            "repo:-tag",
            "repo@sha256:short",
            "repo@md5:00",
            "host:99999/x",
            "-bad.host:1/x",
            "x/.hidden",
        ] {
            let err = Reference::parse(bad);
            assert!(err.is_err(), "{bad:?} parsed as {err:?}");
        }
        let msg = Reference::parse("Team/Tool").unwrap_err().to_string();
        assert!(msg.contains("lowercase"), "{msg}");
    }

    #[test]
    fn loopback_detection() {
        for (a, want) in [
            ("127.0.0.1:5000", true),
            ("127.9.9.9", true),
            ("localhost", true),
            ("[::1]:80", true),
            ("10.0.0.1:5000", false),
            ("example.com", false),
            ("localhost.example.com", false),
        ] {
            assert_eq!(authority_is_loopback(a), want, "{a}");
        }
    }
}
