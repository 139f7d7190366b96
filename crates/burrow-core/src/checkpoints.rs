//! Checkpoints, restore and forks: whole-disk snapshots of a sandbox, O(1) on btrfs.
//!
//! A live checkpoint freezes the sandbox's processes (cgroup freezer) around the snapshot,
//! so what it captures is a state the processes could observe (no half-done write); the
//! btrfs snapshot flushes the subvolume's dirty data itself. Restore is never destructive:
//! the replaced state is first saved as a new checkpoint. Every step is crash-safe: intent
//! in the store first, then the work, then the commit; `reconcile_checkpoints` finishes or
//! undoes what a crash interrupted.

use std::path::PathBuf;

use burrow_api::{Checkpoint, CheckpointId, RestoreResult, SandboxStatus};

use crate::CoreError;
use crate::error::chain;
use crate::manager::{Manager, blocking};
use crate::state::{Action, transition};
use crate::store::{CheckpointRecord, Intent, SandboxRecord};
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

const MAX_COMMENT: usize = 1024;

/// Where a checkpoint was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointSource {
    Api,
    Inside,
}

impl CheckpointSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Inside => "inside",
        }
    }
}

fn view(r: &CheckpointRecord, memory: bool) -> Checkpoint {
    Checkpoint {
        id: CheckpointId(r.seq).to_string(),
        comment: r.comment.clone(),
        created_at: r.created_at.clone(),
        size_bytes: r.size_bytes,
        source: r.source.clone(),
        memory,
    }
}

impl Manager {
    pub(crate) fn checkpoint_path(&self, sandbox_id: &str, seq: u64) -> PathBuf {
        self.pool
            .checkpoints_dir()
            .join(sandbox_id)
            .join(CheckpointId(seq).to_string())
    }

    pub(crate) fn checkpoint_record(&self, rec: &SandboxRecord, id: &str) -> Result<CheckpointRecord> {
        let cid = CheckpointId::parse(id).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        self.store
            .checkpoints(Some(&rec.id))?
            .into_iter()
            .find(|c| c.seq == cid.0 && c.ready)
            .ok_or_else(|| CoreError::not_found("checkpoint", format!("{}:{id}", rec.name)))
    }

    /// Allocates the next checkpoint number (persisted before use: ids are never reused).
    fn next_seq(&self, rec: &mut SandboxRecord) -> Result<u64> {
        let seq = rec.next_checkpoint;
        rec.next_checkpoint += 1;
        self.store.update_sandbox(rec)?;
        Ok(seq)
    }

    /// Snapshots the sandbox's volume read-only as checkpoint `seq`, freezing its processes
    /// around the snapshot when it runs. The caller holds the sandbox's op lock.
    async fn snapshot_checkpoint(
        &self,
        rec: &SandboxRecord,
        seq: u64,
        comment: String,
        source: &str,
    ) -> Result<CheckpointRecord> {
        let mut cp = CheckpointRecord {
            sandbox_id: rec.id.clone(),
            seq,
            comment,
            created_at: now_rfc3339(),
            size_bytes: 0,
            source: source.to_owned(),
            ready: false,
        };
        self.store.insert_checkpoint(&cp)?;
        // A VM whose memory was just saved has nothing left running to freeze.
        let freeze = rec.status == SandboxStatus::Running && !self.has_saved_memory(rec);
        if freeze && let Err(e) = self.freeze_consistent(rec).await {
            let _ = self.store.delete_checkpoint(&rec.id, seq);
            return Err(e);
        }
        let pool = self.pool.clone();
        let src = pool.sandbox_path(&rec.id);
        let dst = self.checkpoint_path(&rec.id, seq);
        let t = std::time::Instant::now();
        let snap = blocking(move || Ok(pool.snapshot(&src, &dst, true)?)).await;
        if freeze {
            // Thaw whatever happened: the processes must never stay frozen by a failed checkpoint.
            if let Err(e) = self.freeze(rec, false).await {
                tracing::error!(sandbox = %rec.name, error = %crate::error::chain(&e), "thaw after checkpoint");
            }
        }
        if let Err(e) = snap {
            let _ = self.store.delete_checkpoint(&rec.id, seq);
            return Err(e);
        }
        crate::fault::point("checkpoint.after_snapshot");
        tracing::debug!(sandbox = %rec.name, seq, ms = t.elapsed().as_secs_f64() * 1e3, "checkpoint snapshot");
        cp.ready = true;
        self.store.update_checkpoint(&cp)?;
        self.measure_checkpoint_in_background(cp.clone(), true);
        Ok(cp)
    }

