//! The lifecycle state machine. Every status change goes through `valid_transition`, which
//! returns a typed error for an illegal one.

use burrow_api::SandboxStatus::{self, *};

use crate::CoreError;

/// What a caller asks a sandbox to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Sleep,
    Wake,
    Exec,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (status, action) pair against a table written out by hand: what each ends in,
    /// or `-` for a refusal (409 with the action and the status named).
    #[test]
    fn the_whole_table() {
        const ACTIONS: [Action; 6] = [
            Action::Start,
            Action::Stop,
            Action::Restart,
            Action::Sleep,
            Action::Wake,
            Action::Exec,
        ];
        //            start       stop       restart    sleep       wake       exec
        let table: [(SandboxStatus, [&str; 6]); 6] = [
            (Creating, ["-", "-", "-", "-", "-", "-"]),
            (
                Running,
                ["running", "stopped", "running", "sleeping", "running", "running"],
            ),
            (
                Sleeping,
                ["running", "stopped", "running", "sleeping", "running", "running"],
            ),
            (Stopped, ["running", "stopped", "running", "-", "-", "-"]),
            (Failed, ["running", "stopped", "running", "-", "-", "-"]),
            (Destroyed, ["-", "-", "-", "-", "-", "-"]),
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
        assert_eq!(pairs, 36, "every status times every action");
        // A new status or action must come with its row or column: these stop compiling.
        let _ = |s: SandboxStatus| match s {
            Creating | Running | Sleeping | Stopped | Failed | Destroyed => 0,
        };
        let _ = |a: Action| match a {
            Action::Start | Action::Stop | Action::Restart => 0,
            Action::Sleep | Action::Wake | Action::Exec => 0,
        };
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
