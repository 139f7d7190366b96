//! The agent as a VM's init (the vm engine's guest side).
//!
//! The initramfs holds only `/init` (this binary) and `/lib/modules` (`*.ko` plus
//! `load.order`). When the agent is PID 1 without a mounted `/proc` (never the case in a
//! container, where runc mounts one) it mounts `/proc`, and when the kernel command line
//! holds `burrow.guest=1` it boots the guest: mounts `/dev`, `/proc`, `/sys`, loads the
//! modules, mounts the root disk and switches into it, sets up what a container sandbox has
//! (`/dev/pts`, `/dev/shm`, `/dev/mqueue`, cgroup2, hostname, network), and then serves the
//! agent protocol on the virtio-serial port `burrow.agent` (see [`port`]).
//!
//! Boot parameters (kernel command line): `burrow.guest=1` (required),
//! `burrow.hostname=NAME`, `burrow.ip=A.B.C.D/P`, `burrow.gw=A.B.C.D`, `burrow.dns=A.B.C.D`,
//! `burrow.pids=N` (the process limit of what the agent starts),
//! `burrow.root=/dev/vda` (the default), `burrow.rootfstype=ext4` (the default).
//!
//! Every step is logged with its timing to stderr (the serial console). A boot that fails
//! logs why and powers the VM off: there is nothing else an init can usefully do.

pub mod port;

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

/// The name QEMU gives the agent's virtio-serial port (`virtserialport,name=...`).
pub const PORT_NAME: &str = "burrow.agent";
const MODULES_DIR: &str = "/lib/modules";
const NEW_ROOT: &str = "/newroot";
/// How long devices (the root disk, the agent port) get to appear after their driver loads.
const DEVICE_WAIT: Duration = Duration::from_secs(10);
const DEVICE_POLL: Duration = Duration::from_millis(2);

/// Why the guest could not boot.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("bad kernel command line parameter {0}")]
    Param(String),
    #[error("{0} did not appear within {DEVICE_WAIT:?}")]
    NoDevice(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> GuestError {
    let what = what.into();
    move |e| GuestError::Io {
        what,
        source: io::Error::from(e),
    }
}

/// What the host asks of the guest on the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestConfig {
    pub hostname: Option<String>,
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Option<Ipv4Addr>,
    pub root: String,
    pub root_fstype: String,
    /// The sandbox's process limit (`pids.max` of the cgroup its processes run in).
    pub pids: Option<u64>,
}

impl GuestConfig {
    /// Parses the `burrow.*` parameters of a kernel command line; `None` without
    /// `burrow.guest=1`.
    pub fn parse(cmdline: &str) -> Result<Option<Self>, GuestError> {
        let mut guest = false;
        let mut cfg = GuestConfig {
            root: "/dev/vda".into(),
            root_fstype: "ext4".into(),
            ..Default::default()
        };
        let bad = |p: &str| GuestError::Param(p.to_owned());
        for param in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            match key {
                "burrow.guest" => guest = value == "1",
                "burrow.hostname" => cfg.hostname = Some(value.to_owned()),
                "burrow.ip" => {
                    let (a, p) = value.split_once('/').ok_or_else(|| bad(param))?;
                    let prefix = p.parse::<u8>().ok().filter(|p| *p <= 32);
                    cfg.ip = Some((
                        a.parse().map_err(|_| bad(param))?,
                        prefix.ok_or_else(|| bad(param))?,
                    ));
                }
                "burrow.gw" => cfg.gateway = Some(value.parse().map_err(|_| bad(param))?),
                "burrow.dns" => cfg.dns = Some(value.parse().map_err(|_| bad(param))?),
                "burrow.root" => cfg.root = value.to_owned(),
                "burrow.rootfstype" => cfg.root_fstype = value.to_owned(),
                "burrow.pids" => cfg.pids = Some(value.parse().map_err(|_| bad(param))?),
                _ => {}
            }
        }
        Ok(guest.then_some(cfg))
    }
}

/// Whether this process is a VM's init that should boot the guest, and if so the
/// configuration. Only looks when we are PID 1 and `/proc` is not mounted yet (a container's
/// init always finds it mounted); mounts `/proc` to read the kernel command line.
pub fn detect() -> Option<Result<GuestConfig, GuestError>> {
    if std::process::id() != 1 || Path::new("/proc/self").exists() {
        return None;
    }
    let _ = std::fs::create_dir_all("/proc");
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        log_line!("burrow-agent: PID 1 without /proc, and cannot mount it: {e}");
        return None;
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    GuestConfig::parse(&cmdline).transpose()
}

/// Logs the boot steps with their durations and the time since the kernel started.
struct Steps {
    last: Instant,
}

