//! Peers measured in the same run as Burrow, on the same machine: today LXC (Debian's `lxc`,
//! privileged, as root), on a btrfs pool this module makes on a loop file and tears down after
//! (also on error and, through `cancel`, on Ctrl-C).
//!
//! The base rootfs is Burrow's own base image tarball (never downloaded: `lxc-create -t
//! download` is not used), extracted into a btrfs subvolume with a config written here. LXC's
//! init is `sleep infinity`, the cheapest boot it can do; its network is either `empty` (no
//! interface) or a veth pair whose host end is attached to nothing (nothing routed anywhere),
//! the second being like for like with Burrow's netns + veth wiring.
//!
//! This module owns only the peer's side; it never talks to burrowd.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context as _;

use super::{Figure, Stat, ms, stats};

/// A pair of figures Burrow is compared on. `{mb}` in a key is the data written before a
/// checkpoint (the first `--disk-mb`).
struct Comparison {
    burrow: &'static str,
    peer: &'static str,
    label: &'static str,
    /// Target on the ratio Burrow / peer.
    target: Option<(&'static str, f64)>,
}

const COMPARISONS: &[Comparison] = &[
    Comparison {
        burrow: "tti_ms",
        peer: "lxc_clone_start_attach_ms",
        label: "create → first exec / LXC copy -s + start + attach (no net)",
        target: Some(("<=", 0.5)),
    },
    Comparison {
        burrow: "tti_ms",
        peer: "lxc_clone_start_attach_veth_ms",
        label: "create → first exec / LXC copy -s + start + attach (veth)",
        target: Some(("<=", 0.5)),
    },
    Comparison {
        burrow: "tti_boot_ms",
        peer: "lxc_clone_start_attach_veth_ms",
        label: "create → first exec, booted / LXC copy -s + start + attach (veth)",
        target: None,
    },
    Comparison {
        burrow: "restore_{mb}mb_ms",
        peer: "lxc_restore_start_attach_{mb}mb_ms",
        label: "restore → first exec / LXC snapshot -r + start + attach",
        target: None,
    },
    Comparison {
        burrow: "fork_{mb}mb_ms",
        peer: "lxc_fork_start_attach_{mb}mb_ms",
        label: "fork → first exec / LXC copy -s of a container + start + attach",
        target: None,
    },
];

/// A Burrow / peer ratio of medians, for the JSON and the table.
pub(super) struct Ratio {
    pub(super) label: String,
    pub(super) burrow_key: String,
    pub(super) peer_key: String,
    pub(super) burrow_median: f64,
    pub(super) peer_median: f64,
    pub(super) target: Option<(&'static str, f64)>,
}

impl Ratio {
    pub(super) fn value(&self) -> f64 {
        stats::ratio(self.burrow_median, self.peer_median)
    }
    pub(super) fn verdict(&self) -> &'static str {
        super::verdict(self.target, self.value())
    }
}

/// The ratios whose two figures are both in `figures`.
pub(super) fn ratios(figures: &[Figure], mb: Option<u64>) -> Vec<Ratio> {
    let find = |key: &str| figures.iter().find(|f| f.key == key);
    let mb = mb.map(|m| m.to_string()).unwrap_or_default();
    COMPARISONS
        .iter()
        .filter_map(|c| {
            let (ours, theirs) = (c.burrow.replace("{mb}", &mb), c.peer.replace("{mb}", &mb));
            let (o, t) = (find(&ours)?, find(&theirs)?);
            Some(Ratio {
                label: c.label.into(),
                burrow_median: o.median(),
                peer_median: t.median(),
                burrow_key: ours,
                peer_key: theirs,
                target: c.target,
            })
        })
        .collect()
}

/// What the LXC side needs.
pub(super) struct LxcOptions {
    /// Samples for the clone figures (restore and fork take at most 5, like Burrow's).
    pub(super) runs: usize,
    /// MB written in the container before its snapshot and its copies.
    pub(super) mb: u64,
    /// Burrow's base image tarball, the containers' rootfs.
    pub(super) rootfs_tar: PathBuf,
}

/// The newest Burrow base image tarball in `cache` (what burrowd extracts into its pool).
pub(super) fn base_tarball(cache: &Path) -> anyhow::Result<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("base-") && n.ends_with(".tar")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow::anyhow!(
            "no base-*.tar in {} (start burrowd once so it builds its base image)",
            cache.display()
        )
    })
}

