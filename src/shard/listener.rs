//! The shard's own listening socket.
//!
//! Every shard binds the same address with SO_REUSEPORT, so the kernel spreads incoming
//! connections over the shards' accept queues (by a hash of the 4-tuple) and no two shards ever
//! contend for one accept queue. With port 0 the first shard binds, learns the port the kernel
//! chose, and the others bind that port.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

/// Binds a non-blocking listener with SO_REUSEADDR and SO_REUSEPORT, and TCP Fast Open with
/// a queue of `fastopen` when it is not 0. TCP_NODELAY is set here, on the listener: Linux
/// copies it to every socket `accept` returns, which saves a `setsockopt` per connection.
/// (The shard already batches everything queued in a loop pass into one write, so Nagle
/// would only add latency.)
pub fn bind(addr: SocketAddr, backlog: i32, fastopen: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    if fastopen > 0 {
        let qlen = libc::c_int::try_from(fastopen).unwrap_or(libc::c_int::MAX);
        crate::sys::set_int_sockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            qlen,
        )?;
    }
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// What one `accept` attempt gave.
#[derive(Debug)]
pub enum Accepted {
    /// A new connection.
    Conn(TcpStream, SocketAddr),
    /// The queue is empty: wait for the next readiness event.
    Drained,
    /// Out of file descriptors (EMFILE/ENFILE): stop accepting for a while; the pending
    /// connections wait in the kernel's queue instead of spinning this loop.
    OutOfFiles,
    /// A connection that died in the queue (ECONNABORTED) or another transient error: skip it.
    Skip,
}

/// Accepts one connection (TCP_NODELAY already on, from the listener).
pub fn accept(listener: &TcpListener) -> Accepted {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => return Accepted::Conn(stream, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => Accepted::OutOfFiles,
                    _ => Accepted::Skip,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection `setsockopt` is gone, so this is what keeps Nagle off: every
    /// accepted socket inherits TCP_NODELAY from the listener.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16, 0).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let stream = loop {
            match accept(&listener) {
                Accepted::Conn(s, _) => break s,
                Accepted::Drained => std::thread::yield_now(),
                other => panic!("accept: {other:?}"),
            }
        };
        assert!(socket2::SockRef::from(&stream).nodelay().unwrap());
        assert!(!socket2::SockRef::from(&client).nodelay().unwrap());
    }
}
