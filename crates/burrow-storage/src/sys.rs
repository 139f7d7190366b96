//! Every raw ioctl and libc call of this crate, behind small safe functions.
//!
//! Owns: the btrfs subvolume ioctls (create, snapshot, destroy, get/set flags) and the
//! `l*xattr` calls used to carry file capabilities and ACLs across `lchown`. Nothing outside
//! this module contains `unsafe`. Functions here take already-resolved fds and single path
//! components; confining paths to the pool is the caller's job (`confine.rs`).
//!
//! The btrfs ioctls are used instead of the `btrfs` CLI because a process spawn costs more
//! than the operation itself (a snapshot is ~1 ms).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `BTRFS_PATH_NAME_MAX` from `linux/btrfs.h`.
const BTRFS_PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX` from `linux/btrfs.h`.
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// Subvolume flag: read-only (`BTRFS_SUBVOL_RDONLY`).
pub const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
pub const BTRFS_SUBVOL_ROOT_INO: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the `size`/`qgroup_inherit` union is kept zeroed).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

// The kernel encodes the struct size in the ioctl number; a layout mistake would make every
// call fail with ENOTTY, so pin the sizes at compile time.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

nix::ioctl_write_ptr!(btrfs_ioc_subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(btrfs_ioc_snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
nix::ioctl_write_ptr!(btrfs_ioc_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, VolArgsV2);
nix::ioctl_read!(btrfs_ioc_subvol_getflags, BTRFS_IOCTL_MAGIC, 25, u64);
nix::ioctl_write_ptr!(btrfs_ioc_subvol_setflags, BTRFS_IOCTL_MAGIC, 26, u64);

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
pub struct QuotaCtlArgs {
    pub cmd: u64,
    pub status: u64,
}

nix::ioctl_readwrite!(btrfs_ioc_quota_ctl, BTRFS_IOCTL_MAGIC, 40, QuotaCtlArgs);

/// `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA` (Linux 6.7+): quotas that charge each extent to the
/// subvolume that wrote it, with no accounting work on snapshots.
pub const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;

/// Enables simple quotas on the filesystem of `fd`.
pub fn enable_simple_quota(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE_SIMPLE,
        status: 0,
    };
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_quota_ctl_args that lives across the
    // call; the kernel reads `cmd` and may write `status`.
    unsafe { btrfs_ioc_quota_ctl(fd.as_raw_fd(), &mut args) }.map(drop)
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
#[derive(Default)]
pub struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: `max_rfer` is set.
const QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;

// The kernel header declares it `_IOR` although the kernel only reads the struct.
nix::ioctl_read!(btrfs_ioc_qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);

/// Limits what the subvolume whose root directory is open at `vol` references to `bytes`
/// (its own qgroup: a zero qgroup id means the fd's subvolume), what `btrfs qgroup limit
/// BYTES PATH` does, without a process. Quotas must be on.
pub fn limit_referenced(vol: BorrowedFd<'_>, bytes: u64) -> nix::Result<()> {
    let mut args = QgroupLimitArgs {
        qgroupid: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            ..Default::default()
        },
    };
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_qgroup_limit_args that lives across
    // the call; the kernel reads it.
    unsafe { btrfs_ioc_qgroup_limit(vol.as_raw_fd(), &mut args) }.map(drop)
}

/// Copies a single path component into a NUL-terminated kernel name buffer.
fn fill_name<const N: usize>(buf: &mut [u8; N], name: &OsStr) -> nix::Result<()> {
    let bytes = name.as_bytes();
    // N - 1: the kernel requires the terminating NUL inside the buffer.
    if bytes.is_empty() || bytes.len() > N - 1 || bytes.contains(&0) || bytes.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn vol_args(name: &OsStr) -> nix::Result<Box<VolArgs>> {
    // Boxed: 4 KiB structs do not belong on small thread stacks.
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    Ok(args)
}

/// Creates an empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: `parent` is a valid open fd for the duration of the call and `args` points to a
    // fully initialised `btrfs_ioctl_vol_args` with a NUL-terminated name; the kernel only
    // reads it.
    unsafe { btrfs_ioc_subvol_create(parent.as_raw_fd(), &*args) }.map(drop)
}