/// Measures LXC: copy + start + attach (no net and veth), the copy of a container with `mb`
/// MB written (fork), and snapshot restore + start + attach. Checks `cancel` between steps.
pub(super) fn lxc_figures(opts: &LxcOptions, cancel: &AtomicBool) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "LXC is measured privileged: run as root"
    );
    for tool in [
        "lxc-copy",
        "lxc-start",
        "lxc-attach",
        "lxc-snapshot",
        "mkfs.btrfs",
    ] {
        anyhow::ensure!(which(tool), "{tool} not found (apt-get install lxc btrfs-progs)");
    }
    let size_mb = 2048 + 4 * opts.mb;
    let pool = LoopPool::create(size_mb)?;
    let lxc = Lxc { pool: &pool, cancel };
    lxc.make_base("base", &opts.rootfs_tar, "empty")?;
    // The veth variant: a copy of the base whose clones get a veth pair linked to nothing.
    lxc.copy("base", "basev")?;
    set_net(&pool.path.join("basev/config"), "veth")?;

    let mut figures = Vec::new();
    let mut clone = |base: &str, key: &str, label: &str, runs: usize| -> anyhow::Result<()> {
        let (mut total, mut copy, mut start, mut attach, mut stop) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            let name = format!("{base}-c{i}");
            let t = Instant::now();
            lxc.copy(base, &name)?;
            let t1 = ms(t.elapsed());
            lxc.start(&name)?;
            let t2 = ms(t.elapsed());
            lxc.attach_true(&name)?;
            let t3 = ms(t.elapsed());
            total.push(t3);
            copy.push(t1);
            start.push(t2 - t1);
            attach.push(t3 - t2);
            let t = Instant::now();
            lxc.stop(&name)?;
            stop.push(ms(t.elapsed()));
            lxc.destroy(&name)?;
        }
        figures.push(lxc_figure(key, label, total));
        if base == "base" {
            figures.push(lxc_figure(
                "lxc_copy_ms",
                "LXC: lxc-copy -s (btrfs snapshot)",
                copy,
            ));
            figures.push(lxc_figure("lxc_start_ms", "LXC: lxc-start (init: sleep)", start));
            figures.push(lxc_figure(
                "lxc_attach_true_ms",
                "LXC: lxc-attach -- true",
                attach,
            ));
            figures.push(lxc_figure("lxc_stop_ms", "LXC: lxc-stop -k (in no ratio)", stop));
        }
        Ok(())
    };
    clone(
        "base",
        "lxc_clone_start_attach_ms",
        "LXC: copy -s + start + attach (no net)",
        opts.runs,
    )?;
    clone(
        "basev",
        "lxc_clone_start_attach_veth_ms",
        "LXC: copy -s + start + attach (veth)",
        opts.runs,
    )?;

    // A container with data: its copies are the fork equivalent; its snapshot is restored.
    let mb = opts.mb;
    lxc.copy("basev", "src")?;
    write_blob(&pool.path.join("src/rootfs/root/blob"), mb)?;
    clone(
        "src",
        &format!("lxc_fork_start_attach_{mb}mb_ms"),
        &format!("LXC: copy -s of a container ({mb} MB) + start + attach"),
        opts.runs.min(5),
    )?;
    // lxc-snapshot needs the container stopped, both to take and to restore; Burrow's restore
    // also stops the running sandbox, which LXC's figure leaves out (lxc_stop_ms above).
    lxc.run("lxc-snapshot", &["-n", "src"])?;
    let mut restore = Vec::new();
    for _ in 0..opts.runs.min(5) {
        let t = Instant::now();
        lxc.run("lxc-snapshot", &["-n", "src", "-r", "snap0"])?;
        lxc.start("src")?;
        lxc.attach_true("src")?;
        restore.push(ms(t.elapsed()));
        lxc.stop("src")?;
    }
    figures.push(lxc_figure(
        &format!("lxc_restore_start_attach_{mb}mb_ms"),
        &format!("LXC: snapshot -r ({mb} MB) + start + attach"),
        restore,
    ));
    pool.teardown()?;
    Ok(figures)
}

