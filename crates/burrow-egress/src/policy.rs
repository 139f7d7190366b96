//! Domain rules: which names a sandbox in `policy` mode may resolve and reach.
//!
//! Owns the rule grammar ([`validate`], run when an owner sets a policy) and the decision
//! ([`allows`], run by the resolver and the proxy for every name). Matching itself is
//! [`burrow_macaroon::host_matches`], so a secret's host caveats and the network rules read
//! the same way. This module never does I/O.

use std::fmt;
use std::net::IpAddr;

use burrow_api::{NetworkMode, NetworkRule, RuleAction};
use burrow_macaroon::host_matches;

/// The most rules one policy may hold: every name is matched against each in turn.
pub const MAX_RULES: usize = 256;

/// Why a rule was rejected. `index` is the rule's position in the list, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {index} ({domain:?}): {reason}")]
pub struct PolicyError {
    pub index: usize,
    pub domain: String,
    pub reason: Reason,
}

/// What is wrong with a rule's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    TooManyRules,
    Empty,
    Scheme,
    Path,
    Port,
    IpLiteral,
    Wildcard,
    EmptyLabel,
    LabelTooLong,
    BadCharacter,
    TooLong,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooManyRules => "a policy holds at most 256 rules",
            Self::Empty => "the domain is empty",
            Self::Scheme => "a domain, not a URL: drop the scheme",
            Self::Path => "a domain, not a URL: drop the path",
            Self::Port => "rules match names, not ports",
            Self::IpLiteral => "rules match names, not IP addresses",
            Self::Wildcard => "`*` may only be the whole rule or its first label (`*.example.com`)",
            Self::EmptyLabel => "empty label (`..`, or a leading dot)",
            Self::LabelTooLong => "a label is longer than 63 characters",
            Self::BadCharacter => "labels may hold only a-z, 0-9 and `-`",
            Self::TooLong => "the name is longer than 253 characters",
        })
    }
}

/// Checks every rule of a policy. Accepted domains, case-insensitive, with an optional
/// trailing dot: `*` (everything), `*.example.com` (names below example.com) and
/// `example.com` (that name).
pub fn validate(rules: &[NetworkRule]) -> Result<(), PolicyError> {
    for (index, rule) in rules.iter().enumerate() {
        let error = |reason| PolicyError {
            index,
            domain: rule.domain.clone(),
            reason,
        };
        if index >= MAX_RULES {
            return Err(error(Reason::TooManyRules));
        }
        check_domain(&rule.domain).map_err(error)?;
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), Reason> {
    if domain.contains("://") {
        return Err(Reason::Scheme);
    }
    if domain.contains('/') {
        return Err(Reason::Path);
    }
    if domain.contains('[') || domain.parse::<IpAddr>().is_ok() {
        return Err(Reason::IpLiteral);
    }
    if domain.contains(':') {
        return Err(Reason::Port);
    }
    let name = domain.strip_suffix('.').unwrap_or(domain);
    if name.is_empty() {
        return Err(Reason::Empty);
    }
    if name == "*" {
        return Ok(());
    }
    let name = name.strip_prefix("*.").unwrap_or(name);
    if name.contains('*') {
        return Err(Reason::Wildcard);
    }
    if name.len() > 253 {
        return Err(Reason::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Reason::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(Reason::LabelTooLong);
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Reason::BadCharacter);
        }
    }
    // No top-level domain is all digits: `10.0.0.1.` and `0x7f.1` are addresses in disguise.
    let tld = name.rsplit('.').next().unwrap_or(name);
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::IpLiteral);
    }
    Ok(())
}

