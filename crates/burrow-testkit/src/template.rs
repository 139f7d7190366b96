//! The template data dir: a daemon's data dir with the `base` image imported into its
//! loop-backed btrfs pool, made once per host and `burrowd` build by a real daemon, then
//! copied (sparse: about 650 MB of data in a 16 GiB file, 0.2–1 s) into each test daemon's
//! fresh data dir, so that ~60 daemons a run do not each extract and shift the 300 MB image
//! (about 2 s of CPU each). The copy is a real pool: the kernel mounts clones of one btrfs
//! side by side (each gets a temporary fsid). Keys and the admin token are left out, so every
//! daemon makes its own on first start, as a real one does.
//!
//! Only for daemons with the default pool (`--pool-size-gb`, `--pool`, `--image-cache` and
//! `--uid-base` change what the template holds); `BURROW_TEST_TEMPLATE=0` turns it off.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::bin_dir;

/// Arguments that make a daemon's data dir differ from the template's.
const OWN_POOL_ARGS: &[&str] = &["--pool-size-gb", "--pool", "--image-cache", "--uid-base"];

/// The template's data dir for daemons started with `extra_args`, made if needed; `None`
/// when those arguments need a pool of their own, when turned off, or when it could not be
/// made (said on stderr: the daemon then imports the image itself, as without a template).
pub(crate) fn data_dir_for(extra_args: &[String]) -> Option<PathBuf> {
    if std::env::var_os("BURROW_TEST_TEMPLATE").is_some_and(|v| v == "0")
        || extra_args.iter().any(|a| OWN_POOL_ARGS.contains(&a.as_str()))
    {
        return None;
    }
    static TEMPLATE: OnceLock<Option<PathBuf>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| match made_or_make() {
            Ok(dir) => Some(dir),
            Err(e) => {
                eprintln!("no template data dir (each daemon imports the base image): {e}");
                None
            }
        })
        .clone()
}

/// Copies the template's data dir to `to` (which must not exist), without its keys and
/// admin token.
pub(crate) fn copy_to(template: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o711)).map_err(|e| e.to_string())?;
    for entry in std::fs::read_dir(template).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        if name == "keys" || name == "admin.token" || name == "burrowd.addr" {
            continue;
        }
        run(Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(entry.path())
            .arg(to.join(&name)))?;
    }
    Ok(())
}

/// `/var/tmp/burrow-template-<key>/data`, where the key names the burrowd build and the
/// base image tarball; made under a lock (test processes of one run share it), and older
/// templates removed when a new one is made.
fn made_or_make() -> Result<PathBuf, String> {
    let burrowd = bin_dir().join("burrowd");
    let meta = std::fs::metadata(&burrowd).map_err(|e| format!("{}: {e}", burrowd.display()))?;
    let mut what = format!("{:?} {}", meta.modified().ok(), meta.len());
    let mut tarballs: Vec<String> = std::fs::read_dir("/var/cache/burrow/images")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tar"))
                .collect()
        })
        .unwrap_or_default();
    tarballs.sort();
    what.push_str(&tarballs.join(","));
    let key = what.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let root = PathBuf::from(format!("/var/tmp/burrow-template-{key:016x}"));
    let data = root.join("data");

    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/var/tmp/burrow-template.lock")
        .map_err(|e| format!("the template lock: {e}"))?;
    nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking the template: {e}"))
        .and_then(|_held| {
            if root.join("ready").exists() {
                return Ok(data.clone());
            }
            for old in std::fs::read_dir("/var/tmp")
                .map_err(|e| e.to_string())?
                .flatten()
            {
                if old.file_name().to_string_lossy().starts_with("burrow-template-") && old.path().is_dir() {
                    release_pool(&old.path().join("data"));
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
            make(&root, &data)?;
            std::fs::write(root.join("ready"), b"").map_err(|e| e.to_string())?;
            Ok(data.clone())
        })
}

/// Runs a daemon on `data` until the base image is ready, stops it and releases its pool.
fn make(root: &Path, data: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).map_err(|e| e.to_string())?;
    let socket = root.join("burrowd.sock");
    let log = std::fs::File::create(root.join("burrowd.log")).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(bin_dir().join("burrowd"))
        .arg("--data-dir")
        .arg(data)
        .arg("--socket")
        .arg(&socket)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--pool-size-gb",
            "16",
            "--network",
            "off",
        ])
        .args([
            "--vm",
            "off",
            "--lxcfs",
            "off",
            "--prestart",
            "0",
            "--prestart-vm",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawning burrowd: {e}"))?;
    // The very first daemon on a host builds the base tarball (minutes); later ones import it.
    let deadline = Instant::now() + Duration::from_secs(900);
    let ready = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("burrowd exited while making the template ({status})"));
        }
        let images = get(&socket, "/v1/images");
        if images.contains(r#""name":"base""#) && images.contains(r#""status":"ready""#) {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err("the base image was not ready within 15 minutes".to_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    );
    let _ = child.wait();
    release_pool(data);
    ready?;
    eprintln!(
        "made the template data dir {} in {:.1} s",
        data.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Unmounts the pool of `data` and detaches its loop device (a stopped daemon that is not
/// ephemeral keeps them).
fn release_pool(data: &Path) {
    let _ = Command::new("umount")
        .arg(data.join("pool"))
        .stderr(Stdio::null())
        .status();
    if let Ok(out) = Command::new("losetup")
        .arg("-j")
        .arg(data.join("pool.img"))
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(dev) = line.split(':').next() {
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The body of `GET path` on the daemon's unix socket ("" when it does not answer).
fn get(socket: &Path, path: &str) -> String {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: burrow\r\n\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
