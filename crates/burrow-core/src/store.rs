//! The state store: SQLite (embedded), schema under versioned migrations.
//!
//! The store only persists and queries records. It holds no policy: the manager decides
//! what to write and in which order (intent first, work, then commit).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use burrow_api::{EngineKind, ForkSource, SandboxConfig, SandboxStatus};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migrating the state database: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("corrupt record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("unique constraint: {0}")]
    Unique(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An operation in flight on a sandbox, written before the work starts so that a crash
/// leaves a record of what to finish or undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Create,
    Destroy,
    /// Restoring checkpoint `target`; the replaced state is saved as checkpoint `backup`.
    /// `prior` is the status before the restore (`None` in intents written by older
    /// versions), which an interrupted restore returns to.
    Restore {
        target: u64,
        backup: u64,
        prior: Option<SandboxStatus>,
    },
}

impl Intent {
    fn encode(self) -> String {
        match self {
            Self::Create => "create".into(),
            Self::Destroy => "destroy".into(),
            Self::Restore {
                target,
                backup,
                prior: Some(prior),
            } => format!("restore:{target}:{backup}:{}", prior.as_str()),
            Self::Restore {
                target,
                backup,
                prior: None,
            } => format!("restore:{target}:{backup}"),
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Self::Create),
            "destroy" => Some(Self::Destroy),
            _ => {
                let mut it = s.strip_prefix("restore:")?.split(':');
                let target = it.next()?.parse().ok()?;
                let backup = it.next()?.parse().ok()?;
                let prior = match it.next() {
                    Some(s) => Some(SandboxStatus::parse(s)?),
                    None => None,
                };
                Some(Self::Restore {
                    target,
                    backup,
                    prior,
                })
            }
        }
    }
}

/// Label marking sandboxes the daemon made for itself (builds); they are hidden from lists.
pub const INTERNAL_LABEL: &str = "burrow.internal";

/// A sandbox as stored.
#[derive(Debug, Clone)]
pub struct SandboxRecord {
    pub id: String,
    pub name: String,
    pub status: SandboxStatus,
    pub intent: Option<Intent>,
    pub engine: EngineKind,
    pub image: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_active_at: String,
    pub config: SandboxConfig,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub parent: Option<ForkSource>,
    pub failure_reason: Option<String>,
    /// Next checkpoint number; only grows, so ids are never reused.
    pub next_checkpoint: u64,
    /// Something the owner should know (e.g. how an interrupted restore ended).
    pub notice: Option<String>,
    /// The engine's name for the runtime that runs it (its runc container, cgroups, network
    /// namespace and run dir), when not its own id: a cold sandbox woken into a pre-started
    /// one runs in that one's runtime from then on (see [`SandboxRecord::eid`]).
    pub instance: Option<String>,
}

impl SandboxRecord {
    /// The id its engine, its network namespace and its run dir know it by: its own id, or
    /// that of the pre-started runtime it was woken into.
    pub fn eid(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.id)
    }
}

