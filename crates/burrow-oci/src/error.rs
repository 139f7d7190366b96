//! The one error type of this crate. Every variant that concerns a blob names it by digest (or by its path in
//! an archive when the format has no digest for it), so an operator can tell which download or which file is bad.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while importing or pulling an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference string does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The destination root already exists and is not an empty directory, or its parent is missing.
    #[error("destination {path}: {reason}")]
    Destination {
        /// The destination root.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The archive is neither an OCI image layout nor a `docker save` archive.
    #[error("{path}: not an OCI image layout or docker-save archive: {reason}")]
    UnsupportedArchive {
        /// The archive path.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// A file the image format requires is absent.
    #[error("image is missing {what}")]
    Missing {
        /// The missing file or blob.
        what: String,
    },

    /// A JSON document (index, manifest, config, docker `manifest.json`) is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: String,
        /// The parse error.
        reason: String,
    },

    /// A media type this crate cannot handle (schema 1 manifests, encrypted layers, artifacts…).
    #[error("unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// Which object carries it.
        what: String,
    },

    /// A digest string is malformed or uses an algorithm other than sha256.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest as found.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A blob's content does not hash to its digest.
    #[error("blob {digest} is corrupt: content hashes to {actual}")]
    DigestMismatch {
        /// The expected digest (the blob's name).
        digest: String,
        /// What the content actually hashes to.
        actual: String,
    },

    /// A blob ended before the size its descriptor promises.
    #[error("blob {digest} is truncated: got {actual} of {expected} bytes")]
    Truncated {
        /// The blob.
        digest: String,
        /// Size from the descriptor.
        expected: u64,
        /// Bytes actually present.
        actual: u64,
    },

    /// A blob is longer than the size its descriptor promises (or than a sanity limit).
    #[error("blob {digest} is larger than the expected {expected} bytes")]
    TooLarge {
        /// The blob.
        digest: String,
        /// The size limit.
        expected: u64,
    },

    /// A layer's uncompressed content does not match the `diff_id` the config lists for it.
    #[error("layer {layer} is corrupt: uncompressed content hashes to {actual}, config expects {expected}")]
    DiffIdMismatch {
        /// The layer (digest, or path inside a docker-save archive).
        layer: String,
        /// The diff_id from the image config.
        expected: String,
        /// What the uncompressed content hashes to.
        actual: String,
    },

    /// A layer could not be applied: unreadable tar stream, refused entry, or a filesystem error.
    #[error("layer {layer}: {reason}")]
    Layer {
        /// The layer (digest, or path inside a docker-save archive).
        layer: String,
        /// What went wrong, naming the entry when there is one.
        reason: String,
    },

    /// No manifest in the index matches the requested platform.
    #[error("no image for platform {wanted} (available: {available})")]
    NoMatchingPlatform {
        /// The requested platform, `os/arch`.
        wanted: String,
        /// The platforms on offer, comma-separated.
        available: String,
    },

    /// The registry could not be reached or the connection failed.
    #[error("registry {registry}: {reason}")]
    Transport {
        /// Registry host (and port).
        registry: String,
        /// What failed.
        reason: String,
    },

    /// The registry answered with an unexpected HTTP status.
    #[error("{method} {url}: HTTP {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Registry {
        /// HTTP method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Error body from the registry, shortened.
        message: String,
    },

    /// Authentication with the registry (or its token service) failed.
    #[error("authentication with {registry} failed: {reason}")]
    Auth {
        /// Registry host.
        registry: String,
        /// What failed.
        reason: String,
    },

    /// A protocol rule was broken: plain HTTP to a non-loopback host, redirect loop, insecure redirect…
    #[error("refused: {0}")]
    Refused(String),
}

impl OciError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
