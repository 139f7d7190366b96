//! Content addressing: sha256 digest parsing and streaming verification.
//!
//! Only `sha256` is accepted. A digest is also used as a file name (`blobs/sha256/<hex>`), so the strict
//! 64-lowercase-hex check here is what keeps a hostile manifest from naming a path outside the blob store.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::OciError;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sha256Digest(String);

impl Sha256Digest {
    /// Parses and validates a digest string.
    pub(crate) fn parse(digest: &str) -> Result<Self, OciError> {
        let invalid = |reason: &str| OciError::InvalidDigest {
            digest: digest.to_owned(),
            reason: reason.to_owned(),
        };
        let (algorithm, hex) = digest
            .split_once(':')
            .ok_or_else(|| invalid("expected <algorithm>:<hex>"))?;
        if algorithm != "sha256" {
            return Err(invalid("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid("sha256 digest must be 64 lowercase hex characters"));
        }
        Ok(Self(digest.to_owned()))
    }

    /// The digest of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex(&Sha256::digest(bytes))))
    }

    /// The hex part, usable as a file name.
    pub(crate) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Incremental sha256 with a byte count.
#[derive(Default)]
pub(crate) struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(self) -> Sha256Digest {
        Sha256Digest(format!("sha256:{}", hex(&self.sha.finalize())))
    }
}

/// What a blob must be: its digest and, when the format records it, its exact size.
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub(crate) digest: Sha256Digest,
    pub(crate) size: Option<u64>,
}

impl Expected {
    /// Checks the outcome of hashing a whole blob.
    pub(crate) fn check(&self, hasher: Hasher) -> Result<(), OciError> {
        let len = hasher.len();
        if let Some(size) = self.size {
            if len < size {
                return Err(OciError::Truncated {
                    digest: self.digest.to_string(),
                    expected: size,
                    actual: len,
                });
            }
            if len > size {
                return Err(OciError::TooLarge {
                    digest: self.digest.to_string(),
                    expected: size,
                });
            }
        }
        let actual = hasher.finish();
        if actual != self.digest {
            return Err(OciError::DigestMismatch {
                digest: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }
}

/// A reader that hashes everything read through it and refuses to read past a size limit, so an oversized
/// blob fails early instead of filling the disk.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    limit: Option<u64>,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: Option<u64>) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
            limit,
        }
    }

    /// Reads whatever is left (up to the limit, plus one byte to detect overflow) and returns the hash state.
    pub(crate) fn drain(mut self) -> io::Result<Hasher> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.limit {
            // Allow one byte past the limit so `Expected::check` can report "too large".
            Some(limit) => {
                let left = (limit + 1).saturating_sub(self.hasher.len());
                if left == 0 {
                    return Ok(0);
                }
                buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_strict_sha256() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(Sha256Digest::parse(&good).is_ok());
        for bad in [
            "sha256:abc",
            "sha512:aa",
            "nocolon",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:../{}", "a".repeat(61)),
        ] {
            assert!(Sha256Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expected_reports_truncation_and_corruption() {
        let data = b"hello world";
        let exp = Expected {
            digest: Sha256Digest::of(data),
            size: Some(data.len() as u64),
        };
        let whole = HashingReader::new(&data[..], exp.size).drain().unwrap();
        exp.check(whole).unwrap();
        let short = HashingReader::new(&data[..5], exp.size).drain().unwrap();
        assert!(matches!(
            exp.check(short),
            Err(OciError::Truncated { actual: 5, .. })
        ));
        let long = HashingReader::new(&b"hello world!!"[..], exp.size)
            .drain()
            .unwrap();
        assert!(matches!(exp.check(long), Err(OciError::TooLarge { .. })));
        let bad = HashingReader::new(&b"hello_world"[..], exp.size).drain().unwrap();
        assert!(matches!(exp.check(bad), Err(OciError::DigestMismatch { .. })));
    }
}
