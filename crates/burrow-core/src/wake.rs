//! A cold wake (or the start of a stopped sandbox) served by a pre-started sandbox:
//! instead of starting a container for a sandbox whose processes are gone, a pre-started one of the same image gives up its
//! runtime (its runc container, cgroups, network namespace and run dir) and the cold
//! sandbox's volume goes under it as its root, as a fork's does (`replace_root`), with the
//! cold sandbox's own `/.burrow/host`, checkpoints and resolv.conf bound in place of the
//! pre-started one's. From then on the sandbox's record names that runtime
//! (`SandboxRecord::instance`); its id, volume, policy, CA, secrets, services and
//! checkpoints stay its own. It takes the runtime's address (as a boot may give a new one):
//! moving its own onto the namespace would cost an nftables commit that removes elements,
//! 7–20 ms here; the address only changes set membership when its policy's mode is not the
//! default.
//!
//! Crash safety: the pre-started sandbox is marked `Destroy` before anything of it changes,
//! so a daemon that dies midway tears it down at its next start (the cold sandbox's volume
//! was only mounted in it) and the cold sandbox is still asleep, whole. One transaction
//! then names the runtime in the woken sandbox's record and removes the pre-started
//! sandbox's rows: before it, the runtime is the pre-started sandbox's; after, the woken
//! one's.

use burrow_api::{EngineKind, SandboxStatus};

use crate::CoreError;
use crate::manager::{Manager, blocking};
use crate::state::{Action, transition};
use crate::store::{Intent, SandboxRecord};
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

impl Manager {
    /// Whether `rec` (cold-sleeping or stopped: no process of it runs) can be started in a
    /// pre-started sandbox's runtime: a container that a create with its config could take
    /// one for.
    fn can_wake_into_prestarted(&self, rec: &SandboxRecord) -> bool {
        rec.engine == EngineKind::Container
            && matches!(rec.status, SandboxStatus::Sleeping | SandboxStatus::Stopped)
            && self.prestart_fits(rec.engine, &rec.config)
    }

    /// Wakes cold-sleeping `rec`, or starts stopped `rec` (its operation lock held), in the
    /// runtime of a pre-started sandbox of its image. `Ok(false)`: none could serve, and
    /// nothing changed (the caller boots it). On `Ok(true)` the store has it running there;
    /// `rec.instance` says where (its status is the caller's to change, as after a boot).
    pub(crate) async fn wake_into_prestarted(&self, rec: &mut SandboxRecord) -> Result<bool> {
        if !self.can_wake_into_prestarted(rec) {
            return Ok(false);
        }
        // The record as it will be, checked before anything changes.
        let action = if rec.status == SandboxStatus::Stopped {
            Action::Start
        } else {
            Action::Wake
        };
        let mut woken = rec.clone();
        transition(&mut woken, action)?;
        let first_use = self.runtime(&rec.id).first_use();
        let Some(donor_id) = self.take_prestarted(rec.engine, &rec.image, first_use) else {
            return Ok(false);
        };
        let t = std::time::Instant::now();
        let lock = self.op_lock(&donor_id);
        let guard = lock.lock().await;
        let Some(mut donor) = self.store.sandbox_by_id(&donor_id)? else {
            return Ok(false);
        };
        if !crate::prestart::is_prestarted(&donor)
            || donor.intent.is_some()
            || donor.status != SandboxStatus::Running
            || !self.can_reroot(&donor)
        {
            drop(guard);
            self.discard_prestarted(&donor_id).await;
            return Ok(false);
        }
        // From here on a crash tears the pre-started sandbox down at the next start.
        donor.intent = Some(Intent::Destroy);
        donor.updated_at = now_rfc3339();
        self.store.update_sandbox(&donor)?;
        let addr = match self.move_into(&donor, rec).await {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(sandbox = %rec.name, donor = %donor_id, error = %crate::error::chain(&e),
                    "moving into a pre-started runtime failed; booting instead");
                drop(guard);
                // Before the caller boots: the donor's teardown drops the set elements of
                // its address, which may be in the woken sandbox's mode by now.
                self.discard_prestarted(&donor_id).await;
                return Ok(false);
            }
        };
        let old_eid = rec.eid().to_owned();
        woken.instance = Some(donor.eid().to_owned()).filter(|eid| *eid != rec.id);
        woken.failure_reason = None;
        woken.updated_at = now_rfc3339();
        crate::fault::point("wake.before_take_over");
        if let Err(e) = self.store.take_over_runtime(&woken, &donor_id, addr.as_deref()) {
            drop(guard);
            self.discard_prestarted(&donor_id).await;
            return Err(e.into());
        }
        rec.instance = woken.instance.clone();
        drop(guard);

