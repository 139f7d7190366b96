//! The agent channel of a VM: the virtio-serial port `burrow.agent`, one byte stream that
//! carries one HTTP/2 connection at a time.
//!
//! The host (burrowd, through QEMU's chardev socket) may disconnect and reconnect at any
//! time. What the guest sees (Linux `virtio_console`): while the host is disconnected,
//! `read` returns 0 (EOF) once the buffered data is consumed, `poll` reports
//! `POLLIN|POLLHUP` continuously, and `write` blocks (`EAGAIN` when non-blocking). The
//! guest only sees the host's connection *state*, not each connect and hangup: a host that
//! hangs up and reconnects before the guest looks is one long stream to the guest. So:
//! - a connection normally ends at EOF (the host hung up);
//! - one that ends otherwise (an HTTP/2 protocol error: typically the first bytes of a host
//!   that reconnected too early) leaves the stream mid-conversation: the guest discards
//!   what the host sends until it hangs up (the host's handshake times out);
//! - after every connection the guest closes and reopens the port: the driver drops what is
//!   left in the guest's buffers, QEMU holds what the host sends while the port is closed,
//!   and reports the reopening to the host as the QMP event `VSERPORT_CHANGE` with
//!   `open: true` (the device needs an `id`). That event is the host's signal that the next
//!   connection will be served: a host whose handshake failed waits for it, then
//!   reconnects (QEMU rate-limits the event to one a second per port);
//! - waiting for the host uses an edge-triggered epoll, woken by the driver on every host
//!   open/close and on data, so there is no spinning on the level-triggered `POLLHUP`; each
//!   connection registers the fd with tokio afresh (tokio's "closed" readiness is sticky).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::stat::Mode;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::sync::oneshot;
use tokio_stream::Stream;

/// Opens the port (non-blocking, once for the agent's lifetime).
pub fn open_port(path: &Path) -> io::Result<OwnedFd> {
    open(
        path,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// Whether the host end of the port is open (no `POLLHUP`).
fn host_connected(fd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO)?;
    let revents = fds[0].revents().unwrap_or(PollFlags::empty());
    Ok(!revents.contains(PollFlags::POLLHUP))
}

/// How the previous use of the port ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Freshly opened: nothing to clean up.
    Fresh,
    /// The connection ended at the host's hangup (EOF).
    AtHangup,
    /// The connection ended while the host was still attached (a protocol error, e.g. the
    /// first bytes of a host that reconnected before the guest saw it hang up).
    HostAttached,
}

/// Readies the port for the next connection and waits for the host:
/// - after a connection that ended with the host attached, the byte stream is
///   mid-conversation (the host still sends frames of its HTTP/2 connection) and a new
///   connection would read them as garbage: discard what the host sends until it hangs
///   up (after the guest's GOAWAY, or its own handshake timeout);
/// - after any connection, close and reopen the port: the driver drops what is left in the
///   guest's buffers, and QEMU reports the reopening to the host (QMP `VSERPORT_CHANGE`,
///   `open: true`), which is the host's signal that a new connection will be served
///   (while the port is closed QEMU holds what the host sends, it loses nothing);
/// - then wait for the host to be attached.
///
/// The driver wakes the port's wait queue whenever the host opens or closes its end or
/// data arrives; an edge-triggered epoll sleeps until then (`poll` would not: it reports
/// `POLLHUP` continuously while the host is away).
fn settle(mut fd: OwnedFd, ended: Ended, path: &Path) -> io::Result<OwnedFd> {
    if ended == Ended::HostAttached {
        drain_until_hangup(&fd)?;
    }
    if ended != Ended::Fresh {
        drop(fd);
        fd = open_port(path)?;
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&fd, EpollEvent::new(EPOLL_INTEREST, 0))?;
    let mut events = [EpollEvent::empty()];
    // Registered before the first check, so a connection between check and wait is an event.
    if !host_connected(&fd)? {
        log_line!("burrow-agent: guest: waiting for the host");
    }
    while !host_connected(&fd)? {
        match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

const EPOLL_INTEREST: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLOUT)
    .union(EpollFlags::EPOLLET);

/// Reads and discards until the host hangs up (read returns 0).
fn drain_until_hangup(fd: &OwnedFd) -> io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(fd, EpollEvent::new(EPOLL_INTEREST, 0))?;
    let mut events = [EpollEvent::empty()];
    let mut buf = vec![0u8; 64 * 1024];
    let mut discarded = 0usize;
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => discarded += n,
            Err(nix::Error::EAGAIN) => match epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            },
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    log_line!(
        "burrow-agent: guest: the connection ended with the host attached; discarded {discarded} bytes until it hung up"
    );
    Ok(())
}