/// A checkpoint as stored. `ready == false` means its snapshot is being made.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub sandbox_id: String,
    pub seq: u64,
    pub comment: String,
    pub created_at: String,
    pub size_bytes: u64,
    pub source: String,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// Build config (JSON of `images::ImageConfig`), when the image has one.
    pub config: Option<String>,
    pub name: String,
    pub status: String,
    pub created_at: String,
    pub size_bytes: u64,
    pub source: String,
    pub message: Option<String>,
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE sandboxes (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            intent TEXT,
            engine TEXT NOT NULL,
            image TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            last_active_at TEXT NOT NULL,
            config TEXT NOT NULL,
            env TEXT NOT NULL,
            labels TEXT NOT NULL,
            parent TEXT,
            failure_reason TEXT
        );
        CREATE TABLE images (
            name TEXT PRIMARY KEY,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            source TEXT NOT NULL,
            message TEXT
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        ),
        M::up(
            "ALTER TABLE sandboxes ADD COLUMN next_checkpoint INTEGER NOT NULL DEFAULT 0;
            ALTER TABLE sandboxes ADD COLUMN notice TEXT;
            ALTER TABLE images ADD COLUMN config TEXT;
            CREATE TABLE checkpoints (
                sandbox_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                comment TEXT NOT NULL,
                created_at TEXT NOT NULL,
                size_bytes INTEGER NOT NULL,
                source TEXT NOT NULL,
                ready INTEGER NOT NULL,
                PRIMARY KEY (sandbox_id, seq)
            );",
        ),
        M::up(
            "CREATE TABLE services (
                sandbox_id TEXT NOT NULL,
                name TEXT NOT NULL,
                spec TEXT NOT NULL,
                enabled INTEGER NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (sandbox_id, name)
            );",
        ),
        M::up(
            "CREATE TABLE net (
                sandbox_id TEXT PRIMARY KEY,
                addr TEXT NOT NULL UNIQUE,
                policy TEXT NOT NULL
            );
            CREATE TABLE secrets (
                name TEXT PRIMARY KEY,
                sealed BLOB NOT NULL,
                header TEXT NOT NULL,
                format TEXT NOT NULL,
                hosts TEXT NOT NULL,
                created_at TEXT NOT NULL
            );
            CREATE TABLE sandbox_secrets (
                sandbox_id TEXT NOT NULL,
                secret TEXT NOT NULL,
                env TEXT NOT NULL,
                PRIMARY KEY (sandbox_id, secret),
                UNIQUE (sandbox_id, env)
            );",
        ),
        M::up("ALTER TABLE sandboxes ADD COLUMN instance TEXT;"),
    ])
}

/// A secret as stored: the value only sealed to the host key.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretRecord {
    pub name: String,
    pub sealed: Vec<u8>,
    pub header: String,
    pub format: String,
    pub hosts: Vec<String>,
    pub created_at: String,
}

#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

