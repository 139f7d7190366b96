//! `burrowd`: the Burrow daemon (foreground). Serves the REST API on a unix socket (root
//! only, no token) and on TCP (bearer token), over the sandbox manager.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use burrow_core::{Config, Manager};
use burrow_storage::PoolKind;
use burrowd::{AppState, Transport, router};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "burrowd",
    version,
    about = "The Burrow daemon: persistent, isolated sandboxes",
    // A flag given twice: the last one counts (wrappers and tests add to a default set).
    args_override_self = true
)]
struct Args {
    /// Where state, the storage pool and runtime files live.
    #[arg(long, env = "BURROW_DATA_DIR", default_value = "/var/lib/burrow")]
    data_dir: PathBuf,
    /// Unix socket to serve on (root only, no token).
    #[arg(long, env = "BURROW_SOCKET_PATH", default_value = "/run/burrow/burrowd.sock")]
    socket: PathBuf,
    /// TCP address to serve on (bearer token). Port 0 picks a free port; the bound address
    /// is written to DATA_DIR/burrowd.addr.
    #[arg(long, env = "BURROW_LISTEN", default_value = "127.0.0.1:7440")]
    listen: SocketAddr,
    /// The static burrow-agent binary. Default: next to burrowd, or the musl build in the
    /// same target dir.
    #[arg(long, env = "BURROW_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    #[arg(long, env = "BURROW_RUNC", default_value = "runc")]
    runc: PathBuf,
    /// Storage pool: auto (btrfs, loop-backed if needed), btrfs, or dir (slow full copies).
    #[arg(long, default_value = "auto", value_parser = ["auto", "btrfs", "dir"])]
    pool: String,
    /// Size of the loop-backed btrfs pool file when one is created, in GiB (sparse).
    #[arg(long, default_value_t = 64)]
    pool_size_gb: u64,
    /// Free pool space kept for the sandboxes' own writes, in MiB: below it, create, fork,
    /// image builds and imports are refused (507 pool_full). Default: 5 % of the pool, at
    /// least 256 MiB.
    #[arg(long, value_name = "MB")]
    pool_reserve_mb: Option<u64>,
    /// Cache of built image root trees, shared by every daemon on this host.
    #[arg(long, env = "BURROW_IMAGE_CACHE", default_value = "/var/cache/burrow/images")]
    image_cache: PathBuf,
    /// Host uid that root in every sandbox maps to.
    #[arg(long, default_value_t = 2_000_000)]
    uid_base: u32,
    #[arg(long, default_value = "localhost")]
    base_domain: String,
    #[arg(long, env = "BURROW_DEBIAN_MIRROR")]
    debian_mirror: Option<String>,
    /// Sandbox networking: `on` (a netns per sandbox on a bridge, nftables, DNS policy,
    /// credential proxy) or `off` (loopback only).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    network: String,
    /// Subnet of sandbox addresses; the first address is the bridge's (burrowd's DNS and
    /// proxy listen there). Give each daemon on a host its own.
    #[arg(long, env = "BURROW_SUBNET", default_value = "10.213.0.0/16")]
    subnet: burrow_net::Cidr,
    /// Network mode of new sandboxes: open, policy or none.
    #[arg(long, default_value = "open", value_parser = ["open", "policy", "none"])]
    default_network: String,
    /// Upstream DNS resolver (repeatable); default: the host's /etc/resolv.conf.
    #[arg(long = "dns-upstream")]
    dns_upstreams: Vec<SocketAddr>,
    /// Extra PEM file of CA roots the credential proxy trusts upstream (repeatable).
    #[arg(long = "egress-ca")]
    egress_ca: Vec<PathBuf>,
    /// Only forward sandbox traffic to these ranges (repeatable; tests confine sandboxes to
    /// their fake internet with it).
    #[arg(long = "uplink-only", hide = true)]
    uplink_only: Vec<burrow_net::Cidr>,
    /// Ports on the gateway: DNS, explicit proxy, transparent HTTP and TLS (first of four).
    #[arg(long, default_value_t = 53, hide = true)]
    dns_port: u16,
    #[arg(long, default_value_t = 3128, hide = true)]
    proxy_port: u16,
    /// Memory for buffered request data held at once, in MiB: one-shot exec output (each
    /// `POST …/exec` reserves twice its max_output_bytes, plus its stdin, while it runs and
    /// answers) and JSON bodies of 64 KiB or more (twice their size while read). Past the
    /// budget a request gets 429 and nothing is done.
    #[arg(long, default_value_t = burrowd::api::DEFAULT_EXEC_BUFFER_BUDGET_MB)]
    exec_buffer_budget_mb: u64,
    /// The lxcfs binary that gives sandboxes their own view of /proc and
    /// /sys/devices/system/cpu (their memory and CPU limits, uptime, load); `off` shows them
    /// the host's. Without it sandboxes still start (with a warning).
    #[arg(long, env = "BURROW_LXCFS", default_value = "lxcfs")]
    lxcfs: String,
    /// Mount point of this daemon's lxcfs (an lxcfs already mounted there is reused).
    /// Default: /run/burrow/lxcfs-<hash of the data dir>.
    #[arg(long, env = "BURROW_LXCFS_DIR")]
    lxcfs_dir: Option<PathBuf>,
    /// Engine of sandboxes that name none: vm or container. Default: vm where a test boot
    /// on KVM succeeds, else container.
    #[arg(long, env = "BURROW_DEFAULT_ENGINE", value_parser = ["vm", "container"])]
    default_engine: Option<String>,
    /// The vm engine: `on` where QEMU and the guest kit are installed, or `off`.
    #[arg(long, env = "BURROW_VM", default_value = "on", value_parser = ["on", "off"])]
    vm: String,
    #[arg(long, env = "BURROW_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The guest kernel kit (scripts/guest-kit.sh installs it).
    #[arg(
        long,
        env = "BURROW_VM_GUEST_DIR",
        default_value = "/usr/local/lib/burrow/guest"
    )]
    vm_guest_dir: PathBuf,
    /// The VM accelerator: kvm or tcg. Default: kvm where a test boot succeeds (the answer
    /// is cached per QEMU and kernel version), else tcg.
    #[arg(long, env = "BURROW_VM_ACCEL", value_parser = ["kvm", "tcg"])]
    vm_accel: Option<String>,
    /// Pre-started container sandboxes kept ready per image in use (`base`, and any image a
    /// create asked for in the last 30 minutes): a create takes one and answers without
    /// booting. Each costs an idle sandbox's memory (a few MiB). Default: 2 on hosts with
    /// 4 GiB of memory or more, else 0 (off).
    #[arg(long, env = "BURROW_PRESTART", value_name = "N")]
    prestart: Option<usize>,
    /// How far demand grows a pool of pre-started containers: each create that finds its pool
    /// empty adds one (up to N) until 5 minutes pass without such a create, so the next burst
    /// of the same size is served from the pool. At most `--prestart`: the pool keeps its
    /// size. Default: 4 × `--prestart`.
    #[arg(long, env = "BURROW_PRESTART_MAX", value_name = "N")]
    prestart_max: Option<usize>,
    /// Pre-started VMs kept ready per image in use (a create of a VM with the default cpus,
    /// memory, disk and pids limit takes one). Default: 1 where VMs run on KVM, else 0 (under
    /// TCG an idle VM costs a share of a core).
    #[arg(long, env = "BURROW_PRESTART_VM", value_name = "N")]
    prestart_vm: Option<usize>,
    /// Test mode: on SIGTERM/SIGINT destroy every sandbox, release the pool and remove the
    /// data dir. Never use it for real data.
    #[arg(long, hide = true)]
    ephemeral: bool,
}

