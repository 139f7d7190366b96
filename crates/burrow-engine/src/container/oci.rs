//! The OCI runtime configuration (`config.json`) of a sandbox, built from Rust types.
//!
//! What a sandbox gets: new pid, mount, ipc, uts, network (loopback only), user and cgroup
//! namespaces; root inside mapped to an unprivileged host uid range; Docker's default
//! capabilities, no new privileges, a seccomp allowlist; masked and read-only `/proc` paths;
//! cpu, memory and pids limits; the agent binary bind-mounted read-only at `/.burrow/agent`
//! as PID 1; where the host runs lxcfs, its per-sandbox `/proc` files and
//! `/sys/devices/system/cpu` bound over the kernel's. This module only describes; it never
//! touches the host.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
    LinuxIdMappingBuilder, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources, Mount,
    PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};

use super::{lxcfs, seccomp};
use crate::{EngineError, Result, SandboxSpec};

/// Where the agent lives inside every sandbox (a read-only bind mount on a small tmpfs).
pub const AGENT_DIR: &str = "/.burrow";
pub const AGENT_PATH: &str = "/.burrow/agent";
/// fd number of the agent channel's listening socket in the agent.
pub const LISTEN_FD: u32 = 3;

/// fd number, in the agent, of the payload cgroup's `cgroup.procs` (cgroup v1 hosts): see
/// [`payload_memory_limit`].
pub const PAYLOAD_CGROUP_FD: u32 = 4;

/// Largest NOFILE limit of sandbox processes (Docker's), lowered to what the host allows and
/// to the sandbox's open-file budget (see [`file_limits`]).
pub const NOFILE: u64 = 1024 * 1024;

/// NOFILE limit below which [`file_limits`] lowers the pids limit instead: the soft limit
/// most distributions give every process, which common software expects.
pub const NOFILE_MIN: u64 = 1024;

/// A sandbox's open-file budget is this fraction of the host's `fs.file-max`.
pub const FILE_BUDGET_DIVISOR: u64 = 8;

/// Most memory kept back for the agent in a sandbox's memory limit (see
/// [`payload_memory_limit`]).
pub const AGENT_RESERVE_MAX: u64 = 32 << 20;
/// Least memory kept back for the agent (unless that is over half the limit): an agent that
/// has served a few execs is charged ~3.3 MiB of its own (heap, stacks, its binary's pages).
pub const AGENT_RESERVE_MIN: u64 = 8 << 20;

/// CFS period for the cpu limit, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default capability set.
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Masked paths: hidden (bind-mounted over with /dev/null or an empty read-only tmpfs;
/// runc skips the ones this kernel does not have). Docker's, then what tells the sandbox
/// about the host and has no use inside: the host's boot arguments, its kernel build
/// configuration, its kernel's symbols and modules, and its btrfs filesystems (their UUIDs,
/// and every subvolume's quota use: the other sandboxes' disk use).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/cmdline",
    "/proc/bootconfig",
    "/proc/config.gz",
    "/proc/kallsyms",
    "/proc/modules",
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/fs/btrfs",
];

pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// oci-spec's builders only fail for a missing field without default; ours all have one.
pub(crate) const BUILDER_INFALLIBLE: &str = "oci-spec builder with defaults for every field";

/// Facts about the host and engine settings the config depends on.
#[derive(Debug, Clone)]
pub struct ConfigInputs<'a> {
    pub agent_bin: &'a Path,
    /// argv of the sandbox's init; the agent unless overridden (tests).
    pub init_args: Vec<String>,
    pub uid_base: u32,
    pub uid_count: u32,
    pub cgroup_parent: &'a str,
    /// Largest RLIMIT_NOFILE the host lets sandbox processes have.
    pub nofile: u64,
    /// Open files (struct file) the sandbox may hold at most: see [`file_limits`].
    pub file_budget: u64,
    /// Whether the memory controller can limit swap (cgroup v1 without `memory.memsw.*`
    /// cannot); when it can, swap is limited to the memory limit so nothing is swapped beyond it.
    pub limit_swap: bool,
    /// `run_dir/hostname` and `run_dir/hosts`, bind-mounted at /etc/hostname and /etc/hosts.
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
    /// Read-only bind mounts (path inside, host path), from `SandboxSpec::shared_dirs`.
    pub shared_dirs: Vec<(String, PathBuf)>,
    /// Mount point of the host's lxcfs, whose files are bound over the sandbox's `/proc`
    /// files and `/sys/devices/system/cpu` (see [`super::lxcfs`]); `None`: the kernel's.
    pub lxcfs: Option<PathBuf>,
}

