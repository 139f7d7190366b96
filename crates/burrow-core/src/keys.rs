//! The daemon's keys, made on first start and kept in `DATA_DIR/keys/` (0700, files 0600):
//!
//! - `token.key`: root key of API tokens (the admin token is its root macaroon);
//! - `placeholder.key`: root key of the secret placeholders handed to sandboxes (a separate
//!   key, so a placeholder can never pass as an API token);
//! - `host.key`: the X25519 key secrets are sealed to (`crypto_box` sealed boxes). Secrets
//!   are sealed on arrival and only opened in memory by the credential proxy.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crypto_box::{PublicKey, SecretKey};

use crate::CoreError;

pub struct Keys {
    pub token: [u8; 32],
    pub placeholder: [u8; 32],
    host: SecretKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

fn load_or_make(dir: &Path, name: &str) -> Result<[u8; 32], CoreError> {
    let path = dir.join(name);
    let io = |e: std::io::Error| CoreError::Internal(format!("key {}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) => {
            return bytes
                .try_into()
                .map_err(|_| CoreError::Internal(format!("key {} is not 32 bytes", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let key: [u8; 32] = rand::random();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&key).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(key)
}

impl Keys {
    pub fn open(data_dir: &Path) -> Result<Keys, CoreError> {
        let dir = data_dir.join("keys");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        Ok(Keys {
            token: load_or_make(&dir, "token.key")?,
            placeholder: load_or_make(&dir, "placeholder.key")?,
            host: SecretKey::from_bytes(load_or_make(&dir, "host.key")?),
        })
    }

    pub fn host_public(&self) -> PublicKey {
        self.host.public_key()
    }

    /// Seals `plain` to the host key (anyone may seal; only the host key opens).
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.host_public()
            .seal(&mut crypto_box::aead::OsRng, plain)
            .map_err(|_| CoreError::Internal("sealing a secret failed".into()))
    }

    pub fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, CoreError> {
        self.host
            .unseal(sealed)
            .map_err(|_| CoreError::Internal("a stored secret does not open with the host key".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_persist_and_seal_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::open(dir.path()).unwrap();
        let b = Keys::open(dir.path()).unwrap();
        assert_eq!(a.token, b.token);
        assert_ne!(a.token, a.placeholder);
        let sealed = a.seal(b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.unseal(&sealed).unwrap(), b"hunter2");
        let other = Keys::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.unseal(&sealed).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/host.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
