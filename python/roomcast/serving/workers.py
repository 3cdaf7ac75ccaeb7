"""`roomcast serve --workers N`: N server processes on one port, supervised by this one.

The supervisor reserves the port (a bound, non-listening SO_REUSEPORT socket, so `--port 0`
gives every worker the same port and a restarted worker gets it back), then starts each worker
as `python -m roomcast serve <the same flags> --port P` with `ROOMCAST_WORKER_OF=<its pid>` in
the environment. Each worker listens with SO_REUSEPORT, so the kernel spreads connections
over them, and is a node of one cluster on the configured broker (its own server id). The
supervisor restarts a worker that dies (with back-off), and on SIGINT/SIGTERM sends every
worker SIGTERM (each closes its clients with 1001) and exits 0 once all have exited; a second
signal kills them. Metrics: every worker writes to one `PROMETHEUS_MULTIPROC_DIR` (see
`roomcast.metrics`), which this process creates and removes.

A worker's stdout is relayed line by line (a line longer than LINE_LIMIT in pieces of that
size). A worker counts as dead when it exits, whether or not its stdout is closed: a process
the worker started (an `--app` may) can hold the pipe open long after; what it writes there is
still relayed until it closes it or the supervisor exits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from .metrics import MULTIPROC_ENV

logger = logging.getLogger("roomcast.workers")

WORKER_ENV = "ROOMCAST_WORKER_OF"
# A worker that ran this long before dying restarts at once; quicker deaths back off.
STABLE_AFTER = 10.0
RESTART_MIN_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
# Descriptors a process keeps besides its clients (listening socket, broker, stdio, ...).
RESERVED_FILES = 32
# Longest stdout line relayed as one; longer ones go in pieces of this size.
LINE_LIMIT = 64 * 1024
# After a worker exits, how long its last lines may take to arrive before it is restarted.
DRAIN_TIMEOUT = 1.0


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def restart_delay(quick_deaths: int) -> float:
    """Seconds before restarting a worker after `quick_deaths` deaths in a row, each within
    STABLE_AFTER of its start (0 for the first): 0.5, 1, 2, 4, ... up to RESTART_MAX_DELAY."""
    return float(min(RESTART_MAX_DELAY, RESTART_MIN_DELAY * 2 ** min(quick_deaths, 16)))


def worker_parent() -> int | None:
    """The supervisor's pid when this process is a worker, else None."""
    raw = os.environ.get(WORKER_ENV)
    return int(raw) if raw and raw.isdigit() else None


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = 1 << 20  # macOS refuses infinity for the soft limit
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_budget(limit: int) -> int:
    return max(0, limit - RESERVED_FILES)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, non-listening socket holding host:port for the workers (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _WorkerPipe(asyncio.SubprocessProtocol):
    """A worker process: its stdout relayed to `on_line`, its exit and the pipe's end."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        self.on_line = on_line
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buffer = bytearray()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self._buffer += data
        while True:
            if (end := self._buffer.find(b"\n", 0, LINE_LIMIT + 1)) >= 0:
                self._emit(end, end + 1)
            elif len(self._buffer) > LINE_LIMIT:  # a piece of a longer line, as it is
                self._emit(LINE_LIMIT, LINE_LIMIT, strip=False)
            else:
                return

    def _emit(self, end: int, cut: int, strip: bool = True) -> None:
        text = self._buffer[:end].decode(errors="replace")
        del self._buffer[:cut]
        self.on_line(text.rstrip() if strip else text)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._buffer:
            self._emit(len(self._buffer), len(self._buffer))
        if not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class Supervisor:
    """Runs `count` workers until a signal (or `stop()`), restarting those that die."""

    def __init__(
        self,
        count: int,
        args: Sequence[str],
        env: dict[str, str],
        out: Callable[[str], None],
    ) -> None:
        self.count = count
        self.args = list(args)
        self.env = env
        self.out = out
        self.procs: list[asyncio.SubprocessTransport | None] = [None] * count
        # Exited workers whose stdout something they started still holds open.
        self._lingering: set[asyncio.SubprocessTransport] = set()
        self._stopping = asyncio.Event()
        self._forced = False
        self._ready: list[asyncio.Event] = [asyncio.Event() for _ in range(count)]
        self._failed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def run(self, on_ready: Callable[[], None]) -> int:
        """Start the workers, call `on_ready` once all listen, supervise until stopped.
        Returns the exit status: 0 after a graceful stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        slots = [asyncio.ensure_future(self._slot(i)) for i in range(self.count)]
        all_ready = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in self._ready)))
        try:
            waiting: list[asyncio.Future[Any]] = [
                all_ready,
                self._failed,
                asyncio.ensure_future(self._stopping.wait()),
            ]
            done, _ = await asyncio.wait(
                waiting,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self._failed.done():
                # A worker could not start (the error is on stderr): stop the rest.
                self._stopping.set()
                self._signal_all(signal.SIGTERM)
                await asyncio.gather(*slots, return_exceptions=True)
                return self._failed.result()
            if all_ready in done:
                on_ready()
            await asyncio.gather(*slots)
        finally:
            all_ready.cancel()
            for transport in self._lingering:
                transport.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return 1 if self._forced else 0

    def _on_signal(self, sig: int) -> None:
        if not self._stopping.is_set():
            name = signal.Signals(sig).name
            self.out(f"roomcast: {name}: stopping {self.count} workers (again to force)")
            self._stopping.set()
            self._signal_all(signal.SIGTERM)
        else:
            self.out("roomcast: killing workers")
            self._forced = True
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.get_returncode() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def _slot(self, index: int) -> None:
        """Keep worker `index` running until the supervisor stops."""
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping.is_set():
            started = loop.time()
            proc, pipe = await loop.subprocess_exec(
                lambda: _WorkerPipe(lambda text: self._relay(index, text)),
                sys.executable,
                "-m",
                "roomcast",
                *self.args,
                stdin=None,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
                env=self.env,
            )
            pid = proc.get_pid()
            self.procs[index] = proc
            self.out(f"roomcast: worker {index} started (pid {pid})")
            if self._stopping.is_set():  # a signal came while it was starting
                proc.send_signal(signal.SIGTERM)
            await pipe.exited
            code = proc.get_returncode()
            # Its last lines, unless something it started keeps the pipe open.
            await asyncio.wait((pipe.closed,), timeout=DRAIN_TIMEOUT)
            if pipe.closed.done():
                proc.close()
            else:
                self._lingering.add(proc)
                pipe.closed.add_done_callback(functools.partial(self._closed, proc))
            directory = self.env.get(MULTIPROC_ENV)
            if directory:
                from prometheus_client.multiprocess import mark_process_dead

                mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                self.out(f"roomcast: worker {index} (pid {pid}) stopped ({code})")
                return
            if not self._ready[index].is_set():
                if not self._failed.done():
                    self._failed.set_result(code or 1)
                return
            if loop.time() - started >= STABLE_AFTER:
                failures = 0
            delay = restart_delay(failures)
            failures += 1
            logger.error(
                "worker %d (pid %d) exited with %s: restarting in %.1f s",
                index,
                pid,
                code,
                delay,
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass

    def _relay(self, index: int, text: str) -> None:
        """One line of worker `index`'s stdout, noting when it listens."""
        if text.startswith("roomcast: listening on "):
            self._ready[index].set()
        self.out(f"[worker {index}] {text}")

    def _closed(self, proc: asyncio.SubprocessTransport, _: object) -> None:
        if proc in self._lingering:
            self._lingering.discard(proc)
            proc.close()


async def supervise(
    count: int,
    args: Sequence[str],
    host: str,
    port: int,
    extra_env: dict[str, str],
    out: Callable[[str], None],
    describe: Callable[[int], str],
    metrics_port: int | None = None,
) -> int:
    """Run `count` workers of `roomcast <args>` on host:port until a signal; the exit status."""
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="roomcast-metrics-")
    env = dict(os.environ)
    env.update(extra_env)
    env[WORKER_ENV] = str(os.getpid())
    env[MULTIPROC_ENV] = directory
    metrics_server: Any = None
    try:
        if metrics_port is not None:
            metrics_server = _serve_metrics(host, metrics_port, directory)
        supervisor = Supervisor(count, [*args, "--port", str(port)], env, out)

        def ready() -> None:
            out(describe(port))

        return await supervisor.run(ready)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        reservation.close()
        shutil.rmtree(directory, ignore_errors=True)


def _serve_metrics(host: str, port: int, directory: str) -> Any:
    """GET /metrics on host:port in a thread: the sum over every worker's files."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    server, _ = start_http_server(port, host, registry)
    return server
