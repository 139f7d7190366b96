//! The guest side of the vm engine, as the host prepares it: the guest kernel kit installed
//! by `scripts/guest-kit.sh` ([`GuestKernel`]) and the initramfs that makes the agent the
//! guest's init ([`initramfs::build_initramfs`]). What the agent does at boot lives in the
//! agent (`burrow-agent/src/guest.rs`); how QEMU is driven lives in the vm engine.

pub mod initramfs;

use std::io;
use std::path::{Path, PathBuf};

pub use initramfs::build_initramfs;

/// Checks that `path` is a statically linked ELF executable (no program interpreter): the
/// guest's initramfs has no libc, so a dynamically linked agent cannot start there.
pub fn require_static(path: &Path) -> io::Result<()> {
    let bytes = std::fs::read(path)?;
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} {why}; the guest needs the static agent (the musl build of scripts/build.sh)",
                path.display()
            ),
        )
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return Err(bad("is not a 64-bit ELF executable"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes")) as usize;
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if at + 4 > bytes.len() {
            return Err(bad("has a truncated program header table"));
        }
        // PT_INTERP: the path of a dynamic loader.
        if u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) == 3 {
            return Err(bad("is dynamically linked"));
        }
    }
    Ok(())
}

/// Where `scripts/guest-kit.sh` installs the guest kernel kit.
pub const DEFAULT_GUEST_DIR: &str = "/usr/local/lib/burrow/guest";

/// A guest kernel kit: Debian's `linux-image-cloud-amd64` bzImage, its release, and the
/// decompressed modules the guest loads at boot (`modules/load.order`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    /// The same kernel uncompressed (ELF), when the kit has it: QEMU boots it through its
    /// PVH entry without decompressing (about 0.5 s faster under TCG). Prefer it.
    pub vmlinux: Option<PathBuf>,
    /// e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// Holds the `*.ko` files and `load.order`.
    pub modules_dir: PathBuf,
}

impl GuestKernel {
    /// Checks the kit in `dir` (normally [`DEFAULT_GUEST_DIR`]); the error names what is
    /// missing and how to install it.
    pub fn find(dir: &Path) -> io::Result<Self> {
        let missing = |what: &str| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "guest kernel kit incomplete: {} has no {what}; install it with \
                     scripts/guest-kit.sh (Debian's linux-image-cloud-amd64, unpacked, never installed on the host)",
                    dir.display()
                ),
            )
        };
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.metadata().is_ok_and(|m| m.is_file() && m.len() > 0) {
            return Err(missing("vmlinuz"));
        }
        let release = std::fs::read_to_string(dir.join("kernel.release"))
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| missing("kernel.release"))?;
        let vmlinux = Some(dir.join("vmlinux")).filter(|p| {
            let mut magic = [0u8; 4];
            std::fs::File::open(p)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
                .is_ok_and(|()| &magic == b"\x7fELF")
        });
        let modules_dir = dir.join("modules");
        let order = std::fs::read_to_string(modules_dir.join("load.order"))
            .map_err(|_| missing("modules/load.order"))?;
        for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !valid_module_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: bad module name {name:?} in load.order",
                        modules_dir.display()
                    ),
                ));
            }
            if !modules_dir.join(name).is_file() {
                return Err(missing(&format!("modules/{name} (listed in load.order)")));
            }
        }
        Ok(Self {
            vmlinuz,
            vmlinux,
            release,
            modules_dir,
        })
    }

    /// The kernel image to hand QEMU's `-kernel`: the uncompressed one when there is one.
    pub fn boot_image(&self) -> &Path {
        self.vmlinux.as_deref().unwrap_or(&self.vmlinuz)
    }

    /// The modules in load order.
    pub fn modules(&self) -> io::Result<Vec<String>> {
        let order = std::fs::read_to_string(self.modules_dir.join("load.order"))?;
        Ok(order
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

/// A plain file name ending in `.ko` (load.order names files in the same directory).
fn valid_module_name(name: &str) -> bool {
    name.ends_with(".ko") && !name.contains('/') && !name.starts_with('.') && name.len() < 256
}

#[cfg(test)]
mod tests {

    /// A dynamically linked binary (the host's `ls`) is refused by name; busybox-static (the
    /// control) passes the same check.
    #[test]
    fn the_guest_agent_must_be_static() {
        let e = super::require_static(Path::new("/bin/ls")).unwrap_err();
        assert!(e.to_string().contains("dynamically linked"), "{e}");
        burrow_testkit::require!(
            Path::new("/bin/busybox").exists(),
            "no /bin/busybox (busybox-static)"
        );
        super::require_static(Path::new("/bin/busybox")).unwrap();
        assert!(super::require_static(Path::new("/etc/hostname")).is_err());
    }

    use super::*;

    #[test]
    fn find_validates_the_kit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let err = GuestKernel::find(dir).unwrap_err().to_string();
        assert!(err.contains("vmlinuz") && err.contains("guest-kit.sh"), "{err}");
        std::fs::write(dir.join("vmlinuz"), b"bz").unwrap();
        let err = GuestKernel::find(dir).unwrap_err().to_string();
        assert!(err.contains("kernel.release"), "{err}");
        std::fs::write(dir.join("kernel.release"), "6.1.0-1-cloud-amd64\n").unwrap();
        std::fs::create_dir(dir.join("modules")).unwrap();
        let err = GuestKernel::find(dir).unwrap_err().to_string();
        assert!(err.contains("load.order"), "{err}");
        std::fs::write(dir.join("modules/load.order"), "virtio.ko\nvirtio_blk.ko\n").unwrap();
        std::fs::write(dir.join("modules/virtio.ko"), b"m").unwrap();
        let err = GuestKernel::find(dir).unwrap_err().to_string();
        assert!(err.contains("virtio_blk.ko"), "{err}");
        std::fs::write(dir.join("modules/virtio_blk.ko"), b"m").unwrap();
        let kit = GuestKernel::find(dir).unwrap();
        assert_eq!(kit.release, "6.1.0-1-cloud-amd64");
        assert_eq!(kit.boot_image(), dir.join("vmlinuz"));
        // An uncompressed kernel is preferred, but only if it is an ELF file.
        std::fs::write(dir.join("vmlinux"), b"junk").unwrap();
        assert_eq!(GuestKernel::find(dir).unwrap().vmlinux, None);
        std::fs::write(dir.join("vmlinux"), b"\x7fELF...").unwrap();
        let kit = GuestKernel::find(dir).unwrap();
        assert_eq!(kit.boot_image(), dir.join("vmlinux"));
        assert_eq!(kit.modules().unwrap(), ["virtio.ko", "virtio_blk.ko"]);
        std::fs::write(dir.join("modules/load.order"), "../etc/passwd\n").unwrap();
        assert!(GuestKernel::find(dir).is_err());
    }
}
