//! One listening socket per loop, sharing the port with `SO_REUSEPORT`.
//!
//! The kernel spreads incoming connections over the listeners by a hash of
//! the connection's addresses, so each loop accepts its own share with no
//! hand-off between threads. The alternative, one acceptor thread passing
//! sockets to the loops over channels, costs a wake-up and a cross-core
//! cache miss per connection and is itself a bottleneck at high connect
//! rates; its one advantage, even spreading with few connections, matters
//! little for a server that holds thousands.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// How many not-yet-accepted connections the kernel queues per listener.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr`. If `addr` has port 0, the first
/// listener picks a free port and the others share it.
pub(crate) fn bind_listeners(
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<mio::net::TcpListener>> {
    let first = bind_one(addr)?;
    let shared_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_one(shared_addr)?);
    }
    Ok(listeners)
}

fn bind_one(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}
