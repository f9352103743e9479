//! Running out of file descriptors on `accept`: the loop backs off instead
//! of spinning on a listener that stays readable, and recovers when
//! descriptors free up.
//!
//! Its own test binary (so its own process): it lowers the process's
//! descriptor limit and fills the table, which would break other tests
//! running beside it.

use std::{
    fs::File,
    io::Write,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use herald::{
    Accept, Conn, Handler, Reject, Request, Server,
    wire::{OpCode, client_frame},
};
use herald_tests::server::{
    raw, read_head, read_server_frame, status_of, upgrade_request, wait_until,
};

struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_connect(&self, _request: &Request) -> Result<Accept<()>, Reject> {
        Ok(Accept::new(()))
    }

    fn on_binary(&self, conn: &mut Conn<'_, ()>, data: Bytes) {
        let _ = conn.send_binary(&data);
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn set_fd_limit(soft: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit struct for the duration of
    // the call.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(read, 0);
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: `limit` is a valid rlimit struct; lowering the soft limit is
    // always permitted.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: `usage` is a valid, writable rusage struct for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

#[test]
fn accept_backs_off_when_descriptors_run_out_and_recovers() {
    set_fd_limit(open_fds() as u64 + 64);
    let server = Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .loops(1)
        .pin_cores(false)
        .shutdown_timeout(Duration::from_millis(300))
        .start(Echo)
        .unwrap();
    let handle = server.handle();

    // Fill the descriptor table, then free exactly one for the client.
    let mut filler = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        filler.push(file);
    }
    filler.pop();
    let mut client = raw(server.local_addr());
    client.write_all(upgrade_request("/").as_bytes()).unwrap();

    // The kernel completed the TCP handshake; the loop cannot accept.
    assert!(wait_until(Duration::from_secs(10), || handle
        .stats()
        .accept_resource_errors
        > 0));
    // It backs off rather than spinning: little CPU while starved.
    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let cpu_used = cpu_time() - cpu_before;
    let wall = wall_before.elapsed();
    assert!(
        cpu_used < wall / 4,
        "spinning: {cpu_used:?} of CPU in {wall:?}"
    );
    assert_eq!(handle.connections(), 0);

    // Descriptors come back: the pending connection is accepted and works.
    drop(filler);
    assert_eq!(status_of(&read_head(&mut client)), 101);
    let mut frame = BytesMut::new();
    client_frame(&mut frame, true, OpCode::Binary, [4, 3, 2, 1], b"recovered");
    client.write_all(&frame).unwrap();
    assert_eq!(
        read_server_frame(&mut client).unwrap(),
        (OpCode::Binary, b"recovered".to_vec())
    );
    server.shutdown();
}
