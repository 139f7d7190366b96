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