fn lxc_figure(key: &str, label: &str, samples: Vec<f64>) -> Figure {
    Figure {
        key: key.into(),
        label: label.into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples,
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

/// `mb` MB of random data at `path` (incompressible, like the sandbox's blob).
fn write_blob(path: &Path, mb: u64) -> anyhow::Result<()> {
    let st = Command::new("head")
        .args(["-c", &format!("{mb}M"), "/dev/urandom"])
        .stdout(std::fs::File::create(path)?)
        .status()?;
    anyhow::ensure!(st.success(), "writing {mb} MB to {}", path.display());
    Ok(())
}

/// Rewrites a container config's network type (`empty` or `veth`).
fn set_net(config: &Path, kind: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("lxc.net."))
        .map(str::to_owned)
        .collect();
    out.extend(net_lines(kind));
    std::fs::write(config, out.join("\n") + "\n")?;
    Ok(())
}

/// A veth's host end is attached to nothing (no `lxc.net.0.link`): nothing is routed.
fn net_lines(kind: &str) -> Vec<String> {
    let mut l = vec![format!("lxc.net.0.type = {kind}")];
    if kind == "veth" {
        l.push("lxc.net.0.flags = up".into());
    }
    l
}

/// The LXC tools pointed at the bench pool.
struct Lxc<'a> {
    pool: &'a LoopPool,
    cancel: &'a AtomicBool,
}

impl Lxc<'_> {
    /// Runs LXC tool `tool` on the bench pool (`-P` first: `lxc-attach` passes what follows
    /// `--` to the command).
    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        anyhow::ensure!(!self.cancel.load(Ordering::Relaxed), "interrupted");
        run(Command::new(tool).arg("-P").arg(&self.pool.path).args(args))
    }

    /// A stopped container `name` whose rootfs is `tar` in its own subvolume.
    fn make_base(&self, name: &str, tar: &Path, net: &str) -> anyhow::Result<()> {
        let dir = self.pool.path.join(name);
        std::fs::create_dir_all(&dir)?;
        let rootfs = dir.join("rootfs");
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(&rootfs))?;
        run(Command::new("tar")
            .args(["--numeric-owner", "-xf"])
            .arg(tar)
            .arg("-C")
            .arg(&rootfs))?;
        let mut config = [
            format!("lxc.uts.name = {name}"),
            format!("lxc.rootfs.path = btrfs:{}", rootfs.display()),
            "lxc.include = /usr/share/lxc/config/common.conf".into(),
            "lxc.arch = x86_64".into(),
            // The base image has no init system; the cheapest init LXC can start.
            "lxc.init.cmd = /usr/bin/sleep infinity".into(),
            "lxc.apparmor.profile = unconfined".into(),
            "lxc.autodev = 1".into(),
            "lxc.tty.max = 0".into(),
            "lxc.pty.max = 16".into(),
        ]
        .to_vec();
        config.extend(net_lines(net));
        std::fs::write(dir.join("config"), config.join("\n") + "\n")?;
        Ok(())
    }

    fn copy(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.run("lxc-copy", &["-n", from, "-N", to, "-s"])
    }

    fn start(&self, name: &str) -> anyhow::Result<()> {
        self.pool.running(name, true);
        self.run("lxc-start", &["-n", name])
    }

    fn attach_true(&self, name: &str) -> anyhow::Result<()> {
        self.run("lxc-attach", &["-n", name, "--", "true"])
    }

    fn stop(&self, name: &str) -> anyhow::Result<()> {
        self.run("lxc-stop", &["-n", name, "-k"])?;
        self.pool.running(name, false);
        Ok(())
    }

    fn destroy(&self, name: &str) -> anyhow::Result<()> {
        self.run("lxc-destroy", &["-n", name])
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    run_output(cmd).map(drop)
}

