//! The lifecycle state machine. Every status change goes through [`transition`] (which asks
//! [`valid_transition`]); nothing else writes a sandbox's status, so an illegal change is a
//! typed error, never a silent write.

use burrow_api::SandboxStatus::{self, *};

use crate::CoreError;
use crate::store::SandboxRecord;

/// What a caller asks a sandbox to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Sleep,
    Wake,
    Exec,
    /// burrowd's own: provisioning finished (`creating` → `running`).
    Created,
    /// burrowd's own: booting failed or the agent died; the record says why.
    Fail,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Sleep => "sleep",
            Self::Wake => "wake",
            Self::Exec => "exec in",
            Self::Created => "finish creating",
            Self::Fail => "mark failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "start" => Self::Start,
            "stop" => Self::Stop,
            "restart" => Self::Restart,
            "sleep" => Self::Sleep,
            "wake" => Self::Wake,
            _ => return None,
        })
    }
}

/// The status a sandbox in `from` ends in after `action`, or why it cannot.
///
/// Idempotent requests (start a running sandbox, stop a stopped one, wake a running one)
/// are allowed and change nothing, as users of `docker start` expect. `failed` sandboxes
/// can be started again (a retry) or stopped.
pub fn valid_transition(name: &str, from: SandboxStatus, action: Action) -> Result<SandboxStatus, CoreError> {
    let to = match (from, action) {
        (Running | Stopped | Failed, Action::Start) => Running,
        (Sleeping, Action::Start) => Running,
        (Running | Sleeping | Stopped | Failed, Action::Stop) => Stopped,
        (Running | Sleeping | Stopped | Failed, Action::Restart) => Running,
        (Running | Sleeping, Action::Sleep) => Sleeping,
        (Running | Sleeping, Action::Wake) => Running,
        (Running | Sleeping, Action::Exec) => Running,
        (Creating, Action::Created) => Running,
        (Creating | Running | Sleeping | Stopped | Failed, Action::Fail) => Failed,
        _ => {
            return Err(CoreError::IllegalTransition {
                name: name.to_owned(),
                action: action.as_str(),
                from,
            });
        }
    };
    Ok(to)
}

/// Moves `rec` to the status `action` leads to, or refuses with the typed error. The only
/// place a sandbox's status is written; the caller stores the record.
pub fn transition(rec: &mut SandboxRecord, action: Action) -> Result<SandboxStatus, CoreError> {
    let to = valid_transition(&rec.name, rec.status, action)?;
    rec.status = to;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (status, action) pair against a table written out by hand: what each ends in,
    /// or `-` for a refusal (409 with the action and the status named).
    #[test]
    fn the_whole_table() {
        const ACTIONS: [Action; 8] = [
            Action::Start,
            Action::Stop,
            Action::Restart,
            Action::Sleep,
            Action::Wake,
            Action::Exec,
            Action::Created,
            Action::Fail,
        ];
        let (r, s, p, f) = ("running", "stopped", "sleeping", "failed");
        //             start stop restart sleep wake exec created fail
        let table: [(SandboxStatus, [&str; 8]); 6] = [
            (Creating, ["-", "-", "-", "-", "-", "-", r, f]),
            (Running, [r, s, r, p, r, r, "-", f]),
            (Sleeping, [r, s, r, p, r, r, "-", f]),
            (Stopped, [r, s, r, "-", "-", "-", "-", f]),
            (Failed, [r, s, r, "-", "-", "-", "-", f]),
            (Destroyed, ["-", "-", "-", "-", "-", "-", "-", "-"]),
        ];
        let mut pairs = 0;
        for (from, row) in table {
            for (action, want) in ACTIONS.into_iter().zip(row) {
                pairs += 1;
                match valid_transition("sb", from, action) {
                    Ok(to) => assert_eq!(to.as_str(), want, "{from:?} {action:?}"),
                    Err(e) => {
                        assert_eq!(want, "-", "{from:?} {action:?} refused: {e}");
                        assert_eq!(e.kind(), crate::ErrorKind::Conflict);
                        assert_eq!(e.code(), "illegal_transition");
                        assert_eq!(
                            e.to_string(),
                            format!("cannot {} sandbox 'sb': it is {}", action.as_str(), from.as_str())
                        );
                    }
                }
            }
        }
        assert_eq!(pairs, 48, "every status times every action");
        // A new status or action must come with its row or column: these stop compiling.
        let _ = |s: SandboxStatus| match s {
            Creating | Running | Sleeping | Stopped | Failed | Destroyed => 0,
        };
        let _ = |a: Action| match a {
            Action::Start | Action::Stop | Action::Restart => 0,
            Action::Sleep | Action::Wake | Action::Exec => 0,
            Action::Created | Action::Fail => 0,
        };
    }

    /// No module writes a status by hand: `transition` is the only writer (a grep of the
    /// sources, so a new direct write fails here rather than slipping past review).
    #[test]
    fn only_transition_writes_a_status() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("state.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                assert!(
                    !line.contains(".status = "),
                    "{}:{}: a status written outside state::transition: {line}",
                    path.display(),
                    n + 1
                );
            }
            checked += 1;
        }
        assert!(checked > 10, "read the crate's modules (found {checked})");
        // Control: the probe finds the write this module does.
        assert!(include_str!("state.rs").contains(&[".status", " = to;"].concat()));
    }

    #[test]
    fn legal_and_illegal() {
        assert_eq!(valid_transition("a", Stopped, Action::Start).unwrap(), Running);
        assert_eq!(valid_transition("a", Running, Action::Sleep).unwrap(), Sleeping);
        assert_eq!(valid_transition("a", Sleeping, Action::Exec).unwrap(), Running);
        for (from, action) in [
            (Stopped, Action::Sleep),
            (Stopped, Action::Wake),
            (Stopped, Action::Exec),
            (Creating, Action::Start),
            (Creating, Action::Stop),
            (Failed, Action::Exec),
            (Destroyed, Action::Start),
        ] {
            let err = valid_transition("a", from, action).unwrap_err();
            assert!(
                matches!(err, CoreError::IllegalTransition { .. }),
                "{from:?} {action:?}"
            );
            assert_eq!(err.kind(), crate::ErrorKind::Conflict);
        }
    }
}

/// Warm (frozen, memory kept), memory (a VM's memory and devices saved to its volume, no
/// process left) or cold (stopped, disk kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    Warm,
    Memory,
    Cold,
}

impl SleepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Memory => "memory",
            Self::Cold => "cold",
        }
    }
}