impl Steps {
    fn new() -> Self {
        log_line!(
            "burrow-agent: guest init started {:.0} ms after the kernel",
            uptime_ms()
        );
        Self { last: Instant::now() }
    }

    fn done(&mut self, step: &str) {
        let now = Instant::now();
        log_line!(
            "burrow-agent: guest: {step} ({:.1} ms; {:.0} ms since the kernel started)",
            (now - self.last).as_secs_f64() * 1000.0,
            uptime_ms()
        );
        self.last = now;
    }
}

/// Milliseconds since boot (CLOCK_BOOTTIME).
fn uptime_ms() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6)
        .unwrap_or(0.0)
}

/// Boots the guest up to the point where the agent can serve: returns the agent port's
/// device path.
pub fn boot(cfg: &GuestConfig) -> Result<PathBuf, GuestError> {
    let mut steps = Steps::new();
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755")?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )?;
    steps.done("mounted /dev, /proc, /sys");
    let loaded = load_modules(Path::new(MODULES_DIR))?;
    steps.done(&format!("loaded {loaded} modules"));
    wait_for(&cfg.root, || Path::new(&cfg.root).exists())?;
    steps.done(&format!("{} appeared", cfg.root));
    mount_fs(&cfg.root, NEW_ROOT, &cfg.root_fstype, MsFlags::empty(), "discard")?;
    switch_root(Path::new(NEW_ROOT))?;
    steps.done(&format!("mounted {} and switched root", cfg.root));
    let _ = ROOT_DEVICE.set(cfg.root.clone());
    // The host makes the disk `disk_gb` big; the filesystem on it was made for the image.
    match grow_root(&cfg.root) {
        Ok(Some(mib)) => steps.done(&format!("grew / to {mib} MiB")),
        Ok(None) => {}
        Err(e) => log_line!("burrow-agent: guest: cannot grow / to its disk's size: {e}"),
    }
    setup_root()?;
    steps.done("mounted /dev/pts, /dev/shm, /dev/mqueue, /run, cgroup2");
    setup_network(cfg)?;
    steps.done("configured hostname and network");
    if let Some(max) = cfg.pids {
        match payload_cgroup(max) {
            Ok(procs) => {
                crate::spawn::set_payload_cgroup(procs);
                steps.done(&format!("processes limited to {max} (pids)"));
            }
            Err(e) => log_line!("burrow-agent: guest: no process limit for the sandbox's processes: {e}"),
        }
    }
    let mut port = None;
    wait_for(&format!("virtio port {PORT_NAME}"), || {
        port = find_port(PORT_NAME).ok().flatten();
        port.is_some()
    })?;
    let port = port.expect("set by the wait");
    steps.done(&format!("found the agent port {}", port.display()));
    Ok(port)
}

/// The cgroup every process the agent starts runs in (the agent stays in the root one):
/// `pids.max` = the sandbox's process limit, so a fork bomb meets that limit, as in a
/// container, while the agent can still serve. Returns its `cgroup.procs`, open for writing.
fn payload_cgroup(max: u64) -> Result<std::os::fd::OwnedFd, GuestError> {
    let root = Path::new("/sys/fs/cgroup");
    let dir = root.join("payload");
    std::fs::write(root.join("cgroup.subtree_control"), "+pids")
        .map_err(io_err("enable the pids controller"))?;
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(io_err("create the payload cgroup")(e));
        }
        _ => {}
    }
    std::fs::write(dir.join("pids.max"), max.to_string()).map_err(io_err("set pids.max"))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(io_err("open the payload cgroup"))?;
    Ok(f.into())
}

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> Result<(), GuestError> {
    let _ = std::fs::create_dir_all(target);
    let data = (!data.is_empty()).then_some(data);
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(nix_err(format!("mount {fstype} {source} on {target}")))
}

/// Loads the modules listed in `dir/load.order` (dependencies first), in that order.
/// Returns how many were loaded; a module already present (built in) is not an error.
fn load_modules(dir: &Path) -> Result<usize, GuestError> {
    let order = dir.join("load.order");
    let list = match std::fs::read_to_string(&order) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(format!("read {}", order.display()))(e)),
    };
    let mut loaded = 0;
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
        const NO_PARAMS: &CStr = c"";
        match nix::kmod::finit_module(&file, NO_PARAMS, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(nix_err(format!("load module {}", path.display()))(e)),
        }
    }
    Ok(loaded)
}

/// Polls `ready` until it holds, for at most [`DEVICE_WAIT`] (devices appear
/// asynchronously after their driver loads; there is no udev to tell us).
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), GuestError> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !ready() {
        if Instant::now() >= deadline {
            return Err(GuestError::NoDevice(what.to_owned()));
        }
        std::thread::sleep(DEVICE_POLL);
    }
    Ok(())
}

