//! The few things done in-process rather than through `ip`: entering a network namespace on a
//! short-lived thread, reading interface addresses, sysctls and the netns directory.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;

use nix::fcntl::{Flock, FlockArg};
use nix::sched::CloneFlags;

use crate::names::NETNS_DIR;
use crate::{NetError, Result};

/// Runs `f` on a new thread that has joined the network namespace at `netns` (for example a
/// path from [`crate::HostNet::netns_path`]); the calling thread is never moved. Sockets `f`
/// creates stay in that namespace after it returns, so this is how to bind a listener or
/// connect a client "inside" a sandbox. A panic in `f` is resumed on the caller.
pub fn in_netns<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send,
    T: Send,
{
    let ns = File::open(netns)?;
    thread::scope(|s| {
        let worker = s.spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
            f()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The IPv4 addresses and prefix lengths on `ifname` in the calling thread's namespace.
pub(crate) fn ipv4_addrs(ifname: &str) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    Ok(all_ipv4_addrs()?
        .into_iter()
        .filter(|(name, _, _)| name == ifname)
        .map(|(_, addr, prefix)| (addr, prefix))
        .collect())
}

/// Every IPv4 address in the calling thread's namespace: (interface, address, prefix length).
pub(crate) fn all_ipv4_addrs() -> io::Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let addr = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip());
        let mask = ifa
            .netmask
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| a.ip());
        if let (Some(addr), Some(mask)) = (addr, mask) {
            out.push((ifa.interface_name, addr, u32::from(mask).count_ones() as u8));
        }
    }
    Ok(out)
}

/// Writes a sysctl under `/proc/sys` of the calling thread's network namespace. `Ok(false)`
/// if it does not exist (IPv6 compiled out or disabled at boot), which callers may accept.
pub(crate) fn write_sysctl(path: &str, value: &str) -> io::Result<bool> {
    match fs::write(Path::new("/proc/sys").join(path), value) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

pub(crate) fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Host interfaces whose interface group is `group`.
pub(crate) fn interfaces_in_group(group: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("netdev_group"))
                .is_ok_and(|g| g.trim().parse::<u32>() == Ok(group))
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Names in `/run/netns` starting with `prefix`.
pub(crate) fn netns_names(prefix: &str) -> Result<Vec<String>> {
    let dir = match fs::read_dir(NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetError::io(format!("reading {NETNS_DIR}"))(e)),
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// `ip netns add <name>`, in-process: a new network namespace kept alive by a bind mount at
/// `/run/netns/<name>`, made by a short-lived thread that unshares into it (the calling
/// thread never moves). Fails if the name exists.
pub(crate) fn netns_add(name: &str) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new(NETNS_DIR).join(name);
    fs::create_dir_all(NETNS_DIR)?;
    drop(
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o0)
            .open(&path)?,
    );
    let made = thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    if made.is_err() {
        let _ = fs::remove_file(&path);
    }
    made.map_err(|e| io::Error::new(e.kind(), format!("adding namespace {name}: {e}")))
}

/// `ip netns del <name>`, in-process: the bind mount detached and its file removed (the
/// namespace goes once nothing else holds it). Nothing to do if it does not exist.
pub(crate) fn netns_del(name: &str) -> io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("unmounting {}: {e}", path.display()),
            ));
        }
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `/run/netns` is already a mount point. `ip netns add` makes it one the first time,
/// racily: two first calls at once can stack two mounts and hide one namespace's bind mount.
pub(crate) fn netns_dir_is_mounted() -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(NetError::io("reading mountinfo"))?;
    Ok(info.lines().any(|l| l.split(' ').nth(4) == Some(NETNS_DIR)))
}

/// A host-wide lock serialising the first `ip netns add` among burrow processes.
pub(crate) fn lock_netns_setup() -> Result<Flock<File>> {
    let path = "/run/burrow-net.lock";
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(NetError::io(format!("opening {path}")))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| NetError::io(format!("locking {path}"))(e.into()))
}
