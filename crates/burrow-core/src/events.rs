//! Sandbox events (state changes, checkpoints, sessions), fanned out to subscribers of
//! `GET /v1/sandboxes/{name}/events` (server-sent events). Kept in memory: a bounded history
//! for late subscribers (`since`), and a broadcast channel for live ones.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::time_util::now_rfc3339;

const HISTORY: usize = 2048;

/// One thing that happened to a sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing over the daemon's life; `since` in the API refers to it.
    pub seq: u64,
    pub time: String,
    pub sandbox: String,
    /// e.g. `created`, `started`, `stopped`, `sleeping`, `woke`, `checkpoint`, `restored`.
    pub kind: String,
    pub data: serde_json::Value,
}

#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    history: Mutex<VecDeque<Event>>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
            history: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(1),
        }
    }
}

impl Events {
    pub fn emit(&self, sandbox: &str, kind: &str, data: serde_json::Value) {
        tracing::debug!(sandbox, kind, "event");
        // The number is taken under the history lock: history and the live channel then hold
        // events in number order, so a client resuming after N (`since`) misses nothing that
        // a concurrent writer numbered below a later one.
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let ev = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            time: now_rfc3339(),
            sandbox: sandbox.to_owned(),
            kind: kind.to_owned(),
            data,
        };
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(ev.clone());
        // No subscribers is fine.
        let _ = self.tx.send(ev);
    }

    /// Past events of `sandbox` after `since`, and a receiver for what comes next.
    /// Subscribing under the history lock means no event falls between the two.
    pub fn subscribe(&self, sandbox: &str, since: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let past = h
            .iter()
            .filter(|e| e.sandbox == sandbox && e.seq > since)
            .cloned()
            .collect();
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_live_events_do_not_overlap_or_miss() {
        let ev = Events::default();
        ev.emit("a", "created", serde_json::json!({}));
        ev.emit("b", "created", serde_json::json!({}));
        ev.emit("a", "stopped", serde_json::json!({}));
        let (past, mut rx) = ev.subscribe("a", 0);
        assert_eq!(
            past.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["created", "stopped"]
        );
        let (past, _) = ev.subscribe("a", past[0].seq);
        assert_eq!(past.len(), 1);
        ev.emit("a", "started", serde_json::json!({}));
        assert_eq!(rx.try_recv().unwrap().kind, "started");
    }

    /// Writers on many threads: history and the live channel are in number order with no
    /// gaps, so resuming after any event's number yields exactly the events after it.
    #[test]
    fn concurrent_writers_keep_history_in_order_for_resumption() {
        let ev = std::sync::Arc::new(Events::default());
        let (_, mut rx) = ev.subscribe("s", 0);
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let ev = ev.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        ev.emit("s", "tick", serde_json::json!({"t": t, "i": i}));
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let (past, _) = ev.subscribe("s", 0);
        let seqs: Vec<u64> = past.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=800).collect::<Vec<_>>(), "history in order, no gaps");
        let mut live = Vec::new();
        while let Ok(e) = rx.try_recv() {
            live.push(e.seq);
        }
        assert_eq!(live, seqs, "the live channel in the same order");
        for since in [1, 399, 799] {
            let (after, _) = ev.subscribe("s", since);
            assert_eq!(after.first().map(|e| e.seq), Some(since + 1));
            assert_eq!(after.len() as u64, 800 - since);
        }
    }
}
