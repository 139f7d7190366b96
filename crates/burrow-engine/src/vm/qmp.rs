//! QMP, QEMU's control protocol, over the VM's unix socket, through the `qapi` crate's
//! typed commands. QEMU serves one QMP client at a time: every operation connects, does
//! its work and disconnects, under the engine's per-VM lock.

use std::io::BufReader;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qapi::qmp;

use crate::{EngineError, Result};

/// Bound of one QMP command (QEMU answers at once unless it is wedged).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

type Session = qapi::Qmp<qapi::Stream<BufReader<UnixStream>, UnixStream>>;

/// One QMP connection. Keeps one buffered reader for its whole life: QEMU interleaves
/// events with replies, and a reader dropped mid-line would lose the rest of one.
pub struct Qmp {
    session: Session,
}

fn qmp_err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Command {
        cmd: format!("QMP {what}"),
        detail: e.to_string(),
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path` and completes the capabilities handshake,
    /// retrying a refused connection until `within` has passed (QEMU creates the socket
    /// while it starts).
    pub fn connect(path: &Path, within: Duration) -> Result<Self> {
        let deadline = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(qmp_err(&format!("connect {}", path.display()), e)),
            }
        };
        stream
            .set_read_timeout(Some(COMMAND_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(COMMAND_TIMEOUT)))
            .map_err(|e| qmp_err("socket", e))?;
        let reader = stream.try_clone().map_err(|e| qmp_err("socket", e))?;
        let mut session = qapi::Qmp::new(qapi::Stream::new(BufReader::new(reader), stream));
        session.handshake().map_err(|e| qmp_err("handshake", e))?;
        Ok(Self { session })
    }

    /// Runs one command; QEMU's error (class and description) becomes the error's detail.
    pub fn run<C: qapi::Command>(&mut self, what: &str, command: &C) -> Result<C::Ok> {
        let r = self.session.execute(command).map_err(|e| qmp_err(what, e));
        // Events are not used: keep them from piling up.
        self.session.events().for_each(drop);
        r
    }

    /// Hands QEMU the file descriptor `fd` under `name` (`getfd`, the fd travelling as
    /// SCM_RIGHTS with the command), for a `fd:name` migration URI.
    pub fn send_fd(&mut self, name: &str, fd: OwnedFd) -> Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let command = serde_json::json!({"execute": "getfd", "arguments": {"fdname": name}});
        let line = format!("{command}\n");
        let sock = self.session.inner().get_ref_write().as_raw_fd();
        let fds = [fd.as_raw_fd()];
        let iov = [std::io::IoSlice::new(line.as_bytes())];
        let sent = sendmsg::<()>(
            sock,
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| qmp_err("getfd", e))?;
        if sent != line.len() {
            return Err(qmp_err("getfd", "short write"));
        }
        self.session
            .read_response::<qmp::getfd>()
            .map_err(|e| qmp_err("getfd", e))?;
        self.session.events().for_each(drop);
        Ok(())
    }

    /// Stops the guest's CPUs (memory and devices kept).
    pub fn stop(&mut self) -> Result<()> {
        self.run("stop", &qmp::stop {}).map(drop)
    }

    /// Lets the guest's CPUs run again.
    pub fn cont(&mut self) -> Result<()> {
        self.run("cont", &qmp::cont {}).map(drop)
    }

    pub fn running(&mut self) -> Result<bool> {
        Ok(self.run("query-status", &qmp::query_status {})?.running)
    }

    /// Tells QEMU that the image behind block device `device` is now `bytes` big: the
    /// guest's virtio-blk device grows (the guest kernel is told by a config interrupt).
    pub fn block_resize(&mut self, device: &str, bytes: u64) -> Result<()> {
        let size = i64::try_from(bytes).map_err(|_| qmp_err("block_resize", "size out of range"))?;
        self.run(
            "block_resize",
            &qmp::block_resize {
                device: Some(device.to_owned()),
                node_name: None,
                size,
            },
        )
        .map(drop)
    }

    /// Asks QEMU to exit now (the guest gets no say).
    pub fn quit(&mut self) -> Result<()> {
        self.run("quit", &qmp::quit {}).map(drop)
    }

    /// Guest RAM lives in a shared file: a migration stream then holds device state only.
    pub fn ignore_shared_memory(&mut self) -> Result<()> {
        self.run(
            "migrate-set-capabilities",
            &qmp::migrate_set_capabilities {
                capabilities: vec![qmp::MigrationCapabilityStatus {
                    capability: qmp::MigrationCapability::x_ignore_shared,
                    state: true,
                }],
            },
        )
        .map(drop)
    }

    /// Writes the VM's device state to `uri` and waits (bounded) until it is complete.
    pub fn save_state(&mut self, uri: String, within: Duration) -> Result<()> {
        self.run(
            "migrate",
            &qmp::migrate {
                uri: Some(uri),
                channels: None,
                detach: None,
                resume: None,
            },
        )?;
        self.wait_migration("saving the VM's state", within)
    }

    /// Loads device state from `uri` into a QEMU started with `-incoming defer`, and waits
    /// (bounded) until it is loaded.
    pub fn load_state(&mut self, uri: String, within: Duration) -> Result<()> {
        self.run(
            "migrate-incoming",
            &qmp::migrate_incoming {
                uri: Some(uri),
                channels: None,
                exit_on_error: None,
            },
        )?;
        self.wait_migration("loading the VM's state", within)
    }

    fn wait_migration(&mut self, what: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let info = self.run("query-migrate", &qmp::query_migrate {})?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(qmp::MigrationStatus::failed | qmp::MigrationStatus::cancelled) => {
                    return Err(qmp_err(
                        what,
                        info.error_desc.unwrap_or_else(|| "migration failed".into()),
                    ));
                }
                _ if Instant::now() >= deadline => {
                    return Err(qmp_err(what, format!("not done within {within:?}")));
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Waits (up to `within`) for an event named `name` whose `data` satisfies `matches`,
    /// reading the events QEMU sends from now on. Returns whether it came.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
        within: Duration,
    ) -> Result<bool> {
        use std::io::BufRead;
        let deadline = Instant::now() + within;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(false);
            }
            let sock = self.session.inner().get_ref_write();
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| qmp_err("socket", e))?;
            let mut line = String::new();
            match self.session.inner_mut().read_line(&mut line) {
                Ok(0) => break Err(qmp_err("events", "QEMU closed the connection")),
                Ok(_) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v["event"] == name && matches(&v["data"]) {
                        break Ok(true);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(false);
                }
                Err(e) => break Err(qmp_err("events", e)),
            }
        };
        let sock = self.session.inner().get_ref_write();
        let _ = sock.set_read_timeout(Some(COMMAND_TIMEOUT));
        result
    }

    /// QEMU's version as `major.minor.micro`.
    pub fn version(&mut self) -> Result<String> {
        let v = self.run("query-version", &qmp::query_version {})?;
        Ok(format!("{}.{}.{}", v.qemu.major, v.qemu.minor, v.qemu.micro))
    }
}