/// The host's memory (`MemTotal`), 0 when unknown.
fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb << 10)
}

fn find_agent(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating burrowd's own executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let profile = dir.file_name().map(|s| s.to_owned()).unwrap_or_default();
    let mut candidates = vec![dir.join("burrow-agent")];
    if let Some(target) = dir.parent() {
        candidates.insert(
            0,
            target
                .join("x86_64-unknown-linux-musl")
                .join(&profile)
                .join("burrow-agent"),
        );
    }
    candidates.push(PathBuf::from("/usr/local/lib/burrow/burrow-agent"));
    candidates.push(PathBuf::from("/usr/lib/burrow/burrow-agent"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "burrow-agent binary not found next to burrowd; pass --agent-bin (build it with scripts/build.sh)",
    )
}

/// The admin token: the root macaroon of the daemon's token key (no caveats), written to
/// `DATA_DIR/admin.token` (0600) on first start. A token from before macaroons is replaced.
fn admin_token(data_dir: &Path, key: &[u8]) -> anyhow::Result<String> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if burrow_macaroon::Macaroon::decode(t.trim()).is_ok_and(|m| m.verify(key).is_ok()) => {
            return Ok(t.trim().to_owned());
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "replacing an admin token that is not a valid macaroon")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("reading {}", path.display())),
    }
    let token =
        burrow_macaroon::Macaroon::mint(key, &burrow_macaroon::Macaroon::random_id("admin"), &[]).encode();
    let tmp = data_dir.join(".admin.token.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

async fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!("another burrowd is already serving on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // rmcp logs each stateless MCP request at info: one per tool call.
            tracing_subscriber::EnvFilter::try_from_env("BURROW_LOG")
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("burrowd must run as root (it creates namespaces, cgroups and btrfs subvolumes)");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // 0711: sandbox root (an unprivileged host uid) must traverse to its root tree, but may
    // not list the data dir. Secrets in it (admin.token, state.db) are 0600 themselves.
    std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o711))?;
    let data_dir = args.data_dir.canonicalize()?;

    let mut cfg = Config::with_data_dir(data_dir.clone());
    cfg.agent_bin = find_agent(args.agent_bin)?;
    cfg.container.runc_bin = args.runc;
    cfg.vm = (args.vm == "on").then(|| burrow_core::config::VmSettings {
        qemu_bin: args.qemu,
        guest_dir: args.vm_guest_dir,
        accel: args.vm_accel.as_deref().map(|a| match a {
            "kvm" => burrow_engine::vm::Accel::Kvm,
            _ => burrow_engine::vm::Accel::Tcg,
        }),
    });
    cfg.default_engine = args
        .default_engine
        .as_deref()
        .and_then(burrow_api::EngineKind::parse);
    cfg.pool_kind = match args.pool.as_str() {
        "btrfs" => PoolKind::Btrfs,
        "dir" => PoolKind::Dir,
        _ => PoolKind::Auto,
    };
    cfg.prestart_vm = args.prestart_vm;
    cfg.prestart = args
        .prestart
        .unwrap_or_else(|| if host_memory_bytes() >= 4 << 30 { 2 } else { 0 });
    cfg.prestart_max = args.prestart_max.unwrap_or(cfg.prestart * 4);
    cfg.pool_size_bytes = args.pool_size_gb << 30;
    cfg.pool_reserve_bytes = args.pool_reserve_mb.map(|mb| mb << 20);
    cfg.image_cache_dir = args.image_cache;
    cfg.uid_base = args.uid_base;
    cfg.base_domain = args.base_domain;
    cfg.debian_mirror = args.debian_mirror;
    if args.network == "on" {
        let mut net = burrow_core::network::NetSettings::new(args.subnet);
        net.default_mode = match args.default_network.as_str() {
            "policy" => burrow_api::NetworkMode::Policy,
            "none" => burrow_api::NetworkMode::None,
            _ => burrow_api::NetworkMode::Open,
        };
        net.dns_upstreams = if args.dns_upstreams.is_empty() {
            burrowd::egress::host_resolvers()
        } else {
            args.dns_upstreams
        };
        net.extra_roots = args.egress_ca;
        net.uplink_only = (!args.uplink_only.is_empty()).then_some(args.uplink_only);
        net.dns_port = args.dns_port;
        net.proxy_port = args.proxy_port;
        net.transparent_http_port = args.proxy_port + 1;
        net.transparent_tls_port = args.proxy_port + 2;
        cfg.network = Some(net);
    }

    if args.lxcfs != "off" {
        let dir = args.lxcfs_dir.clone().unwrap_or_else(|| {
            let tag = burrow_core::config::fnv1a(data_dir.to_string_lossy().as_bytes()) as u32;
            PathBuf::from(format!("/run/burrow/lxcfs-{tag:08x}"))
        });
        let lxcfs = Arc::new(burrow_core::config::Lxcfs::new(&args.lxcfs, dir));
        // Now rather than at the first sandbox start: a missing lxcfs is said at once, and
        // sandboxes adopted below keep what they have.
        let l = lxcfs.clone();
        tokio::task::spawn_blocking(move || l.ensure()).await?;
        cfg.lxcfs = Some(lxcfs);
    }
    let lxcfs = cfg.lxcfs.clone();

    let unix = bind_unix(&args.socket).await?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = tcp.local_addr()?;
    cfg.public_port = addr.port();
    std::fs::write(data_dir.join("burrowd.addr"), addr.to_string())?;

    // The in-sandbox API (/.burrow/api.sock) of each sandbox, served by this HTTP layer. The
    // manager calls this while it reconciles, before it exists for us: the served tasks wait
    // for it on a watch channel.
    let (mgr_tx, mgr_rx) = tokio::sync::watch::channel::<Option<std::sync::Weak<Manager>>>(None);
    let inside: burrow_core::InsideApiServer = Arc::new(move |id, listener| {
        let mut rx = mgr_rx.clone();
        tokio::spawn(async move {
            let Ok(listener) = tokio::net::UnixListener::from_std(listener) else {
                return;
            };
            let Ok(weak) = rx.wait_for(|m| m.is_some()).await.map(|m| m.clone()) else {
                return;
            };
            let Some(mgr) = weak.and_then(|w| w.upgrade()) else {
                return;
            };
            let _ = axum::serve(listener, burrowd::api::checkpoints::inside::router(mgr, id)).await;
        })
        .abort_handle()
    });
    let mgr = burrow_core::open(cfg, Some(inside))
        .await
        .map_err(|e| anyhow::anyhow!(burrow_core::error::chain(&e)))?;
    let _ = mgr_tx.send(Some(Arc::downgrade(&mgr)));
    let egress = burrowd::egress::start(&mgr).await?;
    let token = admin_token(&data_dir, mgr.token_key())?;
    let state = AppState {
        mgr: mgr.clone(),
        admin_token: Arc::new(token),
        exec_budget: Arc::new(burrowd::api::ExecBudget::new(
            usize::try_from(args.exec_buffer_budget_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        )),
        mcp: Arc::new(burrowd::api::mcp::McpEndpoint::new(args.socket.clone(), addr)),
        apps: Arc::default(),
    };

    tracing::info!(socket = %args.socket.display(), tcp = %addr, data_dir = %data_dir.display(), "burrowd serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serve_unix = {
        let mut rx = stop_rx.clone();
        axum::serve(unix, router(state.clone(), Transport::Unix))
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .into_future()
    };
    let serve_tcp = {
        let mut rx = stop_rx.clone();
        // The peer address feeds ingress's X-Forwarded-For.
        let app = router(state.clone(), Transport::Tcp).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(tcp, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .into_future()
    };
    let unix_task = tokio::spawn(serve_unix);
    let tcp_task = tokio::spawn(serve_tcp);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down; sandboxes keep running");
    let _ = stop_tx.send(true);
    // Open WebSocket sessions would hold graceful shutdown forever; bound it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        let _ = unix_task.await;
        let _ = tcp_task.await;
    })
    .await;
    let _ = std::fs::remove_file(&args.socket);
    drop(egress);
    if args.ephemeral {
        tracing::info!("ephemeral: destroying every sandbox and the data dir");
        if let Err(e) = mgr.destroy_all().await {
            tracing::error!(error = %burrow_core::error::chain(&e), "destroying sandboxes");
        }
        drop(state);
        if let Err(e) = burrow_storage::release_pool(&data_dir) {
            tracing::error!(error = %e, "releasing the pool");
        }
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    // Unmounted only if no sandbox uses it: running sandboxes keep reading it, and the next
    // daemon adopts it.
    if let Some(lxcfs) = lxcfs {
        let _ = tokio::task::spawn_blocking(move || lxcfs.release()).await;
    }
    Ok(())
}
