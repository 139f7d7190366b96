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

/// A pause point for tests: with `BURROW_PAUSE=<point>` and `BURROW_PAUSE_FILE=<path>`, the
/// operation reaching `point` creates the file and waits until the test removes it, so a
/// test can act while the operation is provably in progress (no timing guesses).
pub async fn pause(name: &str) {
    static PAUSE: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
    let p = PAUSE.get_or_init(|| {
        let point = std::env::var("BURROW_PAUSE").ok().filter(|s| !s.is_empty())?;
        let file = std::env::var_os("BURROW_PAUSE_FILE")?;
        Some((point, file.into()))
    });
    let Some((point, file)) = p else { return };
    if point != name {
        return;
    }
    if std::fs::write(file, name).is_err() {
        return;
    }
    while file.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// For tests: `BURROW_TEST_FIRST_USE_WAIT_MS=<ms>` sets how long the background work of a
/// restore or a fork waits for the sandbox's first command (see
/// `runtime::after_first_use`), so a test can look before that work runs without racing a
/// timer.
pub fn first_use_wait() -> Option<std::time::Duration> {
    static WAIT: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *WAIT.get_or_init(|| {
        std::env::var("BURROW_TEST_FIRST_USE_WAIT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    })
}
