//! Daemon configuration with embedded defaults. Everything has a default so that
//! `burrowd` with no arguments runs on a fresh machine.

use std::path::PathBuf;

pub use burrow_engine::container::lxcfs::Lxcfs;
use burrow_storage::PoolKind;

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where built image root trees (tarballs) are cached, shared by every daemon on the host.
    pub image_cache_dir: PathBuf,
    pub pool_kind: PoolKind,
    pub pool_size_bytes: u64,
    /// Free pool space kept for the sandboxes' own writes; `None`: 5 % of the pool, at least
    /// 256 MiB ([`Config::pool_reserve`]).
    pub pool_reserve_bytes: Option<u64>,
    pub agent_bin: PathBuf,
    /// Host uid that root of every sandbox maps to (user namespace).
    pub uid_base: u32,
    pub uid_count: u32,
    /// Settings of the container engine only.
    pub container: ContainerSettings,
    /// Settings of the vm engine; `None` turns it off.
    pub vm: Option<VmSettings>,
    /// The engine of sandboxes that name none; `None`: vm where KVM boots a guest, else
    /// container.
    pub default_engine: Option<burrow_api::EngineKind>,
    pub base_domain: String,
    /// Port used when printing sandbox URLs.
    pub public_port: u16,
    pub defaults: SandboxDefaults,
    /// Pre-started container sandboxes kept ready per wanted image (`prestart.rs`); 0: off.
    pub prestart: usize,
    /// How many pre-started containers demand may grow a pool to (each create that finds
    /// the pool empty adds one for a while); at most `prestart`: no growth.
    pub prestart_max: usize,
    /// Pre-started VMs kept ready per wanted image; `None`: 1 where VMs run on KVM, else 0
    /// (under TCG an idle VM costs a share of a core).
    pub prestart_vm: Option<usize>,
    /// Debian mirror for building the base image; None = mmdebstrap's default.
    pub debian_mirror: Option<String>,
    /// Sandbox networking (netns + veth + bridge, nftables, DNS, credential proxy); `None`
    /// gives every sandbox loopback only.
    pub network: Option<crate::network::NetSettings>,
    /// The host's lxcfs, started by the daemon, that gives sandboxes their own view of
    /// `/proc`; `None`: they see the host's.
    pub lxcfs: Option<std::sync::Arc<Lxcfs>>,
}

#[derive(Debug, Clone)]
pub struct ContainerSettings {
    pub runc_bin: PathBuf,
    /// Name of this daemon's cgroup parent (unique per data dir).
    pub cgroup_parent: String,
}

#[derive(Debug, Clone)]
pub struct VmSettings {
    pub qemu_bin: PathBuf,
    /// The guest kernel kit (`scripts/guest-kit.sh`).
    pub guest_dir: PathBuf,
    /// Forced accelerator; `None`: KVM where a test boot succeeds, else TCG.
    pub accel: Option<burrow_engine::vm::Accel>,
}

impl Default for VmSettings {
    fn default() -> Self {
        Self {
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            guest_dir: PathBuf::from(burrow_engine::vm_guest::DEFAULT_GUEST_DIR),
            accel: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SandboxDefaults {
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub pids: u64,
    pub idle_timeout_s: u64,
    pub cold_after_s: u64,
}

impl Default for SandboxDefaults {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            memory_mb: 1024,
            disk_gb: 10,
            pids: 4096,
            idle_timeout_s: 60,
            cold_after_s: 600,
        }
    }
}

impl Config {
    /// The free space kept for the sandboxes' own writes in a pool of `size` bytes.
    pub fn pool_reserve(&self, size: u64) -> u64 {
        self.pool_reserve_bytes
            .unwrap_or_else(|| (size / 20).max(256 << 20))
    }

    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let cgroup_parent = format!(
            "burrow-{:08x}",
            fnv1a(data_dir.to_string_lossy().as_bytes()) as u32
        );
        Self {
            image_cache_dir: PathBuf::from("/var/cache/burrow/images"),
            pool_kind: PoolKind::Auto,
            pool_size_bytes: 64 << 30,
            pool_reserve_bytes: None,
            agent_bin: PathBuf::from("burrow-agent"),
            uid_base: 2_000_000,
            uid_count: 65536,
            vm: Some(VmSettings::default()),
            default_engine: None,
            container: ContainerSettings {
                runc_bin: PathBuf::from("runc"),
                cgroup_parent,
            },
            base_domain: "localhost".to_owned(),
            public_port: 7440,
            defaults: SandboxDefaults::default(),
            prestart: 0,
            prestart_max: 0,
            prestart_vm: Some(0),
            debian_mirror: None,
            network: None,
            lxcfs: None,
            data_dir,
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("state.db")
    }

    pub fn runc_root(&self) -> PathBuf {
        self.data_dir.join("runc")
    }

    /// Host-wide cache shared by every daemon of this host (image downloads, the VM
    /// accelerator test, initramfs builds).
    pub fn host_cache_dir(&self) -> PathBuf {
        self.image_cache_dir
            .parent()
            .map_or_else(|| self.data_dir.join("cache"), std::path::Path::to_path_buf)
    }

    /// The container engine's configuration.
    pub fn container_engine(&self) -> burrow_engine::ContainerConfig {
        burrow_engine::ContainerConfig {
            runc_bin: self.container.runc_bin.clone(),
            runc_root: self.runc_root(),
            agent_bin: self.agent_bin.clone(),
            uid_base: self.uid_base,
            uid_count: self.uid_count,
            cgroup_parent: self.container.cgroup_parent.clone(),
            init_args: None,
            lxcfs: self.lxcfs.clone(),
        }
    }
}

/// A stable short hash (FNV-1a), for names derived from paths.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