const SANDBOX_COLS: &str = "id, name, status, intent, engine, image, created_at, updated_at, last_active_at, \
                            config, env, labels, parent, failure_reason, next_checkpoint, notice, instance";

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        // WAL + NORMAL: durable across a daemon crash (the OS has the pages), fast commits.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations().to_latest(&mut conn)?;
        // The database holds tokens and (later) sealed secrets: owner only.
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{}{suffix}", path.display());
            let _ = std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub fn open_in_memory() -> Result<Self> {
        let mut conn = Connection::open_in_memory()?;
        migrations().to_latest(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    pub fn insert_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        self.with(|c| {
            let res = c.execute(
                &format!("INSERT INTO sandboxes ({SANDBOX_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17)"),
                params![
                    r.id,
                    r.name,
                    r.status.as_str(),
                    r.intent.map(Intent::encode),
                    r.engine.as_str(),
                    r.image,
                    r.created_at,
                    r.updated_at,
                    r.last_active_at,
                    to_json(&r.config),
                    to_json(&r.env),
                    to_json(&r.labels),
                    r.parent.as_ref().map(to_json),
                    r.failure_reason,
                    r.next_checkpoint as i64,
                    r.notice,
                    r.instance,
                ],
            );
            unique(res)
        })
    }

    /// Writes every mutable field of `r` (matched by id).
    pub fn update_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        self.with(|c| Ok(write_sandbox(c, r).map(drop)?))
    }

    /// Gives the pre-started sandbox `r.id` its new name and identity (every field a create
    /// sets), in one statement: a name taken meanwhile is a [`StoreError::Unique`] and
    /// changes nothing.
    pub fn claim_sandbox(&self, r: &SandboxRecord) -> Result<()> {
        self.with(|c| {
            let res = c.execute(
                "UPDATE sandboxes SET name=?2, created_at=?3, updated_at=?4, last_active_at=?5, config=?6, \
                 env=?7, labels=?8, image=?9, parent=?10 WHERE id=?1",
                params![
                    r.id,
                    r.name,
                    r.created_at,
                    r.updated_at,
                    r.last_active_at,
                    to_json(&r.config),
                    to_json(&r.env),
                    to_json(&r.labels),
                    r.image,
                    r.parent.as_ref().map(to_json),
                ],
            );
            unique(res)
        })
    }

    pub fn sandbox_by_id(&self, id: &str) -> Result<Option<SandboxRecord>> {
        self.sandbox_where("id", id)
    }

    pub fn touch_sandbox(&self, id: &str, last_active_at: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET last_active_at=?2 WHERE id=?1",
                params![id, last_active_at],
            )?;
            Ok(())
        })
    }

    /// Sandbox `r` (woken) now runs in the runtime of pre-started sandbox `donor`: writes
    /// `r` (its `instance` names the donor's runtime), removes the donor's rows and gives `r`
    /// the donor's address `addr` (with networking on), in one transaction. Before it
    /// commits the donor is still a sandbox of its own; after, only `r` owns that runtime.
    pub fn take_over_runtime(&self, r: &SandboxRecord, donor: &str, addr: Option<&str>) -> Result<()> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            for table in ["sandbox_secrets", "net", "services"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE sandbox_id=?1"),
                    params![donor],
                )?;
            }
            if let Some(addr) = addr {
                tx.execute("UPDATE net SET addr=?2 WHERE sandbox_id=?1", params![r.id, addr])?;
            }
            tx.execute("DELETE FROM sandboxes WHERE id=?1", params![donor])?;
            write_sandbox(&tx, r)?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM sandbox_secrets WHERE sandbox_id=?1", params![id])?;
            c.execute("DELETE FROM net WHERE sandbox_id=?1", params![id])?;
            c.execute("DELETE FROM sandboxes WHERE id=?1", params![id])?;
            Ok(())
        })
    }

    // ----- network ---------------------------------------------------------------------

    /// Every sandbox's address and policy (JSON of `NetworkPolicy`).
    pub fn all_net(&self) -> Result<Vec<(String, String, String)>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT sandbox_id, addr, policy FROM net")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    pub fn net_of(&self, sandbox_id: &str) -> Result<Option<(String, String)>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT addr, policy FROM net WHERE sandbox_id=?1",
                params![sandbox_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
    }

    /// Inserts or replaces a sandbox's address and policy. A taken address is `Unique`.
    pub fn put_net(&self, sandbox_id: &str, addr: &str, policy: &str) -> Result<()> {
        self.with(|c| {
            let res = c.execute(
                "INSERT INTO net (sandbox_id, addr, policy) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sandbox_id) DO UPDATE SET addr=excluded.addr, policy=excluded.policy",
                params![sandbox_id, addr, policy],
            );
            unique(res)
        })
    }

    // ----- secrets ---------------------------------------------------------------------

    pub fn insert_secret(&self, r: &SecretRecord) -> Result<()> {
        self.with(|c| {
            let res = c.execute(
                "INSERT INTO secrets (name, sealed, header, format, hosts, created_at) VALUES (?1,?2,?3,?4,?5,?6)",
                params![r.name, r.sealed, r.header, r.format, to_json(&r.hosts), r.created_at],
            );
            unique(res)
        })
    }

    pub fn secrets(&self) -> Result<Vec<SecretRecord>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT name, sealed, header, format, hosts, created_at FROM secrets ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, String>(4)?,
                    r.get(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, sealed, header, format, hosts, created_at) = row?;
                let hosts = serde_json::from_str(&hosts).map_err(|e| StoreError::Corrupt {
                    what: format!("secret {name}"),
                    detail: e.to_string(),
                })?;
                out.push(SecretRecord {
                    name,
                    sealed,
                    header,
                    format,
                    hosts,
                    created_at,
                });
            }
            Ok(out)
        })
    }

    /// Deletes a secret and detaches it everywhere; false if there was none.
    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        self.with(|c| {
            c.execute("DELETE FROM sandbox_secrets WHERE secret=?1", params![name])?;
            Ok(c.execute("DELETE FROM secrets WHERE name=?1", params![name])? > 0)
        })
    }

    /// (sandbox id, secret, env) of every attachment.
    pub fn attachments(&self) -> Result<Vec<(String, String, String)>> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT sandbox_id, secret, env FROM sandbox_secrets ORDER BY sandbox_id, secret")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Attaches (or re-attaches under another variable); a variable already used by another
    /// secret of the sandbox is `Unique`.
    pub fn attach_secret(&self, sandbox_id: &str, secret: &str, env: &str) -> Result<()> {
        self.with(|c| {
            let res = c.execute(
                "INSERT INTO sandbox_secrets (sandbox_id, secret, env) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sandbox_id, secret) DO UPDATE SET env=excluded.env",
                params![sandbox_id, secret, env],
            );
            unique(res)
        })
    }

    pub fn detach_secret(&self, sandbox_id: &str, secret: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.execute(
                "DELETE FROM sandbox_secrets WHERE sandbox_id=?1 AND secret=?2",
                params![sandbox_id, secret],
            )? > 0)
        })
    }

    pub fn sandbox_by_name(&self, name: &str) -> Result<Option<SandboxRecord>> {
        self.sandbox_where("name", name)
    }

    /// The sandbox whose `column` (a unique one: `id` or `name`) is `value`.
    fn sandbox_where(&self, column: &'static str, value: &str) -> Result<Option<SandboxRecord>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE {column}=?1"),
                params![value],
                row_raw,
            )
            .optional()?
            .map(RawSandbox::decode)
            .transpose()
        })
    }

    pub fn all_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.list_sandboxes("", None, u32::MAX)
    }

    /// Sandboxes ordered by name, with `name` starting with `prefix` and greater than `after`.
    pub fn list_sandboxes(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SandboxRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {SANDBOX_COLS} FROM sandboxes WHERE substr(name, 1, length(?1)) = ?1 AND name > ?2 \
                 ORDER BY name LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![prefix, after.unwrap_or(""), i64::from(limit)], row_raw)?;
            rows.map(|r| RawSandbox::decode(r?)).collect()
        })
    }

    pub fn upsert_image(&self, r: &ImageRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO images (name, status, created_at, size_bytes, source, message, config)
                 VALUES (?1,?2,?3,?4,?5,?6,?7)
                 ON CONFLICT(name) DO UPDATE SET status=excluded.status, size_bytes=excluded.size_bytes,
                 source=excluded.source, message=excluded.message, config=excluded.config",
                params![
                    r.name,
                    r.status,
                    r.created_at,
                    r.size_bytes as i64,
                    r.source,
                    r.message,
                    r.config
                ],
            )?;
            Ok(())
        })
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT name, status, created_at, size_bytes, source, message, config FROM images WHERE name=?1",
                params![name],
                image_row,
            )
            .optional()?)
        })
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, status, created_at, size_bytes, source, message, config FROM images ORDER BY name",
            )?;
            let rows = stmt.query_map([], image_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn delete_image(&self, name: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM images WHERE name=?1", params![name])?;
            Ok(())
        })
    }

    pub fn insert_checkpoint(&self, r: &CheckpointRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO checkpoints (sandbox_id, seq, comment, created_at, size_bytes, source, ready)
                 VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![
                    r.sandbox_id,
                    r.seq as i64,
                    r.comment,
                    r.created_at,
                    r.size_bytes as i64,
                    r.source,
                    r.ready
                ],
            )?;
            Ok(())
        })
    }

    pub fn update_checkpoint(&self, r: &CheckpointRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE checkpoints SET size_bytes=?3, ready=?4 WHERE sandbox_id=?1 AND seq=?2",
                params![r.sandbox_id, r.seq as i64, r.size_bytes as i64, r.ready],
            )?;
            Ok(())
        })
    }

    pub fn delete_checkpoint(&self, sandbox_id: &str, seq: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM checkpoints WHERE sandbox_id=?1 AND seq=?2",
                params![sandbox_id, seq as i64],
            )?;
            Ok(())
        })
    }

    /// Checkpoints of a sandbox (all of them with `sandbox_id == None`), oldest first.
    pub fn checkpoints(&self, sandbox_id: Option<&str>) -> Result<Vec<CheckpointRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT sandbox_id, seq, comment, created_at, size_bytes, source, ready FROM checkpoints
                 WHERE ?1 IS NULL OR sandbox_id = ?1 ORDER BY sandbox_id, seq",
            )?;
            let rows = stmt.query_map(params![sandbox_id], |r| {
                Ok(CheckpointRecord {
                    sandbox_id: r.get(0)?,
                    seq: r.get::<_, i64>(1)?.max(0) as u64,
                    comment: r.get(2)?,
                    created_at: r.get(3)?,
                    size_bytes: r.get::<_, i64>(4)?.max(0) as u64,
                    source: r.get(5)?,
                    ready: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE key=?1", params![key], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
    }
}

/// The result of a write, with a uniqueness violation as [`StoreError::Unique`].
/// `UPDATE` of every mutable field of `r` (matched by id).
fn write_sandbox(c: &Connection, r: &SandboxRecord) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE sandboxes SET status=?2, intent=?3, updated_at=?4, last_active_at=?5, config=?6, env=?7, \
         labels=?8, failure_reason=?9, next_checkpoint=?10, notice=?11, instance=?12 WHERE id=?1",
        params![
            r.id,
            r.status.as_str(),
            r.intent.map(Intent::encode),
            r.updated_at,
            r.last_active_at,
            to_json(&r.config),
            to_json(&r.env),
            to_json(&r.labels),
            r.failure_reason,
            r.next_checkpoint as i64,
            r.notice,
            r.instance,
        ],
    )
}

