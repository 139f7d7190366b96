//! A new root filesystem under a running sandbox without starting it again: what makes a
//! restore, and a fork served by a pre-started sandbox, cost a few milliseconds instead of a
//! container start (`Engine::replace_root`).
//!
//! Three steps, each of which may fail, and then the caller starts the sandbox the usual
//! way: the agent ends every other process and takes no new work ([`Manager::quiesce`]);
//! the engine puts the new volume under the sandbox as its root; the agent re-executes
//! itself, and the host connects to the new one and restarts its services
//! ([`Manager::restart_agent`]).

use std::sync::Arc;
use std::time::Duration;

use burrow_storage::Pool;

use crate::CoreError;
use crate::manager::{Manager, blocking};
use crate::store::SandboxRecord;

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// How long the agent may take to end every process.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

impl Manager {
    /// Has the engine start reading, in the background, what the first command in the tree
    /// at `root` (a snapshot made moments ago, about to run `rec`) will read (see
    /// `Engine::prefetch_root`).
    pub(crate) fn prefetch_root_in_background(&self, rec: &SandboxRecord, root: &std::path::Path) {
        if let Ok(engine) = self.engine(rec) {
            let root = root.to_owned();
            tokio::task::spawn_blocking(move || engine.prefetch_root(&root));
        }
    }

    /// Whether `rec`'s root can be replaced in place: a running sandbox of an engine that
    /// can.
    pub(crate) fn can_reroot(&self, rec: &SandboxRecord) -> bool {
        rec.status == burrow_api::SandboxStatus::Running
            && self
                .engine(rec)
                .is_ok_and(|e| e.capabilities().shared_dirs && e.kind() == burrow_api::EngineKind::Container)
    }

    /// Has the agent of `rec` end every process but itself and refuse new work. An error
    /// (an agent that does not answer, or too old to know how) leaves the caller to kill the
    /// sandbox instead.
    pub(crate) async fn quiesce(&self, rec: &SandboxRecord) -> Result<()> {
        let mut client = self.agent(rec).await?;
        let req = burrow_agent_proto::v1::QuiesceRequest {};
        match tokio::time::timeout(QUIESCE_TIMEOUT, client.quiesce(req)).await {
            Ok(Ok(r)) if r.get_ref().all_gone => Ok(()),
            Ok(Ok(_)) => Err(CoreError::Internal(
                "a process outlived the agent's SIGKILL".into(),
            )),
            Ok(Err(e)) => Err(CoreError::Internal(format!("quiescing the agent: {e}"))),
            Err(_) => Err(CoreError::Internal("quiescing the agent: no answer".into())),
        }
    }

    /// Puts the volume at `new_root` under the quiesced sandbox `rec` as its root.
    pub(crate) async fn replace_root(&self, rec: &SandboxRecord, new_root: std::path::PathBuf) -> Result<()> {
        self.replace_root_with(rec, new_root, Vec::new()).await
    }

    /// [`Self::replace_root`], with `rebinds` (path inside, host path) bound read-only in
    /// place of the binds at those paths.
    pub(crate) async fn replace_root_with(
        &self,
        rec: &SandboxRecord,
        new_root: std::path::PathBuf,
        rebinds: Vec<(String, std::path::PathBuf)>,
    ) -> Result<()> {
        let engine = self.engine(rec)?;
        let id = rec.eid().to_owned();
        blocking(move || Ok(engine.replace_root(&id, &new_root, &rebinds)?)).await
    }

    /// After [`Self::replace_root`]: the agent re-executes itself (as the sandbox's
    /// hostname), the host connects to the fresh one and starts the sandbox's services.
    pub(crate) async fn restart_agent(&self, rec: &SandboxRecord) -> Result<()> {
        let mut client = self.agent(rec).await?;
        self.forget_agent(&rec.id);
        let req = burrow_agent_proto::v1::ReexecRequest {
            hostname: rec.name.clone(),
        };
        // It works when the connection closes without an answer: the old agent is gone.
        match tokio::time::timeout(QUIESCE_TIMEOUT, client.reexec(req)).await {
            // The agent's own refusals; anything else is the connection closing.
            Ok(Err(e))
                if e.code() == tonic::Code::FailedPrecondition
                    || e.message().starts_with("re-executing the agent") =>
            {
                return Err(CoreError::Internal(format!(
                    "re-executing the agent: {}",
                    e.message()
                )));
            }
            Ok(Err(_)) => {}
            Ok(Ok(_)) => return Err(CoreError::Internal("re-executing the agent: it answered".into())),
            Err(_) => return Err(CoreError::Internal("re-executing the agent: no answer".into())),
        }
        drop(client);
        self.connect_fresh_agent(rec).await?;
        self.start_services(rec).await;
        Ok(())
    }
}

/// Renames volume `path` aside (a name no sandbox has, so the start-up sweep removes it
/// should the daemon die first) and deletes it in the background once `first_use` tells the
/// sandbox's first use after the operation ended (or a moment passed): a btrfs subvolume
/// delete may wait for a commit, which neither the operation nor that first command needs
/// to wait for. Blocking; call from the runtime's blocking pool.
pub(crate) fn delete_volume_later(
    pool: &Arc<dyn Pool>,
    path: &std::path::Path,
    first_use: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let trash = path.with_extension(format!("trash-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff));
    std::fs::rename(path, &trash)
        .map_err(|e| CoreError::Internal(format!("renaming {} aside: {e}", path.display())))?;
    let pool = pool.clone();
    tokio::spawn(async move {
        crate::runtime::after_first_use(first_use).await;
        let deleted = tokio::task::spawn_blocking(move || {
            if let Err(e) = pool.delete_volume(&trash) {
                tracing::warn!(path = %trash.display(), error = %e, "deleting a replaced volume");
            }
        });
        let _ = deleted.await;
    });
    Ok(())
}
