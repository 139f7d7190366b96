//! What a file has in the page cache, for tests of read-ahead: `resident_pages` (mincore of
//! a mapping) and `evict` (a file written, synced and dropped from the cache).

use std::os::fd::AsRawFd;
use std::path::Path;

/// Pages of `path` in the page cache.
pub fn resident_pages(path: &Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a private read-only mapping of our open file, unmapped below; mincore writes
    // one byte per page into `vec`, sized for the mapping.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(4096)];
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
        libc::munmap(addr, len);
        vec.iter().filter(|b| **b & 1 == 1).count()
    }
}

/// Writes 1 MiB to `path` (on a disk-backed file system) and drops it from the page cache.
pub fn cold_file(path: &Path) {
    std::fs::write(path, vec![7u8; 1 << 20]).unwrap();
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: posix_fadvise on our own fd; no memory is passed.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(
        resident_pages(path),
        0,
        "{} stayed in the page cache",
        path.display()
    );
}