/// Snapshots the subvolume open at `src` as `name` in the directory `dst_parent`.
pub fn snap_create(
    dst_parent: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    name: &OsStr,
    readonly: bool,
) -> nix::Result<()> {
    snap_create_limited(dst_parent, src, name, readonly, None)
}

/// `struct btrfs_qgroup_inherit` with no qgroups to inherit from: only limits for the new
/// subvolume's own qgroup.
#[repr(C)]
struct QgroupInherit {
    flags: u64,
    num_qgroups: u64,
    num_ref_copies: u64,
    num_excl_copies: u64,
    lim: QgroupLimit,
}

/// `BTRFS_SUBVOL_QGROUP_INHERIT`: `size` and `qgroup_inherit` of the args are set.
const BTRFS_SUBVOL_QGROUP_INHERIT: u64 = 1 << 2;
/// `BTRFS_QGROUP_INHERIT_SET_LIMITS`: the inherit's `lim` is the new qgroup's limit.
const QGROUP_INHERIT_SET_LIMITS: u64 = 1 << 0;

/// As [`snap_create`], with the new subvolume's qgroup limited to `limit` bytes referenced
/// (as [`limit_referenced`]) in the same transaction as the snapshot, when given. Quotas
/// must be on.
pub fn snap_create_limited(
    dst_parent: BorrowedFd<'_>,
    src: BorrowedFd<'_>,
    name: &OsStr,
    readonly: bool,
    limit: Option<u64>,
) -> nix::Result<()> {
    let inherit = limit.map(|bytes| QgroupInherit {
        flags: QGROUP_INHERIT_SET_LIMITS,
        num_qgroups: 0,
        num_ref_copies: 0,
        num_excl_copies: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            ..Default::default()
        },
    });
    let mut flags = if readonly { BTRFS_SUBVOL_RDONLY } else { 0 };
    let mut unused = [0u64; 4];
    if let Some(inherit) = &inherit {
        flags |= BTRFS_SUBVOL_QGROUP_INHERIT;
        unused[0] = std::mem::size_of::<QgroupInherit>() as u64;
        unused[1] = inherit as *const QgroupInherit as u64;
    }
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(src.as_raw_fd()),
        transid: 0,
        flags,
        unused,
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    });
    fill_name(&mut args.name, name)?;
    // SAFETY: both fds are valid for the duration of the call; `args` is a fully initialised
    // `btrfs_ioctl_vol_args_v2` (NUL-terminated name; `size` and the `qgroup_inherit`
    // pointer set only with the flag that says so, pointing at `inherit`, which outlives the
    // call) that the kernel only reads.
    unsafe { btrfs_ioc_snap_create_v2(dst_parent.as_raw_fd(), &*args) }.map(drop)
}

/// Deletes the subvolume `name` in the directory `parent`, even when it is not empty.
pub fn snap_destroy(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let args = vol_args(name)?;
    // SAFETY: `parent` is a valid open fd and `args` a fully initialised, NUL-terminated
    // `btrfs_ioctl_vol_args` that the kernel only reads.
    unsafe { btrfs_ioc_snap_destroy(parent.as_raw_fd(), &*args) }.map(drop)
}

/// Reads the subvolume flags of the subvolume whose root directory is open at `vol`.
pub fn subvol_flags(vol: BorrowedFd<'_>) -> nix::Result<u64> {
    let mut flags: u64 = 0;
    // SAFETY: `vol` is a valid open fd and `flags` is a writable u64, the exact type the
    // kernel writes for BTRFS_IOC_SUBVOL_GETFLAGS.
    unsafe { btrfs_ioc_subvol_getflags(vol.as_raw_fd(), &mut flags) }?;
    Ok(flags)
}