/// Whether a sandbox in `mode` with `rules` may resolve and reach `name`: never in `none`,
/// always in `open`, and in `policy` as the first matching rule says (no match: denied).
pub fn allows(mode: NetworkMode, rules: &[NetworkRule], name: &str) -> bool {
    match mode {
        NetworkMode::None => false,
        NetworkMode::Open => true,
        NetworkMode::Policy => rules
            .iter()
            .find(|rule| host_matches(&rule.domain, name))
            .is_some_and(|rule| rule.action == RuleAction::Allow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(domain: &str, action: RuleAction) -> NetworkRule {
        NetworkRule {
            domain: domain.into(),
            action,
        }
    }

    fn allow(domain: &str) -> NetworkRule {
        rule(domain, RuleAction::Allow)
    }

    fn deny(domain: &str) -> NetworkRule {
        rule(domain, RuleAction::Deny)
    }

    fn reason(domain: &str) -> Option<Reason> {
        validate(&[allow(domain)]).err().map(|e| e.reason)
    }

    #[test]
    fn accepts_the_three_forms() {
        for domain in [
            "*",
            "*.",
            "example.com",
            "Example.COM.",
            "*.example.com",
            "*.api.example.co.uk",
            "localhost",
            "*.test",
            "xn--bcher-kva.example",
            "r3---sn-4g5e6nzs.googlevideo.com",
            "1password.com",
            "a.123b",
        ] {
            assert_eq!(reason(domain), None, "{domain}");
        }
        let longest_label = format!("{}.com", "a".repeat(63));
        assert_eq!(reason(&longest_label), None);
        let longest_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
        assert_eq!(longest_name.len(), 253);
        assert_eq!(reason(&longest_name), None);
        assert_eq!(reason(&format!("{longest_name}.")), None);
    }

    #[test]
    fn rejects_what_is_not_a_domain_pattern() {
        let cases = [
            ("", Reason::Empty),
            (".", Reason::Empty),
            ("https://example.com", Reason::Scheme),
            ("example.com/path", Reason::Path),
            ("example.com:443", Reason::Port),
            ("*.example.com:443", Reason::Port),
            ("10.0.0.1", Reason::IpLiteral),
            ("169.254.169.254.", Reason::IpLiteral),
            ("::1", Reason::IpLiteral),
            ("[::1]:80", Reason::IpLiteral),
            ("0x7f.1", Reason::IpLiteral),
            ("*.10.0.0.1", Reason::IpLiteral),
            ("api.*.example.com", Reason::Wildcard),
            ("**.example.com", Reason::Wildcard),
            ("**", Reason::Wildcard),
            ("*example.com", Reason::Wildcard),
            ("example.*", Reason::Wildcard),
            ("*.*.example.com", Reason::Wildcard),
            ("a..b", Reason::EmptyLabel),
            (".example.com", Reason::EmptyLabel),
            ("exa mple.com", Reason::BadCharacter),
            ("_dmarc.example.com", Reason::BadCharacter),
            ("bücher.example", Reason::BadCharacter),
            ("example.com..", Reason::EmptyLabel),
        ];
        for (domain, want) in cases {
            assert_eq!(reason(domain), Some(want), "{domain:?}");
        }
        assert_eq!(
            reason(&format!("{}.com", "a".repeat(64))),
            Some(Reason::LabelTooLong)
        );
        let too_long = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(62)].join(".");
        assert_eq!(reason(&too_long), Some(Reason::TooLong));
    }

    #[test]
    fn error_names_the_rule() {
        let err = validate(&[allow("ok.com"), deny("*"), allow("*.exa mple.com")]).unwrap_err();
        assert_eq!(err.index, 2);
        assert_eq!(err.domain, "*.exa mple.com");
        assert_eq!(
            err.to_string(),
            r#"rule 2 ("*.exa mple.com"): labels may hold only a-z, 0-9 and `-`"#
        );
    }

    #[test]
    fn rule_count_is_bounded() {
        let rules: Vec<_> = (0..MAX_RULES)
            .map(|i| allow(&format!("h{i}.example.com")))
            .collect();
        assert!(validate(&rules).is_ok());
        let mut more = rules;
        more.push(allow("one-too-many.com"));
        let err = validate(&more).unwrap_err();
        assert_eq!((err.index, err.reason), (MAX_RULES, Reason::TooManyRules));
    }

    #[test]
    fn modes() {
        let rules = [allow("*")];
        assert!(!allows(NetworkMode::None, &rules, "example.com"));
        assert!(allows(NetworkMode::Open, &[], "example.com"));
        assert!(!allows(NetworkMode::Policy, &[], "example.com"));
        assert!(allows(NetworkMode::Policy, &rules, "example.com"));
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules = [
            deny("secret.github.com"),
            allow("*.github.com"),
            allow("github.com"),
            deny("*"),
        ];
        let p = |name| allows(NetworkMode::Policy, &rules, name);
        assert!(p("api.github.com"));
        assert!(p("API.GitHub.com."));
        assert!(p("github.com"));
        assert!(p("a.b.github.com"));
        assert!(!p("secret.github.com"));
        assert!(!p("notgithub.com"));
        assert!(!p("github.com.evil.com"));
        assert!(!p("example.com"));

        let reversed = [allow("*"), deny("evil.com")];
        assert!(
            allows(NetworkMode::Policy, &reversed, "evil.com"),
            "an earlier allow wins"
        );
    }

    #[test]
    fn wildcard_does_not_match_its_apex() {
        let rules = [allow("*.example.com")];
        assert!(allows(NetworkMode::Policy, &rules, "www.example.com"));
        assert!(!allows(NetworkMode::Policy, &rules, "example.com"));
        assert!(!allows(NetworkMode::Policy, &rules, "wwwexample.com"));
    }
}