/// The agent's command line; `payload_cgroup_fd` is the fd of the cgroup its children must
/// join (`--cgroup-fd`), where the host made one.
pub fn agent_args(payload_cgroup_fd: Option<u32>) -> Vec<String> {
    let mut args = vec![
        AGENT_PATH.to_owned(),
        "--listen-fd".to_owned(),
        LISTEN_FD.to_string(),
    ];
    if let Some(fd) = payload_cgroup_fd {
        args.extend(["--cgroup-fd".to_owned(), fd.to_string()]);
    }
    args
}

/// The memory limit of a sandbox's payload cgroup, given the sandbox's (bytes).
///
/// On cgroup v1 hosts every process the agent starts runs in a child cgroup of the sandbox's,
/// `payload`, whose limit keeps back `limit / 8` (at least 8 MiB, at most 32 MiB, never more
/// than half) for the agent (which
/// stays in the sandbox's own cgroup): user processes run out of memory at the payload's
/// limit, and the OOM killer then only chooses among them. The sandbox's cgroup itself only
/// reaches its limit if the agent's own unreclaimable memory grows past the reserve (an idle
/// agent uses about 1 MiB). This holds without any privilege: lowering the agent's
/// `oom_score_adj` needs CAP_SYS_RESOURCE, which the daemon may not have.
pub fn payload_memory_limit(limit: u64) -> u64 {
    limit
        - (limit / 8)
            .clamp(AGENT_RESERVE_MIN, AGENT_RESERVE_MAX)
            .min(limit / 2)
}

/// RLIMIT_NOFILE and pids limit of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    pub nofile: u64,
    pub pids: u64,
}

/// Bounds the open files of a sandbox: NOFILE is per process, so a sandbox may hold up to
/// `pids × nofile` of them, and without a bound one sandbox can fill the host's whole file
/// table (`fs.file-max`; the memory limit is no bound, a `struct file` costs ~256 bytes).
/// The limits keep that product within `budget`: NOFILE is `budget / pids`, at most
/// `max_nofile`; where that is below [`NOFILE_MIN`], NOFILE is `NOFILE_MIN` and the pids limit
/// is lowered to `budget / NOFILE_MIN` instead (never below 16, the smallest the API allows).
pub fn file_limits(pids: u64, budget: u64, max_nofile: u64) -> FileLimits {
    let max_nofile = max_nofile.max(1);
    let nofile = (budget / pids.max(1)).clamp(NOFILE_MIN.min(max_nofile), max_nofile);
    FileLimits {
        nofile,
        pids: pids.min((budget / nofile).max(16)),
    }
}

/// `/etc/hosts` of a sandbox.
pub fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback {hostname}\n")
}

/// Checks that `hostname` is a DNS label (1-63 of `[A-Za-z0-9-]`, not starting with `-`).
pub fn validate_hostname(hostname: &str) -> Result<()> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 63
        && !hostname.starts_with('-')
        && hostname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(EngineError::Spec(format!(
            "hostname {hostname:?}: want a DNS label (1-63 of [A-Za-z0-9-])"
        )));
    }
    Ok(())
}

