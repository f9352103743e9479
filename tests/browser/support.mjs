// What the browser tests share: where things are, a free port, and
// Debian's Chromium launched headless with the flags this sandbox needs.

import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const here = path.dirname(fileURLToPath(import.meta.url));
export const heraldBin = process.env.HERALD_BIN ?? path.join(here, "../../target/debug/herald");
export const artifacts = path.join(here, "artifacts");
export const WAIT = { timeout: 10_000 };

const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** A port nothing listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Headless Chromium (/usr/bin/chromium, or CHROMIUM_PATH). */
export function launchChromium() {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox",
      "--headless",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
