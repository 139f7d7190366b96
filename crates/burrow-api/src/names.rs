//! Validated identifiers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name '{0}' is longer than 63 characters")]
    TooLong(String),
    #[error(
        "name '{0}' is not a DNS label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    Invalid(String),
    #[error("checkpoint id '{0}' is not of the form vN (v0, v1, ...)")]
    BadCheckpoint(String),
}

/// A sandbox name: a DNS label, `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SandboxName(String);

impl SandboxName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 63 {
            return Err(NameError::TooLong(s.chars().take(80).collect()));
        }
        let b = s.as_bytes();
        let ok_end = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok_mid = |c: u8| ok_end(c) || c == b'-';
        if !ok_end(b[0]) || !ok_end(b[b.len() - 1]) || !b.iter().all(|&c| ok_mid(c)) {
            return Err(NameError::Invalid(s.chars().take(80).collect()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SandboxName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SandboxName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A checkpoint id, `vN`, numbered per sandbox and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        s.strip_prefix('v')
            .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && n.len() < 19)
            .and_then(|n| n.parse().ok())
            .map(Self)
            .ok_or_else(|| NameError::BadCheckpoint(s.chars().take(80).collect()))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl Serialize for CheckpointId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CheckpointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names() {
        for ok in ["a", "dev", "a-b", "0", "x1", &"a".repeat(63)] {
            assert!(SandboxName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(SandboxName::parse(""), Err(NameError::Empty));
        assert!(matches!(
            SandboxName::parse(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        for bad in ["Dev", "-a", "a-", "../x", "a_b", "a.b", "a b", "ü", "a/b"] {
            assert!(
                matches!(SandboxName::parse(bad), Err(NameError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn checkpoint_ids() {
        assert_eq!(CheckpointId::parse("v0").unwrap(), CheckpointId(0));
        assert_eq!(CheckpointId::parse("v12").unwrap().to_string(), "v12");
        for bad in ["", "v", "1", "v-1", "vx", "V1", "v1 "] {
            assert!(CheckpointId::parse(bad).is_err(), "{bad}");
        }
    }
}
