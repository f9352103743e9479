//! Running a scenario against herald and a baseline server alternately
//! (A B A B ...), each started here as its own process pinned to the
//! server's cores, so that one command gives comparable figures from the
//! same machine in the same minutes.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A server to measure: a name and how to start it on a port.
#[derive(Debug, Clone)]
pub struct Contender {
    /// What the tables call it.
    pub name: &'static str,
    /// The program and its arguments; `{port}` is replaced by the port.
    pub command: Vec<String>,
}

impl Contender {
    /// herald's `fanout` example with one loop (`--phoenix` for channels).
    pub fn herald(bin_dir: &Path, phoenix: bool) -> Self {
        let mut command = vec![
            bin_dir.join("examples/fanout").display().to_string(),
            "--port".into(),
            "{port}".into(),
            "--loops".into(),
            "1".into(),
            "--no-pin".into(),
        ];
        if phoenix {
            command.push("--phoenix".into());
        }
        Self {
            name: "herald",
            command,
        }
    }

    /// A baseline by name: `raw` (the raw-epoll floor) or `tokio`.
    pub fn baseline(name: &str, bin_dir: &Path) -> Option<Self> {
        let (name, program, extra): (&'static str, &str, &[&str]) = match name {
            "raw" => ("raw", "raw-fanout", &[]),
            "tokio" => ("tokio", "tokio-fanout", &["--threads", "1"]),
            _ => return None,
        };
        let mut command = vec![
            bin_dir.join(program).display().to_string(),
            "--port".into(),
            "{port}".into(),
        ];
        command.extend(extra.iter().map(|arg| (*arg).to_owned()));
        Some(Self { name, command })
    }
}

/// A contender's running process.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Running {
    /// Its process id, for `/proc` figures.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `contender` on a free port, pinned to `cpus` with `taskset` when
/// it is installed, and waits (at most 10 s) until it accepts connections.
pub fn start(contender: &Contender, cpus: &str) -> io::Result<Running> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let args: Vec<String> = contender
        .command
        .iter()
        .map(|arg| arg.replace("{port}", &port.to_string()))
        .collect();
    let pinned = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    let mut command = if pinned {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(cpus).args(&args);
        command
    } else {
        eprintln!("note: taskset not found; {} runs unpinned", contender.name);
        let mut command = Command::new(&args[0]);
        command.args(&args[1..]);
        command
    };
    let child = command.stdout(Stdio::null()).spawn().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "starting {}: {err} (build it with cargo build --release)",
                args[0]
            ),
        )
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let running = Running { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{} did not start listening on {addr}",
                contender.name
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(running)
}