    /// Freezes a running sandbox with its disk consistent for a snapshot: a VM's recent
    /// writes are in its own page cache, so they go out to its disk first.
    async fn freeze_consistent(&self, rec: &SandboxRecord) -> Result<()> {
        if self.engine(rec)?.capabilities().own_kernel {
            self.sync_guest(rec).await?;
        }
        self.freeze(rec, true).await
    }

    /// Asks the agent to write the guest's page cache out (bounded).
    async fn sync_guest(&self, rec: &SandboxRecord) -> Result<()> {
        let call = |mut client: burrow_agent_proto::AgentClient<tonic::transport::Channel>| async move {
            let req = burrow_agent_proto::v1::SyncFsRequest {};
            tokio::time::timeout(std::time::Duration::from_secs(60), client.sync_fs(req)).await
        };
        let mut answer = call(self.agent(rec).await?).await;
        if matches!(answer, Ok(Err(_))) {
            // The cached channel may be stale (the VM was resumed): reconnect once.
            self.forget_agent(&rec.id);
            answer = call(self.agent(rec).await?).await;
        }
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(CoreError::Agent {
                name: rec.name.clone(),
                detail: format!(
                    "syncing the guest's filesystems before the checkpoint: {}",
                    s.message()
                ),
            }),
            Err(_) => Err(CoreError::Agent {
                name: rec.name.clone(),
                detail: "the guest did not sync its filesystems within 60 s; no checkpoint was taken".into(),
            }),
        }
    }

    /// Fills in `size_bytes` later: walking a big tree takes longer than the snapshot (a
    /// fresh snapshot's inodes are not in memory yet: about 0.1–0.3 s of CPU for the base
    /// image). One walk at a time, on a thread of its own at the lowest CPU priority, so a
    /// burst of checkpoints does not slow the requests that follow it.
    /// A `snapshot` is a read-only snapshot made as such (read faster: see
    /// `Pool::snapshot_size`); a restore's backup is the replaced volume itself.
    fn measure_checkpoint_in_background(&self, mut cp: CheckpointRecord, snapshot: bool) {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let pool = self.pool.clone();
        let store = self.store.clone();
        let path = self.checkpoint_path(&cp.sandbox_id, cp.seq);
        let spawned = std::thread::Builder::new().name("measure".into()).spawn(move || {
            burrow_storage::lowest_priority_for_this_thread();
            let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
            let size = if snapshot {
                pool.snapshot_size(&path)
            } else {
                pool.volume_size(&path)
            };
            if let Ok(size) = size {
                cp.size_bytes = size;
                let _ = store.update_checkpoint(&cp);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "measuring a checkpoint: no thread");
        }
    }

    /// Whether checkpoint `seq` of `rec` holds a saved memory state.
    fn checkpoint_has_memory(&self, rec: &SandboxRecord, seq: u64) -> bool {
        self.engine(rec)
            .is_ok_and(|e| e.suspended(&self.checkpoint_path(&rec.id, seq)))
    }

    fn view_of(&self, rec: &SandboxRecord, cp: &CheckpointRecord) -> Checkpoint {
        view(cp, self.checkpoint_has_memory(rec, cp.seq))
    }

    pub async fn create_checkpoint(
        &self,
        name: &str,
        comment: Option<String>,
        source: CheckpointSource,
        memory: bool,
    ) -> Result<Checkpoint> {
        let comment = comment.unwrap_or_default();
        // Characters, as the OpenAPI document's maxLength counts them.
        if comment.chars().count() > MAX_COMMENT {
            return Err(CoreError::Invalid(format!(
                "comment is longer than {MAX_COMMENT} characters"
            )));
        }
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = self.record(name)?;
        if rec.status == SandboxStatus::Creating {
            return Err(CoreError::IllegalTransition {
                name: rec.name,
                action: "checkpoint",
                from: rec.status,
            });
        }
        let suspend = memory && self.memory_checkpoint_needs_suspend(&rec)?;
        let seq = self.next_seq(&mut rec)?;
        if suspend {
            // Memory and devices go to the volume (the VM stops for that long), the
            // snapshot takes them with the disk, and the VM resumes where it was.
            let engine = self.engine(&rec)?;
            let id = rec.eid().to_owned();
            let rt = self.runtime(&rec.id);
            blocking(move || Ok(engine.suspend(&id, &move || rt.set_agent(None))?)).await?;
        }
        let snap = self
            .snapshot_checkpoint(&rec, seq, comment, source.as_str())
            .await;
        if suspend {
            // Resume whatever happened; the saved state is the checkpoint's now.
            let resumed = self.boot_or_fail(&mut rec).await;
            if let Err(e) = &resumed {
                tracing::error!(sandbox = %rec.name, error = %crate::error::chain(e), "resuming after a memory checkpoint");
            }
            resumed?;
        }
        let cp = snap?;
        tracing::info!(sandbox = %rec.name, checkpoint = seq, memory, "checkpoint");
        self.events.emit(
            &rec.name,
            "checkpoint",
            serde_json::json!({"id": CheckpointId(seq).to_string(), "source": source.as_str()}),
        );
        Ok(self.view_of(&rec, &cp))
    }

    /// Checks that `rec` can have a memory checkpoint, and whether its VM must be
    /// suspended for it (a VM asleep with its memory saved is snapshotted as it is).
    fn memory_checkpoint_needs_suspend(&self, rec: &SandboxRecord) -> Result<bool> {
        let engine = self.engine(rec)?;
        if !engine.capabilities().memory_snapshot {
            return Err(CoreError::Conflict(format!(
                "sandbox '{}' runs on the {} engine, whose checkpoints keep the disk only; \
                 memory checkpoints need the vm engine",
                rec.name,
                engine.kind().as_str()
            )));
        }
        match rec.status {
            SandboxStatus::Running => Ok(true),
            SandboxStatus::Sleeping if self.has_saved_memory(rec) => Ok(false),
            other => Err(CoreError::Conflict(format!(
                "sandbox '{}' is {other}: a memory checkpoint needs processes to keep (start it first)",
                rec.name
            ))),
        }
    }

    pub fn list_checkpoints(&self, name: &str) -> Result<Vec<Checkpoint>> {
        let rec = self.record(name)?;
        Ok(self
            .store
            .checkpoints(Some(&rec.id))?
            .iter()
            .filter(|c| c.ready)
            .map(|cp| self.view_of(&rec, cp))
            .collect())
    }

    pub fn get_checkpoint(&self, name: &str, id: &str) -> Result<Checkpoint> {
        let rec = self.record(name)?;
        Ok(self.view_of(&rec, &self.checkpoint_record(&rec, id)?))
    }

    pub async fn delete_checkpoint(&self, name: &str, id: &str) -> Result<()> {
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let cp = self.checkpoint_record(&rec, id)?;
        let pool = self.pool.clone();
        let path = self.checkpoint_path(&rec.id, cp.seq);
        // Forks and images made from it are independent snapshots: nothing else needs it.
        blocking(move || Ok(pool.delete_volume(&path)?)).await?;
        self.store.delete_checkpoint(&rec.id, cp.seq)?;
        self.reclaim_space();
        self.events
            .emit(&rec.name, "checkpoint.deleted", serde_json::json!({"id": id}));
        Ok(())
    }

    /// Replaces the sandbox's disk with checkpoint `id`, after saving the current state as a
    /// new checkpoint. Processes are stopped; a sandbox that ran runs again afterwards.
    pub async fn restore(&self, name: &str, id: &str) -> Result<RestoreResult> {
        let rec = self.record(name)?;
        let rt = self.runtime(&rec.id);
        if !rt.begin_restore() {
            return Err(CoreError::Conflict(format!(
                "a restore of sandbox '{name}' is already running"
            )));
        }
        let result = self.restore_locked(name, id).await;
        rt.end_restore();
        result
    }

    async fn restore_locked(&self, name: &str, id: &str) -> Result<RestoreResult> {
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = self.record(name)?;
        if rec.status == SandboxStatus::Creating {
            return Err(CoreError::IllegalTransition {
                name: rec.name,
                action: "restore",
                from: rec.status,
            });
        }
        let target = self.checkpoint_record(&rec, id)?;
        let was_running = matches!(rec.status, SandboxStatus::Running | SandboxStatus::Sleeping);
        let backup = self.next_seq(&mut rec)?;
        rec.intent = Some(Intent::Restore {
            target: target.seq,
            backup,
            prior: Some(rec.status),
        });
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(&rec)?;

        let t = std::time::Instant::now();
        let mut steps: Vec<(&str, f64)> = Vec::new();
        let mut step = |what: &'static str| steps.push((what, t.elapsed().as_secs_f64() * 1e3));
        // 1. Make the new volume aside, from the target.
        let pool = self.pool.clone();
        let live = pool.sandbox_path(&rec.id);
        let new = live.with_extension("new");
        {
            // Limited as it is made: no commit of its own for the quota.
            let (pool, new) = (pool.clone(), new.clone());
            let src = self.checkpoint_path(&rec.id, target.seq);
            let bytes = self.disk_limit_bytes(&rec, &rec.config)?;
            let name = rec.name.clone();
            blocking(move || {
                pool.delete_volume(&new)?;
                if !pool.snapshot_limited(&src, &new, bytes)? {
                    tracing::warn!(sandbox = %name, "disk limit not enforced: the pool has no quotas (dir pool)");
                }
                Ok(())
            })
            .await?;
        }
        crate::fault::point("restore.after_backup");
        if rec.status == SandboxStatus::Running {
            self.prefetch_root_in_background(&rec, &new);
        }
        step("snapshot");
        // 2. Stop every process at once: their disk is about to be replaced, so there is
        //    nothing to shut down gracefully for. Sessions learn why. A running container
        //    keeps running with only its agent (the root is swapped under it below);
        //    anything else, or an agent that cannot, is stopped.
        self.set_end_reason(
            &rec.id,
            format!("sandbox '{}' is being restored to {id}", rec.name),
        );
        let mut in_place = self.can_reroot(&rec);
        if in_place && let Err(e) = self.quiesce(&rec).await {
            tracing::info!(sandbox = %rec.name, error = %chain(&e), "restore: stopping the sandbox instead");
            in_place = false;
        }
        if !in_place {
            // The replaced disk becomes the backup: a VM's recent writes are in its own page
            // cache, so they go out to its disk, and the guest stands still, before the kill
            // (as for any live checkpoint).
            let guest_runs = rec.status == SandboxStatus::Running
                && !self.has_saved_memory(&rec)
                && self.engine(&rec)?.capabilities().own_kernel;
            if guest_runs && let Err(e) = self.freeze_consistent(&rec).await {
                tracing::warn!(sandbox = %rec.name, error = %chain(&e), "restore: flushing the guest before its disk becomes the backup");
            }
            self.kill(&rec).await?;
        }
        step("stop");
        crate::fault::pause("restore.after_stop").await;
        transition(&mut rec, Action::Stop)?;
        // 3. Swap volumes: two renames put the new one in place (a quiesced sandbox gets it
        //    as its root first); the replaced one, untouched since its processes ended,
        //    becomes the backup checkpoint (a rename, not a copy).
        crate::fault::point("restore.before_swap");
        if in_place && let Err(e) = self.replace_root(&rec, new.clone()).await {
            tracing::warn!(sandbox = %rec.name, error = %chain(&e), "restore: replacing the root in place failed; restarting the sandbox");
            in_place = false;
            self.kill(&rec).await?;
        }
        step("reroot");
        let old = live.with_extension("old");
        {
            let old = old.clone();
            blocking(move || {
                rename(&live, &old)?;
                crate::fault::point("restore.mid_swap");
                rename(&new, &live)?;
                Ok(())
            })
            .await?;
        }
        step("swap");
        let comment = format!("state before restoring {id}");
        self.keep_as_backup(&rec, backup, comment, old).await?;
        step("backup");
        // 4. Run again if it ran.
        rec.intent = None;
        rec.notice = None;
        if was_running {
            transition(&mut rec, Action::Start)?;
            let mut up = false;
            if in_place {
                match self.restart_agent(&rec).await {
                    Ok(()) => up = true,
                    Err(e) => {
                        tracing::warn!(sandbox = %rec.name, error = %chain(&e), "restore: the agent did not come back; restarting the sandbox");
                        self.kill(&rec).await?;
                    }
                }
            }
            if !up {
                self.boot_or_fail(&mut rec).await?;
            }
            // A restore is activity: a sandbox restored while asleep is awake now and gets
            // its whole idle timeout, like after any wake.
            self.runtime(&rec.id).set_sleep(None);
            self.runtime(&rec.id).touch();
            self.touch(&rec);
        }
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(&rec)?;
        step("run");
        tracing::info!(sandbox = %rec.name, restored = id, backup, in_place, steps = ?steps, "restored");
        self.events.emit(
            &rec.name,
            "restored",
            serde_json::json!({"restored": id, "backup": CheckpointId(backup).to_string()}),
        );
        Ok(RestoreResult {
            restored: id.to_owned(),
            backup: CheckpointId(backup).to_string(),
        })
    }

    /// Makes the volume a restore replaced (`old`, beside the live one) checkpoint `seq` of
    /// `rec`: the record first (ready: a crash before the rename is finished by
    /// reconciliation from `old`), then a rename into the checkpoints and the read-only flag.
    async fn keep_as_backup(
        &self,
        rec: &SandboxRecord,
        seq: u64,
        comment: String,
        old: PathBuf,
    ) -> Result<()> {
        let known = self
            .store
            .checkpoints(Some(&rec.id))?
            .into_iter()
            .find(|c| c.seq == seq);
        let cp = match known {
            Some(cp) => cp,
            None => {
                let cp = CheckpointRecord {
                    sandbox_id: rec.id.clone(),
                    seq,
                    comment,
                    created_at: now_rfc3339(),
                    size_bytes: 0,
                    source: "restore-backup".to_owned(),
                    ready: true,
                };
                self.store.insert_checkpoint(&cp)?;
                cp
            }
        };
        let pool = self.pool.clone();
        let dst = self.checkpoint_path(&rec.id, seq);
        blocking(move || {
            if pool.is_volume(&old) {
                if let Some(dir) = dst.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
                }
                rename(&old, &dst)?;
            }
            Ok(())
        })
        .await?;
        // The read-only flag costs a btrfs commit, and the size a walk of the tree: off the
        // restore's path, after the sandbox's first command (see `first_use`). Nothing
        // writes to a checkpoint meanwhile (the sandbox sees its checkpoints through a
        // read-only bind mount).
        let (pool, dst) = (self.pool.clone(), self.checkpoint_path(&rec.id, seq));
        let first_use = self.runtime(&rec.id).first_use();
        let me = self.me();
        tokio::spawn(async move {
            crate::runtime::after_first_use(first_use).await;
            let flagged = tokio::task::spawn_blocking(move || {
                if let Err(e) = pool.set_readonly(&dst, true) {
                    tracing::warn!(path = %dst.display(), error = %e, "making a restore's backup read-only");
                }
            });
            let _ = flagged.await;
            if let Some(me) = me {
                me.measure_checkpoint_in_background(cp, false);
            }
        });
        Ok(())
    }

    /// Finishes or undoes checkpoint and restore work a crash interrupted. Runs before the
    /// sandbox reconciliation, so the volumes are whole when that looks at them.
    pub(crate) async fn reconcile_checkpoints(&self) -> Result<()> {
        let sandboxes = self.store.all_sandboxes()?;
        // Half-made checkpoints: never visible, removed.
        for cp in self.store.checkpoints(None)? {
            if !cp.ready {
                tracing::warn!(
                    sandbox = cp.sandbox_id,
                    seq = cp.seq,
                    "removing half-made checkpoint"
                );
                let pool = self.pool.clone();
                let path = self.checkpoint_path(&cp.sandbox_id, cp.seq);
                blocking(move || Ok(pool.delete_volume(&path)?)).await?;
                self.store.delete_checkpoint(&cp.sandbox_id, cp.seq)?;
            }
        }
        // Interrupted restores: old state or new state, never a mix, and say which.
        for mut rec in sandboxes.iter().cloned() {
            let Some(Intent::Restore {
                target,
                backup,
                prior,
            }) = rec.intent
            else {
                continue;
            };
            // A restore in place leaves the sandbox running (quiesced, maybe on the new
            // volume already): it is stopped, and runs again on whichever state is kept.
            if let Err(e) = self.kill(&rec).await {
                tracing::debug!(sandbox = %rec.name, error = %chain(&e), "stopping a sandbox whose restore was interrupted");
            }
            let pool = self.pool.clone();
            let live = pool.sandbox_path(&rec.id);
            let (new, old) = (live.with_extension("new"), live.with_extension("old"));
            let old_path = old.clone();
            let (has_live, has_new, has_old) =
                (pool.is_volume(&live), pool.is_volume(&new), pool.is_volume(&old));
            let has_backup = pool.is_volume(&self.checkpoint_path(&rec.id, backup));
            let outcome = blocking(move || {
                Ok(match (has_live, has_new, has_old) {
                    // Swap done, the replaced volume not yet the backup: it becomes it below.
                    (true, false, true) => true,
                    // Crash between the two renames: finish the swap.
                    (false, true, true) => {
                        rename(&new, &live)?;
                        true
                    }
                    // Swap done and the replaced volume is the backup already.
                    (true, false, false) if has_backup => true,
                    // Swap not started: keep the old state.
                    (true, _, false) => {
                        pool.delete_volume(&new)?;
                        false
                    }
                    _ => false,
                })
            })
            .await?;
            if outcome && has_old {
                let comment = format!("state before restoring {}", CheckpointId(target));
                self.keep_as_backup(&rec, backup, comment, old_path.clone())
                    .await?;
            }
            let (t, b) = (CheckpointId(target), CheckpointId(backup));
            let notice = if outcome {
                format!(
                    "a restore to {t} was interrupted by a daemon restart and was completed; the previous state is in {b}"
                )
            } else {
                format!(
                    "a restore to {t} was interrupted by a daemon restart; the sandbox kept its previous state"
                )
            };
            tracing::warn!(sandbox = %rec.name, "{notice}");
            rec.intent = None;
            rec.notice = Some(notice);
            // It was stopped for the restore: it goes back to what it was before (a sandbox
            // that ran or slept runs, reconciliation boots it; a stopped one stays stopped).
            // Intents from before `prior` was recorded assume it ran, as they always did.
            let prior = prior.unwrap_or(SandboxStatus::Running);
            let action = match prior {
                SandboxStatus::Running | SandboxStatus::Sleeping => Some(Action::Start),
                SandboxStatus::Stopped => Some(Action::Stop),
                SandboxStatus::Failed => Some(Action::Fail),
                SandboxStatus::Creating | SandboxStatus::Destroyed => None,
            };
            if let Some(action) = action {
                transition(&mut rec, action)?;
            }
            self.store.update_sandbox(&rec)?;
        }
        // Checkpoint volumes nobody owns.
        let known: std::collections::HashSet<(String, u64)> = self
            .store
            .checkpoints(None)?
            .into_iter()
            .map(|c| (c.sandbox_id, c.seq))
            .collect();
        let ids: std::collections::HashSet<String> = sandboxes.iter().map(|r| r.id.clone()).collect();
        let Ok(dirs) = std::fs::read_dir(self.pool.checkpoints_dir()) else {
            return Ok(());
        };
        for dir in dirs.flatten() {
            let sid = dir.file_name().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let owned = CheckpointId::parse(&name).is_ok_and(|c| known.contains(&(sid.clone(), c.0)));
                if !owned {
                    tracing::warn!(path = %e.path().display(), "removing orphaned checkpoint volume");
                    let pool = self.pool.clone();
                    let p = e.path();
                    blocking(move || Ok(pool.delete_volume(&p)?)).await?;
                }
            }
            if !ids.contains(&sid) {
                let _ = std::fs::remove_dir(dir.path());
            }
        }
        Ok(())
    }

    /// Deletes every checkpoint of a sandbox (when the sandbox is destroyed).
    pub(crate) async fn delete_all_checkpoints(&self, rec: &SandboxRecord) -> Result<()> {
        for cp in self.store.checkpoints(Some(&rec.id))? {
            let pool = self.pool.clone();
            let path = self.checkpoint_path(&rec.id, cp.seq);
            blocking(move || Ok(pool.delete_volume(&path)?)).await?;
            self.store.delete_checkpoint(&rec.id, cp.seq)?;
        }
        let _ = std::fs::remove_dir(self.pool.checkpoints_dir().join(&rec.id));
        Ok(())
    }

    /// Snapshots a fork source into `dst`: a checkpoint, or the live state of a sandbox
    /// (frozen around the snapshot when it runs).
    /// Snapshots what a fork or an image copies into `dst`: checkpoint `checkpoint` of
    /// `src`, else its live state. `memory` (a VM): the live state's memory and devices
    /// too, saved for that long with the VM stopped, so the copy's processes go on; a
    /// checkpoint source must hold memory then. Without it a live copy boots afresh.
    pub(crate) async fn snapshot_fork_source(
        &self,
        src: &SandboxRecord,
        checkpoint: Option<&str>,
        dst: PathBuf,
        memory: bool,
        limit: Option<u64>,
    ) -> Result<()> {
        let pool = self.pool.clone();
        let snapshot = move |pool: &std::sync::Arc<dyn burrow_storage::Pool>,
                             from: &std::path::Path,
                             to: &std::path::Path| {
            match limit {
                Some(bytes) => pool.snapshot_limited(from, to, bytes).map(drop),
                None => pool.snapshot(from, to, false),
            }
        };
        match checkpoint {
            Some(id) => {
                let cp = self.checkpoint_record(src, id)?;
                if memory && !self.checkpoint_has_memory(src, cp.seq) {
                    return Err(CoreError::Conflict(format!(
                        "checkpoint {id} of sandbox '{}' keeps the disk only: a fork with memory \
                         needs a memory checkpoint (`burrow checkpoint {} --memory`) or the live state",
                        src.name, src.name
                    )));
                }
                let from = self.checkpoint_path(&src.id, cp.seq);
                blocking(move || Ok(snapshot(&pool, &from, &dst)?)).await
            }
            None => {
                let lock = self.op_lock(&src.id);
                let _guard = lock.lock().await;
                let mut src = self.record(&src.name)?;
                let suspend = memory && self.memory_checkpoint_needs_suspend(&src)?;
                let freeze = !memory && src.status == SandboxStatus::Running;
                if suspend {
                    let engine = self.engine(&src)?;
                    let id = src.eid().to_owned();
                    let rt = self.runtime(&src.id);
                    blocking(move || Ok(engine.suspend(&id, &move || rt.set_agent(None))?)).await?;
                    crate::fault::point("fork.after_suspend");
                } else if freeze {
                    self.freeze_consistent(&src).await?;
                }
                let from = pool.sandbox_path(&src.id);
                let copy = dst.clone();
                let res = blocking(move || Ok(snapshot(&pool, &from, &copy)?)).await;
                if suspend {
                    // The source resumes whatever happened; the saved state is the copy's.
                    let resumed = self.boot_or_fail(&mut src).await;
                    if let Err(e) = &resumed {
                        tracing::error!(sandbox = %src.name, error = %crate::error::chain(e), "resuming after a fork with memory");
                    }
                    resumed?;
                } else if freeze {
                    let _ = self.freeze(&src, false).await;
                }
                res?;
                // A source asleep with its memory saved: without `memory` the copy boots afresh.
                if !memory {
                    let engine = self.engine(&src)?;
                    blocking(move || Ok(engine.discard_suspended(&dst)?)).await?;
                }
                Ok(())
            }
        }
    }
}

fn rename(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::rename(from, to)
        .map_err(|e| CoreError::Internal(format!("renaming {} to {}: {e}", from.display(), to.display())))
}
