//! Shared by the standalone binary's tests: a `herald` process on free
//! ports, and the small helpers the tests talk to it with.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use herald_tests::{phoenix::Client, server::http_exchange};
use serde_json::{Value, json};

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `herald` process.
pub(crate) struct Herald {
    pub(crate) child: Child,
    pub(crate) ws: SocketAddr,
    pub(crate) api: SocketAddr,
}

impl Herald {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--no-pin",
            "--log-format",
            "json",
        ]);
        // Two loops unless the test says how many.
        if !args.contains(&"--loops") {
            command.args(["--loops", "2"]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start herald");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, addresses) = mpsc::channel();
        // Reads the log to its end (so the process never blocks on a full
        // pipe), reporting each listening address.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // HERALD_TEST_LOG=1 shows the server's log.
                if std::env::var_os("HERALD_TEST_LOG").is_some() {
                    eprintln!("herald: {line}");
                }
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fields = &entry["fields"];
                let message = fields["message"].as_str().unwrap_or_default();
                if let Some(addr) = fields["addr"].as_str().and_then(|a| a.parse().ok()) {
                    let _ = lines.send((message.contains("API"), addr));
                }
            }
        });
        let (mut ws, mut api) = (None, None);
        while ws.is_none() || api.is_none() {
            let (is_api, addr) = addresses
                .recv_timeout(START_TIMEOUT)
                .expect("herald logs both listening addresses");
            if is_api {
                api = Some(addr)
            } else {
                ws = Some(addr)
            }
        }
        Self {
            child,
            ws: ws.unwrap(),
            api: api.unwrap(),
        }
    }

    /// `METHOD path` on the API with `headers` and `body`: status and body.
    pub(crate) fn api(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &str,
    ) -> (u16, String) {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.push_str(body);
        let (status, response) = http_exchange(self.api, request.as_bytes());
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned());
        (status, body.unwrap_or_default())
    }

    pub(crate) fn phoenix(&self, params: &str) -> Client {
        Client::connect(self.ws, "/socket/websocket", params).expect("phoenix connect")
    }

    pub(crate) fn send_sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: `kill` has no memory-safety preconditions; the pid is our
        // own child's, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|err| panic!("{err}: {body:?}"))
}

/// Joins `topic` and asserts the join was accepted.
pub(crate) fn join(client: &mut Client, topic: &str) -> String {
    let (join_ref, reply) = client.join(topic, json!({"name": "tester"}));
    assert_eq!(reply["status"], "ok", "join {topic}: {reply}");
    join_ref
}