/// Checks the parts of a spec that end up in paths, command lines and kernel settings.
pub fn validate(spec: &SandboxSpec) -> Result<()> {
    let bad = |what: String| Err(EngineError::Spec(what));
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && !s.starts_with(['.', '-'])
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !id_ok(&spec.id) {
        return bad(format!(
            "id {:?}: want 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            spec.id
        ));
    }
    validate_hostname(&spec.hostname)?;
    if !spec.rootfs.is_absolute() || !spec.run_dir.is_absolute() {
        return bad("rootfs and run_dir must be absolute paths".to_owned());
    }
    let r = spec.resources;
    if !(r.cpus.is_finite() && r.cpus >= 0.01 && r.cpus <= 1024.0) {
        return bad(format!("cpus {}: want 0.01..=1024", r.cpus));
    }
    if !(4..=(1 << 30)).contains(&r.memory_mb) {
        return bad(format!("memory_mb {}: want at least 4", r.memory_mb));
    }
    if !(1..=(1 << 22)).contains(&r.pids) {
        return bad(format!("pids {}: want 1..=4194304", r.pids));
    }
    Ok(())
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_owned()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

fn bind_ro(dest: &str, source: &Path) -> Mount {
    let mut m = mount(dest, "bind", "", &["rbind", "ro", "nosuid", "nodev"]);
    m.set_source(Some(source.to_owned()));
    m
}

fn mounts(inp: &ConfigInputs<'_>, host_netns: bool) -> Vec<Mount> {
    // gid=5 (tty) only when group 5 exists inside, i.e. is mapped.
    let mut devpts = vec!["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"];
    if inp.uid_count > 5 {
        devpts.push("gid=5");
    }
    let mut all = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount("/dev/pts", "devpts", "devpts", &devpts),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        // In a network namespace of its own (owned by its user namespace) the kernel lets
        // the sandbox mount a sysfs. One made by the host (a veth to burrowd's bridge) belongs
        // to the host's user namespace, and sysfs may then only be bound read-only, like
        // rootless runtimes do; its network device directories are masked (see `build`).
        if host_netns {
            mount(
                "/sys",
                "bind",
                "/sys",
                &["rbind", "nosuid", "noexec", "nodev", "ro"],
            )
        } else {
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])
        },
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            AGENT_DIR,
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "noexec", "mode=755", "size=1m"],
        ),
        bind_ro(AGENT_PATH, inp.agent_bin),
        bind_ro("/etc/hostname", &inp.hostname_file),
        bind_ro("/etc/hosts", &inp.hosts_file),
    ];
    all.extend(inp.shared_dirs.iter().map(|(dest, src)| bind_ro(dest, src)));
    if let Some(lxcfs) = &inp.lxcfs {
        // After /proc and /sys: single files and one directory, never recursive (lxcfs's
        // own cgroup tree is not for sandboxes).
        let view = |dest: String, src: PathBuf| {
            let mut m = mount(&dest, "bind", "", &["bind", "ro", "nosuid", "nodev", "noexec"]);
            m.set_source(Some(src));
            m
        };
        all.extend(
            lxcfs::PROC_FILES
                .iter()
                .map(|f| view(format!("/proc/{f}"), lxcfs.join("proc").join(f))),
        );
        all.push(view(format!("/{}", lxcfs::SYS_CPU), lxcfs.join(lxcfs::SYS_CPU)));
    }
    all
}

fn process(hostname: &str, spec_pids: u64, inp: &ConfigInputs<'_>) -> Process {
    let caps: HashSet<Capability> = CAPABILITIES.iter().copied().collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    c.set_inheritable(None);
    c.set_ambient(None);

    let limit = file_limits(spec_pids, inp.file_budget, inp.nofile).nofile;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(limit)
        .hard(limit)
        .build()
        .expect(BUILDER_INFALLIBLE);

    let mut user = User::default();
    user.set_uid(0);
    user.set_gid(0);

    let mut p = Process::default();
    p.set_terminal(Some(false));
    p.set_user(user);
    p.set_args(Some(inp.init_args.clone()));
    p.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        format!("HOSTNAME={hostname}"),
        "container=burrow".to_owned(),
        // The agent's allocator (mimalloc, musl builds) commits arenas lazily with this, so
        // an idle agent stays well under a MiB. Processes it runs get their own env.
        "MIMALLOC_ARENA_EAGER_COMMIT=0".to_owned(),
    ]));
    p.set_cwd(PathBuf::from("/"));
    p.set_capabilities(Some(c));
    p.set_rlimits(Some(vec![nofile]));
    p.set_no_new_privileges(Some(true));
    // 0 here (runc cannot lower it inside a user namespace); the engine lowers the agent's to
    // -1000 from the host once it runs.
    p.set_oom_score_adj(Some(0));
    p
}

/// Every namespace is new, except the network one when the host made it (a netns with a
/// veth to burrowd's bridge): the sandbox joins it, and since that namespace belongs to the
/// host's user namespace, root inside cannot change its addresses, routes or firewall.
fn namespaces(netns: Option<&std::path::Path>) -> Vec<LinuxNamespace> {
    use LinuxNamespaceType::*;
    [Pid, Mount, Ipc, Uts, Network, User, Cgroup]
        .into_iter()
        .map(|typ| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            if typ == Network {
                ns.set_path(netns.map(std::path::Path::to_path_buf));
            }
            ns
        })
        .collect()
}