fn unique(res: rusqlite::Result<usize>) -> Result<()> {
    match res {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, msg)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::Unique(msg.unwrap_or_default()))
        }
        Err(e) => Err(e.into()),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store types always serialize")
}

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        status: r.get(1)?,
        created_at: r.get(2)?,
        size_bytes: r.get::<_, i64>(3)?.max(0) as u64,
        source: r.get(4)?,
        message: r.get(5)?,
        config: r.get(6)?,
    })
}

/// Columns as read, before validation.
struct RawSandbox {
    cols: [Option<String>; 14],
    next_checkpoint: i64,
    notice: Option<String>,
    instance: Option<String>,
}

fn row_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawSandbox> {
    let mut cols: [Option<String>; 14] = Default::default();
    for (i, c) in cols.iter_mut().enumerate() {
        *c = r.get(i)?;
    }
    Ok(RawSandbox {
        cols,
        next_checkpoint: r.get(14)?,
        notice: r.get(15)?,
        instance: r.get(16)?,
    })
}

impl RawSandbox {
    fn decode(self) -> Result<SandboxRecord> {
        let [
            id,
            name,
            status,
            intent,
            engine,
            image,
            created,
            updated,
            active,
            config,
            env,
            labels,
            parent,
            reason,
        ] = self.cols;
        let (next_checkpoint, notice, instance) =
            (self.next_checkpoint.max(0) as u64, self.notice, self.instance);
        let id = id.unwrap_or_default();
        let bad = |detail: String| StoreError::Corrupt {
            what: format!("sandbox {id}"),
            detail,
        };
        let status = status
            .as_deref()
            .and_then(SandboxStatus::parse)
            .ok_or_else(|| bad("status".into()))?;
        let engine = engine
            .as_deref()
            .and_then(EngineKind::parse)
            .ok_or_else(|| bad("engine".into()))?;
        let json = |what: &str, s: Option<String>| -> Result<serde_json::Value> {
            serde_json::from_str(s.as_deref().unwrap_or("null")).map_err(|e| bad(format!("{what}: {e}")))
        };
        Ok(SandboxRecord {
            name: name.unwrap_or_default(),
            status,
            intent: intent.as_deref().and_then(Intent::parse),
            engine,
            image: image.unwrap_or_default(),
            created_at: created.unwrap_or_default(),
            updated_at: updated.unwrap_or_default(),
            last_active_at: active.unwrap_or_default(),
            config: serde_json::from_value(json("config", config)?)
                .map_err(|e| bad(format!("config: {e}")))?,
            env: serde_json::from_value(json("env", env)?).map_err(|e| bad(format!("env: {e}")))?,
            labels: serde_json::from_value(json("labels", labels)?)
                .map_err(|e| bad(format!("labels: {e}")))?,
            parent: serde_json::from_value(json("parent", parent)?)
                .map_err(|e| bad(format!("parent: {e}")))?,
            failure_reason: reason,
            next_checkpoint,
            notice,
            instance,
            id,
        })
    }
}

