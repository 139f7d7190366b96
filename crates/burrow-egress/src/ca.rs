//! The per-sandbox interception CA.
//!
//! Each sandbox gets its own CA. Only its certificate enters the sandbox (its trust store);
//! the key stays with burrowd, which stores both PEMs outside the sandbox (mode 0600). The
//! proxy asks for a [`rustls::ServerConfig`] per host it intercepts; leaves are short-lived
//! and cached per host in a bounded cache.
//!
//! This module must never issue anything but server leaves: the CA is pathlen 0.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;

/// How long the CA is valid.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);
/// How long a leaf is valid.
const LEAF_VALIDITY: time::Duration = time::Duration::days(30);
/// Backdating of `not_before`, for clocks in the sandbox slightly behind the host's.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// A cached leaf is re-issued after this long, well before it expires.
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// Hosts whose leaf is kept; the oldest entry makes room for a new one.
const CACHE_CAPACITY: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("'{0}' is not a host name or IP address a certificate can be issued for")]
    BadHost(String),
}

/// One sandbox's CA: its certificate, its key and the leaves it has issued recently.
pub struct SandboxCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cache: Mutex<HashMap<String, (Arc<ServerConfig>, Instant)>>,
}

impl std::fmt::Debug for SandboxCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is omitted on purpose.
        f.debug_struct("SandboxCa").finish_non_exhaustive()
    }
}

impl SandboxCa {
    /// A new CA (ECDSA P-256, CA:true pathlen 0, ten years) named `common_name`.
    pub fn generate(common_name: &str) -> Result<SandboxCa, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Burrow");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(SandboxCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A CA stored earlier with [`SandboxCa::cert_pem`] and [`SandboxCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<SandboxCa, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        // The certificate's SubjectPublicKeyInfo embeds the raw public key (the EC point).
        let raw = key.public_key_raw();
        if raw.is_empty() || !der.windows(raw.len()).any(|w| w == raw) {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(SandboxCa {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate: what goes into the sandbox's trust store.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA key (PKCS#8 PEM). Never enters a sandbox.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS server configuration presenting a leaf for `host` (a DNS name or an IP address),
    /// issued by this CA, offering only HTTP/1.1.
    pub fn server_config_for(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((config, at)) = self.lock_cache().get(&host)
            && at.elapsed() < LEAF_REFRESH
        {
            return Ok(config.clone());
        }
        let config = Arc::new(self.issue(&host)?);
        let mut cache = self.lock_cache();
        if cache.len() >= CACHE_CAPACITY && !cache.contains_key(&host) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(host, (config.clone(), Instant::now()));
        Ok(config)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<ServerConfig>, Instant)>> {
        // The cache holds no invariant a panic could break.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn issue(&self, host: &str) -> Result<ServerConfig, CaError> {
        let bad = || CaError::BadHost(host.to_owned());
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // Only names a TLS client could have asked for.
                ServerName::try_from(host).map_err(|_| bad())?;
                SanType::DnsName(host.to_owned().try_into().map_err(|_| bad())?)
            }
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A random positive 128-bit serial.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a shorter encoding
    SerialNumber::from_slice(&bytes)
}

impl From<rustls_pki_types::pem::Error> for CaError {
    fn from(_: rustls_pki_types::pem::Error) -> Self {
        CaError::Generate(rcgen::Error::CouldNotParseCertificate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_issues_the_same_chain() {
        let ca = SandboxCa::generate("burrow sandbox dev").unwrap();
        let again = SandboxCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let other = SandboxCa::generate("other").unwrap();
        assert!(matches!(
            SandboxCa::from_pem(&ca.cert_pem(), &other.key_pem()),
            Err(CaError::KeyMismatch)
        ));
    }

    #[test]
    fn leaves_are_cached_and_bounded() {
        let ca = SandboxCa::generate("c").unwrap();
        let a = ca.server_config_for("API.example.com.").unwrap();
        let b = ca.server_config_for("api.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        ca.server_config_for("10.1.2.3").unwrap();
        assert!(ca.server_config_for("bad host").is_err());
        for i in 0..CACHE_CAPACITY + 5 {
            ca.server_config_for(&format!("h{i}.test")).unwrap();
        }
        assert!(ca.lock_cache().len() <= CACHE_CAPACITY);
    }
}