fn device(path: &str, major: i64, minor: i64) -> LinuxDevice {
    let mut d = LinuxDevice::default();
    d.set_path(PathBuf::from(path));
    d.set_typ(LinuxDeviceType::C);
    d.set_major(major);
    d.set_minor(minor);
    d.set_file_mode(Some(0o666));
    d.set_uid(Some(0));
    d.set_gid(Some(0));
    d
}

/// runc's default devices. Inside a user namespace runc bind-mounts the host's nodes.
fn devices() -> Vec<LinuxDevice> {
    vec![
        device("/dev/null", 1, 3),
        device("/dev/zero", 1, 5),
        device("/dev/full", 1, 7),
        device("/dev/random", 1, 8),
        device("/dev/urandom", 1, 9),
        device("/dev/tty", 5, 0),
    ]
}

fn dev_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_owned()));
    r
}

/// Device cgroup: Docker's default (deny everything, then mknod of anything, and use of the
/// default devices, pseudo-terminals and /dev/net/tun).
fn device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{A, B, C};
    let mut rules = vec![
        dev_rule(false, A, None, None, "rwm"),
        dev_rule(true, C, None, None, "m"),
        dev_rule(true, B, None, None, "m"),
    ];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        rules.push(dev_rule(true, C, Some(major), Some(minor), "rwm"));
    }
    rules.push(dev_rule(true, C, Some(136), None, "rwm"));
    rules
}

