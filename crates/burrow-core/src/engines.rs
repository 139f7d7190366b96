//! The engines this daemon runs sandboxes with, keyed by kind. Each sandbox uses the engine
//! its record names; an engine that could not start on this host is kept with the reason,
//! so asking for it says why instead of "unknown".

use std::collections::BTreeMap;
use std::sync::Arc;

use burrow_api::{EngineInfo, EngineKind};
use burrow_engine::Engine;

use crate::CoreError;

#[derive(Debug, Clone)]
pub struct Engines {
    ready: BTreeMap<EngineKind, Arc<dyn Engine>>,
    /// Engines that cannot run here, with why and what to do about it.
    absent: BTreeMap<EngineKind, String>,
    default: EngineKind,
}

impl Engines {
    /// An empty set whose default is `default` (added later, or the first one added).
    pub fn new(default: EngineKind) -> Self {
        Self {
            ready: BTreeMap::new(),
            absent: BTreeMap::new(),
            default,
        }
    }

    pub fn with(mut self, engine: Arc<dyn Engine>) -> Self {
        self.absent.remove(&engine.kind());
        self.ready.insert(engine.kind(), engine);
        self
    }

    pub fn without(mut self, kind: EngineKind, why: impl Into<String>) -> Self {
        self.ready.remove(&kind);
        self.absent.insert(kind, why.into());
        self
    }

    /// The engine new sandboxes get when they name none: the configured default where it
    /// runs, else the container engine.
    pub fn default_kind(&self) -> EngineKind {
        if self.ready.contains_key(&self.default) {
            self.default
        } else {
            EngineKind::Container
        }
    }

    /// The engine of `kind`, or 503 with why it cannot run here.
    pub fn get(&self, kind: EngineKind) -> Result<Arc<dyn Engine>, CoreError> {
        if let Some(e) = self.ready.get(&kind) {
            return Ok(e.clone());
        }
        let why = self
            .absent
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| "it is not configured".to_owned());
        Err(CoreError::Unavailable(format!(
            "engine '{}' is not available on this host: {why}",
            kind.as_str()
        )))
    }

    /// Every engine that runs here.
    pub fn ready(&self) -> impl Iterator<Item = &Arc<dyn Engine>> {
        self.ready.values()
    }

    /// What `/v1/version` says about each engine.
    pub fn info(&self) -> Vec<EngineInfo> {
        [EngineKind::Container, EngineKind::Vm]
            .into_iter()
            .map(|kind| match self.ready.get(&kind) {
                Some(e) => EngineInfo {
                    kind,
                    available: true,
                    detail: Some(e.describe()),
                },
                None => EngineInfo {
                    kind,
                    available: false,
                    detail: Some(
                        self.absent
                            .get(&kind)
                            .cloned()
                            .unwrap_or_else(|| "not configured".into()),
                    ),
                },
            })
            .collect()
    }
}
