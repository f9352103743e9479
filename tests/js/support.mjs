// What the Node.js tests share: the channels test server, the standalone
// `herald`, and a bounded wait on a condition.

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

export const SERVER =
  process.env.HERALD_TEST_SERVER ??
  fileURLToPath(new URL("../../target/debug/channels-test-server", import.meta.url));

/** Starts the test server; resolves with its process and port. */
export function startServer(port = 0) {
  return new Promise((resolve, reject) => {
    const child = spawn(SERVER, ["--port", String(port)], { stdio: ["ignore", "pipe", "inherit"] });
    let output = "";
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`server exited early with ${code}`)));
    child.stdout.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (match) {
        child.removeAllListeners("exit");
        resolve({ child, port: Number(match[1]) });
      }
    });
  });
}

export const HERALD =
  process.env.HERALD_BIN ??
  fileURLToPath(new URL("../../target/debug/herald", import.meta.url));

/** Starts a standalone `herald` with `configPath` on free ports (API off
 * unless `api`); resolves with its process, its WebSocket port and, with
 * `api`, its API port, once it logs them. */
export function startHerald(configPath, { api = false } = {}) {
  return new Promise((resolve, reject) => {
    const args = ["--config", configPath, "--listen", "127.0.0.1:0", "--no-demo", "--loops", "1",
      "--no-pin", "--log-format", "json"];
    args.push(...(api ? ["--api-listen", "127.0.0.1:0"] : ["--no-api"]));
    const child = spawn(HERALD, args, { stdio: ["ignore", "ignore", "pipe"], env: { PATH: process.env.PATH } });
    let buffered = "";
    const ports = {};
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`herald exited early with ${code}`)));
    child.stderr.on("data", (chunk) => {
      buffered += chunk;
      for (const line of buffered.split("\n")) {
        const match = line.match(/"addr":"127\.0\.0\.1:(\d+)"/);
        if (match) ports[line.includes("HTTP API") ? "api" : "port"] = Number(match[1]);
      }
      if (ports.port && (!api || ports.api)) {
        child.removeAllListeners("exit");
        child.stderr.removeAllListeners("data");
        child.stderr.resume();
        resolve({ child, ...ports });
      }
    });
  });
}

/** Stops a server and waits until it has exited. */
export function stopServer(child) {
  return new Promise((resolve) => {
    child.once("exit", resolve);
    child.kill("SIGKILL");
  });
}

/** Resolves when `predicate()` holds, polling every 10 ms; rejects, naming
 * `what`, after `ms`. */
export function until(predicate, what = "a condition", ms = 10_000) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const check = () => {
      if (predicate()) return resolve();
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(check, 10);
    };
    check();
  });
}