/// What `switch_root` does: move `/dev`, `/proc`, `/sys` into the new root, free the
/// initramfs (its files are in memory for as long as they exist), move the new root over
/// `/` and chroot into it.
/// The guest's root device, once [`boot`] mounted it; `None` outside a VM.
static ROOT_DEVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The root device of this guest (`/dev/vda`); `None` when the agent is not a VM's init.
pub fn root_device() -> Option<String> {
    ROOT_DEVICE.get().cloned()
}

/// The size of block device `device` in bytes, as the kernel sees it now.
fn device_bytes(device: &str) -> std::io::Result<u64> {
    let name = Path::new(device)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("no device name in {device}")))?;
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::other(format!("/sys/block/{name}/size: {e}")))?;
    Ok(sectors * 512)
}

/// Grows the mounted root filesystem to its device's size once the device is at least
/// `min_bytes` big (the kernel updates it when the host says so, asynchronously; waited
/// for up to [`DEVICE_WAIT`]). Returns the filesystem's size after.
pub fn grow_root_online(device: &str, min_bytes: u64) -> std::io::Result<u64> {
    let deadline = Instant::now() + DEVICE_WAIT;
    let mut bytes = device_bytes(device)?;
    while bytes < min_bytes {
        if Instant::now() >= deadline {
            return Err(std::io::Error::other(format!(
                "{device} is {bytes} bytes, not the {min_bytes} the host gave it, after {DEVICE_WAIT:?}"
            )));
        }
        std::thread::sleep(DEVICE_POLL);
        bytes = device_bytes(device)?;
    }
    let st = nix::sys::statvfs::statvfs("/").map_err(std::io::Error::from)?;
    let block = st.fragment_size().max(1);
    // Asking ext4 for its current size is a no-op: no threshold here.
    crate::sys::ext4_resize(Path::new("/"), bytes / block)?;
    let st = nix::sys::statvfs::statvfs("/").map_err(std::io::Error::from)?;
    Ok(st.blocks() * st.fragment_size())
}

/// Grows the root filesystem to its block device's size; `Some(MiB)` when it grew.
fn grow_root(device: &str) -> std::io::Result<Option<u64>> {
    let sectors = device_bytes(device)? / 512;
    let st = nix::sys::statvfs::statvfs("/").map_err(std::io::Error::from)?;
    let block = st.fragment_size().max(1);
    let want = sectors * 512 / block;
    // f_blocks leaves out the filesystem's own overhead: only a real difference counts.
    if want <= st.blocks() + st.blocks() / 20 {
        return Ok(None);
    }
    crate::sys::ext4_resize(Path::new("/"), want)?;
    Ok(Some((want * block) >> 20))
}

