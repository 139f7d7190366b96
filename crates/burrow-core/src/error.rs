//! The core's typed errors. burrowd maps `ErrorKind` to an HTTP status in exactly one place.

use burrow_api::SandboxStatus;

/// What went wrong, as a client should understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (400).
    BadRequest,
    /// Well-formed but invalid values (422).
    Invalid,
    NotFound,
    /// Name taken, illegal state transition, resource in use (409).
    Conflict,
    /// Gone for good (410), e.g. a finished session.
    Gone,
    TooLarge,
    /// A limit of the sandbox is reached for now (429), e.g. its process limit.
    Exhausted,
    /// The engine or the agent cannot serve now (503).
    Unavailable,
    /// Disk full (507).
    NoSpace,
    /// Not allowed, e.g. a file on a read-only filesystem in a sandbox (403).
    Forbidden,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} '{name}' does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("sandbox '{0}' already exists")]
    NameTaken(String),
    #[error("cannot {action} sandbox '{name}': it is {from}")]
    IllegalTransition {
        name: String,
        action: &'static str,
        from: SandboxStatus,
    },
    /// A request that needs the sandbox's agent, on a `failed` sandbox: why, and the way out.
    #[error("sandbox '{name}' is not running: {why}; `burrow start {name}` boots it again")]
    NotRunning { name: String, why: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The sandbox ran into one of its limits (processes, memory); may work later (429).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A command's arguments and environment exceed the kernel's or burrowd's limit (413).
    #[error("{0}")]
    ArgumentTooLong(String),
    #[error("storage pool is full: {0}")]
    NoSpace(String),
    /// The pool's free space is below its reserve: nothing new is made in it (507).
    #[error("{0}")]
    PoolFull(String),
    /// A file operation in a sandbox failed for a reason the caller can act on (missing
    /// file, wrong type, disk full, ...); `kind` says which.
    #[error("{message}")]
    File { kind: ErrorKind, message: String },
    #[error("agent of sandbox '{name}' failed: {detail}")]
    Agent { name: String, detail: String },
    /// A tunnel's port refused the connection: nothing listens on it in the sandbox.
    #[error("nothing listens on port {port} in sandbox '{name}' (connection refused)")]
    NotListening { name: String, port: u16 },
    #[error("engine: {0}")]
    Engine(#[from] burrow_engine::EngineError),
    #[error("storage: {0}")]
    Storage(burrow_storage::StorageError),
    #[error("state store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<burrow_storage::StorageError> for CoreError {
    fn from(e: burrow_storage::StorageError) -> Self {
        match e {
            burrow_storage::StorageError::NoSpace(m) => CoreError::NoSpace(m),
            other => CoreError::Storage(other),
        }
    }
}

impl CoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::NameTaken(_)
            | Self::IllegalTransition { .. }
            | Self::NotRunning { .. }
            | Self::Conflict(_) => ErrorKind::Conflict,
            Self::Gone(_) => ErrorKind::Gone,
            Self::TooLarge(_) | Self::ArgumentTooLong(_) => ErrorKind::TooLarge,
            Self::ResourceExhausted(_) => ErrorKind::Exhausted,
            Self::Unavailable(_) | Self::Agent { .. } | Self::NotListening { .. } => ErrorKind::Unavailable,
            Self::NoSpace(_) | Self::PoolFull(_) => ErrorKind::NoSpace,
            Self::File { kind, .. } => *kind,
            Self::Engine(burrow_engine::EngineError::Unavailable(..)) => ErrorKind::Unavailable,
            Self::Engine(_) | Self::Storage(_) | Self::Store(_) | Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Stable machine-readable code for the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Invalid(_) => "invalid",
            Self::NotFound { .. } => "not_found",
            Self::NameTaken(_) => "name_taken",
            Self::IllegalTransition { .. } | Self::NotRunning { .. } => "illegal_transition",
            Self::Conflict(_) => "conflict",
            Self::Gone(_) => "gone",
            Self::TooLarge(_) => "too_large",
            Self::ResourceExhausted(_) => "resource_exhausted",
            Self::ArgumentTooLong(_) => "argument_too_long",
            Self::Unavailable(_) => "unavailable",
            Self::Agent { .. } => "agent_unavailable",
            Self::NotListening { .. } => "not_listening",
            Self::NoSpace(_) => "no_space",
            Self::PoolFull(_) => "pool_full",
            Self::File { kind, .. } => match kind {
                ErrorKind::NotFound => "file_not_found",
                ErrorKind::BadRequest => "bad_path",
                ErrorKind::Conflict => "file_conflict",
                ErrorKind::NoSpace => "no_space",
                ErrorKind::Forbidden => "forbidden",
                _ => "file_error",
            },
            Self::Engine(burrow_engine::EngineError::Unavailable(..)) => "engine_unavailable",
            Self::Engine(_) => "engine_error",
            Self::Storage(_) => "storage_error",
            Self::Store(_) => "store_error",
            Self::Internal(_) => "internal",
        }
    }

    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            name: name.into(),
        }
    }
}

/// The whole `source()` chain in one line, for logs and 500 messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