fn resources(spec: &SandboxSpec, inp: &ConfigInputs<'_>) -> LinuxResources {
    let r = spec.resources;
    let mut cpu = LinuxCpu::default();
    cpu.set_period(Some(CPU_PERIOD_US));
    // Validated: 0.01 <= cpus <= 1024, so this is a positive number of microseconds.
    cpu.set_quota(Some((r.cpus * CPU_PERIOD_US as f64).round() as i64));

    let bytes = i64::try_from(r.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let mut mem = LinuxMemory::default();
    mem.set_limit(Some(bytes));
    if inp.limit_swap {
        // memory+swap == memory: no swap on top of the limit.
        mem.set_swap(Some(bytes));
    }

    let mut pids = LinuxPids::default();
    let limit = file_limits(r.pids, inp.file_budget, inp.nofile).pids;
    pids.set_limit(i64::try_from(limit).unwrap_or(i64::MAX));

    let mut res = LinuxResources::default();
    res.set_cpu(Some(cpu));
    res.set_memory(Some(mem));
    res.set_pids(Some(pids));
    res.set_devices(Some(device_rules()));
    res
}

/// The cgroup of sandbox `id` (cgroupfs driver: a path below every hierarchy's root).
pub fn cgroup_path(cgroup_parent: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/{}/{id}", cgroup_parent.trim_matches('/')))
}

/// The complete runtime configuration of a sandbox.
pub fn build(spec: &SandboxSpec, inp: &ConfigInputs<'_>) -> Result<Spec> {
    validate(spec)?;
    if inp.uid_count == 0 {
        return Err(EngineError::Spec("uid_count must be at least 1".to_owned()));
    }

    let mut root = Root::default();
    root.set_path(spec.rootfs.clone());
    root.set_readonly(Some(false));

    let idmap = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(inp.uid_base)
        .size(inp.uid_count)
        .build()
        .expect(BUILDER_INFALLIBLE);

    let mut linux = Linux::default();
    linux.set_namespaces(Some(namespaces(spec.netns.as_deref())));
    linux.set_uid_mappings(Some(vec![idmap]));
    linux.set_gid_mappings(Some(vec![idmap]));
    linux.set_devices(Some(devices()));
    linux.set_cgroups_path(Some(cgroup_path(inp.cgroup_parent, &spec.id)));
    linux.set_resources(Some(resources(spec, inp)));
    linux.set_seccomp(Some(seccomp::profile()));
    let mut masked: Vec<String> = MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect();
    if spec.netns.is_some() {
        // The host's sysfs: hide its network devices (other sandboxes' veths among them).
        masked.extend(["/sys/class/net".to_owned(), "/sys/devices/virtual/net".to_owned()]);
    }
    linux.set_masked_paths(Some(masked));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect()));
    linux.set_rootfs_propagation(Some("private".to_owned()));

    let mut s = Spec::default();
    s.set_version("1.0.2".to_owned());
    s.set_root(Some(root));
    s.set_hostname(Some(spec.hostname.clone()));
    s.set_process(Some(process(&spec.hostname, spec.resources.pids, inp)));
    s.set_mounts(Some(mounts(inp, spec.netns.is_some())));
    s.set_linux(Some(linux));
    s.set_hooks(None);
    s.set_annotations(None);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resources;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "sb-1234".into(),
            hostname: "my-box".into(),
            rootfs: "/data/sandboxes/sb-1234/root".into(),
            run_dir: "/data/run/sb-1234".into(),
            resources: Resources {
                cpus: 1.5,
                memory_mb: 512,
                pids: 256,
            },
            shared_dirs: Vec::new(),
            netns: None,
        }
    }

    fn inputs() -> ConfigInputs<'static> {
        ConfigInputs {
            agent_bin: Path::new("/usr/lib/burrow/burrow-agent"),
            init_args: agent_args(None),
            uid_base: 2_000_000,
            uid_count: 65536,
            cgroup_parent: "burrow-abc",
            nofile: NOFILE,
            file_budget: u64::MAX,
            limit_swap: true,
            hostname_file: "/data/run/sb-1234/hostname".into(),
            hosts_file: "/data/run/sb-1234/hosts".into(),
            shared_dirs: Vec::new(),
            lxcfs: None,
        }
    }

    fn json() -> serde_json::Value {
        serde_json::to_value(build(&spec(), &inputs()).expect("build")).expect("to json")
    }

    #[test]
    fn round_trips_through_json() {
        let s = build(&spec(), &inputs()).expect("build");
        let text = serde_json::to_string_pretty(&s).expect("serialize");
        let back: Spec = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn process_is_the_agent_as_unprivileged_root() {
        let j = json();
        let p = &j["process"];
        assert_eq!(
            p["args"],
            serde_json::json!(["/.burrow/agent", "--listen-fd", "3"])
        );
        assert_eq!(p["cwd"], "/");
        assert_eq!(p["user"]["uid"], 0);
        assert_eq!(p["user"]["gid"], 0);
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], false);
        assert_eq!(p["oomScoreAdj"], 0);
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"HOSTNAME=my-box") && env.contains(&"container=burrow"));
        assert!(env.iter().any(|e| e.starts_with("PATH=/")));
        assert_eq!(p["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(p["rlimits"][0]["hard"], NOFILE);
    }

    #[test]
    fn capabilities_are_dockers_defaults_only() {
        let j = json();
        let caps = &j["process"]["capabilities"];
        let mut want: Vec<String> = CAPABILITIES
            .iter()
            .map(|c| serde_json::to_value(c).unwrap().as_str().unwrap().to_owned())
            .collect();
        want.sort();
        for set in ["bounding", "effective", "permitted"] {
            let mut got: Vec<String> = caps[set]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            got.sort();
            assert_eq!(got, want, "{set}");
        }
        assert!(caps.get("ambient").is_none() && caps.get("inheritable").is_none());
        assert_eq!(want.len(), 14);
        assert!(
            !want
                .iter()
                .any(|c| c == "CAP_SYS_ADMIN" || c == "CAP_SYS_PTRACE" || c == "CAP_NET_ADMIN")
        );
    }

    #[test]
    fn namespaces_and_id_mappings() {
        let j = json();
        let mut ns: Vec<&str> = j["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        ns.sort();
        assert_eq!(ns, ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]);
        assert!(
            j["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.get("path").is_none())
        );
        for key in ["uidMappings", "gidMappings"] {
            assert_eq!(
                j["linux"][key],
                serde_json::json!([{ "containerID": 0, "hostID": 2_000_000, "size": 65536 }])
            );
        }
        assert_eq!(j["hostname"], "my-box");
        assert_eq!(j["root"]["path"], "/data/sandboxes/sb-1234/root");
        assert_eq!(j["root"]["readonly"], false);
    }

    #[test]
    fn mounts_include_agent_and_system_filesystems() {
        let j = json();
        let mounts = j["mounts"].as_array().unwrap();
        let find = |dest: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dest)
                .unwrap_or_else(|| panic!("{dest}"))
        };
        for (dest, typ) in [
            ("/proc", "proc"),
            ("/dev", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/dev/shm", "tmpfs"),
            ("/dev/mqueue", "mqueue"),
            ("/sys", "sysfs"),
            ("/sys/fs/cgroup", "cgroup"),
            ("/.burrow", "tmpfs"),
        ] {
            assert_eq!(find(dest)["type"], typ, "{dest}");
        }
        let agent = find("/.burrow/agent");
        assert_eq!(agent["source"], "/usr/lib/burrow/burrow-agent");
        let opts = agent["options"].as_array().unwrap();
        assert!(opts.contains(&"ro".into()) && opts.contains(&"rbind".into()));
        assert_eq!(find("/etc/hosts")["source"], "/data/run/sb-1234/hosts");
        assert_eq!(find("/etc/hostname")["source"], "/data/run/sb-1234/hostname");
        assert!(find("/sys")["options"].as_array().unwrap().contains(&"ro".into()));
        assert!(
            find("/dev/pts")["options"]
                .as_array()
                .unwrap()
                .contains(&"gid=5".into())
        );
        // Parents come before children.
        let pos = |d: &str| mounts.iter().position(|m| m["destination"] == d).unwrap();
        assert!(pos("/dev") < pos("/dev/pts") && pos("/.burrow") < pos("/.burrow/agent"));
    }

    #[test]
    fn masked_and_readonly_paths() {
        let j = json();
        let masked = j["linux"]["maskedPaths"].as_array().unwrap();
        for p in [
            "/proc/cmdline",
            "/proc/config.gz",
            "/proc/kallsyms",
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/sched_debug",
            "/sys/devices/virtual/powercap",
            "/sys/fs/btrfs",
        ] {
            assert!(masked.contains(&p.into()), "{p}");
        }
        let ro = j["linux"]["readonlyPaths"].as_array().unwrap();
        for p in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/irq",
            "/proc/bus",
            "/proc/fs",
        ] {
            assert!(ro.contains(&p.into()), "{p}");
        }
    }

    #[test]
    fn cgroup_path_and_limits() {
        let j = json();
        assert_eq!(j["linux"]["cgroupsPath"], "/burrow-abc/sb-1234");
        let r = &j["linux"]["resources"];
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["memory"]["limit"], 512 * 1024 * 1024);
        assert_eq!(r["memory"]["swap"], 512 * 1024 * 1024);
        assert_eq!(r["pids"]["limit"], 256);
        assert_eq!(
            r["devices"][0],
            serde_json::json!({ "allow": false, "type": "a", "access": "rwm" })
        );

        let mut no_swap = inputs();
        no_swap.limit_swap = false;
        let j = serde_json::to_value(build(&spec(), &no_swap).unwrap()).unwrap();
        assert!(j["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn agent_gets_its_cgroup_fd_when_there_is_a_payload_cgroup() {
        assert_eq!(agent_args(None), ["/.burrow/agent", "--listen-fd", "3"]);
        assert_eq!(
            agent_args(Some(PAYLOAD_CGROUP_FD)),
            ["/.burrow/agent", "--listen-fd", "3", "--cgroup-fd", "4"]
        );
    }

    #[test]
    fn payload_keeps_a_reserve_for_the_agent() {
        assert_eq!(payload_memory_limit(512 << 20), 480 << 20);
        assert_eq!(payload_memory_limit(8 << 30), (8 << 30) - (32 << 20));
        // An eighth between 8 and 32 MiB, never more than half.
        assert_eq!(payload_memory_limit(128 << 20), 112 << 20);
        assert_eq!(payload_memory_limit(32 << 20), 24 << 20);
        assert_eq!(payload_memory_limit(4 << 20), 2 << 20);
    }

    #[test]
    fn open_files_stay_within_the_budget() {
        // This host's figures: fs.file-max 2466290, an eighth of it as the budget, a hard
        // limit of 20000.
        let budget = 2_466_290 / FILE_BUDGET_DIVISOR;
        assert_eq!(
            file_limits(64, budget, 20_000),
            FileLimits {
                nofile: 4816,
                pids: 64
            }
        );
        // The default 4096 pids would leave 75 files a process: NOFILE_MIN and fewer pids.
        assert_eq!(
            file_limits(4096, budget, 20_000),
            FileLimits {
                nofile: 1024,
                pids: 301
            }
        );
        // Few pids: the host's maximum.
        assert_eq!(
            file_limits(8, budget, 20_000),
            FileLimits {
                nofile: 20_000,
                pids: 8
            }
        );
        for pids in [1, 16, 64, 300, 301, 302, 4096, 1 << 22] {
            let l = file_limits(pids, budget, 1 << 20);
            assert!(l.pids * l.nofile <= budget && l.pids <= pids, "{pids}: {l:?}");
            assert!(l.nofile >= NOFILE_MIN, "{pids}: {l:?}");
        }
        // No budget (fs.file-max unreadable or unlimited): the limits as asked.
        assert_eq!(
            file_limits(4096, u64::MAX, NOFILE),
            FileLimits {
                nofile: NOFILE,
                pids: 4096
            }
        );
        let j = json();
        assert_eq!(j["process"]["rlimits"][0]["soft"], NOFILE);
        let mut tight = inputs();
        tight.file_budget = budget;
        let j = serde_json::to_value(build(&spec(), &tight).unwrap()).unwrap();
        // spec(): 256 pids.
        assert_eq!(j["process"]["rlimits"][0]["hard"], budget / 256);
        assert_eq!(j["linux"]["resources"]["pids"]["limit"], 256);
    }

    #[test]
    fn lxcfs_files_are_bound_over_the_kernels() {
        let dests = |j: &serde_json::Value| -> Vec<String> {
            j["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["destination"].as_str().unwrap().to_owned())
                .collect()
        };
        // Without lxcfs: the kernel's files.
        assert!(!dests(&json()).iter().any(|d| d == "/proc/meminfo"));

        let mut inp = inputs();
        inp.lxcfs = Some("/run/burrow/lxcfs-x".into());
        let j = serde_json::to_value(build(&spec(), &inp).unwrap()).unwrap();
        let mounts = j["mounts"].as_array().unwrap();
        let all = dests(&j);
        let pos = |d: &str| all.iter().position(|m| m == d).unwrap_or_else(|| panic!("{d}"));
        let mut want: Vec<(String, String)> = [
            "cpuinfo",
            "diskstats",
            "loadavg",
            "meminfo",
            "stat",
            "swaps",
            "uptime",
        ]
        .iter()
        .map(|f| (format!("/proc/{f}"), format!("/run/burrow/lxcfs-x/proc/{f}")))
        .collect();
        want.push((
            "/sys/devices/system/cpu".into(),
            "/run/burrow/lxcfs-x/sys/devices/system/cpu".into(),
        ));
        let masked = j["linux"]["maskedPaths"].as_array().unwrap();
        let readonly = j["linux"]["readonlyPaths"].as_array().unwrap();
        for (dest, src) in &want {
            let m = &mounts[pos(dest)];
            assert_eq!(m["source"], src.as_str(), "{dest}");
            assert_eq!(m["type"], "bind", "{dest}");
            let opts = m["options"].as_array().unwrap();
            // Read-only, and not recursive.
            assert!(
                opts.contains(&"ro".into()) && opts.contains(&"bind".into()),
                "{dest}"
            );
            assert!(!opts.contains(&"rbind".into()), "{dest}");
            // Over the kernel's filesystem, not under it; and not hidden again by a mask.
            assert!(pos("/proc") < pos(dest) && pos("/sys") < pos(dest), "{dest}");
            assert!(!masked.contains(&dest.as_str().into()) && !readonly.contains(&dest.as_str().into()));
        }
        assert!(!all.iter().any(|d| d == "/proc/slabinfo"));
    }

    #[test]
    fn seccomp_is_present() {
        let j = json();
        assert_eq!(j["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn rejects_bad_specs() {
        let cases: [fn(&mut SandboxSpec); 9] = [
            |s| s.id = "../x".into(),
            |s| s.id = String::new(),
            |s| s.hostname = "a b".into(),
            |s| s.hostname = "x".repeat(64),
            |s| s.rootfs = "relative".into(),
            |s| s.resources.cpus = f64::NAN,
            |s| s.resources.cpus = 0.0,
            |s| s.resources.memory_mb = 0,
            |s| s.resources.pids = 0,
        ];
        for (i, break_it) in cases.iter().enumerate() {
            let mut s = spec();
            break_it(&mut s);
            assert!(
                matches!(build(&s, &inputs()), Err(EngineError::Spec(_))),
                "case {i}"
            );
        }
    }
}