/// A service definition as stored; `enabled` is whether it should run (start/stop).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub sandbox_id: String,
    pub name: String,
    pub spec: burrow_api::PutService,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl Store {
    /// Services of a sandbox, by name.
    pub fn services(&self, sandbox_id: &str) -> Result<Vec<ServiceRecord>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT sandbox_id, name, spec, enabled, created_at, updated_at FROM services \
                 WHERE sandbox_id=?1 ORDER BY name",
            )?;
            let rows = stmt.query_map(params![sandbox_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (sandbox_id, name, spec, enabled, created_at, updated_at) = row?;
                let spec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                    what: format!("service {name} of sandbox {sandbox_id}"),
                    detail: e.to_string(),
                })?;
                out.push(ServiceRecord {
                    sandbox_id,
                    name,
                    spec,
                    enabled,
                    created_at,
                    updated_at,
                });
            }
            Ok(out)
        })
    }

    /// Inserts or replaces a service (keeping its `created_at` when it existed).
    pub fn upsert_service(&self, r: &ServiceRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO services (sandbox_id, name, spec, enabled, created_at, updated_at) \
                 VALUES (?1,?2,?3,?4,?5,?6) ON CONFLICT(sandbox_id, name) DO UPDATE SET \
                 spec=excluded.spec, enabled=excluded.enabled, updated_at=excluded.updated_at",
                params![
                    r.sandbox_id,
                    r.name,
                    to_json(&r.spec),
                    r.enabled,
                    r.created_at,
                    r.updated_at
                ],
            )?;
            Ok(())
        })
    }

    pub fn delete_service(&self, sandbox_id: &str, name: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM services WHERE sandbox_id=?1 AND name=?2",
                params![sandbox_id, name],
            )?;
            Ok(())
        })
    }

    pub fn delete_services(&self, sandbox_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM services WHERE sandbox_id=?1", params![sandbox_id])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn restore_intents_round_trip_with_and_without_the_prior_status() {
        for intent in [
            Intent::Restore {
                target: 3,
                backup: 4,
                prior: Some(SandboxStatus::Stopped),
            },
            Intent::Restore {
                target: 3,
                backup: 4,
                prior: None,
            },
            Intent::Create,
            Intent::Destroy,
        ] {
            assert_eq!(Intent::parse(&intent.encode()), Some(intent));
        }
        // Written by versions before `prior`: still read.
        assert_eq!(
            Intent::parse("restore:1:2"),
            Some(Intent::Restore {
                target: 1,
                backup: 2,
                prior: None
            })
        );
        assert_eq!(Intent::parse("restore:1:2:asleep"), None);
    }

    use super::*;
    use burrow_api::UrlAuth;

    fn rec(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            name: name.into(),
            status: SandboxStatus::Creating,
            intent: Some(Intent::Create),
            engine: EngineKind::Container,
            image: "base".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_active_at: "2026-01-01T00:00:00Z".into(),
            config: SandboxConfig {
                cpus: 1.0,
                memory_mb: 512,
                disk_gb: 1,
                pids: 100,
                idle_timeout_s: 60,
                cold_after_s: 600,
                url_auth: UrlAuth::Private,
                restart: Default::default(),
            },
            env: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::new(),
            parent: None,
            failure_reason: None,
            next_checkpoint: 0,
            notice: None,
            instance: None,
        }
    }

    /// The take-over is one transaction: the woken sandbox gets the runtime and the donor's
    /// address, the donor's rows go; a failure (the address taken by a third sandbox)
    /// changes nothing.
    #[test]
    fn a_take_over_moves_the_runtime_and_the_address_in_one_transaction() {
        let s = Store::open_in_memory().unwrap();
        let mut woken = rec("sb-woken", "woken");
        let donor = rec("sb-donor", "prestarted-x");
        let other = rec("sb-other", "other");
        for r in [&woken, &donor, &other] {
            s.insert_sandbox(r).unwrap();
        }
        s.put_net(&woken.id, "10.0.0.2", "{}").unwrap();
        s.put_net(&donor.id, "10.0.0.3", "{}").unwrap();
        s.put_net(&other.id, "10.0.0.4", "{}").unwrap();
        woken.status = SandboxStatus::Running;
        woken.intent = None;
        woken.instance = Some(donor.id.clone());

        // A third sandbox's address: refused, and nothing of it happened.
        assert!(s.take_over_runtime(&woken, &donor.id, Some("10.0.0.4")).is_err());
        assert!(s.sandbox_by_id(&donor.id).unwrap().is_some(), "the donor stays");
        assert_eq!(s.net_of(&donor.id).unwrap().unwrap().0, "10.0.0.3");
        let kept = s.sandbox_by_id(&woken.id).unwrap().unwrap();
        assert_eq!((kept.status, kept.instance), (SandboxStatus::Creating, None));

        s.take_over_runtime(&woken, &donor.id, Some("10.0.0.3")).unwrap();
        let now = s.sandbox_by_id(&woken.id).unwrap().unwrap();
        assert_eq!(now.status, SandboxStatus::Running);
        assert_eq!(now.eid(), "sb-donor");
        assert_eq!(s.net_of(&woken.id).unwrap().unwrap().0, "10.0.0.3");
        assert!(s.sandbox_by_id(&donor.id).unwrap().is_none());
        assert!(s.net_of(&donor.id).unwrap().is_none());
        assert_eq!(s.all_net().unwrap().len(), 2);
    }

    #[test]
    fn round_trip_unique_and_list() {
        let s = Store::open_in_memory().unwrap();
        s.insert_sandbox(&rec("sb-1", "b")).unwrap();
        s.insert_sandbox(&rec("sb-2", "a")).unwrap();
        s.insert_sandbox(&rec("sb-3", "ab")).unwrap();
        assert!(matches!(
            s.insert_sandbox(&rec("sb-4", "a")),
            Err(StoreError::Unique(_))
        ));
        let mut r = s.sandbox_by_name("a").unwrap().unwrap();
        assert_eq!(r.env["A"], "1");
        assert_eq!(r.intent, Some(Intent::Create));
        r.status = SandboxStatus::Running;
        r.intent = None;
        s.update_sandbox(&r).unwrap();
        let r = s.sandbox_by_name("a").unwrap().unwrap();
        assert_eq!((r.status, r.intent), (SandboxStatus::Running, None));
        let names: Vec<_> = s
            .list_sandboxes("a", None, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "ab"]);
        let names: Vec<_> = s
            .list_sandboxes("", Some("a"), 1)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["ab"]);
        s.delete_sandbox("sb-2").unwrap();
        assert!(s.sandbox_by_name("a").unwrap().is_none());
    }

    #[test]
    fn prefix_with_like_metacharacters_is_literal() {
        let s = Store::open_in_memory().unwrap();
        s.insert_sandbox(&rec("sb-1", "abc")).unwrap();
        assert!(s.list_sandboxes("%", None, 10).unwrap().is_empty());
        assert!(s.list_sandboxes("_bc", None, 10).unwrap().is_empty());
    }
}