enum State {
    /// The fd is ours, and how its last connection ended; next, settle the port and wait
    /// for the host.
    Idle(Option<(OwnedFd, Ended)>),
    /// A thread waits for the host to connect.
    Waiting(oneshot::Receiver<io::Result<OwnedFd>>),
    /// A connection is being served; its fd comes back when it is dropped.
    Serving(oneshot::Receiver<(OwnedFd, Ended)>),
    Failed,
}

/// The connections on the port, one at a time, for tonic's `serve_with_incoming`.
pub struct PortIncoming {
    state: State,
    /// The port's device, to reopen it after each connection.
    path: PathBuf,
}

impl PortIncoming {
    pub fn new(fd: OwnedFd, path: &Path) -> Self {
        Self {
            state: State::Idle(Some((fd, Ended::Fresh))),
            path: path.to_owned(),
        }
    }
}

impl Stream for PortIncoming {
    type Item = io::Result<PortConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.state {
                State::Idle(idle) => {
                    let (fd, ended) = idle.take().expect("an idle port holds its fd");
                    let path = self.path.clone();
                    let (tx, rx) = oneshot::channel();
                    // A plain thread, not spawn_blocking: it may wait for the host forever,
                    // and the runtime must not wait for it when the guest powers off.
                    let spawned = std::thread::Builder::new()
                        .name("port-wait".into())
                        .spawn(move || {
                            let _ = tx.send(settle(fd, ended, &path));
                        });
                    if let Err(e) = spawned {
                        self.state = State::Failed;
                        return Poll::Ready(Some(Err(e)));
                    }
                    self.state = State::Waiting(rx);
                }
                State::Waiting(rx) => {
                    let waited = ready!(Pin::new(rx).poll(cx));
                    match waited {
                        Ok(Ok(fd)) => {
                            let (back_tx, back_rx) = oneshot::channel();
                            match crate::sys::async_fd(fd, Interest::READABLE | Interest::WRITABLE) {
                                Ok(afd) => {
                                    log_line!("burrow-agent: guest: host attached");
                                    self.state = State::Serving(back_rx);
                                    return Poll::Ready(Some(Ok(PortConnection {
                                        fd: Some(afd),
                                        back: Some(back_tx),
                                        saw_eof: false,
                                    })));
                                }
                                Err(e) => {
                                    log_line!("burrow-agent: cannot register the agent port: {e}");
                                    self.state = State::Failed;
                                    return Poll::Ready(None);
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            log_line!("burrow-agent: waiting for the host on the agent port: {e}");
                            self.state = State::Failed;
                            return Poll::Ready(None);
                        }
                        Err(_) => {
                            self.state = State::Failed;
                            return Poll::Ready(None);
                        }
                    }
                }
                State::Serving(rx) => match ready!(Pin::new(rx).poll(cx)) {
                    Ok((fd, ended)) => {
                        log_line!("burrow-agent: guest: host connection ended");
                        self.state = State::Idle(Some((fd, ended)));
                    }
                    Err(_) => {
                        self.state = State::Failed;
                        return Poll::Ready(None);
                    }
                },
                State::Failed => return Poll::Ready(None),
            }
        }
    }
}

/// One HTTP/2 connection's view of the port. Dropping it hands the fd back to
/// [`PortIncoming`].
pub struct PortConnection {
    fd: Option<AsyncFd<OwnedFd>>,
    back: Option<oneshot::Sender<(OwnedFd, Ended)>>,
    /// Whether the host hung up (EOF was read): then the stream holds nothing of this
    /// connection any more.
    saw_eof: bool,
}

impl PortConnection {
    fn fd(&self) -> &AsyncFd<OwnedFd> {
        self.fd.as_ref().expect("present until dropped")
    }
}

impl Drop for PortConnection {
    fn drop(&mut self) {
        if let (Some(fd), Some(back)) = (self.fd.take(), self.back.take()) {
            let ended = if self.saw_eof {
                Ended::AtHangup
            } else {
                Ended::HostAttached
            };
            let _ = back.send((fd.into_inner(), ended));
        }
    }
}

impl tonic::transport::server::Connected for PortConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for PortConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd().poll_read_ready(cx))?;
            let hung_up = guard.ready().is_read_closed();
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    // n == 0: the host closed its end (EOF ends this connection).
                    buf.advance(n);
                    if n == 0 {
                        self.saw_eof = true;
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // The host hung up since this connection began (tokio keeps that readiness
                // for good) and is back already: this connection is over, end it at EOF.
                Err(_would_block) if hung_up => {
                    self.saw_eof = true;
                    return Poll::Ready(Ok(()));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PortConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd().poll_write_ready(cx))?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                // Writes block while the host is disconnected, and once tokio saw the hangup
                // it reports the fd writable for good: retrying would spin. The connection
                // is over.
                Err(_would_block) if hung_up => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
