//! The one system call that std and mio do not offer safely without
//! zero-filling: `recv` straight into a `BytesMut`'s spare capacity.
//!
//! `Read::read` needs an initialized `&mut [u8]`; zeroing 16 KiB before
//! every read would cost more than the read of a small frame. Everything
//! unsafe in herald's I/O is in this file.

use std::{io, os::fd::AsRawFd};

use bytes::BytesMut;

/// Receives at most `max` bytes from `socket`, appending them to `buf`
/// (growing it first if it has less than `max` bytes of spare capacity).
/// Returns how many bytes arrived; 0 means the peer closed its side.
pub(crate) fn recv_into(
    socket: &impl AsRawFd,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: `spare` is writable memory of at least `len` bytes owned by
    // `buf`, which is borrowed mutably for the whole call; `recv` writes at
    // most `len` bytes into it and never reads it, so its being
    // uninitialized is fine. The fd is valid for as long as `socket` lives.
    let received = unsafe { libc::recv(socket.as_raw_fd(), spare.as_mut_ptr().cast(), len, 0) };
    let Ok(received) = usize::try_from(received) else {
        return Err(io::Error::last_os_error());
    };
    // SAFETY: `recv` initialized the first `received` bytes of the spare
    // capacity (`received <= len <= spare capacity`), so the new length
    // covers only initialized bytes.
    unsafe { buf.set_len(buf.len() + received) };
    Ok(received)
}

/// Gives the allocator's free memory back to the system where the C
/// library can (glibc's `malloc_trim`): after a burst of connections has
/// gone, their freed slots and buffers would otherwise stay resident. A
/// no-op elsewhere.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own heap
    // under its locks; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, net::TcpListener};

    use super::*;

    #[test]
    fn recv_appends_what_arrived_and_reports_eof() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        drop(client);
        let mut buf = BytesMut::from(&b">"[..]);
        let mut total = 0;
        loop {
            let n = recv_into(&server, &mut buf, 3).unwrap();
            assert!(n <= 3);
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, 5);
        assert_eq!(&buf[..], b">hello");
    }
}
