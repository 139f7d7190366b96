//! An engine that runs nothing, for in-process tests of everything around a sandbox's
//! runtime: routing, validation, the lifecycle's refusals, and what a failed boot leaves.
//! Built only with the `fake` feature (tests turn it on); never part of the daemon.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use burrow_api::EngineKind;

use crate::{Capabilities, Engine, EngineError, Result, RuntimeStatus, SandboxSpec};

/// Refuses every `start` (with [`FakeEngine::REFUSAL`]); knows no sandbox (`Missing`);
/// `stop` succeeds. Counts the starts it refused.
#[derive(Debug, Default)]
pub struct FakeEngine {
    starts: AtomicUsize,
}

impl FakeEngine {
    /// What a refused start says.
    pub const REFUSAL: &'static str = "the fake engine starts nothing";

    /// How many times `start` was asked.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::Relaxed)
    }
}

impl Engine for FakeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Container
    }

    fn describe(&self) -> String {
        "fake (runs nothing)".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn start(&self, spec: &SandboxSpec) -> Result<()> {
        self.starts.fetch_add(1, Ordering::Relaxed);
        Err(EngineError::Command {
            cmd: format!("start {}", spec.id),
            detail: Self::REFUSAL.to_owned(),
        })
    }

    fn stop(&self, _id: &str, _grace: Duration) -> Result<()> {
        Ok(())
    }

    fn status(&self, _id: &str) -> Result<RuntimeStatus> {
        Ok(RuntimeStatus::Missing)
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