/// Replaces the subvolume flags of the subvolume whose root directory is open at `vol`.
pub fn set_subvol_flags(vol: BorrowedFd<'_>, flags: u64) -> nix::Result<()> {
    // SAFETY: `vol` is a valid open fd and `&flags` points to a u64 the kernel only reads.
    unsafe { btrfs_ioc_subvol_setflags(vol.as_raw_fd(), &flags) }.map(drop)
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args_v2` with its result buffer after it.
#[repr(C)]
struct SearchArgsV2 {
    key: SearchKey,
    buf_size: u64,
    buf: [u8; SEARCH_BUF],
}

const SEARCH_BUF: usize = 64 * 1024;
/// The size the kernel encodes in the ioctl number: the struct without its buffer.
const SEARCH_ARGS_V2_HEAD: usize = std::mem::size_of::<SearchKey>() + 8;
const _: () = assert!(std::mem::size_of::<SearchKey>() == 104);
nix::ioctl_readwrite_bad!(
    btrfs_ioc_tree_search_v2,
    nix::request_code_readwrite!(BTRFS_IOCTL_MAGIC, 17, SEARCH_ARGS_V2_HEAD),
    SearchArgsV2
);
/// `BTRFS_INODE_ITEM_KEY`.
const INODE_ITEM_KEY: u32 = 1;
/// `BTRFS_DIR_INDEX_KEY`: one per directory entry.
const DIR_INDEX_KEY: u32 = 96;
/// `BTRFS_ROOT_ITEM_KEY`: a directory entry whose location has it names a subvolume.
const ROOT_ITEM_KEY: u8 = 132;
/// `struct btrfs_ioctl_search_header`: transid, objectid, offset (u64), type, len (u32).
const SEARCH_HEADER: usize = 32;

/// One inode of a subvolume, as its `btrfs_inode_item` records it.
#[derive(Debug, Clone, Copy)]
pub struct InodeItem {
    pub size: u64,
    pub nlink: u32,
    pub mode: u32,
}

/// Calls `f` for every inode item of the subvolume whose root directory is open at `vol`,
/// read from its btree (`BTRFS_IOC_TREE_SEARCH_V2`, needs CAP_SYS_ADMIN) instead of a walk
/// of its directories: no inode is brought into memory, and a fresh snapshot's tree blocks
/// are its source's, already cached. Returns whether a directory of it holds a nested
/// subvolume (whose inodes are in a tree of their own, not seen here).
pub fn for_each_inode(vol: BorrowedFd<'_>, mut f: impl FnMut(InodeItem)) -> nix::Result<bool> {
    let mut args = Box::new(SearchArgsV2 {
        key: SearchKey::default(),
        buf_size: SEARCH_BUF as u64,
        buf: [0; SEARCH_BUF],
    });
    // The whole tree of `vol`'s subvolume (tree 0: the fd's own), every key from the first
    // inode on; items of other types come along and are skipped.
    let (mut objectid, mut ty, mut offset) = (0u64, 0u32, 0u64);
    let mut nested = false;
    loop {
        args.key = SearchKey {
            min_objectid: objectid,
            max_objectid: u64::MAX,
            min_type: ty,
            max_type: u32::MAX,
            min_offset: offset,
            max_offset: u64::MAX,
            max_transid: u64::MAX,
            nr_items: u32::MAX,
            ..SearchKey::default()
        };
        args.buf_size = SEARCH_BUF as u64;
        // SAFETY: `vol` is a valid open fd; `args` is a fully initialised search_args_v2
        // whose `buf_size` is the size of the buffer that follows it in the same allocation,
        // which is all the kernel writes.
        unsafe { btrfs_ioc_tree_search_v2(vol.as_raw_fd(), &mut *args) }?;
        let found = args.key.nr_items;
        if found == 0 {
            return Ok(nested);
        }
        let mut at = 0usize;
        let mut last = (0u64, 0u32, 0u64);
        for _ in 0..found {
            let header = args.buf.get(at..at + SEARCH_HEADER).ok_or(Errno::EIO)?;
            let u64_at = |b: &[u8], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or_default());
            let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().unwrap_or_default());
            let (item_objectid, item_offset) = (u64_at(header, 8), u64_at(header, 16));
            let (item_type, len) = (u32_at(header, 24), u32_at(header, 28) as usize);
            let data = args
                .buf
                .get(at + SEARCH_HEADER..at + SEARCH_HEADER + len)
                .ok_or(Errno::EIO)?;
            // `struct btrfs_inode_item`: generation, transid, size, nbytes, block_group
            // (u64), nlink, uid, gid, mode (u32), ... (little-endian on disk).
            if item_type == INODE_ITEM_KEY && len >= 56 {
                f(InodeItem {
                    size: u64::from_le_bytes(data[16..24].try_into().unwrap_or_default()),
                    nlink: u32::from_le_bytes(data[40..44].try_into().unwrap_or_default()),
                    mode: u32::from_le_bytes(data[52..56].try_into().unwrap_or_default()),
                });
            }
            // `struct btrfs_dir_item` starts with its location, a packed `btrfs_disk_key`:
            // objectid (u64), type (u8), offset (u64).
            if item_type == DIR_INDEX_KEY && data.get(8) == Some(&ROOT_ITEM_KEY) {
                nested = true;
            }
            last = (item_objectid, item_type, item_offset);
            at += SEARCH_HEADER + len;
        }
        // Next search starts just after the last key returned.
        (objectid, ty, offset) = match last {
            (o, t, off) if off < u64::MAX => (o, t, off + 1),
            (o, t, _) if t < u32::from(u8::MAX) => (o, t + 1, 0),
            (o, _, _) if o < u64::MAX => (o + 1, 0, 0),
            _ => return Ok(nested),
        };
    }
}

/// Lowers the calling thread's CPU priority to nice 19 (a TID is a `PRIO_PROCESS` target on
/// Linux), for a thread doing background work such as a walk. Best effort: raising one's
/// nice value needs no privilege.
pub fn lowest_priority_for_this_thread() {
    // SAFETY: gettid and setpriority take no memory; the thread is the caller's own.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
    }
}

/// Lists the extended attribute names of `path` (not following a final symlink), as
/// NUL-separated names.
pub fn llistxattr(path: &CStr) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `path` is NUL-terminated and `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => grow(&mut buf)?,
            Err(Errno::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
}

/// Reads the extended attribute `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &CStr, name: &CStr) -> nix::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `path` and `name` are NUL-terminated and `buf` is writable for `buf.len()`
        // bytes.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(Some(buf));
            }
            Err(Errno::ERANGE) => grow(&mut buf)?,
            Err(Errno::ENODATA) | Err(Errno::ENOTSUP) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Sets the extended attribute `name` of `path` (not following a final symlink).
pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated and `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Removes the extended attribute `name` of `path`; a missing attribute is not an error.
pub fn lremovexattr(path: &CStr, name: &CStr) -> nix::Result<()> {
    // SAFETY: `path` and `name` are NUL-terminated.
    let r = unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
    match Errno::result(r) {
        Ok(_) | Err(Errno::ENODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Xattr values and name lists are capped at 64 KiB by the VFS.
fn grow(buf: &mut Vec<u8>) -> nix::Result<()> {
    if buf.len() >= 1 << 16 {
        return Err(Errno::E2BIG);
    }
    buf.resize(buf.len() * 4, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_components_that_fit() {
        let mut buf = [0u8; 8];
        assert!(fill_name(&mut buf, OsStr::new("abc")).is_ok());
        assert_eq!(&buf[..4], b"abc\0");
        let mut buf = [0u8; 8];
        assert_eq!(fill_name(&mut buf, OsStr::new("1234567")), Ok(()));
        let mut buf = [0u8; 8];
        assert_eq!(fill_name(&mut buf, OsStr::new("12345678")), Err(Errno::EINVAL));
        assert_eq!(fill_name(&mut buf, OsStr::new("a/b")), Err(Errno::EINVAL));
        assert_eq!(fill_name(&mut buf, OsStr::new("")), Err(Errno::EINVAL));
    }
}