        // The donor's in-memory state goes; its agent connection is now this sandbox's.
        let client = self.runtime(&donor_id).agent();
        self.runtimes.remove(&donor_id);
        self.runtime(&rec.id).set_agent(client);
        self.forget_ca(&donor_id);
        // What is left of the donor and of the runtime this sandbox had before: the
        // donor's volume, the old run dir (unless it is the sandbox's own, which keeps its
        // CA and host files).
        let pool = self.pool.clone();
        let donor_volume = self.pool.sandbox_path(&donor_id);
        // Its checkpoints directory, empty (it never had one).
        let donor_checkpoints = self.pool.checkpoints_dir().join(&donor_id);
        let old_run_dir = (old_eid != rec.id && old_eid != donor.eid()).then(|| self.run_dir(&old_eid));
        let first_use = self.runtime(&rec.id).first_use();
        let cleaned = blocking(move || {
            if let Some(dir) = old_run_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            let _ = std::fs::remove_dir(donor_checkpoints);
            crate::reroot::delete_volume_later(&pool, &donor_volume, first_use)
        })
        .await;
        if let Err(e) = cleaned {
            tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "removing a pre-started sandbox's volume");
        }
        self.start_services(rec).await;
        tracing::info!(sandbox = %rec.name, donor = %donor_id, ms = t.elapsed().as_secs_f64() * 1e3, by = action.as_str(), "runs in a pre-started runtime");
        Ok(true)
    }

    /// Puts `rec`'s volume, network policy and host files under pre-started `donor`
    /// (quiesced), gives the runtime `rec`'s hostname and limits, and restarts its agent
    /// there. Returns the address `rec` gets (the donor's; `None` with networking off).
    async fn move_into(&self, donor: &SandboxRecord, rec: &SandboxRecord) -> Result<Option<String>> {
        let t = std::time::Instant::now();
        let mut at = Vec::new();
        let mut mark = |what: &'static str| at.push((what, t.elapsed().as_secs_f64() * 1e3));
        self.make_checkpoints_view(rec)?;
        let addr = self.net_take_over(donor, rec).await?;
        mark("network");
        self.ensure_inside_api(rec)?;
        crate::fault::point("wake.before_replace_root");
        self.quiesce(donor).await?;
        mark("quiesce");
        let rebinds = self.shared_dirs(rec, self.net().is_some());
        self.replace_root_with(donor, self.pool.sandbox_path(&rec.id), rebinds)
            .await?;
        mark("root");
        let engine = self.engine(donor)?;
        let resources = burrow_engine::Resources {
            cpus: rec.config.cpus,
            memory_mb: rec.config.memory_mb,
            pids: rec.config.pids,
        };
        let (eid, run_dir, hostname) = (donor.eid().to_owned(), self.engine_dir(donor), rec.name.clone());
        if !blocking(move || Ok(engine.reassign(&eid, &run_dir, &hostname, &resources)?)).await? {
            return Err(CoreError::Internal("the engine cannot reassign a runtime".into()));
        }
        mark("reassign");
        // The agent re-executes on the new root as `rec`'s hostname; it is still reached
        // through the donor's runtime until the take-over commits.
        let mut as_rec = donor.clone();
        as_rec.name = rec.name.clone();
        self.restart_agent(&as_rec).await?;
        mark("agent");
        tracing::debug!(sandbox = %rec.name, steps = ?at, "moved into a pre-started runtime");
        Ok(addr)
    }
}