fn run_output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{shown}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A btrfs filesystem on a sparse loop file in a temp dir, mounted at `path` (the LXC path).
/// Dropping it stops what still runs in it, unmounts it, detaches the loop device and removes
/// the files, whatever happened before.
struct LoopPool {
    dir: PathBuf,
    image: PathBuf,
    path: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    running: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl LoopPool {
    fn create(size_mb: u64) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("burrow-bench-lxc-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut pool = LoopPool {
            image: dir.join("pool.img"),
            path: dir.join("lxc"),
            dir,
            loop_dev: None,
            mounted: false,
            running: Default::default(),
        };
        std::fs::create_dir_all(&pool.path)?;
        std::fs::File::create(&pool.image)?.set_len(size_mb << 20)?;
        run(Command::new("mkfs.btrfs").arg("-q").arg(&pool.image))?;
        let dev = run_output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&pool.image),
        )?;
        pool.loop_dev = Some(dev.clone());
        run(Command::new("mount").arg(&dev).arg(&pool.path))?;
        pool.mounted = true;
        Ok(pool)
    }

    fn running(&self, name: &str, yes: bool) {
        let mut r = self.running.lock().expect("not poisoned");
        if yes {
            r.insert(name.to_owned());
        } else {
            r.remove(name);
        }
    }

    /// Tears down and reports the first failure (Drop does the same, silently).
    fn teardown(mut self) -> anyhow::Result<()> {
        self.release()
    }

    fn release(&mut self) -> anyhow::Result<()> {
        let running = std::mem::take(&mut *self.running.lock().expect("not poisoned"));
        for name in running {
            let _ = Command::new("lxc-stop")
                .arg("-P")
                .arg(&self.path)
                .args(["-n", &name, "-k"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let mut first: anyhow::Result<()> = Ok(());
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(&self.path)) {
                // Something still holds it: detach it lazily so the loop device can go.
                let _ = run(Command::new("umount").arg("-l").arg(&self.path));
                first = Err(e);
            }
            self.mounted = false;
        }
        if let Some(dev) = self.loop_dev.take()
            && let Err(e) = run(Command::new("losetup").arg("-d").arg(&dev))
            && first.is_ok()
        {
            first = Err(e);
        }
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
            && first.is_ok()
        {
            first = Err(e.into());
        }
        first
    }
}

impl Drop for LoopPool {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!(
                "bench: tearing down the LXC pool in {}: {e:#}",
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(key: &str, samples: Vec<f64>) -> Figure {
        lxc_figure(key, key, samples)
    }

    #[test]
    fn ratios_pair_burrow_with_lxc_in_the_same_run() {
        let figures = vec![
            fig("tti_ms", vec![30.0, 40.0, 50.0]),
            fig("lxc_clone_start_attach_ms", vec![100.0, 200.0, 300.0]),
            fig("restore_10mb_ms", vec![20.0]),
            fig("lxc_restore_start_attach_10mb_ms", vec![80.0]),
        ];
        let r = ratios(&figures, Some(10));
        // The veth and fork pairs have no LXC figure here: left out, not NaN rows.
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].burrow_key, "tti_ms");
        assert_eq!((r[0].burrow_median, r[0].peer_median), (40.0, 200.0));
        assert_eq!(r[0].value(), 0.2);
        assert_eq!(r[0].verdict(), "meets");
        assert_eq!(r[1].peer_key, "lxc_restore_start_attach_10mb_ms");
        assert_eq!(r[1].value(), 0.25);
        assert_eq!(r[1].verdict(), "");

        let slow = vec![
            fig("tti_ms", vec![150.0]),
            fig("lxc_clone_start_attach_ms", vec![200.0]),
        ];
        assert_eq!(ratios(&slow, None)[0].verdict(), "misses");
        assert!(ratios(&[fig("tti_ms", vec![1.0])], None).is_empty());
    }

    #[test]
    fn net_config_lines() {
        assert_eq!(net_lines("empty"), ["lxc.net.0.type = empty"]);
        assert_eq!(
            net_lines("veth"),
            ["lxc.net.0.type = veth", "lxc.net.0.flags = up"]
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "lxc.uts.name = a\nlxc.net.0.type = empty\nlxc.arch = x86_64\n",
        )
        .unwrap();
        set_net(&cfg, "veth").unwrap();
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert_eq!(
            text,
            "lxc.uts.name = a\nlxc.arch = x86_64\nlxc.net.0.type = veth\nlxc.net.0.flags = up\n"
        );
    }

    #[test]
    fn base_tarball_is_the_newest_base_tar() {
        let dir = tempfile::tempdir().unwrap();
        assert!(base_tarball(dir.path()).is_err());
        std::fs::write(dir.path().join("base-bookworm.lock"), "").unwrap();
        std::fs::write(dir.path().join("base-bookworm-1.tar"), "").unwrap();
        assert_eq!(
            base_tarball(dir.path()).unwrap(),
            dir.path().join("base-bookworm-1.tar")
        );
    }
}
