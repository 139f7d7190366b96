//! The local terminal: raw mode (always restored, panics included), its size, and stdin reading.

use std::io::{IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Mutex, Once};

use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;

/// Settings to put back; `Some` while the terminal is raw.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Raw mode on stdin for as long as this lives.
pub struct RawMode(());

impl RawMode {
    /// Raw mode, or a warning on stderr and `None` when the terminal refuses (the session
    /// still works, cooked).
    pub fn enable_or_warn() -> Option<Self> {
        match Self::enable() {
            Ok(r) => Some(r),
            Err(e) => {
                eprint_line(&format!("warning: cannot switch the terminal to raw mode: {e}"));
                None
            }
        }
    }

    pub fn enable() -> nix::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            // A panic must not leave the user's terminal raw: restore before the message prints.
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                prev(info);
            }));
        });
        let stdin = std::io::stdin();
        let orig = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(orig);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back if raw mode is on; idempotent.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &t);
    }
}

pub fn is_raw() -> bool {
    SAVED.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// Prints a message to stderr, with `\r\n` while the terminal is raw.
pub fn eprint_line(msg: &str) {
    if is_raw() {
        eprint!("{msg}\r\n");
    } else {
        eprintln!("{msg}");
    }
}

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Size (cols, rows) of the terminal on stdin, else stdout, else stderr.
pub fn size() -> Option<(u16, u16)> {
    fd_size(std::io::stdin().as_fd())
        .or_else(|| fd_size(std::io::stdout().as_fd()))
        .or_else(|| fd_size(std::io::stderr().as_fd()))
}

fn fd_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes exactly one `winsize` through the pointer, which points to a live
    // local of that type; `fd` is a valid descriptor for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Reads stdin on a plain thread (so a blocked read never holds up the runtime) and hands the
/// chunks over a channel; the channel closes at EOF.
pub fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
        .expect("spawn stdin thread");
    rx
}
