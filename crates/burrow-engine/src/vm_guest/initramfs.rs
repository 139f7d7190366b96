//! The guest's initramfs: an uncompressed newc cpio archive holding `/init` (the static
//! agent), the modules of the guest kernel kit and the directories the agent mounts on.
//!
//! Uncompressed because the kernel unpacks it faster than it could decompress it, and the
//! file stays on the host (its page cache is shared by every VM). The newc format (see
//! the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`) is a 110-byte
//! ASCII header per entry, the name, and the data, each padded to 4 bytes; it is written
//! here rather than with a crate because it is that small.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::GuestKernel;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes the initramfs for `agent` (the static burrow-agent) with the modules of the
/// guest kernel kit in `guest_dir` to `out`, atomically (a temporary file renamed).
pub fn build_initramfs(agent: &Path, guest_dir: &Path, out: &Path) -> io::Result<()> {
    let kernel = GuestKernel::find(guest_dir)?;
    let modules = kernel.modules()?;
    let agent_file = File::open(agent).map_err(|e| annotate(e, agent))?;
    let agent_len = agent_file.metadata()?.len();

    let dir = out.parent().unwrap_or(Path::new("."));
    let file_name = out
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "initramfs path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut w = CpioWriter::new(BufWriter::new(File::create(&tmp)?));
        for d in ["dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
            w.dir(d, 0o755)?;
        }
        w.char_device("dev/console", 0o600, 5, 1)?;
        w.file("init", 0o755, agent_len, agent_file)?;
        for name in &modules {
            let path = kernel.modules_dir.join(name);
            let f = File::open(&path).map_err(|e| annotate(e, &path))?;
            let len = f.metadata()?.len();
            w.file(&format!("lib/modules/{name}"), 0o644, len, f)?;
        }
        let order = modules.iter().map(|m| format!("{m}\n")).collect::<String>();
        w.file(
            "lib/modules/load.order",
            0o644,
            order.len() as u64,
            order.as_bytes(),
        )?;
        let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, out),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A newc cpio writer. Every entry gets its own inode number, mtime 0 (reproducible) and
/// owner root.
pub struct CpioWriter<W: Write> {
    w: W,
    ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(w: W) -> Self {
        Self { w, ino: 1 }
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: over 4 GiB")))?;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let ino = if name == TRAILER { 0 } else { self.ino };
        self.ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut h = Vec::with_capacity(112 + name.len());
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        h.resize(h.len().next_multiple_of(4), 0);
        self.w.write_all(&h)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let pad = (4 - (len % 4) as usize) % 4;
        self.w.write_all(&[0; 3][..pad])
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | perm, 0, (0, 0))
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(name, S_IFCHR | perm, 0, (major, minor))
    }

    /// A regular file of exactly `len` bytes read from `data`.
    pub fn file(&mut self, name: &str, perm: u32, len: u64, data: impl Read) -> io::Result<()> {
        self.header(name, S_IFREG | perm, len, (0, 0))?;
        let copied = io::copy(&mut data.take(len), &mut self.w)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: changed while being archived ({copied} of {len} bytes)"),
            ));
        }
        self.pad(len)
    }

    /// Writes the trailer and returns the inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 0, (0, 0))?;
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        name: String,
        mode: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Parses a newc archive the way the kernel does, checking magic, alignment and trailer.
    fn parse(mut buf: &[u8]) -> Vec<Entry> {
        let total = buf.len();
        let mut out = Vec::new();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&buf[..6], MAGIC);
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap()
            };
            let (mode, size, rdev) = (field(1), field(6) as usize, (field(9), field(10)));
            let namesize = field(11) as usize;
            let name_end = 110 + namesize;
            assert_eq!(buf[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&buf[110..name_end - 1]).unwrap().to_owned();
            let data_start = name_end.next_multiple_of(4);
            let data = buf[data_start..data_start + size].to_vec();
            buf = &buf[(data_start + size).next_multiple_of(4)..];
            if name == TRAILER {
                assert!(buf.is_empty(), "data after the trailer");
                return out;
            }
            out.push(Entry {
                name,
                mode,
                rdev,
                data,
            });
        }
    }

    #[test]
    fn writes_parseable_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, 5, &b"hello"[..]).unwrap();
        w.file("e", 0o644, 0, &b""[..]).unwrap();
        w.file("abc", 0o644, 3, &b"xyz"[..]).unwrap();
        let entries = parse(&w.finish().unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["dev", "dev/console", "init", "e", "abc"]);
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!(entries[1].mode, 0o020600);
        assert_eq!(entries[1].rdev, (5, 1));
        assert_eq!(entries[2].mode, 0o100755);
        assert_eq!(entries[2].data, b"hello");
        assert!(entries[3].data.is_empty());
        assert_eq!(entries[4].data, b"xyz");
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.file("f", 0o644, 10, &b"abc"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn builds_the_initramfs_from_a_kit() {
        let tmp = tempfile::tempdir().unwrap();
        let kit = tmp.path().join("guest");
        std::fs::create_dir_all(kit.join("modules")).unwrap();
        std::fs::write(kit.join("vmlinuz"), b"bz").unwrap();
        std::fs::write(kit.join("kernel.release"), "6.1.0-1-cloud-amd64\n").unwrap();
        std::fs::write(kit.join("modules/virtio.ko"), b"mod-a").unwrap();
        std::fs::write(kit.join("modules/virtio_blk.ko"), b"mod-bb").unwrap();
        std::fs::write(kit.join("modules/load.order"), "virtio.ko\nvirtio_blk.ko\n").unwrap();
        let agent = tmp.path().join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let out = tmp.path().join("initramfs.cpio");

        build_initramfs(&agent, &kit, &out).unwrap();
        let entries = parse(&std::fs::read(&out).unwrap());
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(get("init").data, b"\x7fELF-agent");
        assert_eq!(get("init").mode, 0o100755);
        assert_eq!(get("dev/console").rdev, (5, 1));
        for d in ["dev", "proc", "sys", "newroot", "lib/modules"] {
            assert_eq!(get(d).mode & 0o170000, 0o040000, "{d}");
        }
        assert_eq!(get("lib/modules/virtio_blk.ko").data, b"mod-bb");
        assert_eq!(get("lib/modules/load.order").data, b"virtio.ko\nvirtio_blk.ko\n");
        // Only the archive is left behind (the temporary file was renamed).
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A broken kit fails before anything is written, naming the fix.
        std::fs::remove_file(kit.join("modules/virtio_blk.ko")).unwrap();
        std::fs::remove_file(&out).unwrap();
        let err = build_initramfs(&agent, &kit, &out).unwrap_err().to_string();
        assert!(err.contains("guest-kit.sh"), "{err}");
        assert!(!out.exists());
    }
}
