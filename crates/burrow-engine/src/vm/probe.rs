//! Which accelerator QEMU gets: KVM only where a guest actually boots with it. A
//! `/dev/kvm` that exists is not enough: some hosts (nested, paravirtual) expose one on
//! which a stock kernel hangs at boot.
//!
//! The test boots the guest kernel with no root filesystem: a kernel that got as far as
//! looking for one ("VFS: Unable to mount root fs", then a panic and, with `-no-reboot`,
//! QEMU's exit) booted. The answer is cached per QEMU and kernel version in a host-wide
//! file, so daemons started later (tests start many) do not boot again.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Accel;

/// How long the KVM test boot may take (a working KVM boots this in well under a second).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cached {
    qemu: String,
    kernel: String,
    accel: Accel,
    /// What the test boot showed, for `burrow info`.
    detail: String,
}

/// The accelerator to use, and why. `cache` is the host-wide answer file.
pub fn accel(
    qemu_bin: &Path,
    qemu_version: &str,
    vmlinuz: &Path,
    kernel: &str,
    cache: &Path,
) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm: TCG (emulation, slow)".into());
    }
    if let Some(c) = fs::read(cache)
        .ok()
        .and_then(|t| serde_json::from_slice::<Cached>(&t).ok())
        .filter(|c| c.qemu == qemu_version && c.kernel == kernel)
    {
        return (c.accel, c.detail);
    }
    // One test boot per host at a time: daemons starting together wait for the first.
    let lock = cache.with_extension("lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock);
    let _locked = lock_file
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).ok());
    if let Some(c) = fs::read(cache)
        .ok()
        .and_then(|t| serde_json::from_slice::<Cached>(&t).ok())
        .filter(|c| c.qemu == qemu_version && c.kernel == kernel)
    {
        return (c.accel, c.detail);
    }
    let (accel, detail) = match boot_with_kvm(qemu_bin, vmlinuz) {
        Ok(t) => (Accel::Kvm, format!("KVM (a test boot took {} ms)", t.as_millis())),
        Err(why) => (
            Accel::Tcg,
            format!("TCG (emulation, slow): KVM cannot boot a guest here: {why}"),
        ),
    };
    let c = Cached {
        qemu: qemu_version.to_owned(),
        kernel: kernel.to_owned(),
        accel,
        detail: detail.clone(),
    };
    let tmp = cache.with_extension("tmp");
    if fs::write(&tmp, serde_json::to_vec(&c).expect("serialises")).is_ok() {
        let _ = fs::rename(&tmp, cache);
    }
    (accel, detail)
}

fn boot_with_kvm(qemu_bin: &Path, vmlinuz: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    let mut child = Command::new(qemu_bin)
        .args([
            "-M",
            "microvm,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "128M",
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3"])
        .args(["-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu_bin.display()))?;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t.elapsed() < PROBE_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the test boot did not finish within {PROBE_TIMEOUT:?}"));
            }
        }
    }
    let elapsed = t.elapsed();
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    if out.contains("Unable to mount root") || out.contains("Kernel panic") {
        Ok(elapsed)
    } else {
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        Err(format!(
            "the test boot ended without reaching the kernel's root mount: {last}"
        ))
    }
}