fn switch_root(new_root: &Path) -> Result<(), GuestError> {
    for dir in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(&dir[1..]);
        let _ = std::fs::create_dir_all(&target);
        mount(Some(dir), &target, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(nix_err(format!("move {dir} to {}", target.display())))?;
    }
    // Best effort: the running binary stays mapped after its file is gone.
    let _ = std::fs::remove_file("/init");
    let _ = std::fs::remove_dir_all("/lib");
    std::env::set_current_dir(new_root).map_err(io_err(format!("chdir {}", new_root.display())))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(nix_err("move the new root over /"))?;
    nix::unistd::chroot(".").map_err(nix_err("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(io_err("chdir /"))?;
    Ok(())
}

/// The mounts a container sandbox has beyond its root (see the container engine's
/// `oci.rs`), made writable where a VM can afford it (cgroup2: the guest owns its kernel).
fn setup_root() -> Result<(), GuestError> {
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        nosuid_noexec,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    // With a new devpts instance, /dev/ptmx must be its ptmx (devtmpfs made a node for the
    // initial instance).
    let _ = std::fs::remove_file("/dev/ptmx");
    std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx").map_err(io_err("link /dev/ptmx"))?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        nosuid_noexec | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    mount_fs(
        "mqueue",
        "/dev/mqueue",
        "mqueue",
        nosuid_noexec | MsFlags::MS_NODEV,
        "",
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
    mount_fs(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_noexec | MsFlags::MS_NODEV,
        "",
    )?;
    Ok(())
}

fn setup_network(cfg: &GuestConfig) -> Result<(), GuestError> {
    if let Some(name) = &cfg.hostname {
        nix::unistd::sethostname(name).map_err(nix_err(format!("set hostname {name}")))?;
        bind_etc_files(name)?;
    }
    crate::sys::configure_interface("lo", None).map_err(io_err("bring lo up"))?;
    if let Some(ip) = cfg.ip {
        let dev = first_ethernet().ok_or_else(|| GuestError::NoDevice("a network interface".into()))?;
        crate::sys::configure_interface(&dev, Some(ip))
            .map_err(io_err(format!("configure {dev} with {}/{}", ip.0, ip.1)))?;
        if let Some(gw) = cfg.gateway {
            crate::sys::add_default_route(gw).map_err(io_err(format!("add default route via {gw}")))?;
        }
    }
    if let Some(dns) = cfg.dns {
        std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"))
            .map_err(io_err("write /etc/resolv.conf"))?;
    }
    Ok(())
}

/// Gives the guest's `/etc/hostname` and `/etc/hosts` a new hostname (after `SetClock`
/// renamed the machine: a fork with memory, a pre-started VM taken by a create): their
/// sources on `/run` are rewritten in place, so the read-only binds show the new text.
/// Nothing outside a VM (a container's files are the host's).
pub fn rename_etc_files(hostname: &str) -> std::io::Result<()> {
    if root_device().is_none() {
        return Ok(());
    }
    let dir = Path::new("/run/burrow");
    if !dir.join("hostname").exists() {
        return Ok(());
    }
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    std::fs::write(dir.join("hosts"), hosts_text(hostname))
}

fn hosts_text(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback {hostname}\n")
}

/// `/etc/hostname` and `/etc/hosts` as a container sandbox has them: read-only bind mounts
/// of files the sandbox's disk does not hold (here on the `/run` tmpfs), so the sandbox
/// cannot make them lie and the disk is left alone (an empty file is created as the mount
/// point only when the image has none).
fn bind_etc_files(hostname: &str) -> Result<(), GuestError> {
    if !Path::new("/etc").is_dir() {
        return Ok(());
    }
    let dir = Path::new("/run/burrow");
    std::fs::create_dir_all(dir).map_err(io_err("create /run/burrow"))?;
    let hosts = hosts_text(hostname);
    for (name, content) in [("hostname", format!("{hostname}\n")), ("hosts", hosts)] {
        let source = dir.join(name);
        let target = Path::new("/etc").join(name);
        std::fs::write(&source, content).map_err(io_err(format!("write {}", source.display())))?;
        if std::fs::symlink_metadata(&target).is_err() {
            File::create(&target).map_err(io_err(format!("create {}", target.display())))?;
        }
        let what = format!("bind {} on {}", source.display(), target.display());
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(nix_err(what.clone()))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(nix_err(what))?;
    }
    Ok(())
}

/// The first network interface other than loopback, by name.
fn first_ethernet() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The device node of the virtio-serial port called `name`, made with mknod when
/// devtmpfs did not make it. `None` while the port has not appeared.
fn find_port(name: &str) -> io::Result<Option<PathBuf>> {
    let dir = match std::fs::read_dir("/sys/class/virtio-ports") {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() != name {
            continue;
        }
        let node = Path::new("/dev").join(entry.file_name());
        if !node.exists() {
            let dev = std::fs::read_to_string(entry.path().join("dev"))?;
            let (major, minor) = dev
                .trim()
                .split_once(':')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                .ok_or_else(|| io::Error::other(format!("bad dev {dev:?}")))?;
            nix::sys::stat::mknod(
                &node,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(major, minor),
            )?;
        }
        return Ok(Some(node));
    }
    Ok(None)
}

/// The end of a guest: flush the disks and power the VM off. Never returns.
pub fn power_off() -> ! {
    crate::sys::sync();
    log_line!(
        "burrow-agent: guest: powering off {:.0} ms after the kernel started",
        uptime_ms()
    );
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached when power off failed; as PID 1, exiting panics the kernel, which with
    // `panic=-1` and QEMU's `-no-reboot` also ends the VM.
    log_line!("burrow-agent: guest: power off failed: {err:?}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(GuestConfig::parse("console=ttyS0 quiet").unwrap(), None);
        assert_eq!(GuestConfig::parse("burrow.guest=0").unwrap(), None);
        let cfg = GuestConfig::parse(
            "console=ttyS0 burrow.guest=1 burrow.hostname=box burrow.ip=10.0.0.2/24 burrow.gw=10.0.0.1 burrow.dns=10.0.0.1 burrow.pids=512",
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.hostname.as_deref(), Some("box"));
        assert_eq!(cfg.ip, Some((Ipv4Addr::new(10, 0, 0, 2), 24)));
        assert_eq!(cfg.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(cfg.dns, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(cfg.root, "/dev/vda");
        assert_eq!(cfg.root_fstype, "ext4");
        assert_eq!(cfg.pids, Some(512));
        assert!(GuestConfig::parse("burrow.guest=1 burrow.pids=lots").is_err());
        assert!(GuestConfig::parse("burrow.guest=1 burrow.ip=10.0.0.2").is_err());
        assert!(GuestConfig::parse("burrow.guest=1 burrow.ip=10.0.0.2/33").is_err());
        assert!(GuestConfig::parse("burrow.guest=1 burrow.gw=x").is_err());
    }
}
