//! The address a transparently redirected connection was originally sent to.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// `getsockopt(SO_ORIGINAL_DST)` on an accepted socket: where the sandbox meant to connect
/// before the `dnat` to the transparent proxy port. On a connection that was not redirected
/// this is the socket's own local address; on one conntrack does not know, `ENOENT`.
pub fn original_dst(fd: &impl AsRawFd) -> io::Result<SocketAddrV4> {
    let mut addr = libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are live locals of the right type and size for the kernel to
    // write a `sockaddr_in` into; an invalid fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.sin_family) != libc::AF_INET {
        return Err(io::Error::other("SO_ORIGINAL_DST returned a non-IPv4 address"));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}
