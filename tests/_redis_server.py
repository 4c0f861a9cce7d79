"""A private ``redis-server`` for tests that stop and restart Redis under a running app.

Plain class only: tests that need it build one in a fixture. The server keeps nothing on disk
(``--save "" --appendonly no``), lives in its own temp dir and listens on ``127.0.0.1`` on a free
port, which `restart` keeps, so a client's URL stays valid across a stop.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["RedisServer", "RedisStartError"]

_HOST = "127.0.0.1"


class RedisStartError(RuntimeError):
    """The ``redis-server`` process could not be started or never answered PING."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    """True when a server on `port` answers an inline PING with +PONG."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.2) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` subprocess on ``127.0.0.1``, stoppable and restartable on one port.

    ``start()`` (or ``with RedisServer() as server:``) picks a free port unless one is given, and
    waits (bounded by `startup_timeout`) until the server answers PING. Its log goes to
    ``log_path`` in a private temp dir, which ``close()`` removes.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str = "redis-server",
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        args: Sequence[str] = (),
        config: str = "",
    ) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else _free_port()
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.args = tuple(args)  # after taskflow's own: --cluster-enabled, --replicaof, --sentinel
        self.config = config  # a config file's text, for what only a file takes (Sentinel)
        self._tmpdir = Path(tempfile.mkdtemp(prefix="taskflow-redis-"))
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self._tmpdir / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Spawn the server and wait until it answers PING; a random port is retried twice."""
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
            except RedisStartError:
                # Someone may have taken the free port before the server bound it.
                if attempt + 1 == attempts:
                    raise
                self.port = _free_port()
            else:
                self._fixed_port = True  # a restart must come back where the clients look
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def dir(self) -> Path:
        """The server's private directory (its working dir)."""
        return self._tmpdir

    def _spawn_and_wait(self) -> None:
        config: list[str] = []
        if self.config:
            path = self._tmpdir / "redis.conf"
            if not path.exists():  # Sentinel rewrites it: keep what it learned across a restart
                path.write_text(self.config, encoding="utf-8")
            config = [str(path)]
        cmd = [
            self.binary,
            *config,
            "--port", str(self.port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._tmpdir),
            *self.args,
        ]  # fmt: skip
        if shutil.which(self.binary) is None:
            raise RedisStartError(f"{self.binary!r} is not on PATH")
        if self._log is None or self._log.closed:
            self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        while not _pong(self.port):
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise RedisStartError(
                    f"redis-server exited with code {code} before answering on port "
                    f"{self.port}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop(graceful=False)
                raise RedisStartError(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{self.startup_timeout:.1f}s:\n{self.log_tail()}"
                )
            time.sleep(0.02)  # polled: the server has no way to tell us it listens

    def stop(self, *, graceful: bool = True) -> int | None:
        """Stop the server: SIGTERM (SIGKILL after `stop_timeout`), or SIGKILL at once.

        Returns its exit code, or None when it was not running. Nothing is kept on disk, so a
        server started again is empty.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            if graceful:
                proc.send_signal(signal.SIGTERM)
                try:
                    return proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    pass
            proc.kill()
        return proc.wait()

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its data and connections but answers nothing (a hang)."""
        assert self._proc is not None, "not running"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server: it answers again, with everything it had."""
        assert self._proc is not None, "not running"
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, *, graceful: bool = True) -> None:
        """Stop and start again on the same port (empty: nothing was saved)."""
        self.stop(graceful=graceful)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        try:
            self.stop(graceful=False)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.url} {state}>"
