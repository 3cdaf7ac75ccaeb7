// Starts `roomcast serve` for the tests: the Python named by ROOMCAST_PYTHON (default
// python3) with the package importable (PYTHONPATH as the caller set it), on a free port.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

const TOOLS = path.dirname(fileURLToPath(import.meta.url));
const STARTUP_TIMEOUT = 30000;

export async function startServer(args = []) {
  const python = process.env.ROOMCAST_PYTHON || "python3";
  const proc = spawn(python, ["-m", "roomcast", "serve", "--port", "0", "--app", "relay_app:app",
    "--log-level", "warning", ...args], { cwd: TOOLS, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (chunk) => { stderr += chunk; });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`roomcast serve did not start: ${stderr}`)), STARTUP_TIMEOUT);
    proc.stdout.on("data", (chunk) => {
      out += chunk;
      const match = out.match(/listening on (ws:\/\/127\.0\.0\.1:\d+\/ws)/);
      if (match) { clearTimeout(timer); resolve(match[1]); }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`roomcast serve exited ${code}: ${stderr}`)); });
  });
  return {
    url,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode !== null) return;
      const exited = new Promise((resolve) => proc.on("exit", resolve));
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Resolves once `predicate()` is true; rejects after `timeout` ms. */
export async function eventually(predicate, timeout = 10000, what = "condition") {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeout} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
