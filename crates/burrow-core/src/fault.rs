//! Crash points for tests: with `BURROW_FAULT=<point>` in its environment the daemon aborts
//! (no cleanup, like `kill -9`) when it reaches that point, so crash-safety tests can stop
//! it at an exact step instead of racing a timer. Unset, this costs one env lookup.

use std::sync::OnceLock;

pub fn point(name: &str) {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    let f = FAULT.get_or_init(|| std::env::var("BURROW_FAULT").ok().filter(|s| !s.is_empty()));
    if f.as_deref() == Some(name) {
        eprintln!("BURROW_FAULT: aborting at {name}");
        std::process::abort();
    }
}
